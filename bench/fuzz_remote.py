"""Fuzz targets for what rokfs reads from a remote; bench/fuzz.py runs them.

Each target takes one input of bytes. Corrupt is the only exception a
decoder may raise; what it returns must hold the invariants formats.py
promises, checked here again independently. Hash checks would stop almost
every mutated input at the door, so the targets also present each input
with its hash made right (a manifest body sealed, a segment or pack keyed
by its own hash): the checks behind the door get fuzzed too.

JSON is parsed by C code coverage does not see, so byte mutations alone
rarely get past it. The JSON objects get a mutator of their own
(`json_mutator`): it changes one value of the parsed document (another
type, a boundary number, a removed or repeated entry) and writes it back,
leaving the bytes around the JSON in place; one mutation in five is
libFuzzer's own byte-level one.

    python bench/fuzz_remote.py --write-seeds tests/fuzz_corpus
writes the seed corpus (deterministic, small).
"""

import json
import os
import random
import sys

import lz4.frame

from rokfs.errors import Corrupt
from rokfs.remote.chunks import compress, open_chunk
from rokfs.remote.formats import (FORMAT, PACK_MAGIC, PACK_PREFIX, chunk_hash, decode_manifest,
                                  decode_pack_header, decode_segment, encode_manifest,
                                  encode_pack, encode_segment)

MANIFEST_KEY = "manifests/data@s"
FRAME_CHUNK_SIZES = (4096, 8192)


# -- manifests -----------------------------------------------------------------

def manifest(data):
    head, body = manifest_parts(data)
    for candidate in (data, seal(body)):
        try:
            decoded = decode_manifest(candidate, MANIFEST_KEY)
        except Corrupt:
            continue
        check_manifest_invariants(decoded)


def manifest_parts(data):
    """(head line with its newline, or b"" when the first line is no
    one-line JSON object; the rest: the JSON of the manifest)."""
    line, newline, rest = data.partition(b"\n")
    if newline and line.startswith(b"{") and line.endswith(b"}"):
        return line + newline, rest
    return b"", data


def seal(body):
    head = json.dumps({"format": FORMAT, "hash": chunk_hash(body)}, separators=(",", ":"))
    return head.encode() + b"\n" + body


