"""One push of a snapshot to a remote: hash, dedup, pack, upload; then the
segments and, last, the manifest.

Invariants:
- The caller holds the snapshot for the whole push (Control.push), so its
  frozen slots are neither freed nor reused meanwhile: the worker thread
  reads them through the engine's `read_frozen`.
- Chunks are uploaded (in packs) before the segments naming them, segments
  before the manifest, so a manifest is only visible once every chunk it
  names is there. A chunk whose hash is in the chunk index is never
  uploaded again; an interrupted or cancelled push leaves only unreferenced
  packs (recorded in remote.db as they are uploaded, and when it ends), which
  the next push finds in the index (resume) and GC removes later. A pack
  PUT in flight when the push is cancelled completes first (shielded; one
  request, bounded by the remote's deadline), so a cancelled push has
  recorded every pack it will ever have uploaded.
- The manifest is built by `write_segments` and written by `put_manifest`,
  a step of its own, so the caller decides where the push commits.
- The slot hashes it learns are cached through the engine and committed
  with the next commit.
- A manifest for a registry version (`named` False) is built, not written,
  and nothing under manifests/ is read or compared.
- A manifest already there under the snapshot's name is kept if it has the
  same content and is sealed (format 2); one of format 1 with the same
  content is rewritten sealed; one with other content, or one that does not
  read (Corrupt), is never overwritten: the push fails and says so.
"""

import trio

from .chunks import PACK_BYTES, PACK_CHUNKS, SEGMENT_CHUNKS, chunk_hash, compress, new_manifest
from .formats import FORMAT
from ..errors import AlreadyExists, Corrupt, NotFound, RemoteError, single_errors

HASH_BATCH = 256               # chunks hashed per worker-thread hop
SAVE_PACKS = 64                # uploaded packs recorded in remote.db per transaction


class PushJob:
    """One push: hash, dedup, pack, upload; then segments and the manifest."""

    def __init__(self, remote, pool, state, snap, progress, base_entry, named=True):
        self.remote, self.pool, self.state, self.snap = remote, pool, state, snap
        self.named = named                       # the manifest goes to manifests/NAME
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
        slots, cold = self.pool.frozen_chunks(self.snap, start, stop)
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
            self.pool.read_frozen(slot, memoryview(buf))
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
            with trio.CancelScope(shield=True):     # lands and is recorded, cancelled or not
                key, size, entries = await self.remote.run(self.remote.chunks.put_pack, items)
        finally:
            self.inflight.release()
        self.unsaved[key] = entries
        if len(self.unsaved) >= SAVE_PACKS:
            self._save_packs()
        self.remote.uploaded(key, entries)
        self.uploaded_chunks += len(items)
        self.uploaded_bytes += size
        self._advance(len(items))

    def _save_packs(self):
        packs, self.unsaved = self.unsaved, {}
        self.state.add_packs(self.remote.url, packs)

    async def write_segments(self):
        """The segments, all at once and together with reading the manifest
        already there (if any); the manifest to write last (put_manifest),
        or None when the same one is there already."""
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
            except Corrupt as exc:
                raise Corrupt(f"{exc}; it is left as it is: delete it there first "
                              f"(rokfs remote rm {snap.full_name}) and push again") from None

        async with single_errors():
            async with trio.open_nursery() as nursery:
                if self.named:
                    nursery.start_soon(get_old)
                for i, first in enumerate(firsts):
                    nursery.start_soon(put_segment, i, first)
        if old and self._already_there(old[0], segments):
            return None     # already pushed, and sealed: nothing to write
        parent = self.state.base(snap.base)["name"] if snap.base else None
        return new_manifest(snap.full_name, snap.size, self.cs, snap.labels, parent,
                            segments, snap.nchunks)

    async def put_manifest(self, manifest):
        self.uploaded_bytes += await self.remote.run(self.remote.chunks.put_manifest, manifest)

    def _already_there(self, old, segments):
        """True if `old`, the manifest under the snapshot's name, is this
        snapshot's and sealed; False if it is this snapshot's of format 1
        (to be rewritten sealed); AlreadyExists if it holds other content."""
        if old["segments"] != segments or old["size"] != self.snap.size:
            raise AlreadyExists(f"{self.snap.full_name} already exists on {self.remote.url} "
                                "with other content; delete it there first")
        return old["format"] == FORMAT

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
