"""The chunk store: deduplicated, compressed, content-addressed chunks in packs,
and snapshot manifests, over any ObjectStore.

Layout under the store (the bytes of each object: formats.py):
  packs/<blake3 of its header> "RKPK1\\n" + 4-byte header length + JSON header
                               {"chunks": [[hash, offset, length], ...]} + lz4 frames
  segments/<blake3>            JSON {"packs": [...], "chunks": [null | [hash, pack#,
                               offset, length], ...]} for SEGMENT_CHUNKS chunks in order
  manifests/<VOL@SNAP>         a head line {"format": 2, "hash": blake3 of the body},
                               then the body, JSON: format, name, size, chunk_size,
                               labels, parent, created, segments (keys), segment_chunks,
                               chunks
  locks/push-<id>, locks/gc-<id>   liveness markers (see gc)

Invariants:
- A chunk's hash is blake3 of its uncompressed bytes; every chunk read is
  decompressed (to at most one chunk's size) and checked against it before
  anyone sees it (Corrupt).
- Every pack header, segment and manifest read goes through a decoder of
  formats.py: what comes back holds that module's invariants, anything
  else is Corrupt naming the key.
- All-zero chunks are never stored (null in the segment).
- Objects are immutable once written; a manifest is written after every
  pack and segment it names, so a visible manifest is always complete.
- GC deletes a pack or segment only if no manifest (nor registry version
  or fresh subscriber lease: the `roots` of gc) references it, it is
  older than the grace period, and no push holds a fresh lock (fresh for
  the lease its holder declared in it); and nothing
  at all unless every manifest and every segment they name reads well. A
  push writes its lock and then looks for GC locks; GC writes its lock and
  then looks for push locks: on a consistent store at least one sees the
  other.
"""

import functools
import json
import logging
import os
import threading
import time
import uuid

import lz4.frame

from ..errors import AlreadyExists, Busy, Corrupt, InvalidArgument, NotFound
from .formats import (FORMAT, UNVERIFIED_FORMAT, chunk_hash, decode_manifest,
                      decode_pack_header, decode_segment, encode_manifest, encode_pack,
                      encode_segment, manifest_key)

log = logging.getLogger("rokfs.remote")

SEGMENT_CHUNKS = 16384
PACK_CHUNKS = 128              # 4 MiB packs at 32 KiB chunks
PACK_BYTES = 8 << 20           # cap for big chunk sizes; 64 KiB chunks fill by count
CLOCK_SLACK = 1.0   # S3's LastModified has whole seconds: a lock is stale only after grace + this


def is_zero(data):
    return not any(memoryview(data).cast("B")) if len(data) < 64 else \
        data == bytes(len(data))


def compress(data):
    """lz4 frame of `data` (any buffer: no copy of it is made first)."""
    return lz4.frame.compress(data, compression_level=0)


_per_thread = threading.local()


def decompress(frame, limit):
    """The content of one lz4 frame, as a bytearray; ValueError if the frame
    is cut short or holds more than `limit` bytes (it is never decoded
    further than that). Each thread reuses one decompression context: a
    new one per call mmaps and unmaps its buffers in glibc, ~25 us per
    32 KiB chunk against ~1.4 us reused."""
    context = getattr(_per_thread, "lz4", None)
    if context is None:
        context = _per_thread.lz4 = lz4.frame.LZ4FrameDecompressor(return_bytearray=True)
    try:
        data = context.decompress(frame, max_length=limit)
        if not context.eof:
            raise ValueError(f"not one whole frame of at most {limit} bytes")
        return data
    finally:
        context.reset()


END_MARK = b"\0\0\0\0"       # an lz4 frame's last block size: zero


@functools.lru_cache(maxsize=8)
def _stored_prefix(size):
    """What lz4 writes before a stored (incompressible) chunk of `size`
    bytes (frame header and block size), learned from lz4 itself; None if
    it does not store such a chunk as one block."""
    data = os.urandom(size)
    frame = compress(data)
    prefix = frame[:-size - 4]
    stored = 7 <= len(prefix) <= 23 and frame[len(prefix):-4] == data \
        and frame.endswith(END_MARK)
    return prefix if stored else None


