"""Buckets of versions on a remote, next to its chunk store: blocking
operations over an ObjectStore (run them in worker threads).

Layout under the remote:
  registry/buckets/TEAM/NAME/versions/<n, 8 digits>   a signed version
  registry/buckets/TEAM/NAME/head                     the signed head: {version, digest}
  registry/buckets/TEAM/NAME/locks/<id>               a publisher's lock (see below)
  registry/leases/<id>                                a subscriber's lease (see gc)

Invariants:
- A version is written once (ObjectStore.put_new: never overwritten) and
  only after every chunk, segment and manifest it names is on the remote;
  the head is written after the version it names. A subscriber that finds
  a head therefore finds its version, and the version's chunks.
- Publishers of one bucket are serialized by a lock made of plain objects
  (safe on any store with read-after-write and list-after-write
  consistency, as S3 has had since 2020, and a directory): a publisher
  writes its lock object, then lists the locks; it holds the bucket if no
  other fresh lock is listed, else it deletes its own and backs off. Two
  publishers cannot both hold: each one's PUT precedes its own LIST, so the
  later of the two LISTs sees the other's lock. A lock is refreshed while
  held and counts as stale after LOCK_LEASE seconds (a publisher that
  died). Under the lock a publisher reads the head, writes version head+1
  with put_new (If-None-Match: the second guard, should a stalled holder
  outlive its lease) and then the head. The history is linear: version n's
  parent is version n-1, by number and digest.
- A private bucket has a signed ACL (`acl`): its writers (publisher keys)
  and readers (reader keys), and per generation the data key wrapped for
  each reader. It changes under the bucket's lock, signed by a writer of
  the ACL it replaces; a version records the generation its chunks were
  encrypted with, and is written only if that is still the current one.
- GC (`live_segments`) keeps every segment (and so its packs) that a
  version of any bucket names, and those a subscriber's lease names for
  the lease's own ttl after its last write (a version being pulled, even
  if removed since), however short a grace gc runs with. A subscriber
  writes its lease before it relies on a version, then checks the version
  is still there: a gc that missed the version (removed) sees the lease.
"""

import json
import random
import time
import uuid

from ..errors import Busy, Corrupt, InvalidArgument, NotAllowed, NotFound
from ..names import check_bucket
from . import documents

ROOT = "registry/buckets/"
LEASES = "registry/leases/"
LOCK_LEASE = 60.0              # seconds a publisher's lock stays fresh without a refresh
LOCK_WAIT = 300.0              # how long a publisher waits for the bucket
CLOCK_SLACK = 1.0
LEASE_TTL = 3600.0             # a subscriber's lease holds this long after its last write
MAX_LEASE_TTL = 7 * 86400.0


def bucket_prefix(bucket):
    return ROOT + check_bucket(bucket) + "/"


def version_key(bucket, n):
    return f"{bucket_prefix(bucket)}versions/{n:08d}"


def head_key(bucket):
    return bucket_prefix(bucket) + "head"


def acl_key(bucket):
    return bucket_prefix(bucket) + "acl"


