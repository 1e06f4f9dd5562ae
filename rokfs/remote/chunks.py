"""The chunk store: deduplicated, compressed, content-addressed chunks in packs,
and snapshot manifests, over any ObjectStore.

Layout under the store:
  packs/<blake3 of its header> "RKPK1\\n" + 4-byte header length + JSON header
                               {"chunks": [[hash, offset, length], ...]} + lz4 frames
  segments/<blake3>            JSON {"packs": [...], "chunks": [null | [hash, pack#,
                               offset, length], ...]} for SEGMENT_CHUNKS chunks in order
  manifests/<VOL@SNAP>         JSON: format, name, size, chunk_size, labels, parent,
                               created, segments (keys), segment_chunks, chunks
  locks/push-<id>, locks/gc-<id>   liveness markers (see gc)

Invariants:
- A chunk's hash is blake3 of its uncompressed bytes; every chunk read is
  decompressed and checked against it before anyone sees it (Corrupt).
- All-zero chunks are never stored (null in the segment).
- Objects are immutable once written; a manifest is written after every
  pack and segment it names, so a visible manifest is always complete.
- GC deletes a pack or segment only if no manifest references it, it is
  older than the grace period, and no push holds a fresh lock. A push
  writes its lock and then looks for GC locks; GC writes its lock and then
  looks for push locks: on a consistent store at least one sees the other.
"""

import functools
import json
import os
import struct
import threading
import time
import uuid

import blake3
import lz4.frame

from .. import names
from ..errors import AlreadyExists, Busy, Corrupt, InvalidArgument, NotFound

FORMAT = 1
PACK_MAGIC = b"RKPK1\n"
SEGMENT_CHUNKS = 16384
PACK_CHUNKS = 128              # 4 MiB packs at 32 KiB chunks
PACK_BYTES = 8 << 20           # cap for big chunk sizes; 64 KiB chunks fill by count
HEADER_PROBE = 16384            # one ranged GET holds the header of a full pack (~10.6 KB)
CLOCK_SLACK = 1.0   # S3's LastModified has whole seconds: a lock is stale only after grace + this


def chunk_hash(data):
    return blake3.blake3(data).hexdigest()


def is_zero(data):
    return not any(memoryview(data).cast("B")) if len(data) < 64 else \
        data == bytes(len(data))


def compress(data):
    """lz4 frame of `data` (any buffer: no copy of it is made first)."""
    return lz4.frame.compress(data, compression_level=0)


_per_thread = threading.local()


def decompress(frame):
    """The content of one lz4 frame, as a bytearray (ValueError if the frame
    is cut short). Each thread reuses one decompression context: a new one
    per call mmaps and unmaps its buffers in glibc, ~25 us per 32 KiB chunk
    against ~1.4 us reused."""
    context = getattr(_per_thread, "lz4", None)
    if context is None:
        context = _per_thread.lz4 = lz4.frame.LZ4FrameDecompressor(return_bytearray=True)
    try:
        data = context.decompress(frame)
        if not context.eof:
            raise ValueError("frame incomplete")
        return data
    finally:
        context.reset()


@functools.lru_cache(maxsize=8)
def _stored_prefix(size):
    """What lz4 writes before a stored (incompressible) chunk of `size`
    bytes (frame header and block size), learned from lz4 itself; None if
    it does not store such a chunk as one block."""
    data = os.urandom(size)
    frame = compress(data)
    prefix = frame[:-size - 4]
    stored = 7 <= len(prefix) <= 23 and frame[len(prefix):-4] == data \
        and frame.endswith(b"\0\0\0\0")
    return prefix if stored else None


def stored_content(frame, size):
    """The content of a frame that holds `size` bytes stored as they are
    (lz4's choice for data that does not compress), as a view into `frame`
    with no copy; None for any other frame (decompress it)."""
    prefix = _stored_prefix(size)
    view = memoryview(frame)
    if prefix is None or len(view) != len(prefix) + size + 4 or view[:len(prefix)] != prefix:
        return None
    return view[len(prefix):len(prefix) + size]


def open_chunk(frame, want_hash, chunk_size):
    """Decompress and verify one chunk; Corrupt if it is not what the hash says.
    Stored (incompressible) chunks come back as a view into `frame`."""
    data = stored_content(frame, chunk_size)
    try:
        if data is None:
            data = decompress(frame)
    except Exception as exc:
        raise Corrupt(f"chunk {want_hash[:16]}: bad lz4 frame ({exc})") from None
    if len(data) != chunk_size or chunk_hash(data) != want_hash:
        raise Corrupt(f"chunk {want_hash[:16]}: content does not match its hash")
    return data