def stored_content(frame, size):
    """The content of a frame that holds `size` bytes stored as they are
    (lz4's choice for data that does not compress), as a view into `frame`
    with no copy; None for any other frame (decompress it)."""
    prefix = _stored_prefix(size)
    view = memoryview(frame)
    if prefix is None or len(view) != len(prefix) + size + 4 or view[:len(prefix)] != prefix \
            or view[-4:] != END_MARK:
        return None
    return view[len(prefix):len(prefix) + size]


def open_chunk(frame, want_hash, chunk_size):
    """Decompress and verify one chunk; Corrupt if it is not what the hash says.
    Stored (incompressible) chunks come back as a view into `frame`."""
    data = stored_content(frame, chunk_size)
    try:
        if data is None:
            data = decompress(frame, chunk_size)
    except Exception as exc:
        raise Corrupt(f"chunk {want_hash[:16]}: bad lz4 frame ({exc})") from None
    if len(data) != chunk_size or chunk_hash(data) != want_hash:
        raise Corrupt(f"chunk {want_hash[:16]}: content does not match its hash")
    return data


class ChunkStore:
    """Blocking operations on one remote; run them in worker threads."""

    def __init__(self, objects):
        self.objects = objects
        self.url = objects.url
        self._warned_unverified = set()

    # -- packs ----------------------------------------------------------------
    def put_pack(self, items):
        key, body, entries = encode_pack(items)
        self.objects.put(key, body)
        return key, len(body), entries

    def pack_entries(self, key, size):
        """The entries of pack `key`, `size` bytes long (as listed)."""
        return decode_pack_header(key, size, lambda start, end: self.objects.get(key, start, end))

    def read_range(self, key, start, end):
        data = self.objects.get(key, start, end)
        if len(data) != end - start:
            raise Corrupt(f"{key}: short read ({len(data)} of {end - start} bytes)")
        return data

    # -- segments and manifests -------------------------------------------------
    def put_segment(self, segment):
        key, body = encode_segment(segment)
        if self.objects.exists(key):
            return key, 0
        self.objects.put(key, body)
        return key, len(body)

    def get_segment(self, key):
        return decode_segment(self.objects.get(key), key)

    def put_manifest(self, manifest):
        body = encode_manifest(manifest)
        self.objects.put(manifest_key(manifest["name"]), body)
        return len(body)

    def get_manifest(self, name):
        return self.read_manifest(manifest_key(name))

    def read_manifest(self, key):
        """The manifest stored as `key` (Corrupt if it does not read well)."""
        try:
            data = self.objects.get(key)
        except NotFound:
            raise NotFound(f"no snapshot {key[len('manifests/'):]!r} on {self.url}") from None
        manifest = decode_manifest(data, key)
        if manifest["format"] == UNVERIFIED_FORMAT and key not in self._warned_unverified:
            self._warned_unverified.add(key)
            log.warning("event=manifest_unverified remote=%s key=%s reason=\"format 1, written "
                        "by an older rokfs, carries no hash; push it again to seal it\"",
                        self.url, key)
        return manifest

    def survey_manifests(self):
        """([manifests that read well], {key: Corrupt} of those that do not)."""
        good, bad = [], {}
        for obj in self.objects.list("manifests/"):
            try:
                good.append(self.read_manifest(obj.key))
            except NotFound:
                continue                # deleted since the listing
            except Corrupt as exc:
                bad[obj.key] = exc
        return good, bad

    def list_manifests(self):
        """The manifests that read well; each one that does not is logged."""
        good, bad = self.survey_manifests()
        for key, exc in bad.items():
            log.warning("event=remote_object_corrupt remote=%s key=%s error=\"%s\"",
                        self.url, key, exc)
        return good

    def manifest_names(self):
        return [o.key[len("manifests/"):] for o in self.objects.list("manifests/")]

    def delete_manifest(self, name):
        key = manifest_key(name)
        if not self.objects.exists(key):
            raise NotFound(f"no snapshot {name!r} on {self.url}")
        self.objects.delete(key)

    # -- locks ------------------------------------------------------------------
    def take_lock(self, kind, grace):
        """Write our lock, then refuse if the other kind holds a fresh one.
        Our lock declares `grace` as its lease: its holder rewrites it well
        within that (store.py), so it is fresh for that long after its last
        write, whatever grace the other side runs with."""
        key = f"locks/{kind}-{uuid.uuid4().hex}"
        self.objects.put(key, json.dumps({"time": time.time(), "lease": grace}).encode())
        other = "gc" if kind == "push" else "push"
        now = time.time()
        for obj in self.objects.list("locks/"):
            if obj.key.startswith(f"locks/{other}-") and \
                    now - obj.mtime < self._lease_of(obj.key, grace) + CLOCK_SLACK:
                self.objects.delete(key)
                raise Busy(f"{self.url}: a {other} is running; try again later")
        return key

    def _lease_of(self, key, grace):
        """The lease lock `key` declares (`grace` for a lock of an older rokfs,
        or one gone or unreadable: it is judged by our own grace then)."""
        try:
            lease = json.loads(self.objects.get(key)).get("lease")
        except (NotFound, ValueError, AttributeError):
            return grace
        return lease if type(lease) in (int, float) and 0 <= lease <= 86400 else grace

    def drop_lock(self, key):
        self.objects.delete(key)

    # -- garbage collection -----------------------------------------------------
    def gc(self, grace, roots=None):
        """Delete what nothing names. `roots(grace)`, called once our lock is
        written, names more segments to keep (the registry's versions and
        subscriber leases)."""
        lock = self.take_lock("gc", grace)
        try:
            live = self._mark(roots(grace) if roots else ())
            return self._sweep(live, grace)
        finally:
            self.drop_lock(lock)

    def _mark(self, more_segments=()):
        """Every segment and pack a manifest references (and `more_segments`
        and their packs); Corrupt (and so nothing deleted) unless every
        manifest and segment reads well."""
        manifests, bad = self.survey_manifests()
        if bad:
            raise Corrupt(f"gc of {self.url} deletes nothing while a manifest does not read: "
                          + "; ".join(map(str, bad.values())))
        named = [(key, m["name"]) for m in manifests for key in m["segments"]]
        named += [(key, "a registry version or lease") for key in sorted(more_segments)]
        live = set()
        for key, owner in named:
            if key not in live:
                live.add(key)
                live.update(self._segment_for_gc(key, owner)["packs"])
        return live

    def _segment_for_gc(self, key, name):
        try:
            return self.get_segment(key)
        except (NotFound, Corrupt) as exc:
            raise Corrupt(f"gc of {self.url} deletes nothing while a segment of {name} does "
                          f"not read: {exc}") from None

    def _sweep(self, live, grace):
        now = time.time()
        deleted = deleted_bytes = kept = 0
        for obj in self.objects.list("packs/") + self.objects.list("segments/") + \
                self.objects.list("locks/"):
            stale = now - obj.mtime >= grace + (CLOCK_SLACK if obj.key.startswith("locks/") else 0)
            if obj.key in live or not stale or obj.key.startswith("locks/gc-"):
                kept += 1
                continue
            self.objects.delete(obj.key)
            deleted += 1
            deleted_bytes += obj.size
        return {"deleted_objects": deleted, "deleted_bytes": deleted_bytes,
                "kept_objects": kept}

    def usage(self):
        """Bytes stored under packs/ and segments/ (what the remote holds)."""
        return sum(o.size for o in self.objects.list("packs/") + self.objects.list("segments/"))


def new_manifest(name, size, chunk_size, labels, parent, segments, nchunks):
    if size < 0 or chunk_size <= 0:
        raise InvalidArgument("bad manifest geometry")
    return {"format": FORMAT, "name": name, "size": size, "chunk_size": chunk_size,
            "labels": dict(labels), "parent": parent, "created": time.time(),
            "segments": segments, "segment_chunks": SEGMENT_CHUNKS, "chunks": nchunks}


__all__ = ["ChunkStore", "AlreadyExists", "chunk_hash"]
