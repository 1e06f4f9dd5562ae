"""`RemoteStore`: the async face of one remote (a ChunkStore over a
directory or an S3 bucket), which the Control verbs call.

Invariants:
- Blocking work (object requests, hashing, compression) runs in worker
  threads bounded by one CapacityLimiter per remote; the engine is touched
  only on the trio loop, through the methods it declares for remotes
  (frozen_chunks, read_frozen, slot_hashes, record_slot_hash).
- A fetched chunk is verified against its hash before it is returned; a
  chunk that fails is an error for the chunks a caller requires and left
  out of read-ahead.
- A segment is fetched once however many tasks ask for it at once.
- A fetch ends within the remote's deadline (plus a request timeout at
  most, for the thread it leaves behind): a stalled remote fails the reads
  that need it with EIO and holds nothing else.
- A push cancelled before its manifest PUT starts writes no manifest; that
  PUT, once started, is shielded from cancellation, and so are the PUTs of
  the push's lock and its DELETE, so a cancelled push neither half-commits
  nor leaves its lock behind to block GC. The same holds for `upload` of
  several snapshots and its `commit` (a registry publish: one lock from
  the first chunk to the head).
- A segment is used only once it has been checked to hold as many chunks
  as its place in the manifest says (so every chunk below the manifest's
  count has an entry).
- The chunk index holds only packs whose header read well; a pack whose
  header does not is reported and left out (its chunks go up again). A
  push reloading the index keeps the packs a concurrent push of ours
  uploaded after its LIST started (both hold push locks: GC cannot have
  removed them), so concurrent pushes to one remote never lose each
  other's chunks.
"""

import copy
import functools
import itertools
import logging
import time

import trio

from .chunks import ChunkStore, open_chunk
from .formats import check_segment_fits
from .objects import open_object_store, parse_url
from .push import PushJob
from ..errors import Corrupt, RemoteError, RokfsError, single_errors

log = logging.getLogger("rokfs.remote")

