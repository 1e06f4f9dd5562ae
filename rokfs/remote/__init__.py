"""Remote snapshots: push a snapshot to a chunk store, pull one back lazily.

`RemoteStore` is the async face of one remote (a ChunkStore over a
directory or an S3 bucket); the Control verbs call it. Blocking work (object
requests, hashing, compression) runs in worker threads bounded by a
CapacityLimiter; the engine is only touched on the trio loop.

Invariants:
- push: chunks are uploaded (in packs) before the segments naming them,
  segments before the manifest; a chunk whose hash is in the chunk index is
  never uploaded again; an interrupted push leaves only unreferenced packs,
  which the next push finds in the index (resume) and GC removes later.
- hydrate: a fetched chunk is verified against its hash before it is
  installed, and installed only if the chunk is still cold.
"""

import contextlib
import copy
import functools
import itertools
import os
import time

import trio

from .chunks import (PACK_BYTES, PACK_CHUNKS, SEGMENT_CHUNKS, ChunkStore, chunk_hash,
                     compress, new_manifest, open_chunk)
from .objects import DirStore, S3Store, open_object_store, parse_url, retry, is_temp_failure
from ..errors import AlreadyExists, Corrupt, NotFound, RemoteError, RokfsError
from ..extentmap import SLOT_BASE

DEFAULT_CONCURRENCY = 8
READAHEAD = 15                 # cold neighbours fetched along with a read
HASH_BATCH = 256               # chunks hashed per worker-thread hop
SAVE_PACKS = 64                # uploaded packs recorded in remote.db per transaction
MAX_RUN = 8 << 20              # largest ranged GET


def open_remote(spec, *, concurrency=DEFAULT_CONCURRENCY):
    """spec: {"type": "dir", "path"} | {"type": "s3", "bucket", ...} | URL."""
    if isinstance(spec, str):
        spec = parse_url(spec)
    return RemoteStore(open_object_store(spec), spec, concurrency=concurrency)