def build_pack(items):
    """items: [(hash, frame)] -> (key, body, [(hash, offset, length)]). The
    body is a bytearray, made with one copy of the frames: boto3 sends it as
    it is (a bytes body would be wrapped in a BytesIO and read back in 1 MiB
    copies for its checksum, and sent after a 100-continue round trip)."""
    header_len = 0
    while True:
        offset = len(PACK_MAGIC) + 4 + header_len
        entries = []
        for h, frame in items:
            entries.append([h, offset, len(frame)])
            offset += len(frame)
        header = json.dumps({"chunks": entries}, separators=(",", ":")).encode()
        if len(header) == header_len:
            break
        header_len = len(header)
    body = bytearray().join([PACK_MAGIC, struct.pack(">I", len(header)), header,
                             *(frame for _, frame in items)])
    # the header names every chunk by hash and place: it identifies the pack
    return "packs/" + chunk_hash(header), body, entries


def parse_pack_header(prefix, fetch_more):
    """Entries of a pack from its first bytes; fetch_more(n) reads the first n."""
    if prefix[:len(PACK_MAGIC)] != PACK_MAGIC:
        raise Corrupt("pack object without the pack magic")
    (n,) = struct.unpack(">I", prefix[len(PACK_MAGIC):len(PACK_MAGIC) + 4])
    need = len(PACK_MAGIC) + 4 + n
    if len(prefix) < need:
        prefix = fetch_more(need)
    try:
        return json.loads(prefix[len(PACK_MAGIC) + 4:need])["chunks"]
    except (ValueError, KeyError) as exc:
        raise Corrupt(f"pack header unreadable: {exc}") from None


def manifest_key(name):
    names.split_snapshot(name)
    return "manifests/" + name


class ChunkStore:
    """Blocking operations on one remote; run them in worker threads."""

    def __init__(self, objects):
        self.objects = objects
        self.url = objects.url

    # -- packs ----------------------------------------------------------------
    def put_pack(self, items):
        key, body, entries = build_pack(items)
        self.objects.put(key, body)
        return key, len(body), entries

    def pack_entries(self, key):
        first = self.objects.get(key, 0, HEADER_PROBE)
        return parse_pack_header(first, lambda n: self.objects.get(key, 0, n))

    def read_range(self, key, start, end):
        data = self.objects.get(key, start, end)
        if len(data) != end - start:
            raise Corrupt(f"{key}: short read ({len(data)} of {end - start} bytes)")
        return data

    # -- segments and manifests -------------------------------------------------
    def put_segment(self, segment):
        body = json.dumps(segment, separators=(",", ":")).encode()
        key = "segments/" + chunk_hash(body)
        if self.objects.exists(key):
            return key, 0
        self.objects.put(key, body)
        return key, len(body)

    def get_segment(self, key):
        body = self.objects.get(key)
        if "segments/" + chunk_hash(body) != key:
            raise Corrupt(f"{key}: content does not match its hash")
        return json.loads(body)

    def put_manifest(self, manifest):
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self.objects.put(manifest_key(manifest["name"]), body)
        return len(body)

    def get_manifest(self, name):
        try:
            manifest = json.loads(self.objects.get(manifest_key(name)))
        except NotFound:
            raise NotFound(f"no snapshot {name!r} on {self.url}") from None
        except ValueError as exc:
            raise Corrupt(f"manifest {name}: not JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise Corrupt(f"manifest {name} has format {manifest.get('format')}, "
                          f"this rokfs reads format {FORMAT}")
        return manifest

    def manifest_names(self):
        return [o.key[len("manifests/"):] for o in self.objects.list("manifests/")]

    def list_manifests(self):
        out = []
        for name in self.manifest_names():
            try:
                out.append(self.get_manifest(name))
            except NotFound:
                continue
        return out

    def delete_manifest(self, name):
        key = manifest_key(name)
        if not self.objects.exists(key):
            raise NotFound(f"no snapshot {name!r} on {self.url}")
        self.objects.delete(key)

    # -- locks ------------------------------------------------------------------
    def take_lock(self, kind, grace):
        """Write our lock, then refuse if the other kind holds a fresh one."""
        key = f"locks/{kind}-{uuid.uuid4().hex}"
        self.objects.put(key, json.dumps({"time": time.time()}).encode())
        other = "gc" if kind == "push" else "push"
        now = time.time()
        for obj in self.objects.list("locks/"):
            if obj.key.startswith(f"locks/{other}-") and now - obj.mtime < grace + CLOCK_SLACK:
                self.objects.delete(key)
                raise Busy(f"{self.url}: a {other} is running; try again later")
        return key

    def drop_lock(self, key):
        self.objects.delete(key)

    # -- garbage collection -----------------------------------------------------
    def gc(self, grace):
        lock = self.take_lock("gc", grace)
        try:
            live = self._mark()
            return self._sweep(live, grace)
        finally:
            self.drop_lock(lock)

    def _mark(self):
        live = set()
        for manifest in self.list_manifests():
            for key in manifest["segments"]:
                live.add(key)
                live.update(self.get_segment(key)["packs"])
        return live

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


__all__ = ["ChunkStore", "AlreadyExists"]
