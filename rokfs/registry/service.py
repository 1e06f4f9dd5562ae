"""The registry at work in a daemon: publish, subscriptions and their sync,
over Control's helpers (the only door to the pool).

    registry = Registry(control)         # Control makes it on first use
    await registry.publish(["data@g1", "models@g1"], "team/exp1", ...)
    await registry.sync("team/exp1")     # what the poller does every poll

Invariants:
- Nothing of a version is served before its signature, its digest (the
  one its head or its child names) and its place in the history check
  out: a refused head or version changes nothing locally (the snapshots of
  earlier versions keep serving) and is reported in the subscription's
  status, each poll, until a good head replaces it.
- A subscription moves forward only: a head older than the newest version
  it has, or one naming the same number with another digest, is a replay
  (or a rewritten history) and refused.
- A new version's local snapshots are made (and committed) before the
  subscription records it (RegistryState.advance): a crash in between
  finds them made at the next sync, which makes nothing twice.
- Before a subscriber makes snapshots of a version it writes its lease
  naming the segments of every remote base it still reads from, then
  checks the version is still there; gc keeps what a fresh lease names.
- The poller asks each head with a conditional GET (its ETag): an
  unchanged bucket costs one request and no body.
- A version of a private bucket is served only if its signer is a writer
  of the bucket's ACL and this pool unwrapped the data key of the
  version's generation with its reader key; its chunks come from the
  bucket's encrypted store (crypto.py), never from the shared one.
"""

import logging
import time

import trio

from ..errors import Corrupt, InvalidArgument, NotAllowed, NotFound, RokfsError, one_line
from ..names import check_bucket
from . import crypto, documents
from .bucket import Buckets
from .keys import Identity
from .state import RegistryState

log = logging.getLogger("rokfs.registry")
DEFAULT_POLL = 10.0            # seconds between polls of every subscribed head