class Buckets:
    """The registry on one object store; `trust` is a callable
    (bucket, public_hex) -> bool saying who may sign what."""

    def __init__(self, objects, trust, acl_serials=None):
        self.objects = objects
        self.trust = trust
        self.acl_serials = acl_serials      # RegistryState: ACL serials only move forward

    # -- reading ------------------------------------------------------------------
    def _trusted(self, bucket):
        return lambda key: self.trust(bucket, key)

    def head(self, bucket, etag=None):
        """(head body or None when unchanged since `etag`, etag); NotFound
        if the bucket has no head (no version published)."""
        key = head_key(bucket)
        try:
            data, tag = self.objects.get_tagged(key, etag)
        except NotFound:
            raise NotFound(f"no bucket {bucket!r} on {self.objects.url}") from None
        if data is None:
            return None, tag
        return documents.decode(data, key, "head", bucket, self._trusted(bucket)), tag

    def version(self, bucket, n):
        key = version_key(bucket, n)
        try:
            data = self.objects.get(key)
        except NotFound:
            raise NotFound(f"no version v{n} of {bucket!r} on {self.objects.url}") from None
        body = documents.decode(data, key, "version", bucket, self._trusted(bucket))
        documents.check_version_number(key, body)
        return body

    def version_at(self, bucket, n, digest):
        """Version n, which must have `digest` (as a head or a child names it)."""
        body = self.version(bucket, n)
        if body["digest"] != digest:
            raise Corrupt(f"{version_key(bucket, n)}: its digest is not the one its head or "
                          "child names (replaced?)")
        return body

    def list_buckets(self):
        """{bucket: head key's size} of every bucket with a head."""
        out = []
        for obj in self.objects.list(ROOT):
            parts = obj.key[len(ROOT):].split("/")
            if len(parts) == 3 and parts[2] == "head":
                out.append(f"{parts[0]}/{parts[1]}")
        return sorted(out)

    def version_numbers(self, bucket):
        prefix = bucket_prefix(bucket) + "versions/"
        return sorted(int(o.key[len(prefix):]) for o in self.objects.list(prefix)
                      if o.key[len(prefix):].isdigit())

    # -- publishing ---------------------------------------------------------------
    def publish(self, bucket, signer, members, message="", labels=None, acl=None):
        """Write the next version of `bucket` (its chunks already there) and
        move the head to it, under the bucket's lock. Returns the version."""
        lock = self.lock(bucket)
        try:
            return self._publish_locked(bucket, signer, members, message, labels, acl)
        finally:
            self.objects.delete(lock)

    def _publish_locked(self, bucket, signer, members, message, labels, acl):
        try:
            head, _ = self.head(bucket)
        except NotFound:
            head = None
        current = self.acl(bucket)
        if (current and current["generation"]) != (acl and acl["generation"]):
            raise Busy(f"{bucket}: its ACL changed while we published; publish again")
        n = head["version"] + 1 if head else 1
        body = {"kind": "version", "bucket": bucket, "version": n,
                "parent": {"version": head["version"], "digest": head["digest"]}
                if head else None,
                "created": time.time(), "publisher": signer.public_hex, "message": message,
                "labels": dict(labels or {}), "members": members, "acl": acl}
        data = documents.encode(body, signer)
        if not self.objects.put_new(version_key(bucket, n), data):
            raise Busy(f"version v{n} of {bucket} appeared while we held its lock "
                       "(a publisher outlived its lock?); publish again")
        digest = documents.chunk_hash(data)
        self.objects.put(head_key(bucket), documents.encode(
            {"kind": "head", "bucket": bucket, "version": n, "digest": digest,
             "time": time.time()}, signer))
        return {**body, "digest": digest, "signer": signer.public_hex}

    # -- private buckets: the signed ACL ----------------------------------------------
    def acl(self, bucket):
        """The bucket's ACL (None: a public bucket), signed by a trusted key
        that it lists as a writer."""
        key = acl_key(bucket)
        try:
            data = self.objects.get(key)
        except NotFound:
            return None
        acl = documents.decode(data, key, "acl", bucket, self._trusted(bucket))
        if acl["signer"] not in acl["writers"]:
            raise NotAllowed(f"{key}: signed by {acl['signer'][:16]}..., not one of the writers "
                             "it lists")
        if self.acl_serials is not None:
            seen = self.acl_serials.acl_serial(bucket)
            if acl["serial"] < seen:
                raise Corrupt(f"{key}: ACL serial {acl['serial']} is older than {seen}, already "
                              "seen: a replayed (rolled back) ACL, refused")
            self.acl_serials.saw_acl(bucket, acl["serial"])
        return acl

    def change_acl(self, bucket, signer, change):
        """Write change(current ACL or None) as the next ACL, under the
        bucket's lock; only a writer of the current one may."""
        lock = self.lock(bucket)
        try:
            old = self.acl(bucket)
            if old is None and self.version_numbers(bucket):
                raise InvalidArgument(f"{bucket} is public (it has versions and no ACL): a "
                                      "bucket is made private before its first version")
            if old is not None and signer.public_hex not in old["writers"]:
                raise NotAllowed(f"{bucket}: this pool is not a writer of its ACL")
            body = change(old)
            body.update(kind="acl", bucket=bucket, serial=old["serial"] + 1 if old else 1)
            self.objects.put(acl_key(bucket), documents.encode(body, signer))
            return self.acl(bucket)
        finally:
            self.objects.delete(lock)

    def lock(self, bucket, wait=LOCK_WAIT):
        """Hold `bucket`'s publisher lock (see the module's invariants); its key."""
        prefix = bucket_prefix(bucket) + "locks/"
        stop = time.monotonic() + wait
        delay = 0.02
        while True:
            key = prefix + uuid.uuid4().hex
            self.objects.put(key, json.dumps({"time": time.time()}).encode())
            if not self._other_fresh_locks(prefix, key):
                return key
            self.objects.delete(key)
            if time.monotonic() + delay > stop:
                raise Busy(f"{bucket}: another publisher holds it for over {wait:.0f}s")
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.5, 1.0)

    def _other_fresh_locks(self, prefix, mine):
        now = time.time()
        return [o.key for o in self.objects.list(prefix)
                if o.key != mine and now - o.mtime < LOCK_LEASE + CLOCK_SLACK]

    def delete_version(self, bucket, n):
        """Remove version n (its chunks go at a later gc, once nothing else
        names them). The head is left alone: a removed latest version stays
        the head, and a subscriber that has not pulled it finds it gone."""
        key = version_key(bucket, n)
        if not self.objects.exists(key):
            raise NotFound(f"no version v{n} of {bucket!r} on {self.objects.url}")
        self.objects.delete(key)

    # -- subscriber leases and gc -----------------------------------------------------
    def write_lease(self, lease_id, segments, ttl=LEASE_TTL):
        """Our lease: keep `segments` (and their packs) for `ttl` seconds
        after this write, whatever grace gc runs with."""
        self.objects.put(LEASES + lease_id, json.dumps(
            {"time": time.time(), "ttl": ttl, "segments": sorted(segments)}).encode())

    def drop_lease(self, lease_id):
        self.objects.delete(LEASES + lease_id)

    def live_segments(self, grace):
        """Segment keys every version of every bucket names, and those of
        leases fresher than `grace`. Corrupt (so gc deletes nothing) if a
        version does not read; signatures are not the question here, only
        what is named."""
        live = set()
        for obj in self.objects.list(ROOT):
            if "/versions/" in obj.key:
                live.update(self._segments_named(obj.key))
        now = time.time()
        for obj in self.objects.list(LEASES):
            ttl, segments = self._lease(obj.key)
            if now - obj.mtime < max(ttl, grace) + CLOCK_SLACK:
                live.update(segments)
        return live

    def _segments_named(self, key):
        bucket = key[len(ROOT):].split("/versions/")[0]
        try:
            body = documents.decode(self.objects.get(key), key, "version", bucket,
                                    lambda _: True)
        except NotFound:
            return ()                   # deleted since the listing
        if body["acl"] is not None:     # a private bucket's: in its own store, not here
            return ()
        return [s for m in body["members"] for s in m["manifest"]["segments"]]

    def _lease(self, key):
        """(ttl, segments) of lease `key`; Corrupt (gc deletes nothing) if it
        does not read."""
        try:
            lease = json.loads(self.objects.get(key))
            ttl, segments = lease["ttl"], lease["segments"]
            if type(ttl) not in (int, float) or not 0 <= ttl <= MAX_LEASE_TTL:
                raise ValueError(f"ttl {ttl!r}")
            if not all(isinstance(s, str) and s.startswith("segments/") for s in segments):
                raise ValueError("not segment keys")
            return ttl, segments
        except NotFound:
            return 0, ()
        except (ValueError, KeyError, TypeError) as exc:
            raise Corrupt(f"gc deletes nothing while {key} is not a lease ({exc})") from None
