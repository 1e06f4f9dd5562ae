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
- `push` changes nothing the user sees in the pool; the hashes it caches for
  frozen slots go with the next commit.
- The verbs of one door, in four files: this one (durability, volumes,
  snapshots, groups, lineage, pool, remotes, jobs, the background tasks),
  hydration.py, registry_verbs.py and policy_verbs.py (mixed into
  Control); each states its own invariants. Devices (`open_device`,
  device.py) are the callback table of the protocol adapters.
- Holders: a Device holds its image from open to close, as a push holds
  its snapshot and a hydrator its volume; a delete the holders block is
  refused (Busy) unless deferred.
- The engine's NeedsChunks never leaves the verbs: every verb and device
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
"""

import contextlib
import functools
import logging
import time

import trio

from . import freeze, lineage, names
from .device import HOLDER_OF_FRONT, Device, stat_of
from .errors import AlreadyExists, InvalidArgument, NotFound, RokfsError
from .fsck import fsck
from .hydration import HydrationVerbs
from .image import NeedsChunks
from .jobs import Job, Jobs
from .policy_verbs import PolicyVerbs
from .registry_verbs import RegistryVerbs
from .stats import Counters

log = logging.getLogger("rokfs.control")
SPACE_KEYS = ("allocated", "exclusive", "shared", "unhydrated")
LIST_SLICE = 256                # snapshots listed between yields to other work
FILL_IDLE_SECONDS = 2.0        # the filler completes partial slots after this long without I/O
FILL_BACKLOG = 65536           # ... or, past this many partial slots, a batch each poll anyway
FILL_BATCH = 64                # partial slots completed per step on the loop (~2 ms)
FILL_POLL = 0.5                # seconds between the filler's looks at the pool
PUSH_CANCELLED = "no manifest was written; push it again to resume from what was uploaded"


class Control(HydrationVerbs, RegistryVerbs, PolicyVerbs):
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
        self._freeing = False           # a task frees queued images in slices
        self.last_io = time.perf_counter()      # when a Device last served a request
        self.fill_idle_seconds = FILL_IDLE_SECONDS

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

    async def _committed_info(self, image):
        """A verb's answer: `image`'s info, once what the verb changed is
        committed."""
        await self.flush()
        return image.info()

    # -- volumes ---------------------------------------------------------------
    async def create_volume(self, name, size):
        return await self._committed_info(self.pool.create_volume(name, size))

    async def delete_volume(self, name, *, recursive=False, defer=False, force=False):
        """Delete a volume (and its snapshots if `recursive`); refused while
        open unless `defer` (freed when the last holder closes), and while a
        snapshot of it is held unless `force`."""
        self.pool.delete_volume(name, recursive=recursive, defer=defer, force=force)
        await self.flush()

    async def rename_volume(self, old, new):
        names.check_name(new, "new volume")
        return await self._committed_info(self.pool.rename_volume(old, new))

    async def resize_volume(self, name, size, *, force=False):
        return await self._committed_info(
            await self._hydrating(self.pool.resize_volume, name, size, force=force))

    async def clone(self, source, new_name):
        names.check_name(new_name, "new volume")
        return await self._committed_info(self.pool.clone(source, new_name))

    def stat(self, name):
        """Cheap facts about a volume or snapshot (no map walk), for listings."""
        return stat_of(self.pool.get_image(name))

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
        return await self._committed_info(self.pool.add_hold(full_name, tag, reason))

    async def release_snapshot(self, full_name, *, tag="user"):
        return await self._committed_info(self.pool.remove_hold(full_name, tag))

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
            nursery.start_soon(self._poll_registry)
            nursery.start_soon(self.fill_when_idle)
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
