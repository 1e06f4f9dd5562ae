"""The control API: the one set of verbs every front end calls.

FUSE xattrs, the CLI, the daemon's gRPC service and the CSI shim all go
through `Control`; none of them touches the engine directly. Verbs run on
the trio event loop, change the engine's in-memory state synchronously and
then await a commit, so a verb that returns has been made durable.

Invariants:
- Commits are serialized; the blocking part (fdatasync + SQLite) runs in a
  worker thread while the loop keeps serving I/O.
- A flush is satisfied by any commit that *started* after the flush was
  requested (group commit): concurrent flushes share one fsync.
- Fetched chunks are installed concurrently with each other and with
  commits: their slots are taken, counting for nothing in the metadata
  until they are mapped (ExtentStore.take/claim), so a commit or a crash in
  between leaves them free.
- `push` changes nothing the user sees in the pool; the hashes it caches for
  frozen slots go with the next commit.
- Devices (`open_device`) are the callback table of the protocol adapters:
  pread / pwrite / trim / write_zeroes / flush / cache / extents. A Device
  holds its image (image.py's lifecycle) from open to close, as a push
  holds its snapshot and a hydrator its volume; a delete the holders block
  is refused (Busy) unless deferred, and whatever `close` frees is
  committed right after.
- The engine's NeedsChunks never leaves this module: every verb and device
  call that can meet a cold chunk fetches it and retries (`_hydrating`).
- Pushes, and waits for a pull's or a hydration's end, run as jobs
  (jobs.py), attached to their caller or detached, listed and cancellable.
  A cancelled push leaves no manifest (the manifest PUT, once started,
  completes) and what it uploaded is reused by the next push; no cancel
  falls between a pulled volume's creation and its commit, and a cancelled
  pull or hydration job leaves the volume usable with its hydration paused.
- `stat`, `info` and listings stay cheap for any size: O(1) per image
  (the engine keeps the space accounting as it goes), never a map walk on
  the loop; `stat`'s `allocated` is that of the image's info().
- Deleting a big image returns once it is DELETING and committed; its
  space comes back in slices (pool.free_some) run by one background task
  that yields between slices, then commits.
- A create verb that fails leaves no image behind; pull checks the name
  and the size the pool can hold before it records the remote base.
- Registry verbs are thin: signed documents, buckets, trust and sync are
  rokfs/registry's; here only what touches the pool: a publish holds its
  snapshots and pushes them under one lock, a subscribed version becomes
  read-only snapshots with a remote base (hydrated in the background like
  pulled volumes) or writable clones, made idempotently.
- Policy verbs are thin: the spec is policy.py's, runs, plans and the
  runner policies.py's; a policy is stored in the pool and committed before
  the verb returns; the daemon's runner (if any) is woken to follow it.
"""

import contextlib
import functools
import logging
import os
import time

import trio

from . import freeze, lineage, names, policies
from .errors import (AlreadyExists, InvalidArgument, NoSpace, NotFound, ReadOnly, RemoteError,
                     RokfsError, one_line, single_errors)
from .fsck import fsck
from .image import NeedsChunks
from .jobs import Job, Jobs
from .policy import POLICY_LABEL, parse_policy
from .stats import Counters

log = logging.getLogger("rokfs.control")
HYDRATE_WINDOW = 128           # chunks per background fetch: one pack (PACK_CHUNKS)
HYDRATE_FLUSH_BYTES = 64 << 20  # commit installed chunks at least this often
HOLDER_OF_FRONT = {"nbd": "NBD connection", "fuse": "FUSE handle"}
SPACE_KEYS = ("allocated", "exclusive", "shared", "unhydrated")
LIST_SLICE = 256                # snapshots listed between yields to other work
HYDRATION_POLL = 0.2            # seconds between checks of a hydration job
FILL_IDLE_SECONDS = 2.0        # the filler completes partial slots after this long without I/O
FILL_BACKLOG = 65536           # ... or, past this many partial slots, a batch each poll anyway
FILL_BATCH = 64                # partial slots completed per step on the loop (~2 ms)
FILL_POLL = 0.5                # seconds between the filler's looks at the pool
PUSH_CANCELLED = "no manifest was written; push it again to resume from what was uploaded"
PUBLISH_CANCELLED = ("no version was written; publish again to resume from what was "
                     "uploaded")