DEFAULT_CONCURRENCY = 8
READAHEAD = 15                 # cold neighbours fetched along with a read
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
        self._fresh = {}         # pack key -> (when, entries) uploaded by our pushes
        self.on_demand = 0       # on-demand fetches in flight (hydrators yield to them)

    async def run(self, fn, *args, **kwargs):
        """Run blocking `fn` in a worker thread. A cancelled caller does not
        wait for it: the thread ends by itself within the request timeouts
        (objects.py), and its result is dropped."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self.limiter, abandon_on_cancel=True)

    # -- chunk index --------------------------------------------------------------
    async def load_index(self, state):
        """Index every pack on the remote: cached headers, fetched for new
        packs. Returns {key: Corrupt} of the packs whose header does not
        read (left out of the index and of the cache)."""
        started = time.monotonic()
        listed = {o.key: o.size for o in await self.run(self.objects.list, "packs/")}
        cached = state.packs(self.url)
        state.forget_packs(self.url, [k for k in cached if k not in listed])
        new, corrupt = {}, {}
        async with single_errors():
            async with trio.open_nursery() as nursery:
                for key in sorted(listed.keys() - cached.keys()):
                    nursery.start_soon(self._fetch_header, key, listed[key], new, corrupt)
        state.add_packs(self.url, new)
        known = {**{k: v for k, v in cached.items() if k in listed}, **new,
                 **self._uploaded_since(started, listed)}
        self.index = {}
        for key, entries in known.items():
            for h, offset, length in entries:
                self.index[h] = (key, offset, length)
        return corrupt

    def uploaded(self, key, entries):
        """A push of ours uploaded pack `key`: index it now."""
        self._fresh[key] = (time.monotonic(), entries)
        for h, offset, length in entries:
            self.index[h] = (key, offset, length)

    def _uploaded_since(self, started, listed):
        """Packs our pushes uploaded after a LIST `started` (so it may not
        show them), to keep in the index a concurrent push is using; the
        others are forgotten (the LIST spoke for them)."""
        out = {}
        for key, (when, entries) in list(self._fresh.items()):
            if key not in listed and when >= started:
                out[key] = entries
            else:
                del self._fresh[key]
        return out

    async def _fetch_header(self, key, size, out, corrupt):
        try:
            out[key] = await self.run(self.chunks.pack_entries, key, size)
        except Corrupt as exc:
            log.warning("event=remote_object_corrupt remote=%s key=%s error=\"%s\"",
                        self.url, key, exc)
            corrupt[key] = exc

    # -- push ---------------------------------------------------------------------
    async def push(self, pool, state, snap, *, progress=None, grace=3600, base_entry=None):
        started = time.monotonic()

        async def commit(pushed):               # the commit point: one PUT
            job, manifest = pushed[0]
            if manifest is not None:
                await job.put_manifest(manifest)

        [(job, manifest)], corrupt = await self.upload(
            pool, state, [snap], commit, progress=progress, grace=grace, base_entry=base_entry)
        return {"snapshot": snap.full_name, "remote": self.url, "chunks": snap.nchunks,
                "uploaded_chunks": job.uploaded_chunks, "uploaded_bytes": job.uploaded_bytes,
                "skipped_chunks": snap.nchunks - job.uploaded_chunks,
                "manifest_written": manifest is not None, "seconds": time.monotonic() - started,
                "corrupt_objects": [str(exc) for _, exc in sorted(corrupt.items())]}

    async def upload(self, pool, state, snaps, commit, *, progress=None, grace=3600,
                     base_entry=None, named=True):
        """Chunks, then segments, of each of `snaps` under one push lock kept
        fresh meanwhile; then `await commit([(job, manifest)])`, shielded
        and still under the lock. A manifest is None when the same one is
        already there under the snapshot's name (`named`: else manifests
        are built for a commit that stores them elsewhere, the registry's
        versions). Returns ([(job, manifest)], {key: Corrupt} of the packs
        whose header does not read)."""
        with trio.CancelScope(shield=True):         # a lock written is a lock dropped
            lock = await self.run(self.chunks.take_lock, "push", grace)
        try:
            async with single_errors():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._refresh_lock, lock, grace)
                    corrupt = await self.load_index(state)
                    pushed = []
                    for snap in snaps:
                        job = PushJob(self, pool, state, snap, progress, base_entry, named)
                        await job.upload_chunks()
                        pushed.append((job, await job.write_segments()))
                    with trio.CancelScope(shield=True):
                        await commit(pushed)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.run(self.chunks.drop_lock, lock)
        return pushed, corrupt

    async def _refresh_lock(self, lock, grace):
        """Rewrite our lock well within the grace period, so a long push stays
        protected from GC (a lock older than the grace counts as stale)."""
        while True:
            await trio.sleep(max(grace / 4, 0.05))
            with trio.CancelScope(shield=True):     # not to land after the lock is dropped
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
        out, per = {}, manifest["segment_chunks"]
        for seg_no, group in itertools.groupby(sorted(set(chunks)), key=lambda c: c // per):
            key = manifest["segments"][seg_no]
            seg = await self.segment(key)
            check_segment_fits(seg, key, manifest, seg_no)
            packs, entries = seg["packs"], seg["chunks"]
            for c in group:
                e = entries[c % per]
                out[c] = None if e is None else (e[0], packs[e[1]], e[2], e[3])
        return out

    async def fetch(self, manifest, chunks, chunk_size, *, on_demand=False, required=None):
        """{chunk: bytes or None (zeros)} for manifest chunks, verified. A chunk
        that fails verification raises if it is `required` (default: all),
        else it is left out (read-ahead). All of it within the remote's
        deadline, however many requests it takes: RemoteError after that."""
        deadline = self.objects.deadline
        with trio.move_on_after(deadline):
            return await self._fetch(manifest, chunks, chunk_size, on_demand, required)
        raise RemoteError(f"{self.url}: no answer within {deadline:.0f}s (the remote's deadline)"
                          ": is it reachable and answering?")

    async def _fetch(self, manifest, chunks, chunk_size, on_demand, required):
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
