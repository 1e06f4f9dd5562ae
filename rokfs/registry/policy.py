"""The S3 bucket policy that enforces a registry bucket's split at the
storage layer: publishers write its versions, head, ACL and chunks;
subscribers read them and write nothing but their own lease.

The policy is prefix-scoped (every statement names the keys of this one
registry bucket, or the shared chunk store) and a template: IAM principals
are the deployment's, not rokfs keys, so it names PUBLISHER_ARN and
SUBSCRIBER_ARN for the operator to fill in. Signatures and the ACL still
hold without it: the policy is a second wall, not the first.
"""

from ..errors import InvalidArgument
from ..names import check_bucket
from .bucket import LEASES, bucket_prefix
from .crypto import PRIVATE_ROOT


PUBLISHER = "arn:aws:iam::ACCOUNT:role/PUBLISHER_ARN"
SUBSCRIBER = "arn:aws:iam::ACCOUNT:role/SUBSCRIBER_ARN"
CHUNK_PREFIXES = ("packs/", "segments/")


def bucket_policy(spec, bucket):
    """The policy document (a dict) for registry `bucket` on S3 remote `spec`."""
    check_bucket(bucket)
    if spec.get("type") != "s3":
        raise InvalidArgument("a bucket policy is for an S3 remote; this remote is a "
                              "directory (its file permissions are the policy)")
    root = spec.get("prefix", "").strip("/")
    root = root + "/" if root else ""
    arn = f"arn:aws:s3:::{spec['bucket']}"
    own = [bucket_prefix(bucket), f"{PRIVATE_ROOT}{bucket}/"]
    shared = [*CHUNK_PREFIXES]
    objects = [f"{arn}/{root}{p}*" for p in own + shared]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "PublishersWrite", "Effect": "Allow", "Principal": {"AWS": PUBLISHER},
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": objects + [f"{arn}/{root}locks/*"]},
        {"Sid": "SubscribersRead", "Effect": "Allow", "Principal": {"AWS": SUBSCRIBER},
         "Action": ["s3:GetObject"], "Resource": objects},
        {"Sid": "SubscribersLease", "Effect": "Allow", "Principal": {"AWS": SUBSCRIBER},
         "Action": ["s3:PutObject", "s3:DeleteObject", "s3:GetObject"],
         "Resource": [f"{arn}/{root}{LEASES}*"]},
        {"Sid": "BothList", "Effect": "Allow", "Principal": {"AWS": [PUBLISHER, SUBSCRIBER]},
         "Action": ["s3:ListBucket"], "Resource": arn,
         "Condition": {"StringLike": {"s3:prefix": [f"{root}{p}*" for p in
                                                    own + shared + [LEASES, "locks/"]]}}},
        {"Sid": "NobodyElseWritesThisBucket", "Effect": "Deny",
         "NotPrincipal": {"AWS": PUBLISHER},
         "Action": ["s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"{arn}/{root}{p}*" for p in own]},
    ]}
