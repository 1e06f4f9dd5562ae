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
- Devices (`open_device`) are the callback table of the protocol adapters:
  pread / pwrite / trim / write_zeroes / flush / cache / extents.
"""

import time

import trio

from . import names
from .errors import NotFound, ReadOnly, RemoteError
from .pool import NeedsChunks, Volume
from .stats import Counters


class Control:
    def __init__(self, pool, remote=None, remotes=None):
        self.pool = pool
        self.remotes = dict(remotes or {})
        self.remote = remote if remote is not None else self.remotes.get("default")
        self.counters = Counters()
        pool.autocommit = False
        self._commit_lock = trio.Lock()
        self._commits_started = 0
        self._commits_done = 0

    # -- durability ------------------------------------------------------------
    async def flush(self):
        target = self._commits_started + 1
        async with self._commit_lock:
            if self._commits_done >= target:
                return
            self._commits_started += 1
            batch = self.pool.begin_commit()
            try:
                await trio.to_thread.run_sync(self.pool.write_commit, batch)
            except BaseException:
                self.pool.abort_commit(batch)
                raise
            self.pool.end_commit(batch)
            self._commits_done = self._commits_started

    # -- volumes ---------------------------------------------------------------
    async def create_volume(self, name, size):
        vol = self.pool.create_volume(name, size)
        await self.flush()
        return vol.info()

    async def delete_volume(self, name, *, recursive=False, force=False):
        self.pool.delete_volume(name, recursive=recursive, force=force)
        await self.flush()

    async def rename_volume(self, old, new):
        vol = self.pool.rename_volume(old, new)
        await self.flush()
        return vol.info()

    async def resize_volume(self, name, size, *, force=False):
        vol = self.pool.resize_volume(name, size, force=force)
        await self.flush()
        return vol.info()

    async def clone(self, source, new_name):
        vol = self.pool.clone(source, new_name)
        await self.flush()
        return vol.info()

    def stat(self, name):
        """Cheap facts about a volume or snapshot (no map walk), for listings."""
        image = self.pool.image(name)
        return {"id": image.id, "name": image.full_name, "size": image.size,
                "read_only": image.read_only, "created": image.created}

    def volume_info(self, name):
        return self.pool.volume(name).info()

    def list_volumes(self):
        return [v.info() for v in self.pool.list_volumes()]

    # -- snapshots -----------------------------------------------------------------
    async def snapshot(self, full_name, labels=None):
        start = time.perf_counter()
        snap = self.pool.create_snapshot(full_name, labels)
        await self.flush()
        self.counters.snapshots_created += 1
        self.counters.snapshot_latency.observe(time.perf_counter() - start)
        return snap.info()

    async def delete_snapshot(self, full_name):
        self.pool.delete_snapshot(full_name)
        await self.flush()

    async def set_labels(self, full_name, labels, *, replace=False):
        snap = self.pool.set_labels(full_name, labels, replace=replace)
        await self.flush()
        return snap.info()

    def snapshot_info(self, full_name):
        return self.pool.snapshot(full_name).info()

    def list_snapshots(self, volume=None, labels=None):
        want = names.check_labels(labels)
        return [s.info() for s in self.pool.list_snapshots(volume)
                if all(s.labels.get(k) == v for k, v in want.items())]

    # -- pool ------------------------------------------------------------------------
    def status(self):
        return self.pool.status()

    def list_exports(self):
        """[(name, size, read_only, description)] of every volume and snapshot."""
        out = [(v.name, v.size, False, f"rokfs volume {v.name}")
               for v in self.pool.list_volumes()]
        out += [(s.full_name, s.size, True, f"rokfs snapshot {s.full_name}")
                for s in self.pool.list_snapshots()]
        return out

    def open_device(self, name, front="nbd"):
        """A Device for volume or snapshot `name`; `front` labels its metrics."""
        return Device(self, self.pool.image(name), front)

    # -- hydration (the remote store plugs in here) ---------------------------------
    async def fetch_chunks(self, image, chunks):
        if self.remote is None:
            raise RemoteError(f"{image.full_name} has unhydrated chunks but no remote "
                              "is configured")
        await self.remote.hydrate(image, chunks)


class Device:
    """An open volume or snapshot: the callback table protocol adapters use."""

    def __init__(self, control, image, front="nbd"):
        self.control = control
        self.io = control.counters.image_io(image.full_name)
        self.latency = control.counters.front_latency(front)
        self.image = image
        self.name = image.full_name
        self.read_only = image.read_only
        self.chunk_size = control.pool.chunk_size
        self.closed = False
        if isinstance(image, Volume):
            image.open_count += 1

    @property
    def size(self):
        return self.image.size

    def close(self):
        if not self.closed and isinstance(self.image, Volume):
            self.image.open_count -= 1
        self.closed = True

    def _live(self):
        if getattr(self.image, "deleted", False) or self.closed:
            raise NotFound(f"{self.name} has been deleted or closed")
        return self.image

    def _writable(self):
        image = self._live()
        if self.read_only:
            raise ReadOnly(f"{self.name} is a read-only snapshot")
        return image

    async def _with_hydration(self, op, *args):
        while True:
            try:
                return op(*args)
            except NeedsChunks as need:
                await self.control.fetch_chunks(need.image, need.chunks)

    def _count(self, op, nbytes, start):
        """Plain integer bumps: no lock, no prometheus call on the I/O path."""
        counts = self.io[op]
        counts[0] += 1
        counts[1] += nbytes
        self.latency[op].observe(time.perf_counter() - start)

    async def pread(self, offset, length):
        start = time.perf_counter()
        data = await self._with_hydration(self._live().pread, offset, length)
        self._count("read", length, start)
        return data

    async def pwrite(self, offset, data, fua=False):
        start = time.perf_counter()
        await self._with_hydration(self._writable().pwrite, offset, data)
        if fua:
            await self.control.flush()
        self._count("write", len(data), start)

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
        self._live()
        await self.control.flush()
        self._count("flush", 0, start)

    async def cache(self, offset, length):
        self._count("cache", length, time.perf_counter())
        image = self._live()
        image._check_range(offset, length)
        cold = [c for c, _, _ in image.spans(offset, length)
                if image.is_cold(c, image.entry(c))]
        if cold:
            await self.control.fetch_chunks(image, cold)

    async def extents(self, offset, length):
        return self._live().extents(offset, length)