class Registry:
    def __init__(self, control, pool_path, poll=DEFAULT_POLL):
        self.control = control
        self.identity = Identity(pool_path)
        self.state = RegistryState(pool_path)
        self.poll = poll
        self.status = {}        # bucket -> {"polled", "error", "head"}
        self._etags = {}        # bucket -> the ETag of the head last accepted
        self._wake = trio.Event()
        self._syncing = {}      # bucket -> trio.Lock: one sync of a bucket at a time
        self._private = {}      # (remote url, bucket, generation) -> RemoteStore

    # -- trust ---------------------------------------------------------------------------
    def trusts(self, bucket, key):
        return key == self.identity.public_hex or self.state.trusted(bucket, key)

    def buckets(self, store):
        return Buckets(store.objects, self.trusts, self.state)

    def trust(self, scope, key):
        _check_scope(scope)
        self.state.trust(scope, documents.check_key_hex(key))
        return self.state.trust_list()

    def distrust(self, scope, key):
        self.state.distrust(_check_scope(scope), documents.check_key_hex(key))
        return self.state.trust_list()

    # -- publish --------------------------------------------------------------------------
    async def publish_target(self, store, bucket, private):
        """(the store a publish to `bucket` uploads to, the version's acl
        field): `store` itself for a public bucket, the bucket's encrypted
        store of the current generation for a private one (made private now
        if `private` and it has no version yet)."""
        buckets = self.buckets(store)
        acl = await store.run(buckets.acl, bucket)
        if acl is None and private:
            acl = await store.run(buckets.change_acl, bucket, self.identity,
                                  self._first_acl(bucket))
        if acl is None:
            return store, None
        if self.identity.public_hex not in acl["writers"]:
            raise NotAllowed(f"{bucket} is private and this pool is not one of its writers "
                             "(rokctl registry acl grant BUCKET KEY --writer, by a writer)")
        return self.data_store(store, bucket, acl, acl["generation"]), \
            {"generation": acl["generation"]}

    def _first_acl(self, bucket):
        """The change that makes `bucket` private: this pool its one writer
        and reader, a first data key."""
        def change(old):
            data_key, me = crypto.new_data_key(), self.identity.reader_hex
            self.state.keep_data_key(bucket, 1, data_key)
            return {"readers": [me], "writers": [self.identity.public_hex], "generation": 1,
                    "keys": {"1": {me: crypto.wrap(data_key, me, bucket, 1)}}}
        return change

    async def commit_version(self, store, bucket, pushed, message, labels, acl):
        """The commit of a publish (under its push lock): the version, then the head."""
        members = [{"volume": job.snap.volume_name, "manifest": manifest}
                   for job, manifest in pushed]
        return await store.run(self.buckets(store).publish, bucket, self.identity, members,
                               message, labels, acl)

    # -- private buckets ----------------------------------------------------------------------
    def data_store(self, store, bucket, acl, generation):
        """The encrypted store of `bucket`'s generation, its data key
        unwrapped with our reader key (NotAllowed: not a reader)."""
        if self.state.data_key(bucket, generation) is None:
            wrapped = acl["keys"].get(str(generation), {}).get(self.identity.reader_hex)
            if wrapped is None:
                raise NotAllowed(f"{bucket} is private and this pool is not a reader of its "
                                 f"generation {generation}: a writer must grant its reader key"
                                 f" {self.identity.reader_hex[:16]}... (rokctl registry key)")
            self.state.keep_data_key(bucket, generation, crypto.unwrap(
                wrapped, self.identity.reader, bucket, generation))
        return self.private_store(store, bucket, generation)

    def private_store(self, store, bucket, generation):
        """The encrypted store of a generation whose key this pool holds."""
        from ..remote.store import RemoteStore
        found = self._private.get((store.url, bucket, generation))
        if found is None:
            key = self.state.data_key(bucket, generation)
            if key is None:
                raise NotAllowed(f"{bucket}: this pool holds no data key of generation "
                                 f"{generation} (not a reader)")
            objects = crypto.EncryptedObjects(store.objects,
                                              crypto.private_prefix(bucket, generation), key)
            spec = {**store.spec, "registry_private": {"bucket": bucket,
                                                       "generation": generation}}
            found = RemoteStore(objects, spec, concurrency=store.concurrency)
            self._private[(store.url, bucket, generation)] = found
        return found

    async def acl_show(self, store, bucket):
        acl = await store.run(self.buckets(store).acl, check_bucket(bucket))
        if acl is None:
            raise NotFound(f"{bucket} is public: it has no ACL")
        return {"bucket": bucket, "serial": acl["serial"], "generation": acl["generation"],
                "readers": acl["readers"], "writers": acl["writers"], "signer": acl["signer"]}

    async def acl_grant(self, store, bucket, key, writer):
        """Add a writer (a publisher key), or a reader (a reader key): the
        data key of every generation is wrapped for the new reader."""
        documents.check_key_hex(key)

        def change(old):
            acl = self._writable(bucket, old)
            if writer:
                acl["writers"] = sorted(set(acl["writers"]) | {key})
                return acl
            acl["readers"] = sorted(set(acl["readers"]) | {key})
            for g in acl["keys"]:
                data_key = self._generation_key(bucket, acl, int(g))
                acl["keys"][g][key] = crypto.wrap(data_key, key, bucket, int(g))
            return acl
        await store.run(self.buckets(store).change_acl, bucket, self.identity, change)
        return await self.acl_show(store, bucket)

    async def acl_revoke(self, store, bucket, key):
        """Remove a writer, or a reader: then the data key rotates, wrapped
        for the remaining readers only, for the versions published after."""
        documents.check_key_hex(key)

        def change(old):
            acl = self._writable(bucket, old)
            if key in acl["writers"]:
                if acl["writers"] == [key]:
                    raise InvalidArgument(f"{bucket}: the last writer cannot be revoked")
                acl["writers"].remove(key)
                return acl
            if key not in acl["readers"]:
                raise NotFound(f"{key[:16]}... is neither a reader nor a writer of {bucket}")
            acl["readers"].remove(key)
            for wrapped in acl["keys"].values():
                wrapped.pop(key, None)
            g = acl["generation"] = acl["generation"] + 1
            data_key = crypto.new_data_key()
            acl["keys"][str(g)] = {r: crypto.wrap(data_key, r, bucket, g)
                                   for r in acl["readers"]}
            if self.identity.reader_hex in acl["readers"]:
                self.state.keep_data_key(bucket, g, data_key)
            return acl
        await store.run(self.buckets(store).change_acl, bucket, self.identity, change)
        return await self.acl_show(store, bucket)

    def _writable(self, bucket, old):
        if old is None:
            raise NotFound(f"{bucket} is public: it has no ACL (publish --private makes a "
                           "new bucket private)")
        return {k: old[k] for k in ("readers", "writers", "generation")} | {
            "keys": {g: dict(w) for g, w in old["keys"].items()}}

    def _generation_key(self, bucket, acl, generation):
        key = self.state.data_key(bucket, generation)
        if key is None:
            wrapped = acl["keys"][str(generation)].get(self.identity.reader_hex)
            if wrapped is None:
                raise NotAllowed(f"{bucket}: this pool cannot open generation {generation} "
                                 "to wrap it for another reader (not a reader of it)")
            key = crypto.unwrap(wrapped, self.identity.reader, bucket, generation)
        return key

    # -- listing ----------------------------------------------------------------------------
    async def list(self, store, bucket=None):
        buckets = self.buckets(store)
        if bucket is None:
            return [await self._bucket_row(store, buckets, b)
                    for b in await store.run(buckets.list_buckets)]
        return [self._version_row(v) for v in await store.run(self._versions, buckets, bucket)]

    async def _bucket_row(self, store, buckets, bucket):
        row = {"bucket": bucket, "subscribed": self._subscribed(bucket)}
        try:
            head, _ = await store.run(buckets.head, bucket)
            row.update(version=head["version"], time=head["time"], signer=head["signer"])
        except RokfsError as exc:
            row["error"] = str(exc)
        return row

    def _versions(self, buckets, bucket):
        out = []
        for n in buckets.version_numbers(bucket):
            try:
                out.append(buckets.version(bucket, n))
            except RokfsError as exc:
                out.append({"version": n, "error": str(exc)})
        return out

    @staticmethod
    def _version_row(v):
        if "error" in v:
            return v
        return {"version": v["version"], "created": v["created"], "message": v["message"],
                "labels": v["labels"], "publisher": v["publisher"], "digest": v["digest"],
                "members": [{"volume": m["volume"], "snapshot": m["manifest"]["name"],
                             "size": m["manifest"]["size"]} for m in v["members"]]}

    def _subscribed(self, bucket):
        try:
            self.state.subscription(bucket)
            return True
        except NotFound:
            return False

    # -- subscriptions ------------------------------------------------------------------------
    def subscriptions(self):
        return [{**sub, "remote": self.control.remote_url_of(sub["remote"]),
                 **self.status.get(sub["bucket"], {})} for sub in self.state.subscriptions()]

    def subscribe(self, bucket, store, local, clone, hydrate):
        check_bucket(bucket)
        if self._subscribed(bucket):
            raise InvalidArgument(f"already subscribed to {bucket}")
        self.state.subscribe(bucket, store.spec, local, clone, hydrate, time.time())
        self._wake.set()

    def unsubscribe(self, bucket):
        self.state.unsubscribe(check_bucket(bucket))
        self.status.pop(bucket, None)
        self._etags.pop(bucket, None)

    async def sync(self, bucket):
        """Bring `bucket`'s subscription up to its head; the versions made
        local (numbers). Raises what refused the head (also kept in status)."""
        lock = self._syncing.setdefault(bucket, trio.Lock())
        async with lock:
            sub = self.state.subscription(bucket)
            try:
                made = await self._sync(sub)
            except RokfsError as exc:
                self.status[bucket] = {"polled": time.time(), "error": str(exc)}
                log.warning("event=registry_refused bucket=%s error=\"%s\"", bucket,
                            one_line(exc))
                raise
            self.status[bucket] = {"polled": time.time(), "error": None}
            return made

    async def _sync(self, sub):
        bucket = sub["bucket"]
        store = self.control.remote_of_spec(sub["remote"])
        buckets = self.buckets(store)
        try:
            head, etag = await store.run(buckets.head, bucket, self._etags.get(bucket))
        except NotFound:
            return []                   # nothing published yet: nothing to refuse
        if head is None:
            return []
        _check_forward(bucket, head, sub)
        versions = await store.run(_walk_back, buckets, bucket, head, sub)
        made = []
        for version in reversed(versions):
            source = await self._version_store(store, buckets, version)
            if await self._still_there(store, buckets, version, source is store):
                await self.control.make_version_snapshots(source, sub, version)
                made.append(version["version"])
            self.state.advance(bucket, version["version"], version["digest"])
        self._etags[bucket] = etag
        return made

    async def _version_store(self, store, buckets, version):
        """Where a version's chunks are: `store`, or for a version of a
        private bucket its generation's encrypted store, if the version's
        signer is a writer of the bucket's ACL and we are a reader."""
        if version["acl"] is None:
            return store
        bucket = version["bucket"]
        acl = await store.run(buckets.acl, bucket)
        if acl is None:
            raise Corrupt(f"{bucket}: v{version['version']} says the bucket is private, and "
                          "it has no ACL")
        if version["signer"] not in acl["writers"]:
            raise NotAllowed(f"{bucket}: v{version['version']} is signed by "
                             f"{version['signer'][:16]}..., not a writer of its ACL: refused")
        return self.data_store(store, bucket, acl, version["acl"]["generation"])

    async def _still_there(self, store, buckets, version, public=True):
        """Write our lease naming the version's segments (a public
        version's: a private bucket's chunks are not collected), then check
        the version is still there (gc keeps what a fresh lease names)."""
        segments = {s for m in version["members"] for s in m["manifest"]["segments"]} \
            if public else set()
        await self.write_lease(store, segments)
        try:
            await store.run(buckets.version, version["bucket"], version["version"])
            return True
        except NotFound:
            log.info("event=registry_version_gone bucket=%s version=%d", version["bucket"],
                     version["version"])
            return False

    async def leased_version(self, store, bucket, n=None):
        """Version n of `bucket` (the head's if None), under our lease (for a pull)."""
        buckets = self.buckets(store)
        if n is None:
            head, _ = await store.run(buckets.head, bucket)
            body = await store.run(buckets.version_at, bucket, head["version"], head["digest"])
        else:
            body = await store.run(buckets.version, bucket, n)
        source = await self._version_store(store, buckets, body)
        if not await self._still_there(store, buckets, body, source is store):
            raise NotFound(f"version v{body['version']} of {bucket} was removed meanwhile")
        return body, source

    async def write_lease(self, store, extra=()):
        segments = set(extra) | self.control.base_segments(store)
        buckets = self.buckets(store)
        lease = self.identity.public_hex[:32]
        if segments:
            await store.run(buckets.write_lease, lease, segments)
        else:
            await store.run(buckets.drop_lease, lease)

    async def run_poller(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Sync every subscription each poll interval (or when woken)."""
        task_status.started()
        while True:
            for sub in self.state.subscriptions():
                try:
                    await self.sync(sub["bucket"])
                except NotFound as exc:         # no head yet, or unsubscribed meanwhile
                    log.info("event=registry_poll bucket=%s note=\"%s\"", sub["bucket"], exc)
                except RokfsError:
                    pass                         # logged and kept in status by sync
            await self._refresh_leases()
            with trio.move_on_after(self.poll):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _refresh_leases(self):
        for store in {self.control.remote_of_spec(s["remote"]) for s in
                      self.state.subscriptions()}:
            try:
                await self.write_lease(store)
            except RokfsError as exc:
                log.warning("event=registry_lease_failed remote=%s error=\"%s\"", store.url,
                            one_line(exc))


def _check_scope(scope):
    """A trust scope: TEAM or TEAM/NAME."""
    if isinstance(scope, str) and "/" in scope:
        return check_bucket(scope, "trust scope")
    from ..names import check_name
    return check_name(scope, "trust scope (a team, or TEAM/NAME)")


def _check_forward(bucket, head, sub):
    """Corrupt unless `head` is at or past the newest version `sub` has."""
    if head["version"] < sub["version"]:
        raise Corrupt(f"{bucket}: the head names v{head['version']}, older than v"
                      f"{sub['version']} already seen: a replayed (rolled back) head, refused")
    if head["version"] == sub["version"] and head["digest"] != sub["digest"]:
        raise Corrupt(f"{bucket}: the head names another v{head['version']} than the one "
                      "already seen: a rewritten history, refused")


def _walk_back(buckets, bucket, head, sub):
    """The versions after the subscription's newest up to the head, newest
    first, each checked against the digest its child (or the head) names.
    A version removed from the bucket ends the walk (older ones are skipped)."""
    out, n, digest = [], head["version"], head["digest"]
    while n > sub["version"]:
        try:
            version = buckets.version_at(bucket, n, digest)
        except NotFound:
            if n == head["version"]:
                raise
            return out
        out.append(version)
        if version["parent"] is None:
            return out
        n, digest = version["parent"]["version"], version["parent"]["digest"]
    if sub["version"] and digest != sub["digest"]:
        raise Corrupt(f"{bucket}: v{sub['version']} is not the one already seen, as its "
                      f"child names it: a rewritten history, refused")
    return out