def check_manifest_invariants(m):
    cs = m["chunk_size"]
    assert type(cs) is int and cs >= 4096 and cs & (cs - 1) == 0, cs
    assert type(m["size"]) is int and m["chunks"] == -(-m["size"] // cs), m
    assert len(m["segments"]) == -(-m["chunks"] // m["segment_chunks"]), m
    assert all(isinstance(v, str) for v in m["labels"].values()), m["labels"]
    sealed = encode_manifest({**m, "format": FORMAT})
    assert decode_manifest(sealed, MANIFEST_KEY) == {**m, "format": FORMAT}


# -- segments --------------------------------------------------------------------

def segment(data):
    try:
        decoded = decode_segment(data, "segments/" + chunk_hash(data))
    except Corrupt:
        return
    packs = decoded["packs"]
    assert len(set(packs)) == len(packs) and decoded["chunks"], decoded
    for entry in decoded["chunks"]:
        assert entry is None or (0 <= entry[1] < len(packs) and entry[3] > 0), entry


# -- pack headers ----------------------------------------------------------------

def pack_header(data):
    """The input is a whole pack, keyed by its header's hash and by its own."""
    _, header, _ = pack_parts(data)
    for key in ("packs/" + chunk_hash(header), "packs/" + chunk_hash(data)):
        try:
            entries = decode_pack_header(key, len(data), lambda start, end: data[start:end])
        except Corrupt:
            continue
        check_pack_layout(entries, len(data))


def pack_parts(data):
    """(magic, header, frames) of a pack, by the length it says its header has."""
    end = PACK_PREFIX + int.from_bytes(data[len(PACK_MAGIC):PACK_PREFIX], "big")
    return data[:len(PACK_MAGIC)], data[PACK_PREFIX:end], data[end:]


def join_pack(magic, header, frames):
    return magic + len(header).to_bytes(4, "big") + header + frames


def check_pack_layout(entries, size):
    assert entries and entries[0][1] >= PACK_PREFIX, entries
    for entry, after in zip(entries, entries[1:] + [[None, size]]):
        assert entry[2] > 0 and entry[1] + entry[2] == after[1], (entry, after)


# -- chunk frames ----------------------------------------------------------------

def chunk_frame(data):
    """First byte: which chunk size; the rest: a frame. open_chunk must agree
    with a fresh lz4 decompressor: it opens exactly the frames that are one
    whole frame of a chunk's size, and gives back their content."""
    size = FRAME_CHUNK_SIZES[data[0] % len(FRAME_CHUNK_SIZES)] if data else 4096
    frame = data[1:]
    content, whole = reference_decompress(frame, size)
    try:
        opened = open_chunk(frame, chunk_hash(content), size)
    except Corrupt:
        assert not whole, "open_chunk refused a frame lz4 decodes to a whole chunk"
        return
    assert whole, "open_chunk opened a frame lz4 does not decode to a whole chunk"
    assert bytes(opened) == content


def reference_decompress(frame, size):
    """(content, whether it is one whole frame of `size` bytes), decoded
    with a fresh context and never past `size` bytes."""
    context = lz4.frame.LZ4FrameDecompressor()
    try:
        content = context.decompress(frame, max_length=size)
    except Exception:
        return b"", False
    return content, context.eof and len(content) == size


# -- mutating the JSON inside an input ------------------------------------------------

INTERESTING = [None, True, False, 0, 1, -1, 2, 9, 10, 511, 512, 4095, 4096, 8192, 16384,
               1 << 20, 1 << 30, 1 << 40, (1 << 63) + 1, 0.5, 1e308, "", "x", "32",
               "data@s", "base@v1", "Data@S", "a" * 64, "0" * 64, "packs/" + "0" * 64,
               "segments/" + "0" * 64, [], [None], {}, {"k": 1}]


def json_mutator(split, join):
    """A libFuzzer custom mutator for inputs holding JSON: split(data) ->
    (before, json bytes, after), join(before, json, after) -> data."""
    def mutate(data, max_size, seed):
        import atheris
        rng = random.Random(seed)
        before, text, after = split(data)
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if doc is None or rng.random() < 0.2:
            return atheris.Mutate(data, max_size)
        changed = json.dumps(_mutate_value(doc, rng), separators=(",", ":")).encode()
        return join(before, changed, after)[:max_size]
    return mutate


def _mutate_value(doc, rng):
    """`doc` with one value somewhere in it replaced, removed or repeated."""
    paths = list(_paths(doc))
    *parent_path, last = rng.choice(paths) if paths else [None]
    if last is None:
        return rng.choice(INTERESTING + [doc])
    parent = doc
    for step in parent_path:
        parent = parent[step]
    action = rng.randrange(4)
    if action == 0:
        del parent[last]
    elif action == 1 and isinstance(parent, list):
        parent.insert(last, parent[last])
    elif action == 2 and type(parent[last]) is int:
        parent[last] = rng.choice([parent[last] + 1, parent[last] - 1, parent[last] * 2, 0])
    else:
        parent[last] = rng.choice(INTERESTING + [rng.choice(paths)[-1]])
    return doc


def _paths(value, prefix=(), limit=2000):
    """Paths (tuples of keys and indexes) to every value below `value`."""
    children = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for step, child in children:
        if limit <= 0:
            return
        limit -= 1
        yield prefix + (step,)
        yield from _paths(child, prefix + (step,), limit)


manifest_mutator = json_mutator(lambda d: (*manifest_parts(d), b""),
                                lambda head, body, _: head + body)
segment_mutator = json_mutator(lambda d: (b"", d, b""), lambda _, body, __: body)
pack_mutator = json_mutator(pack_parts, join_pack)


# -- seeds -----------------------------------------------------------------------

def seeds():
    """{target: {file name: bytes}}: valid objects of each kind, small."""
    chunks = [bytes(range(256)) * 16, _noise(100, 1) + bytes(3996), b"z" * 4096]
    frames = [compress(c) for c in chunks]
    key, pack, entries = encode_pack([(chunk_hash(c), f) for c, f in zip(chunks, frames)])
    seg = {"packs": [key], "chunks": [[h, 0, off, length] for h, off, length in entries]
           + [None]}
    seg_key, seg_body = encode_segment(seg)
    body = _manifest(4 * 4096, [seg_key], 4, labels={"team": "ml"}, parent="base@v1")
    return {
        "manifest": {
            "valid-sealed": encode_manifest(body),
            "valid-format1": json.dumps({**body, "format": 1}, indent=1,
                                        sort_keys=True).encode(),
            "valid-empty-volume": encode_manifest(_manifest(0, [], 0)),
            "valid-two-segments": encode_manifest(
                {**_manifest(3 * 4096, [seg_key, seg_key], 3), "segment_chunks": 2}),
            "body": json.dumps(body, indent=1, sort_keys=True).encode(),
            "valid-signed": _with_signature(encode_manifest(body)),
        },
        "segment": {"valid": seg_body,
                    "valid-zeros": encode_segment({"packs": [], "chunks": [None, None]})[1]},
        "pack_header": {"valid": bytes(pack)},
        "chunk_frame": {f"valid-{i}": bytes([0]) + f for i, f in enumerate(frames)}
        | {"valid-stored-4k": bytes([0]) + compress(_noise(4096, 2)),
           "valid-stored-8k": bytes([1]) + compress(_noise(8192, 3))},
    }


def _manifest(size, segments, chunks, labels=None, parent=None):
    return {"format": FORMAT, "name": "data@s", "size": size, "chunk_size": 4096,
            "labels": labels or {}, "parent": parent, "created": 1767225600.25,
            "segments": segments, "segment_chunks": 16384, "chunks": chunks}


def _with_signature(sealed):
    head, _, body = sealed.partition(b"\n")
    signed = {**json.loads(head), "signature": {"key": "reserved", "sig": "00"}}
    return json.dumps(signed, separators=(",", ":")).encode() + b"\n" + body


def _noise(n, seed):
    """n bytes that do not compress, the same every time."""
    return random.Random(seed).randbytes(n)


def write_seeds(top):
    for target, files in seeds().items():
        os.makedirs(os.path.join(top, target), exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(top, target, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write-seeds"] or len(sys.argv) != 3:
        sys.exit("usage: fuzz_remote.py --write-seeds DIR")
    write_seeds(sys.argv[2])
