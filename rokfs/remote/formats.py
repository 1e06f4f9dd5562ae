"""The objects on a remote as bytes: how rokfs writes pack headers, segments
and manifests, and how it reads them back.

Everything read from a remote is untrusted input. The decoders here are the
only way rokfs turns such bytes into values: they return values that hold
every invariant below, or raise Corrupt naming the object key and what is
wrong, never any other exception.

Invariants of what a decoder returns:
- pack header (`packs/<h>`): blake3 of the header bytes is <h> (or, for packs
  written before the key named the header, blake3 of the whole pack); 1 or
  more entries [hash, offset, length] whose frames lie end to end from the
  end of the header to the end of the pack.
- segment (`segments/<h>`): blake3 of the body is <h>; `packs` are distinct
  pack keys; `chunks` holds 1 to MAX_SEGMENT_CHUNKS entries, each null (an
  all-zero chunk) or [hash, pack number < len(packs), offset, length].
- manifest (`manifests/<VOLUME@SNAP>`): format 2 starts with a one-line head
  holding blake3 of the body that follows, and the body matches it; format
  1 (older rokfs) has no head and is read unverified. In both, `name` is the
  key's name, `chunks` is size / chunk_size rounded up, `segments` holds
  exactly chunks / segment_chunks (rounded up) segment keys, labels follow
  the rules of rokfs.names, `parent` is null or a snapshot name.
- Hashes are 64 lowercase hex digits; counts, sizes and offsets are JSON
  integers (never booleans or fractions); JSON is UTF-8 without repeated
  keys, NaN or Infinity.
"""

import json
import re

import blake3

from .. import names
from ..errors import Corrupt, InvalidArgument

FORMAT = 2                     # the manifest format this rokfs writes
UNVERIFIED_FORMAT = 1          # manifests of older rokfs: no hash, read unverified
HEAD_KEYS = ("format", "hash")
HEAD_RESERVED = ("signature",)  # the registry's, checked there (see docs/remote.md)
MANIFEST_KEYS = ("chunk_size", "chunks", "created", "format", "labels", "name", "parent",
                 "segment_chunks", "segments", "size")
PACK_MAGIC = b"RKPK1\n"
PACK_PREFIX = len(PACK_MAGIC) + 4              # magic, then the header's length
HEADER_PROBE = 16384           # one ranged GET holds the header of a full pack (~10.6 KB)
MAX_PACK_HEADER = 1 << 20
MAX_MANIFEST_HEAD = 4096
MAX_SEGMENT_CHUNKS = 1 << 20
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 4096, 16 << 20  # the chunk sizes a pool may have
MAX_CHUNKS = 1 << 30           # the most chunks of a volume (extentmap.MAX_CHUNKS)
SECTOR = 512
MAX_OBJECT = 1 << 40
MAX_TIME = 1e11                # seconds since 1970: year 5138
_HASH = re.compile(r"[0-9a-f]{64}")


def chunk_hash(data):
    """blake3 in hex: a chunk's name, and the key of a segment or a pack."""
    return blake3.blake3(data).hexdigest()


def frame_bound(chunk_size):
    """The longest lz4 frame of one chunk (stored blocks plus headers), generously."""
    return chunk_size + chunk_size // 1024 + 64


MAX_FRAME = frame_bound(MAX_CHUNK_SIZE)


# -- checks -------------------------------------------------------------------------

def _describe(value):
    kind = {dict: "object", list: "array", str: "string", bool: "boolean", bytes: "bytes",
            type(None): "null"}.get(type(value), "number")
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 48 else shown[:45] + '...'}"


def _require(ok, key, what, value):
    if not ok:
        raise Corrupt(f"{key}: {what}, not {_describe(value)}")


def _fail(key, what):
    raise Corrupt(f"{key}: {what}")


def _is_int(value, lo, hi):
    return type(value) is int and lo <= value <= hi


def _is_hash(value):
    return type(value) is str and _HASH.fullmatch(value) is not None


def _is_key(value, prefix):
    return type(value) is str and value.startswith(prefix) and _is_hash(value[len(prefix):])


def _hash_of_key(key, prefix):
    """<h> of a key `prefix<h>`; Corrupt for any other key."""
    _require(_is_key(key, prefix), key, f"the key must be {prefix}<64 hex digits>", key)
    return key[len(prefix):]