class Control:
    def __init__(self, pool, remotes=None):
        self.pool = pool
        self.remotes = dict(remotes or {})
        self.counters = Counters()
        self.jobs = Jobs()
        self._remote_state = None
        self._hydration = {}
        self._paused = set()            # volume ids whose hydration a person paused
        self._bases_changed = None      # a trio.Event while run_background runs
        self._registry_used = trio.Event()
        self._commit_lock = trio.Lock()
        self._commits_started = 0
        self._commits_done = 0
        self.last_io = time.perf_counter()      # when a Device last served a request
        self.fill_idle_seconds = FILL_IDLE_SECONDS
        self._freeing = False           # a task frees queued images in slices

    # -- durability ------------------------------------------------------------
    async def flush(self):
        target = self._commits_started + 1
        async with self._commit_lock:
            if self._commits_done >= target:
                return
            self._commits_started += 1
            commits = self.pool.commits
            batch = commits.begin()
            try:
                await trio.to_thread.run_sync(commits.write, batch)
            except BaseException:
                commits.abort(batch)
                raise
            commits.end(batch)
            self._commits_done = self._commits_started
        self._free_soon()

    async def _flush_in_background(self):
        try:
            await self.flush()
        except RokfsError as exc:       # the next flush carries the change
            log.warning("event=background_flush_failed error=%s", exc)

    def _flush_soon(self):
        """Commit what a release freed, without making the caller wait."""
        try:
            trio.lowlevel.spawn_system_task(self._flush_in_background)
        except RuntimeError:            # no trio loop: the next commit carries it
            pass

    def _free_soon(self):
        """Images queued for freeing (pool.py) are freed by one background
        task, a slice at a time between other work, then committed."""
        if not self.pool.freeing or self._freeing:
            return
        try:
            trio.lowlevel.spawn_system_task(self._free_in_slices)
            self._freeing = True
        except RuntimeError:            # no trio loop: the pool's close finishes them
            pass

    async def _free_in_slices(self):
        try:
            while self.pool.free_some():
                await trio.sleep(0)
            await self.flush()
        except RokfsError as exc:       # the next flush carries what was freed
            log.warning("event=background_free_failed error=%s", exc)
        finally:
            self._freeing = False
        self._free_soon()

    async def _hydrating(self, op, *args, **kwargs):
        """Run engine call `op`; when it meets cold chunks, fetch them and
        run it again."""
        while True:
            try:
                return op(*args, **kwargs)
            except NeedsChunks as need:
                await self.fetch_chunks(need.image, need.chunks)

    # -- holders ---------------------------------------------------------------
    def hold(self, image, holder):
        self.pool.hold(image, holder)

    def release(self, image, holder):
        if self.pool.release(image, holder):
            log.info("event=image_freed image=%s", image.full_name)
            self._flush_soon()

    # -- volumes ---------------------------------------------------------------
    async def create_volume(self, name, size):
        vol = self.pool.create_volume(name, size)
        await self.flush()
        return vol.info()

    async def delete_volume(self, name, *, recursive=False, defer=False, force=False):
        """Delete a volume (and its snapshots if `recursive`); refused while
        open unless `defer` (freed when the last holder closes), and while a
        snapshot of it is held unless `force`."""
        self.pool.delete_volume(name, recursive=recursive, defer=defer, force=force)
        await self.flush()

    async def rename_volume(self, old, new):
        names.check_name(new, "new volume")
        vol = self.pool.rename_volume(old, new)
        await self.flush()
        return vol.info()

    async def resize_volume(self, name, size, *, force=False):
        vol = await self._hydrating(self.pool.resize_volume, name, size, force=force)
        await self.flush()
        return vol.info()

    async def clone(self, source, new_name):
        names.check_name(new_name, "new volume")
        vol = self.pool.clone(source, new_name)
        await self.flush()
        return vol.info()

    def stat(self, name):
        """Cheap facts about a volume or snapshot (no map walk), for listings."""
        return _stat_of(self.pool.get_image(name))

    def volume_info(self, name):
        return self.pool.get_volume(name).info()

    def list_volumes(self):
        return [v.info() for v in self.pool.list_volumes()]

    # -- snapshots -----------------------------------------------------------------
    async def create_snapshot(self, full_name, labels=None):
        start = time.perf_counter()
        snap = self.pool.create_snapshot(full_name, labels)
        await self.flush()
        self.counters.snapshots_created += 1
        self.counters.snapshot_latency.observe(time.perf_counter() - start)
        return snap.info()

    async def delete_snapshot(self, full_name, *, defer=False, force=False):
        """Delete a snapshot; refused while open unless `defer` (hidden at
        once, freed when the last holder closes), under holds unless `force`."""
        self.pool.delete_snapshot(full_name, defer=defer, force=force)
        await self.flush()

    async def hold_snapshot(self, full_name, reason="", *, tag="user"):
        """Keep a snapshot from deletion (retention never deletes it; a
        manual delete needs force) until release_snapshot(tag)."""
        snap = self.pool.add_hold(full_name, tag, reason)
        await self.flush()
        return snap.info()

    async def release_snapshot(self, full_name, *, tag="user"):
        snap = self.pool.remove_hold(full_name, tag)
        await self.flush()
        return snap.info()

    # -- group snapshots -------------------------------------------------------------------
    async def create_group_snapshot(self, group, volumes, labels=None, freeze=None):
        """Snapshot `volumes` as VOLUME@GROUP in one step and one commit: a
        consistent cut across them. `freeze` lists mountpoints of
        filesystems on those volumes to freeze around it (fsfreeze), for
        application consistency; they are thawed whatever happens."""
        start = time.perf_counter()
        async with _frozen(freeze or ()):
            snaps = self.pool.create_group_snapshot(group, volumes, labels)
        await self.flush()
        self.counters.snapshots_created += len(snaps)
        self.counters.snapshot_latency.observe(time.perf_counter() - start)
        return _group_info(group, snaps)

    def list_groups(self, labels=None):
        want = names.check_labels(labels)
        return [_group_info(group, snaps) for group, snaps in sorted(self.pool.groups().items())
                if all(snaps[0].labels.get(k) == v for k, v in want.items())]

    def group_info(self, group):
        snaps = self.pool.get_group(group)
        return _group_info(group, snaps, self.pool.frees_together(snaps))

    def frees_together(self, full_names):
        """What deleting these snapshots together frees (not a verb: the
        retention plan's figure)."""
        return self.pool.frees_together([self.pool.get_snapshot(n) for n in full_names])

    async def delete_group(self, group, *, defer=False, force=False):
        self.pool.delete_group(group, defer=defer, force=force)
        await self.flush()

    async def clone_group(self, group, suffix=None):
        """A new volume VOLUME+suffix (default "-GROUP") from each member."""
        vols = self.pool.clone_group(group, f"-{group}" if suffix is None else suffix)
        await self.flush()
        return [v.info() for v in vols]

    # -- lineage -------------------------------------------------------------------------
    def lineage(self, name):
        """Where image `name` came from (`ancestors`, oldest first: remote
        manifests, volumes, snapshots) and what came from it (`tree`)."""
        return lineage.of(self.pool, self.pool.get_image(name))

    async def set_labels(self, full_name, labels, *, replace=False):
        snap = self.pool.set_labels(full_name, labels, replace=replace)
        await self.flush()
        return snap.info()

    def snapshot_info(self, full_name):
        return self.pool.get_snapshot(full_name).info()

    async def list_snapshots(self, volume=None, labels=None, group=None):
        """Snapshots (of `volume`), with every label in `labels`, in `group`.
        O(1) per snapshot; yields to other work every LIST_SLICE of them."""
        want = names.check_labels(labels)
        out = []
        for i, snap in enumerate(self.pool.list_snapshots(volume)):
            if i and not i % LIST_SLICE:
                await trio.lowlevel.checkpoint()
            if snap.live and all(snap.labels.get(k) == v for k, v in want.items()) \
                    and (group is None or snap.group == group):
                out.append(snap.info())
        return out

    # -- pool ------------------------------------------------------------------------
    def status(self):
        return self.pool.status()

    def max_volume_size(self):
        """The largest volume this pool can hold, in bytes (for the CSI shim)."""
        return self.pool.max_volume_size()

    async def fsck(self, *, repair=False):
        """Verify the pool's maps and counts (fsck.py); `repair` fixes leaks.
        It walks every map on the loop: for `rokfs fsck` on a pool no daemon
        serves, not offered over the control API."""
        await self.flush()
        return fsck(self.pool, repair=repair)

    def list_exports(self):
        """[(name, size, read_only, description)] of every volume and snapshot."""
        out = [(v.name, v.size, False, f"rokfs volume {v.name}")
               for v in self.pool.list_volumes()]
        out += [(s.full_name, s.size, True, f"rokfs snapshot {s.full_name}")
                for s in self.pool.list_snapshots()]
        return out

    def open_device(self, name, front="nbd"):
        """A Device for volume or snapshot `name`; `front` labels its metrics."""
        return Device(self, self.pool.get_image(name), HOLDER_OF_FRONT.get(front, front), front)

    # -- remotes ------------------------------------------------------------------
    @property
    def remote_state(self):
        if self._remote_state is None:
            from .remote.state import LocalState
            self._remote_state = LocalState(self.pool.path)
        return self._remote_state

    def remote(self, name="default"):
        store = self.remotes.get(name)
        if store is None:
            from .remote import default_remote_spec, open_remote
            if name != "default":
                if names.is_name(name):
                    raise NotFound(f"no remote named {name!r} (give a URL or a configured name)")
                store = open_remote(name)           # a URL, or InvalidArgument saying why not
            else:
                store = open_remote(default_remote_spec(self.pool.path))
            self.remotes[name] = store
        return store

    def transfer_stats(self):
        """{remote URL: its object store's request, failure and retry counts}
        for every remote opened so far."""
        stores = {id(store): store for store in self.remotes.values()}
        return {store.url: store.objects.stats.copy() for store in stores.values()}

    def _remote_for_spec(self, spec):
        if "registry_private" in spec:          # a private bucket's encrypted store
            private = spec["registry_private"]
            base = self._remote_for_spec({k: v for k, v in spec.items()
                                          if k != "registry_private"})
            return self.registry.private_store(base, private["bucket"], private["generation"])
        for store in self.remotes.values():
            if store.spec == spec or store.url == spec.get("url"):
                return store
        from .remote import open_remote
        store = open_remote(spec)
        self.remotes[store.url] = store
        return store

    async def push(self, full_name, *, remote="default", progress=None, grace_seconds=3600,
                   detach=False):
        """Push a snapshot as a job: attached (returns the push's result) or
        `detach`ed (returns the job at once)."""
        snap = self.pool.get_snapshot(full_name)
        store = self.remote(remote)
        job = Job("push", snap.full_name, remote=store.url, cancelled_note=PUSH_CANCELLED)
        work = functools.partial(self._push_held, snap, store, grace_seconds)
        return await self.jobs.run(job, work, progress=progress, detach=detach)

    async def _push_held(self, snap, store, grace_seconds, job):
        self.hold(snap, "push")
        try:
            return await self._push(snap, store, job.report, grace_seconds)
        finally:
            self.release(snap, "push")

    def _base_entry(self, store):
        """The hash of a cold chunk of an image, from its base on `store`
        (a push of an image not fully hydrated from another remote is refused)."""
        async def base_entry(image, chunk):
            base = self.remote_state.base(image.base)
            if self._remote_for_spec(base["remote"]) is not store:
                raise InvalidArgument(f"{image.full_name} is not fully hydrated from another "
                                      "remote; wait for hydration before pushing it here")
            loc = (await store.locate(base["manifest"], [chunk]))[chunk]
            return loc[0] if loc else None
        return base_entry

    async def _push(self, snap, store, progress, grace_seconds):
        # The hashes cached for the snapshot's slots are committed with the
        # next commit: a cache, not worth an fsync of its own.
        result = await store.push(self.pool, self.remote_state, snap, progress=progress,
                                  grace=grace_seconds, base_entry=self._base_entry(store))
        self.counters.push_bytes += result["uploaded_bytes"]
        self.counters.push_chunks += result["uploaded_chunks"]
        return result

    async def pull(self, remote_snapshot, new_volume, *, remote="default", wait=False,
                   detach=False, progress=None):
        """Restore a remote snapshot as a new volume, usable at once and
        hydrated in the background. `wait` follows the hydration as a "pull"
        job until it is done (returns the volume); `detach` starts that job
        and returns it."""
        if detach:
            self.jobs.check_detach()        # before anything is made
        vol = await self._create_pulled(remote_snapshot, new_volume, remote)
        if not (wait or detach):
            return vol.info()
        job = self._hydration_job("pull", vol)
        return await self.jobs.run(job, functools.partial(self._pull_job, vol),
                                   progress=progress, detach=detach)

    async def _create_pulled(self, remote_snapshot, new_volume, remote):
        names.check_name(new_volume, "new volume")
        names.split_snapshot(remote_snapshot, "remote snapshot")
        store = self.remote(remote)
        manifest = await store.run(store.chunks.get_manifest, remote_snapshot)
        if manifest["chunk_size"] != self.pool.chunk_size:
            raise InvalidArgument(f"{remote_snapshot} has {manifest['chunk_size']}-byte chunks, "
                                  f"this pool uses {self.pool.chunk_size}")
        if new_volume in {v.name for v in self.pool.list_volumes()}:
            raise AlreadyExists(f"volume {new_volume!r} already exists")
        self.pool.check_size(manifest["size"])          # refused before anything is recorded
        with trio.CancelScope(shield=True):     # a cancel cannot come between make and commit
            base_id = self.remote_state.add_base(store.spec, remote_snapshot, manifest)
            vol = self.pool.create_volume(new_volume, manifest["size"], base=base_id,
                                          base_chunks=manifest["chunks"],
                                          origin=f"{store.url}#{remote_snapshot}")
            await self.flush()
        self._new_base()
        return vol

    def _new_base(self):
        """Wake the hydrators: an image with a base was made."""
        if self._bases_changed is not None:
            self._bases_changed.set()

    async def _pull_job(self, vol, job):
        await self._until_hydrated(vol, job)
        return vol.info()

    async def list_remote(self, *, remote="default"):
        store = self.remote(remote)
        manifests = await store.run(store.chunks.list_manifests)
        return [{k: m[k] for k in ("name", "size", "chunk_size", "labels", "created", "parent")}
                for m in manifests]

    async def delete_remote(self, remote_snapshot, *, remote="default"):
        store = self.remote(remote)
        await store.run(store.chunks.delete_manifest, remote_snapshot)

    async def gc_remote(self, *, remote="default", grace_seconds=3600):
        """Delete chunks nothing names: no manifest, no registry version, no
        fresh subscriber lease (the registry's, on that remote)."""
        from .registry.bucket import Buckets
        store = self.remote(remote)
        roots = Buckets(store.objects, trust=None).live_segments   # names, whoever signed
        return await store.run(store.chunks.gc, grace_seconds, roots)

    # -- registry: buckets of signed versions (rokfs/registry, docs/registry.md) -----------
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

    # -- hydration ----------------------------------------------------------------------
    async def fetch_chunks(self, image, chunks, *, readahead=True):
        """Fetch cold chunks of `image` from its base and install them."""
        if not image.base:
            return
        base = self.remote_state.base(image.base)
        store = self._remote_for_spec(base["remote"])
        wanted = set(chunks)
        if readahead:
            from .remote import READAHEAD
            for c in chunks:
                wanted.update(n for n in range(c + 1, min(c + 1 + READAHEAD, image.base_chunks))
                              if image.is_cold(n, image.entry(n)))
        try:
            got = await store.fetch(base["manifest"], wanted, self.pool.chunk_size,
                                    on_demand=readahead, required=set(chunks))
        except RokfsError as exc:
            log.warning("event=fetch_failed image=%s error=%s", image.full_name, exc)
            raise
        stored = sum(data is not None for data in got.values())
        self.counters.pull_chunks += stored
        self.counters.pull_bytes += stored * self.pool.chunk_size
        await self._install(image, got)
        return got

    async def _install(self, image, fetched):
        """Write fetched chunks into taken slots on a worker thread, then map
        them. Commits go on meanwhile: a taken slot counts for nothing in
        the metadata until it is mapped (ExtentStore.take/claim)."""
        plan = self.pool.reserve_install(image, fetched)
        if not plan:
            return
        try:
            runs = self.pool.slots.plan_runs([(slot, data) for _, slot, data in plan])
            await trio.to_thread.run_sync(self.pool.slots.write_runs, runs)
        except BaseException:
            self.pool.release_install(plan)
            raise
        self.pool.finish_install(image, plan)

    def hydration_status(self, volume):
        return self._hydration_of(self.pool.get_image(volume))

    def _hydration_of(self, vol):
        h = self._hydration_now(vol)
        cs = self.pool.chunk_size
        return {"volume": vol.full_name, **h, "bytes_done": h["chunks_done"] * cs,
                "bytes_total": h["chunks_total"] * cs}

    def _hydration_now(self, vol):
        """The hydrator's status of `vol`, or one made from the volume's map."""
        h = self._hydration.get(vol.id)
        if h is None:
            total = vol.base_chunks
            done = total - vol.cold_count() if total else 0
            h = {"state": self._unhydrated_state(vol) if vol.base else "hydrated",
                 "chunks_done": done,
                 "chunks_total": total, "rate_bytes_per_s": 0.0, "error": None}
        return h

    def _unhydrated_state(self, vol):
        return "paused: by request" if vol.id in self._paused else "hydrating"

    async def wait_hydrated(self, volume, *, progress=None, detach=False):
        """Follow a volume's hydration as a "hydration" job until it is done
        (returns its hydration status); `detach` starts the job and returns it."""
        vol = self.pool.get_image(volume)
        job = self._hydration_job("hydration", vol)
        return await self.jobs.run(job, functools.partial(self._until_hydrated, vol),
                                   progress=progress, detach=detach)

    def _hydration_job(self, kind, vol):
        """A job following `vol`'s hydration; cancelling it pauses the hydration."""
        note = (f"volume {vol.name} stays usable (reads fetch what they need); its "
                f"hydration is paused: rokctl hydration resume {vol.name}")
        return Job(kind, vol.name, cancelled_note=note, on_cancel=lambda: self._pause(vol))

    async def _until_hydrated(self, vol, job):
        while True:
            status = self._hydration_of(vol)
            job.report(status["bytes_done"], status["bytes_total"])
            if status["state"] == "hydrated":
                return status
            if status["state"].startswith("failed"):
                raise RemoteError(f"hydration of {vol.name} failed: {status['error']}")
            if not vol.live:
                raise NotFound(f"volume {vol.name} was deleted")
            await trio.sleep(HYDRATION_POLL)

    # -- jobs ------------------------------------------------------------------------------
    def list_jobs(self):
        """Running pushes, pulls and hydrations, then the last finished ones."""
        return self.jobs.list()

    async def cancel_job(self, job_id):
        """Cancel a job; returns its info once it has stopped."""
        return await self.jobs.cancel(job_id)

    async def wait_job(self, job_id, *, progress=None):
        """Follow a job until it ends; its info (Cancelled or its error if it
        did not succeed). Cancelling this call leaves the job running."""
        return await self.jobs.follow(job_id, progress)

    async def run_background(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Hydrate every volume and snapshot that has a base, including ones
        pulled later; host detached jobs; poll registry subscriptions."""
        self._bases_changed = trio.Event()
        if self._registry_exists():
            self._pause_on_demand_subscriptions()
        running = set()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.jobs.serve)
            nursery.start_soon(self.fill_when_idle)
            nursery.start_soon(self._poll_registry)
            task_status.started()
            while True:
                for image in [*self.pool.list_volumes(), *self.pool.list_snapshots()]:
                    if image.base and image.id not in running:
                        running.add(image.id)
                        nursery.start_soon(self._hydrate_volume, image, running)
                with trio.move_on_after(1):
                    await self._bases_changed.wait()
                self._bases_changed = trio.Event()

    async def fill_when_idle(self):
        """The partial-slot filler (rokfs/partial.py), run by run_background:
        once no I/O has come for fill_idle_seconds (or when more than
        FILL_BACKLOG partial slots wait), complete them FILL_BATCH at a time,
        stepping aside as soon as I/O comes back; then commit, so that the
        old slots they held go back to the pool."""
        while True:
            await trio.sleep(FILL_POLL)
            filled = 0
            while self.pool.partial_count() and (self._idle() or filled == 0 and
                                                 self.pool.partial_count() > FILL_BACKLOG):
                done = self.pool.fill_partials(FILL_BATCH)
                if not done:                    # a push is reading slots: later
                    break
                filled += done
                await trio.sleep(0)
            if filled:
                await self._flush_in_background()
                log.debug("event=partials_filled count=%d left=%d", filled,
                          self.pool.partial_count())

    def _idle(self):
        return time.perf_counter() - self.last_io >= self.fill_idle_seconds

    async def _hydrate_volume(self, vol, running):
        try:
            while vol.base and vol.live:
                try:
                    await self._hydrate_held(vol)
                except NoSpace as exc:          # pause; go on once space is back
                    self._hydration[vol.id] = {**self._hydration_now(vol), "error": str(exc),
                                               "state": "paused: disk full"}
                    log.warning("event=hydrate_paused volume=%s reason=disk_full", vol.name)
                    await self._until_space_returns()
                except Exception as exc:        # one volume's failure stays its own
                    self._hydration[vol.id] = {**self._hydration_now(vol), "state": "failed",
                                               "error": one_line(exc)}
                    log.warning("event=hydrate_failed volume=%s error=%s", vol.name,
                                one_line(exc), exc_info=not isinstance(exc, RokfsError))
                    await trio.sleep(5)
        finally:
            running.discard(vol.id)

    async def _until_space_returns(self):
        """Wait (polling the filesystem every second) until data may take as
        much as the reserve again: room enough not to pause again at once."""
        while self.pool.data_space() < self.pool.data_reserve():
            await trio.sleep(1)

    def pause_hydration(self, volume):
        """Stop fetching `volume`'s chunks in the background (reads still
        fetch what they need) until resume_hydration; not kept across a restart."""
        vol = self.pool.get_image(volume)
        self._pause(vol)
        return self._hydration_of(vol)

    def _pause(self, vol):
        self._paused.add(vol.id)
        if vol.id in self._hydration and vol.base:
            self._hydration[vol.id]["state"] = "paused: by request"

    def resume_hydration(self, volume):
        vol = self.pool.get_image(volume)
        self._paused.discard(vol.id)
        if self._hydration.get(vol.id, {}).get("state") == "paused: by request":
            self._hydration[vol.id]["state"] = "hydrating"
        return self.hydration_status(volume)

    async def _hydrate_held(self, vol):
        """One pass, holding the volume ("hydrator": a delete does not wait
        for it; the pass stops at its next window and lets go)."""
        self.hold(vol, "hydrator")
        try:
            await self._hydrate_pass(vol)
        finally:
            self.release(vol, "hydrator")

    async def _hydrate_pass(self, vol):
        base = self.remote_state.base(vol.base)
        store = self._remote_for_spec(base["remote"])
        total = vol.base_chunks
        status = {"state": self._unhydrated_state(vol), "chunks_done": total - vol.cold_count(),
                  "chunks_total": total, "rate_bytes_per_s": 0.0, "error": None}
        self._hydration[vol.id] = status
        started, start_done = time.monotonic(), status["chunks_done"]
        # twice the remote's request limit in windows, so that while some
        # windows install their chunks the remote still has every slot busy
        limit = trio.Semaphore(2 * store.concurrency)
        since_flush = [0]

        async def window(first):
            try:
                while store.on_demand:          # user reads go first
                    await trio.sleep(0.005)
                while vol.id in self._paused:
                    await trio.sleep(0.2)
                if not vol.live or vol.base is None:
                    return
                cold = vol.cold_chunks(first, first + HYDRATE_WINDOW)
                if cold:
                    got = await self.fetch_chunks(vol, cold, readahead=False)
                    since_flush[0] += len(got) * self.pool.chunk_size
                    self.counters.hydrated_chunks += len(got)
                    self.counters.hydrated_bytes += len(got) * self.pool.chunk_size
                status["chunks_done"] = total - vol.cold_count() if \
                    first % (HYDRATE_WINDOW * 64) == 0 else status["chunks_done"] + len(cold)
                elapsed = time.monotonic() - started
                status["rate_bytes_per_s"] = ((status["chunks_done"] - start_done)
                                              * self.pool.chunk_size / max(elapsed, 1e-6))
                if since_flush[0] >= HYDRATE_FLUSH_BYTES:
                    since_flush[0] = 0
                    await self.flush()
            finally:
                limit.release()

        async with single_errors():
            async with trio.open_nursery() as nursery:
                for first in range(0, total, HYDRATE_WINDOW):
                    await limit.acquire()
                    nursery.start_soon(window, first)
        if not vol.live:
            return
        if not vol.cold_count():
            self.pool.drop_base(vol)
            await self.flush()
            status.update(state="hydrated", chunks_done=total, error=None)
            log.info("event=hydrated volume=%s chunks=%d", vol.name, total)

    # -- policies: schedules and retention (rokfs/policy.py, rokfs/policies.py) ----------
    policy_runner = None        # the daemon's PolicyRunner while it runs

    def policy_now(self):
        """The policies' clock: the runner's (a MockClock in tests), else the wall clock."""
        return self.policy_runner.now() if self.policy_runner else time.time()

    async def set_policy(self, target, spec):
        """Give volume (or group, with `volumes` in the spec) `target` a policy;
        its next run is counted from now unless the schedule is unchanged."""
        policy = parse_policy(spec)
        policies.check_target(self, target, policy)
        old = self.pool.policy_record(target)
        kept = old and parse_policy(old["spec"]).schedule.text == policy.schedule.text
        self.pool.put_policy(target, policy.text(), old["anchor"] if kept else self.policy_now())
        await self._policies_changed()
        return self.show_policy(target)

    def show_policy(self, target):
        runner = self.policy_runner
        return policies.show(self, target, self._policy_record(target),
                             runner.last.get(target) if runner else None)

    def list_policies(self):
        return [self.show_policy(target) for target in sorted(self.pool.policy_records())]

    async def delete_policy(self, target):
        """Drop `target`'s policy; the snapshots it took stay."""
        self.pool.drop_policy(target)
        await self._policies_changed()

    def plan_policy(self, target):
        """What the policy's retention would delete now, why each other
        snapshot is kept, and the bytes deleting them together frees."""
        return policies.plan(self, target, self._policy(target))

    async def run_policy(self, target):
        """Run `target`'s policy now (snapshot, push, retention); its report."""
        if self.policy_runner is not None:
            return await self.policy_runner.run_now(target, self._policy(target))
        return await policies.run_once(self, target, self._policy(target), self.policy_now())

    def policy_records(self):
        """{target: {"spec", "anchor"}} for the runner (not a verb)."""
        return self.pool.policy_records()

    def policy_snapshots(self, target, volume=None):
        """The snapshots (of `volume`) labelled as taken by `target`'s policy:
        name, group, labels, created and holds only, so that a run walks no
        map (not a verb)."""
        return [{"name": s.full_name, "group": s.group, "labels": dict(s.labels),
                 "created": s.created, "holds": dict(s.holds)}
                for s in self.pool.list_snapshots(volume)
                if s.labels.get(POLICY_LABEL) == target]

    def mark_policy_run(self, target, at):
        """A run of `target` starts at `at`: its anchor, committed with the
        run's snapshot (not a verb)."""
        record = self.pool.policy_record(target)
        if record is not None:
            self.pool.put_policy(target, record["spec"], at)

    def _policy_record(self, target):
        record = self.pool.policy_record(target)
        if record is None:
            raise NotFound(f"no policy for {target!r}")
        return record

    def _policy(self, target):
        return parse_policy(self._policy_record(target)["spec"])

    async def _policies_changed(self):
        await self.flush()
        if self.policy_runner is not None:
            self.policy_runner.wake()


