"""Registry verbs (part of Control, the one door): publish, subscribe, sync,
pull, trust and access lists of buckets of signed versions.

Invariants:
- Thin: signed documents, buckets, trust and sync are rokfs/registry's;
  here only what touches the pool.
- A publish holds its snapshots (holder "push") and pushes them under one
  lock before the version is written and the head moved.
- A subscribed version becomes read-only snapshots with a remote base
  (hydrated in the background like pulled volumes) or writable clones,
  made idempotently: a sync repeated after a crash makes nothing twice.
"""

import functools
import os
import time

import trio

from . import names
from .errors import AlreadyExists, InvalidArgument, NotFound
from .jobs import Job

PUBLISH_CANCELLED = ("no version was written; publish again to resume from what was "
                     "uploaded")


class RegistryVerbs:
    """Control's registry verbs (mixed into Control)."""

    registry_poll = 10.0        # seconds between polls of subscribed heads ([registry] poll)
    _registry = None

    @property
    def registry(self):
        """The registry's state and work, made on first use (registry.db)."""
        if self._registry is None:
            from .registry.service import Registry
            self._registry = Registry(self, self.pool.path, poll=self.registry_poll)
            self._registry_used.set()
        return self._registry

    def _registry_exists(self):
        return os.path.exists(os.path.join(self.pool.path, "registry.db"))

    async def _poll_registry(self):
        """Poll subscriptions once this pool uses the registry at all (a
        pool that never does opens no registry.db)."""
        await self._registry_used.wait()
        await self.registry.run_poller()

    def registry_key(self):
        """This pool's public keys: the publisher key subscribers trust and
        the reader key a private bucket's ACL grants."""
        return self.registry.identity.describe()

    def registry_trust(self, scope, key):
        """Trust publisher `key` for a team (every bucket of it) or one bucket."""
        return self.registry.trust(scope, key)

    def registry_distrust(self, scope, key):
        return self.registry.distrust(scope, key)

    def registry_trusted(self):
        return self.registry.state.trust_list()

    async def registry_publish(self, target, bucket, *, message="", labels=None,
                               remote="default", private=False, progress=None, detach=False):
        """Publish snapshot VOLUME@SNAP or group snapshot `target` as the next
        version of `bucket`: push what is missing, write the version, move
        the head, all under one push lock. A job, like push. `private` makes
        a new bucket private (docs/registry.md); a private bucket's chunks
        go up encrypted with its data key."""
        from .registry.documents import check_bucket
        check_bucket(bucket)
        labels = names.check_labels(labels)
        snaps = ([self.pool.get_snapshot(target)] if "@" in target
                 else self.pool.get_group(target))
        store = self.remote(remote)
        job = Job("publish", bucket, remote=store.url, cancelled_note=PUBLISH_CANCELLED)
        work = functools.partial(self._publish_held, snaps, store, bucket, message, labels,
                                 private)
        return await self.jobs.run(job, work, progress=progress, detach=detach)

    async def _publish_held(self, snaps, store, bucket, message, labels, private, job):
        started = time.monotonic()
        for snap in snaps:
            self.hold(snap, "publish")
        try:
            version = []
            target, acl = await self.registry.publish_target(store, bucket, private)

            async def commit(pushed):
                version.append(await self.registry.commit_version(store, bucket, pushed,
                                                                  message, labels, acl))
            pushed, _ = await target.upload(self.pool, self.remote_state, snaps, commit,
                                            progress=job.report,
                                            base_entry=self._base_entry(target), named=False)
        finally:
            for snap in snaps:
                self.release(snap, "publish")
        uploaded = sum(j.uploaded_bytes for j, _ in pushed)
        self.counters.push_bytes += uploaded
        self.counters.push_chunks += sum(j.uploaded_chunks for j, _ in pushed)
        v = version[0]
        return {"bucket": bucket, "version": v["version"], "digest": v["digest"],
                "remote": store.url, "members": [s.full_name for s in snaps],
                "chunks": sum(s.nchunks for s in snaps),
                "uploaded_chunks": sum(j.uploaded_chunks for j, _ in pushed),
                "uploaded_bytes": uploaded, "seconds": time.monotonic() - started}

    async def registry_ls(self, bucket=None, *, remote="default"):
        """The buckets on a remote (with their head), or one bucket's versions."""
        return await self.registry.list(self.remote(remote), bucket)

    async def registry_subscribe(self, bucket, *, remote="default", local=None, clone=False,
                                 hydrate=True):
        """Follow `bucket`: each version becomes read-only snapshots LOCAL@vN
        (LOCAL.VOLUME@vN for a group), or writable clones LOCAL-vN with
        `clone`, hydrated in the background (only as read, if not `hydrate`).
        Syncs once now; the daemon polls after that."""
        from .registry.documents import check_bucket
        local = local or check_bucket(bucket).split("/")[1]
        names.check_name(local, "local name")
        self.registry.subscribe(bucket, self.remote(remote), local, bool(clone), bool(hydrate))
        try:
            made = await self.registry.sync(bucket)
        except NotFound:            # nothing published yet: the poller picks it up
            made = []
        return {**self.registry.state.subscription(bucket), "made": made,
                "remote": self.remote(remote).url}

    async def registry_unsubscribe(self, bucket):
        """Stop following `bucket` (the local snapshots stay)."""
        self.registry.unsubscribe(bucket)

    def registry_subscriptions(self):
        return self.registry.subscriptions()

    async def registry_sync(self, bucket=None):
        """Poll now: `bucket`, or every subscription. {bucket: versions made}."""
        buckets = [bucket] if bucket else [s["bucket"] for s in
                                           self.registry.state.subscriptions()]
        return {b: await self.registry.sync(b) for b in buckets}

    async def registry_pull(self, version, new_volume, *, remote="default"):
        """Restore a version (TEAM/NAME@vN; the head without @vN) as new
        writable volumes: NEW, or NEW.VOLUME for each member of a group."""
        from .registry.documents import split_version_ref
        bucket, n = split_version_ref(version)
        names.check_name(new_volume, "new volume")
        store = self.remote(remote)
        body, source = await self.registry.leased_version(store, bucket, n)
        made = []
        for member in body["members"]:
            name = _member_name(new_volume, body, member)
            made.append(await self._volume_of_manifest(source, member["manifest"], name,
                                                       f"{store.url}#{bucket}@v{body['version']}"))
        return [v.info() for v in made]

    async def _volume_of_manifest(self, store, manifest, name, origin):
        self._check_manifest_fits(manifest, name)
        if name in {v.name for v in self.pool.list_volumes()}:
            raise AlreadyExists(f"volume {name!r} already exists")
        with trio.CancelScope(shield=True):
            base_id = self.remote_state.add_base(store.spec, manifest["name"], manifest)
            vol = self.pool.create_volume(name, manifest["size"], base=base_id,
                                          base_chunks=manifest["chunks"], origin=origin)
            await self.flush()
        self._new_base()
        return vol

    def _check_manifest_fits(self, manifest, name):
        if manifest["chunk_size"] != self.pool.chunk_size:
            raise InvalidArgument(f"{name}: the version has {manifest['chunk_size']}-byte "
                                  f"chunks, this pool uses {self.pool.chunk_size}")
        self.pool.check_size(manifest["size"])

    async def registry_acl_show(self, bucket, *, remote="default"):
        """A private bucket's ACL: readers, writers, key generation."""
        return await self.registry.acl_show(self.remote(remote), bucket)

    async def registry_acl_grant(self, bucket, key, *, writer=False, remote="default"):
        """Let reader key `key` read every version of private `bucket` (or,
        `writer`, let publisher key `key` publish to it)."""
        return await self.registry.acl_grant(self.remote(remote), bucket, key, bool(writer))

    async def registry_acl_revoke(self, bucket, key, *, remote="default"):
        """Take a reader (the data key rotates: versions published after are
        closed to it) or a writer off private `bucket`'s ACL."""
        return await self.registry.acl_revoke(self.remote(remote), bucket, key)

    def registry_policy(self, bucket, *, remote="default"):
        """An S3 bucket policy enforcing the publisher/subscriber split of
        `bucket` at the storage layer, prefix-scoped (a template: put the
        IAM principals of your publishers and subscribers in)."""
        from .registry.policy import bucket_policy
        return bucket_policy(self.remote(remote).spec, bucket)

    async def registry_rm(self, version, *, remote="default"):
        """Remove one version from its bucket (gc frees its chunks later)."""
        from .registry.documents import split_version_ref
        bucket, n = split_version_ref(version)
        if n is None:
            raise InvalidArgument(f"say which version of {bucket} to remove (@vN)")
        store = self.remote(remote)
        await store.run(self.registry.buckets(store).delete_version, bucket, n)

    # registry helpers (not verbs): what rokfs/registry/service.py needs of the pool
    def remote_of_spec(self, spec):
        return self._remote_for_spec(spec)

    def remote_url_of(self, spec):
        return self._remote_for_spec(spec).url

    def base_segments(self, store):
        """Segment keys of the remote bases on `store` that live images still
        read from (a subscriber's lease: gc keeps them)."""
        out = set()
        for image in [*self.pool.list_volumes(), *self.pool.list_snapshots()]:
            if image.base:
                base = self.remote_state.base(image.base)
                if self._remote_for_spec(base["remote"]) is store:
                    out.update(base["manifest"]["segments"])
        return out

    async def make_version_snapshots(self, store, sub, version):
        """The local images of a subscribed version (idempotent): read-only
        snapshots LOCAL@vN of each member, on a carrier volume LOCAL (empty,
        made once), or writable clones LOCAL-vN with `clone`."""
        tag = f"v{version['version']}"
        labels = {"registry.bucket": sub["bucket"].replace("/", "."),
                  "registry.version": str(version["version"])}
        origin = f"{store.url}#{sub['bucket']}@{tag}"
        for member in version["members"]:
            local = _member_name(sub["local"], version, member)
            manifest = member["manifest"]
            self._check_manifest_fits(manifest, local)
            if sub["clone"]:
                if f"{local}-{tag}" not in {v.name for v in self.pool.list_volumes()}:
                    vol = await self._volume_of_manifest(store, manifest, f"{local}-{tag}",
                                                         origin)
                    if not sub["hydrate"]:
                        self._pause(vol)
                continue
            snap = await self._remote_snapshot(store, manifest, f"{local}@{tag}", labels, origin)
            if not sub["hydrate"]:
                self._pause(snap)

    async def _remote_snapshot(self, store, manifest, full_name, labels, origin):
        volume = full_name.split("@")[0]
        if full_name in {s.full_name for s in self.pool.list_snapshots()}:
            return self.pool.get_snapshot(full_name)
        with trio.CancelScope(shield=True):
            if volume not in {v.name for v in self.pool.list_volumes()}:
                self.pool.create_volume(volume, 0, origin=origin.split("@")[0])
            base_id = self.remote_state.add_base(store.spec, manifest["name"], manifest)
            snap = self.pool.create_remote_snapshot(full_name, manifest["size"], base_id,
                                                    manifest["chunks"], labels)
            await self.flush()
        self._new_base()
        return snap

    def _pause_on_demand_subscriptions(self):
        """Images of subscriptions that hydrate on demand only: paused (at start)."""
        on_demand = {s["bucket"].replace("/", ".") for s in self.registry.state.subscriptions()
                     if not s["hydrate"]}
        for image in [*self.pool.list_volumes(), *self.pool.list_snapshots()]:
            if image.base and getattr(image, "labels", {}).get("registry.bucket") in on_demand:
                self._pause(image)


def _member_name(local, version, member):
    """The local volume of a version's member: LOCAL for a version of one
    volume, LOCAL.VOLUME for each volume of a group."""
    return local if len(version["members"]) == 1 else f"{local}.{member['volume']}"