def _object(value, key, what, keys, optional=()):
    _require(isinstance(value, dict), key, f"{what} must be a JSON object", value)
    missing = [k for k in keys if k not in value]
    if missing:
        raise Corrupt(f"{key}: {what} lacks {', '.join(map(repr, missing))}")
    extra = sorted(k for k in value if k not in keys and k not in optional)
    if extra:
        raise Corrupt(f"{key}: {what} has unknown {', '.join(map(repr, extra))}")
    return value


def _no_repeats(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a key is repeated in an object")
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _json(data, key, what):
    try:
        return json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_repeats,
                          parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise Corrupt(f"{key}: {what} is not UTF-8 JSON ({str(exc)[:80]})") from None


# -- pack headers -----------------------------------------------------------------

def encode_pack(items):
    """items: [(hash, frame)] -> (key, body, entries). The header names every
    chunk by hash and place, and its hash is the key. The body is a
    bytearray, made with one copy of the frames: boto3 sends it as it is (a
    bytes body would be wrapped in a BytesIO and read back in 1 MiB copies
    for its checksum, and sent after a 100-continue round trip)."""
    header_len = 0
    while True:
        offset = PACK_PREFIX + header_len
        entries = []
        for h, frame in items:
            entries.append([h, offset, len(frame)])
            offset += len(frame)
        header = json.dumps({"chunks": entries}, separators=(",", ":")).encode()
        if len(header) == header_len:
            break
        header_len = len(header)
    body = bytearray().join([PACK_MAGIC, len(header).to_bytes(4, "big"), header,
                             *(frame for _, frame in items)])
    return "packs/" + chunk_hash(header), body, entries


def decode_pack_header(key, size, read):
    """The entries [hash, offset, length] of the pack `key` of `size` bytes
    (from the listing); read(start, end) reads its bytes. One read for a
    header within HEADER_PROBE; a pack whose key is not its header's hash
    is read whole, to check it against the key as older rokfs made it."""
    want = _hash_of_key(key, "packs/")
    _require(_is_int(size, PACK_PREFIX, MAX_OBJECT), key,
             f"a pack has at least {PACK_PREFIX} bytes", size)
    first = _read_exactly(read, key, min(size, HEADER_PROBE))
    _require(first[:len(PACK_MAGIC)] == PACK_MAGIC, key, "a pack starts with RKPK1",
             first[:len(PACK_MAGIC)])
    end = PACK_PREFIX + int.from_bytes(first[len(PACK_MAGIC):PACK_PREFIX], "big")
    _require(end <= min(size, PACK_PREFIX + MAX_PACK_HEADER), key,
             f"the header must end within the pack's {size} bytes", end)
    if len(first) < end:
        first = _read_exactly(read, key, end)
    header = first[PACK_PREFIX:end]
    if chunk_hash(header) != want and chunk_hash(_read_exactly(read, key, size)) != want:
        _fail(key, "the header does not match the key")
    entries = _object(_json(header, key, "the header"), key, "the header", ("chunks",))["chunks"]
    _check_pack_layout(entries, key, end, size)
    return entries


def _read_exactly(read, key, n):
    data = bytes(read(0, n))
    _require(len(data) == n, key, f"a read of its first {n} bytes must return them all",
             len(data))
    return data


def _check_pack_layout(entries, key, start, size):
    _require(isinstance(entries, list) and entries, key, "chunks must be a non-empty array",
             entries)
    offset = start
    for i, entry in enumerate(entries):
        _require(type(entry) is list and len(entry) == 3 and _is_hash(entry[0])
                 and _is_int(entry[1], offset, offset) and _is_int(entry[2], 1, MAX_FRAME), key,
                 f"chunks[{i}] must be [hash, {offset} (the end of the one before), length]",
                 entry)
        offset += entry[2]
    _require(offset == size, key, f"the frames must end at the end of the pack ({size})",
             offset)


# -- segments --------------------------------------------------------------------

def encode_segment(segment):
    """-> (key, body)."""
    body = json.dumps(segment, separators=(",", ":")).encode()
    return "segments/" + chunk_hash(body), body


def decode_segment(data, key):
    """The segment {"packs": [...], "chunks": [...]} stored as `key`."""
    if chunk_hash(data) != _hash_of_key(key, "segments/"):
        _fail(key, "the content does not match the key")
    segment = _object(_json(data, key, "the segment"), key, "the segment", ("chunks", "packs"))
    packs, chunks = segment["packs"], segment["chunks"]
    _require(isinstance(packs, list) and all(_is_key(p, "packs/") for p in packs)
             and len(set(packs)) == len(packs), key,
             "packs must be an array of distinct pack keys", packs)
    _require(isinstance(chunks, list) and 1 <= len(chunks) <= MAX_SEGMENT_CHUNKS, key,
             f"chunks must be an array of 1 to {MAX_SEGMENT_CHUNKS} entries", chunks)
    columns = _segment_columns(len(packs))
    if not _are_rows([e for e in chunks if e is not None], columns):
        _fail(key, _first_bad_entry(chunks, columns))
    return segment


def _segment_columns(npacks):
    """(field, rule, check of a column) of each field of a segment's chunk entry."""
    return (("hash", "64 lowercase hex digits", _are_hashes),
            ("pack number", f"an integer below {npacks}", lambda v: _are_ints(v, 0, npacks - 1)),
            ("offset", f"an integer from {PACK_PREFIX}",
             lambda v: _are_ints(v, PACK_PREFIX, MAX_OBJECT)),
            ("length", f"an integer from 1 to {MAX_FRAME}", lambda v: _are_ints(v, 1, MAX_FRAME)))


def _are_rows(rows, columns):
    """Are all `rows` arrays whose fields pass `columns`? Checked a column
    at a time: a segment has 16384 rows."""
    if not rows:
        return True
    if not set(map(type, rows)) <= {list} or not set(map(len, rows)) <= {len(columns)}:
        return False
    return all(check(values) for (*_, check), values in zip(columns, zip(*rows)))


def _first_bad_entry(chunks, columns):
    """What is wrong with the first entry of `chunks` that is not null and
    fails `columns`."""
    i, entry = next((i, e) for i, e in enumerate(chunks)
                    if e is not None and not _are_rows([e], columns))
    if type(entry) is not list or len(entry) != len(columns):
        return (f"chunks[{i}] must be null or [{', '.join(field for field, *_ in columns)}], "
                f"not {_describe(entry)}")
    field, rule, value = next((field, rule, v) for (field, rule, check), v
                              in zip(columns, entry) if not check([v]))
    return f"chunks[{i}]: the {field} must be {rule}, not {_describe(value)}"


def _are_hashes(values):
    return (set(map(type, values)) <= {str} and set(map(len, values)) <= {64}
            and not "".join(values).encode().translate(None, b"0123456789abcdef"))


def _are_ints(values, lo, hi):
    return set(map(type, values)) <= {int} and lo <= min(values) and max(values) <= hi


def check_segment_fits(segment, key, manifest, seg_no):
    """Corrupt unless segment `seg_no` of `manifest` has as many chunks as it must."""
    per = manifest["segment_chunks"]
    want = min(per, manifest["chunks"] - seg_no * per)
    _require(len(segment["chunks"]) == want, key,
             f"segment {seg_no} of {manifest['name']} must hold {want} chunks",
             len(segment["chunks"]))


# -- manifests -------------------------------------------------------------------

def encode_manifest(manifest):
    """A one-line head {"format": 2, "hash": blake3 of the body}, then the
    body: the manifest as indented JSON. Checked as a reader checks it."""
    key = manifest_key(manifest["name"])
    check_manifest(manifest, key, manifest["name"], FORMAT)
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    head = json.dumps({"format": FORMAT, "hash": chunk_hash(body)}, separators=(",", ":"))
    return head.encode() + b"\n" + body


def decode_manifest(data, key):
    """The manifest stored as `key`. Format 2: its head's hash checked
    against its body. A first line that is not a JSON object of another
    format means format 1, the whole object being the manifest: older
    rokfs wrote it indented, without a head."""
    name = manifest_name(key)
    data = bytes(data)
    line, _, body = data.partition(b"\n")
    try:
        head = _json(line[:MAX_MANIFEST_HEAD], key, "the head")
    except Corrupt:
        head = None
    if not isinstance(head, dict) or _is_int(head.get("format"), UNVERIFIED_FORMAT,
                                             UNVERIFIED_FORMAT):
        return check_manifest(_json(data, key, "the manifest"), key, name, UNVERIFIED_FORMAT)
    _check_head(head, key)
    if chunk_hash(body) != head["hash"]:
        _fail(key, "the body does not match the hash in the head")
    return check_manifest(_json(body, key, "the body"), key, name, FORMAT)


def _check_head(head, key):
    _require(_is_int(head.get("format"), FORMAT, FORMAT), key,
             f"format must be {UNVERIFIED_FORMAT} or {FORMAT} (a newer rokfs wrote it?)",
             head.get("format"))
    _object(head, key, "the head", HEAD_KEYS, HEAD_RESERVED)
    _require(_is_hash(head["hash"]), key, "hash must be 64 hex digits", head["hash"])
    if "signature" in head:
        _require(isinstance(head["signature"], dict), key, "signature must be an object",
                 head["signature"])


def check_manifest(manifest, key, name, fmt=None):
    """`manifest` itself if its fields hold the invariants, it is snapshot
    `name`'s and (if given) of format `fmt`; else Corrupt naming `key`.
    Also for manifests kept locally (a pulled volume's base)."""
    m = _object(manifest, key, "the manifest", MANIFEST_KEYS)
    lo, hi = (fmt, fmt) if fmt else (UNVERIFIED_FORMAT, FORMAT)
    _require(_is_int(m["format"], lo, hi), key, f"format must be {fmt or f'{lo} or {hi}'}",
             m["format"])
    _require(m["name"] == name, key, f"name must be {name!r}", m["name"])
    _check_geometry(m, key)
    _check_segments(m, key)
    _check_labels(m["labels"], key)
    _require(m["parent"] is None or _is_snapshot_name(m["parent"]), key,
             "parent must be null or a snapshot name", m["parent"])
    _require(type(m["created"]) in (int, float) and 0 <= m["created"] <= MAX_TIME, key,
             "created must be a time in seconds", m["created"])
    return m


def _check_geometry(m, key):
    cs = m["chunk_size"]
    _require(_is_int(cs, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE) and not cs & (cs - 1), key,
             f"chunk_size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}", cs)
    _require(_is_int(m["size"], 0, MAX_CHUNKS * cs) and m["size"] % SECTOR == 0, key,
             f"size must be a whole number of {SECTOR}-byte sectors up to {MAX_CHUNKS} chunks",
             m["size"])
    chunks = -(-m["size"] // cs)
    _require(_is_int(m["chunks"], chunks, chunks), key,
             f"chunks must be {chunks} (size {m['size']} in {cs}-byte chunks)", m["chunks"])


def _check_segments(m, key):
    per = m["segment_chunks"]
    _require(_is_int(per, 1, MAX_SEGMENT_CHUNKS), key,
             f"segment_chunks must be from 1 to {MAX_SEGMENT_CHUNKS}", per)
    count = -(-m["chunks"] // per)
    _require(isinstance(m["segments"], list) and len(m["segments"]) == count, key,
             f"segments must be an array of {count} keys ({m['chunks']} chunks, {per} a segment)",
             m["segments"])
    for i, seg in enumerate(m["segments"]):
        _require(_is_key(seg, "segments/"), key, f"segments[{i}] must be a segment key", seg)


def _check_labels(labels, key):
    _require(isinstance(labels, dict), key, "labels must be an object", labels)
    try:
        names.check_labels(labels)
    except InvalidArgument as exc:
        raise Corrupt(f"{key}: labels: {exc}") from None


def _is_snapshot_name(name):
    try:
        names.split_snapshot(name)
        return True
    except InvalidArgument:
        return False


def manifest_key(name):
    """The key of snapshot `name`'s manifest (InvalidArgument for a bad name)."""
    names.split_snapshot(name)
    return "manifests/" + name


def manifest_name(key):
    """The snapshot name in a manifest key; Corrupt if it is not one."""
    name = key[len("manifests/"):]
    _require(key.startswith("manifests/") and _is_snapshot_name(name), key,
             "the key must be manifests/VOLUME@SNAP", key)
    return name