@contextlib.asynccontextmanager
async def _frozen(mountpoints):
    """Freeze each mountpoint (in a worker thread: the flush it waits for
    may need this very loop, for a filesystem on one of our volumes), and
    thaw every one frozen on the way out, also on error or cancellation."""
    done = []
    try:
        for mountpoint in mountpoints:
            await trio.to_thread.run_sync(freeze.freeze, mountpoint)
            done.append(mountpoint)
        yield
    finally:
        with trio.CancelScope(shield=True):
            for mountpoint in reversed(done):
                await trio.to_thread.run_sync(freeze.thaw, mountpoint)


def _member_name(local, version, member):
    """The local volume of a version's member: LOCAL for a version of one
    volume, LOCAL.VOLUME for each volume of a group."""
    return local if len(version["members"]) == 1 else f"{local}.{member['volume']}"


def _group_info(group, snaps, frees=None):
    return {"name": group, "created": min(s.created for s in snaps),
            "labels": dict(snaps[0].labels), "members": [s.full_name for s in snaps],
            "volumes": [s.volume_name for s in snaps], "space": _space_of(snaps, frees)}


def _space_of(images, frees):
    """The members' space summed (each O(1)): exclusive is what deleting
    each alone frees; `frees` (group info only, not listings) what deleting
    them together frees (chunks they share only among themselves too)."""
    usages = [i.usage() for i in images]
    space = {k: sum(u[k] for u in usages) for k in SPACE_KEYS}
    if frees is not None:
        space["frees"], space["frees_exact"] = frees["bytes"], frees["exact"]
    return space