class RemoteStore:
    def __init__(self, objects, spec, *, concurrency=DEFAULT_CONCURRENCY):
        self.objects = objects
        self.spec = dict(spec)
        self.chunks = ChunkStore(objects)
        self.url = objects.url
        self.concurrency = concurrency
        self.limiter = trio.CapacityLimiter(concurrency)
        self.index = {}          # chunk hash -> (pack key, offset, length)
        self._segments = {}      # segment key -> parsed segment
        self._loading = {}       # segment key -> _Load of the one GET in flight
        self.on_demand = 0       # on-demand fetches in flight (hydrators yield to them)

    async def run(self, fn, *args, **kwargs):
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self.limiter)

    # -- chunk index --------------------------------------------------------------
    async def load_index(self, state):
        """Index every pack on the remote: cached headers, fetched for new packs."""
        listed = {o.key for o in await self.run(self.objects.list, "packs/")}
        cached = state.packs(self.url)
        state.forget_packs(self.url, [k for k in cached if k not in listed])
        new = {}
        async with single_errors():
            async with trio.open_nursery() as nursery:
                for key in sorted(listed - set(cached)):
                    nursery.start_soon(self._fetch_header, key, new)
        state.add_packs(self.url, new)
        self.index = {}
        for key, entries in {**{k: v for k, v in cached.items() if k in listed}, **new}.items():
            for h, offset, length in entries:
                self.index[h] = (key, offset, length)

    async def _fetch_header(self, key, out):
        out[key] = await self.run(self.chunks.pack_entries, key)

    # -- push ---------------------------------------------------------------------
    async def push(self, pool, state, snap, *, progress=None, grace=3600, base_entry=None):
        started = time.monotonic()
        lock = await self.run(self.chunks.take_lock, "push", grace)
        snap.busy = getattr(snap, "busy", 0) + 1
        try:
            async with single_errors():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._refresh_lock, lock, grace)
                    await self.load_index(state)
                    job = _PushJob(self, pool, state, snap, progress, base_entry)
                    await job.upload_chunks()
                    manifest = await job.write_manifest()
                    nursery.cancel_scope.cancel()
        finally:
            snap.busy -= 1
            await self.run(self.chunks.drop_lock, lock)
        return {"snapshot": snap.full_name, "remote": self.url, "chunks": snap.nchunks,
                "uploaded_chunks": job.uploaded_chunks, "uploaded_bytes": job.uploaded_bytes,
                "skipped_chunks": snap.nchunks - job.uploaded_chunks,
                "manifest_written": manifest, "seconds": time.monotonic() - started}

    async def _refresh_lock(self, lock, grace):
        """Rewrite our lock well within the grace period, so a long push stays
        protected from GC (a lock older than the grace counts as stale)."""
        while True:
            await trio.sleep(max(grace / 4, 0.05))
            await self.run(self.objects.put, lock, b"{}")

    # -- pull / hydrate ------------------------------------------------------------
    async def segment(self, key):
        """The parsed segment `key`, fetched once however many tasks ask for
        it at once (a hydrator starts 16 windows together): the others wait
        for that one GET and share its error. If it was cancelled instead,
        the next waiter fetches."""
        while True:
            seg = self._segments.get(key)
            if seg is not None:
                return seg
            load = self._loading.get(key)
            if load is None:
                return await self._load_segment(key)
            await load.done.wait()
            if load.error is not None:
                raise copy.copy(load.error) from load.error   # same class, args, attributes

    async def _load_segment(self, key):
        self._loading[key] = load = _Load()
        try:
            seg = self._segments[key] = await self.run(self.chunks.get_segment, key)
            return seg
        except RokfsError as exc:
            load.error = exc
            raise
        finally:
            del self._loading[key]
            load.done.set()

    async def locate(self, manifest, chunks):
        """{chunk: (hash, pack, offset, length), or None for zeros} of manifest chunks."""
        out = {}
        for seg_no, group in itertools.groupby(sorted(set(chunks)),
                                               key=lambda c: c // SEGMENT_CHUNKS):
            seg = await self.segment(manifest["segments"][seg_no])
            packs, entries = seg["packs"], seg["chunks"]
            for c in group:
                e = entries[c % SEGMENT_CHUNKS]
                out[c] = None if e is None else (e[0], packs[e[1]], e[2], e[3])
        return out

    async def fetch(self, manifest, chunks, chunk_size, *, on_demand=False, required=None):
        """{chunk: bytes or None (zeros)} for manifest chunks, verified. A chunk
        that fails verification raises if it is `required` (default: all),
        else it is left out (read-ahead)."""
        out, wanted = {}, []
        for c, loc in (await self.locate(manifest, chunks)).items():
            if loc is None:
                out[c] = None
            else:
                wanted.append((c, *loc))
        self.on_demand += on_demand
        try:
            async with single_errors():
                async with trio.open_nursery() as nursery:
                    for run in _runs(wanted):
                        nursery.start_soon(self._fetch_run, run, chunk_size, out)
        finally:
            self.on_demand -= on_demand
        for c, data in list(out.items()):
            if isinstance(data, Exception):
                if required is None or c in required:
                    raise data
                del out[c]
        return out

    async def _fetch_run(self, run, chunk_size, out):
        out.update(await self.run(self._read_run, run, chunk_size))

    def _read_run(self, run, chunk_size):
        pack, start = run[0][2], run[0][3]
        end = run[-1][3] + run[-1][4]
        body = memoryview(self.chunks.read_range(pack, start, end))
        out = {}
        for c, h, _, off, length in run:
            try:
                out[c] = open_chunk(body[off - start:off - start + length], h, chunk_size)
            except Corrupt as exc:
                out[c] = Corrupt(f"{pack} chunk {c}: {exc}")
        return out


class _Load:
    """A fetch in flight that other tasks wait for instead of repeating it."""

    def __init__(self):
        self.done = trio.Event()
        self.error = None


@contextlib.asynccontextmanager
async def single_errors():
    """Report the first rokfs error of a nursery as itself, not as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, RokfsError):
            raise first from group
        raise


def _first_leaf(exc):
    while isinstance(exc, BaseExceptionGroup):
        rokfs = [e for e in exc.exceptions if isinstance(_first_leaf(e), RokfsError)]
        exc = (rokfs or exc.exceptions)[0]
    return exc


def _runs(wanted):
    """Group (chunk, hash, pack, offset, length) into contiguous ranged GETs."""
    runs = []
    for item in sorted(wanted, key=lambda w: (w[2], w[3])):
        last = runs[-1][-1] if runs else None
        if (last and last[2] == item[2] and last[3] + last[4] == item[3]
                and item[3] + item[4] - runs[-1][0][3] <= MAX_RUN):
            runs[-1].append(item)
        elif last and last[2] == item[2] and last[3] == item[3]:
            runs[-1].append(item)   # the same chunk content at two places
        else:
            runs.append([item])
    return runs


class _PushJob:
    """One push: hash, dedup, pack, upload; then segments and the manifest."""

    def __init__(self, remote, pool, state, snap, progress, base_entry):
        self.remote, self.pool, self.state, self.snap = remote, pool, state, snap
        self.progress = progress
        self.base_entry = base_entry
        self.cs = pool.chunk_size
        self.zero_hash = chunk_hash(bytes(self.cs))
        self.hashes = [None] * snap.nchunks      # None = zeros
        self.queued = set()
        self.pack, self.pack_bytes = [], 0
        self.unsaved = {}                        # uploaded packs not yet in remote.db
        self.uploaded_chunks = self.uploaded_bytes = self.done_chunks = 0
        self.inflight = trio.Semaphore(remote.concurrency)

    async def upload_chunks(self):
        """Hash batches in a worker thread one step ahead of packing and
        uploading, so hashing overlaps the uploads. Uploaded packs are
        recorded in remote.db in batches, and whatever is uploaded when the
        push ends or fails (so a resumed push need not GET their headers)."""
        try:
            await self._upload_all()
        finally:
            self._save_packs()

    async def _upload_all(self):
        async with single_errors():
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                send, receive = trio.open_memory_channel(1)
                nursery.start_soon(self._hash_batches, send)
                async with receive:
                    async for batch in receive:
                        await self._pack_batch(*batch)
                await self._send_pack()

    async def _hash_batches(self, send):
        async with send:
            for start in range(0, self.snap.nchunks, HASH_BATCH):
                await send.send(await self._hash_batch(
                    start, min(start + HASH_BATCH, self.snap.nchunks)))

    def _advance(self, chunks):
        """`chunks` more are on the remote (uploaded, present or zero)."""
        self.done_chunks += chunks
        if self.progress:
            self.progress(min(self.done_chunks * self.cs, self.snap.size), self.snap.size)

    async def _hash_batch(self, start, stop):
        if getattr(self.snap, "deleted", False) or self.snap not in \
                self.pool._snapshots.values():
            raise NotFound(f"snapshot {self.snap.full_name} was deleted during the push")
        slots, cold = {}, []
        for c in range(start, stop):
            entry = self.snap.entry(c)
            if entry >= SLOT_BASE:
                slots[c] = entry - SLOT_BASE
            elif self.snap.is_cold(c, entry):
                cold.append(c)
        for c in cold:
            self.hashes[c] = await self.base_entry(self.snap, c)
        known = self.pool.slot_hashes(set(slots.values()))
        work = [(c, s, known.get(s)) for c, s in slots.items()]
        results = await trio.to_thread.run_sync(self._hash_and_compress, work)
        return stop - start - len(slots), known, results

    async def _pack_batch(self, unstored, known, results):
        self._advance(unstored)
        for c, slot, digest, frame in results:
            if slot not in known:
                self.pool.record_slot_hash(slot, digest)
            if digest != self.zero_hash:
                self.hashes[c] = digest
            if frame is not None and digest not in self.queued \
                    and digest not in self.remote.index:
                await self._add(digest, frame)
            else:
                self._advance(1)

    def _hash_and_compress(self, work):
        """Worker thread: read what we must, hash it, compress unknown chunks."""
        out, index, queued = [], self.remote.index, self.queued
        buf = bytearray(self.cs)
        for c, slot, digest in work:
            if digest is not None and (digest in index or digest in queued
                                       or digest == self.zero_hash):
                out.append((c, slot, digest, None))
                continue
            self.pool.slots.read_into(slot, 0, memoryview(buf))
            digest = chunk_hash(buf)
            frame = None
            if digest != self.zero_hash and digest not in index:
                frame = compress(buf)
            out.append((c, slot, digest, frame))
        return out

    async def _add(self, digest, frame):
        self.queued.add(digest)
        self.pack.append((digest, frame))
        self.pack_bytes += len(frame)
        if len(self.pack) >= PACK_CHUNKS or self.pack_bytes >= PACK_BYTES:
            await self._send_pack()

    async def _send_pack(self):
        if not self.pack:
            return
        items, self.pack, self.pack_bytes = self.pack, [], 0
        await self.inflight.acquire()
        self.nursery.start_soon(self._upload, items)

    async def _upload(self, items):
        try:
            key, size, entries = await self.remote.run(self.remote.chunks.put_pack, items)
        finally:
            self.inflight.release()
        self.unsaved[key] = entries
        if len(self.unsaved) >= SAVE_PACKS:
            self._save_packs()
        for h, offset, length in entries:
            self.remote.index[h] = (key, offset, length)
        self.uploaded_chunks += len(items)
        self.uploaded_bytes += size
        self._advance(len(items))

    def _save_packs(self):
        packs, self.unsaved = self.unsaved, {}
        self.state.add_packs(self.remote.url, packs)

    async def write_manifest(self):
        """The segments, all at once and together with reading the manifest
        already there (if any), then the manifest: last."""
        snap, chunks = self.snap, self.remote.chunks
        firsts = range(0, len(self.hashes), SEGMENT_CHUNKS)
        segments, old = [None] * len(firsts), []

        async def put_segment(i, first):
            seg = self._segment(self.hashes[first:first + SEGMENT_CHUNKS])
            segments[i], size = await self.remote.run(chunks.put_segment, seg)
            self.uploaded_bytes += size

        async def get_old():
            try:
                old.append(await self.remote.run(chunks.get_manifest, snap.full_name))
            except NotFound:
                pass

        async with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get_old)
                for i, first in enumerate(firsts):
                    nursery.start_soon(put_segment, i, first)
        if old:
            if old[0]["segments"] == segments and old[0]["size"] == snap.size:
                return False    # already pushed: nothing to write
            raise AlreadyExists(f"{snap.full_name} already exists on {self.remote.url} "
                                "with other content; delete it there first")
        parent = self.state.base(snap.base)["name"] if snap.base else None
        manifest = new_manifest(snap.full_name, snap.size, self.cs, snap.labels, parent,
                                segments, snap.nchunks)
        self.uploaded_bytes += await self.remote.run(chunks.put_manifest, manifest)
        return True

    def _segment(self, hashes):
        packs, pack_no, chunks = [], {}, []
        for h in hashes:
            if h is None:
                chunks.append(None)
                continue
            if h not in self.remote.index:
                raise RemoteError(f"chunk {h[:16]} vanished from {self.remote.url} "
                                  "during the push; push again")
            key, offset, length = self.remote.index[h]
            if key not in pack_no:
                pack_no[key] = len(packs)
                packs.append(key)
            chunks.append([h, pack_no[key], offset, length])
        return {"packs": packs, "chunks": chunks}


def default_remote_spec(pool_path):
    return {"type": "dir", "path": os.path.join(os.path.dirname(os.path.abspath(pool_path)),
                                                "remote")}


__all__ = ["open_remote", "RemoteStore", "DirStore", "S3Store", "retry", "is_temp_failure",
           "default_remote_spec"]
