"""Acceptance 4 (S3): each way S3 fails, against a real S3 server over HTTP
(moto's server mode, no mocked client), comes out of the command line as one
line saying what happened and what to do, exit 8, no traceback: no
credentials, no such bucket, access denied (403), credentials refused,
unreachable; and through rokctl, the hint says that the daemon's
environment is the one that needs the credentials."""

import os
import subprocess
import sys

import pytest

from daemon_helpers import Daemon, write_config
from s3_helpers import DenyingS3Server, new_bucket, refused_port

from rokfs.pool import Pool

NO_CREDENTIALS_ENV = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                      "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="module")
def denying():
    server = DenyingS3Server().start()
    yield server
    server.stop()


@pytest.fixture
def pool(tmp_path):
    path = str(tmp_path / "pool")
    with Pool.create(path) as p:
        p.create_volume("v", 1 << 20).pwrite(0, b"data" * 1024)
        p.create_snapshot("v@s")
    return path


def without_credentials():
    env = {k: v for k, v in os.environ.items() if k not in AWS_KEYS}
    return {**env, **NO_CREDENTIALS_ENV}


def with_keys(key_id, secret):
    return {**without_credentials(), "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret}


def url(endpoint, bucket, deadline=5):
    return f"s3://{bucket}/rk?endpoint_url={endpoint}&region=us-east-1&deadline={deadline}"


def failure(request, s3_server, denying, refused):
    """(remote URL, environment, words the message must hold) of one
    failure; `refused` is a port where nobody listens."""
    if request == "no credentials":
        return (url(s3_server.url, new_bucket(s3_server.url)), without_credentials(),
                ["no S3 credentials found", "AWS_ACCESS_KEY_ID", "~/.aws/credentials",
                 "the daemon (rokfs serve)"])
    if request == "no bucket":
        return (url(s3_server.url, "rokfs-no-such-bucket"), os.environ,
                ["no bucket 'rokfs-no-such-bucket'", "NoSuchBucket", "the bucket must exist"])
    if request == "access denied":
        return (url(denying.url, denying.bucket), with_keys(*denying.nobody),
                ["access denied (AccessDenied", "s3:ListBucket on arn:aws:s3:::rokfs-denied",
                 "s3:PutObject", "arn:aws:s3:::rokfs-denied/rk/*"])
    if request == "credentials refused":
        return (url(denying.url, denying.bucket), with_keys("AKIAUNKNOWN", "secret"),
                ["refused the credentials (InvalidAccessKeyId"])
    endpoint = f"http://127.0.0.1:{refused}"
    return (url(endpoint, "bucket", deadline=2), os.environ,
            ["remote unreachable for 2s", f"is the endpoint {endpoint} right, and up?"])


FAILURES = ["no credentials", "no bucket", "access denied", "credentials refused",
            "unreachable"]


@pytest.mark.parametrize("which", FAILURES)
def test_each_s3_failure_is_one_line_and_exit_8(which, pool, s3_server, denying):
    with refused_port() as refused:
        remote, env, words = failure(which, s3_server, denying, refused)
        proc = subprocess.run([sys.executable, "-m", "rokfs.cli", "push", "v@s", "--pool", pool,
                               "--remote", remote], capture_output=True, text=True,
                              timeout=120, env=env)
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.startswith("rokfs: error: PUT locks/push-")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def test_rokctl_says_the_daemon_needs_the_credentials(tmp_path, s3_server, monkeypatch):
    for key in AWS_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in NO_CREDENTIALS_ENV.items():
        monkeypatch.setenv(key, value)
    daemon = Daemon(write_config(tmp_path)).start()       # its environment has no keys
    monkeypatch.undo()                                     # this one (rokctl's) has them
    try:
        daemon.ok("volume", "create", "v", "--size", "1M")
        daemon.ok("snapshot", "create", "v@s")
        remote = url(s3_server.url, new_bucket(s3_server.url))
        for args in (["push", "v@s", "--remote", remote], ["remote", "ls", "--remote", remote]):
            rc, out, err = daemon.rokctl(*args)
            assert rc == 8 and err.count("\n") == 1, err
            assert "no S3 credentials found" in err and "the daemon (rokfs serve)" in err
    finally:
        daemon.stop()


@pytest.mark.parametrize("response, words", [
    ({"Error": {"Code": "403", "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": 403}},
     ["access denied (403: no message)", "s3:GetObject"]),
    ({"Error": {"Code": "PermanentRedirect", "Message": "use\nthe other"},
      "ResponseMetadata": {"HTTPStatusCode": 301}},
     ["another region (PermanentRedirect: use the other)", "set region="]),
    ({"Error": {"Code": "SlowDownPlease", "Message": "busy"},
      "ResponseMetadata": {"HTTPStatusCode": 429}},
     ["the S3 server answered 429 SlowDownPlease: busy"]),
])
def test_answers_without_a_server_of_their_own_are_worded_too(response, words):
    """The answers moto does not give (a HEAD's bare 403, a redirect to the
    bucket's region, a code nobody knows), as botocore raises them."""
    import botocore.exceptions as bx
    from rokfs.remote.objects import S3Store, s3_failure
    store = S3Store("bkt", "pre", endpoint_url="http://127.0.0.1:9")
    failure = s3_failure(bx.ClientError(response, "HeadObject"), "HEAD k s3://bkt/pre", store)
    assert type(failure).__name__ == "RemoteError" and "\n" not in str(failure)
    for word in words:
        assert word in str(failure), str(failure)