def _stat_of(image):
    return {"id": image.id, "name": image.full_name, "size": image.size,
            "allocated": image.usage()["allocated"], "read_only": image.read_only,
            "created": image.created}


class Device:
    """An open volume or snapshot: the callback table protocol adapters use.
    Holds its image (as `holder`) from open to close: a DELETING image stays
    readable, with its own bytes, until its last Device closes."""

    def __init__(self, control, image, holder, front):
        control.hold(image, holder)
        self.control = control
        self.holder = holder
        self.io = control.counters.image_io(image.full_name)
        self.latency = control.counters.front_latency(front)
        self.image = image
        self.name = image.full_name
        self.read_only = image.read_only
        self.chunk_size = control.pool.chunk_size
        self.closed = False

    @property
    def size(self):
        return self.image.size

    def may_block(self, offset, length):
        """Would a request on this range wait for the remote (cold chunks)?
        Adapters run such requests apart, so one slow remote read holds no
        other request; False at once for an image with no remote base."""
        return self.image.touches_cold(offset, length)

    def stat(self):
        """Control.stat of the open image, also once it is deleted (deferred)."""
        return _stat_of(self.image)

    def close(self):
        if not self.closed:
            self.closed = True
            self.control.release(self.image, self.holder)

    def _open(self):
        if self.closed:
            raise NotFound(f"{self.name} has been closed")
        return self.image

    def _writable(self):
        image = self._open()
        if self.read_only:
            raise ReadOnly(f"{self.name} is a read-only snapshot")
        return image

    async def _with_hydration(self, op, *args):
        return await self.control._hydrating(op, *args)
    def _count(self, op, nbytes, start, ops=1):
        """Plain integer bumps: no lock, no prometheus call on the I/O path."""
        self.control.last_io = start
        counts = self.io[op]
        counts[0] += ops
        counts[1] += nbytes
        self.latency[op].observe(time.perf_counter() - start)

    async def pread(self, offset, length):
        start = time.perf_counter()
        data = await self._with_hydration(self._open().pread, offset, length)
        self._count("read", length, start)
        return data

    async def read_plan(self, offset, length):
        """Like pread, but where the bytes are (Image.read_plan) instead of
        the bytes: for adapters that send file data without copying it. The
        plan holds only until the caller's next checkpoint."""
        start = time.perf_counter()
        plan = await self._with_hydration(self._open().read_plan, offset, length)
        self._count("read", length, start)
        return plan

    async def pwrite(self, offset, data, fua=False, ops=1):
        """Write `data` at `offset`; `ops=0` for all but the last piece of a
        request written in pieces (the metrics count requests)."""
        start = time.perf_counter()
        await self._with_hydration(self._writable().pwrite, offset, data)
        if fua:
            await self.control.flush()
        self._count("write", len(data), start, ops)

    async def trim(self, offset, length, fua=False):
        start = time.perf_counter()
        await self._with_hydration(self._writable().trim, offset, length)
        if fua:
            await self.control.flush()
        self._count("trim", length, start)

    async def write_zeroes(self, offset, length, fua=False, no_hole=False):
        start = time.perf_counter()
        await self._with_hydration(self._writable().write_zeroes, offset, length, no_hole)
        if fua:
            await self.control.flush()
        self._count("zero", length, start)

    async def flush(self):
        start = time.perf_counter()
        self._open()
        await self.control.flush()
        self._count("flush", 0, start)

    async def cache(self, offset, length):
        self._count("cache", length, time.perf_counter())
        image = self._open()
        image._check_range(offset, length)
        cold = [c for c, _, _ in image.spans(offset, length)
                if image.is_cold(c, image.entry(c))]
        if cold:
            await self.control.fetch_chunks(image, cold)

    async def extents(self, offset, length):
        return self._open().extents(offset, length)
