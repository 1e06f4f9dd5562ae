"""Everything read from a remote is untrusted input: tables of damaged
manifests, segments, pack headers and chunk frames, each stored on a
directory remote and on S3 (moto's server over HTTP) and read back through
the chunk store, give Corrupt naming the object's key every time, never
another exception. The findings of issue 15 are rows of these tables."""

import json
import os

import pytest

from rokfs import errors
from rokfs.remote.chunks import compress, new_manifest, open_chunk
from rokfs.remote.formats import (MANIFEST_KEYS, MAX_FRAME, PACK_PREFIX, chunk_hash,
                                  decode_manifest, encode_manifest, encode_pack, encode_segment)
from test_remote_store import remote  # noqa: F401  (the fixture: a dir or an S3 remote)

CS = 4096
KEY = "manifests/data@s"
HEX = "ab" * 32
OTHER_SEGMENT = "segments/" + "cd" * 32


class Objects:
    """A real pack (three chunks), its segment (and a zero chunk) and the
    sealed manifest of a four-chunk snapshot, as written to `remote`."""

    def __init__(self, remote):
        chunks = [bytes(range(256)) * 16, os.urandom(100) + bytes(CS - 100), b"z" * CS]
        self.pack_key, _, self.entries = remote.chunks.put_pack(
            [(chunk_hash(c), compress(c)) for c in chunks])
        self.pack = bytes(remote.objects.get(self.pack_key))
        self.header_end = self.entries[0][1]
        self.segment = {"packs": [self.pack_key],
                        "chunks": [[h, 0, off, n] for h, off, n in self.entries] + [None]}
        self.segment_key, _ = remote.chunks.put_segment(self.segment)
        self.manifest = new_manifest("data@s", 4 * CS, CS, {"team": "ml"}, "base@v1",
                                     [self.segment_key], 4)
        remote.chunks.put_manifest(self.manifest)
        self.sealed = bytes(remote.objects.get(KEY))


def seal(body):
    head = json.dumps({"format": 2, "hash": chunk_hash(body)}, separators=(",", ":"))
    return head.encode() + b"\n" + body


def sealed(manifest):
    return seal(json.dumps(manifest, indent=1, sort_keys=True).encode())


def unsealed(manifest):
    """As a rokfs before format 2 wrote it: indented JSON, no head."""
    return json.dumps({**manifest, "format": 1}, indent=1, sort_keys=True).encode()


def flips(data, offsets=None):
    """`data` with one byte changed, at each offset (default: every one)."""
    for i in range(len(data)) if offsets is None else offsets:
        changed = bytearray(data)
        changed[i] ^= 0x80 if i % 2 else 0x01
        yield f"byte {i} flipped", bytes(changed)


def cuts(data, offsets=None):
    """`data` cut short, at each offset (default: every one)."""
    for i in range(len(data)) if offsets is None else offsets:
        yield f"cut to {i} bytes", data[:i]


def misreadings(remote, cases, read):
    """Store each (label, key, bytes) and read it back; the labels of those
    that did not give Corrupt naming the key, with what happened instead."""
    wrong = []
    for label, key, data in cases:
        remote.objects.put(key, data)
        try:
            got = read(key, data)
            wrong.append((label, f"accepted: {str(got)[:80]}"))
        except errors.Corrupt as exc:
            if not str(exc).startswith(key + ":"):
                wrong.append((label, f"Corrupt without the key first: {exc}"))
        except Exception as exc:       # noqa: BLE001  (exactly what must not happen)
            wrong.append((label, f"{type(exc).__name__}: {exc}"))
    return wrong


# -- manifests ---------------------------------------------------------------------

WRONG_FIELDS = {
    "chunk_size": ["4096", 4096.0, True, None, [], 0, -4096, 3000, 2048, 1 << 25],
    "chunks": [99, "4", 4.0, True, None, 3, 5, -1],
    "created": ["now", None, True, [], -1, 1e300],
    "format": ["2", 2.0, True, None, 3, 0, 1],
    "labels": [[], "team=ml", None, {"k": 1}, {"k": None}, {"": "v"}, {"k": "x" * 300},
               {"k": "a\nb"}, [["k", "v"]]],
    "name": ["data@other", "other@s", "DATA@S", "data", None, 7, ["data@s"]],
    "parent": [7, "", "no-at-sign", "Bad@Name", [], {}],
    "segment_chunks": [0, -1, "16384", 16384.0, True, None, 1 << 21, 1],
    "segments": ["segments/x", [], [None], ["segments/" + "0" * 63], ["packs/" + HEX],
                 ["segments/" + "AB" * 32], [OTHER_SEGMENT, OTHER_SEGMENT], {}],
    "size": ["16384", 16384.0, True, None, -4096, 16385, 16383, 5 * CS, (1 << 31) * CS],
}


def manifest_cases(objs):
    m = objs.manifest
    yield "chunks 99 (the hydrator's IndexError)", KEY, sealed({**m, "chunks": 99})
    yield 'chunks as a string ("4", stored unchecked before)', KEY, sealed({**m, "chunks": "4"})
    for not_object in (b"[]", b'"x"', b"3", b"null", b"true", b"[1, 2]"):
        yield f"{not_object!r}, not an object", KEY, not_object
        yield f"{not_object!r} sealed", KEY, seal(not_object)
    for field in MANIFEST_KEYS:
        rest = {k: v for k, v in m.items() if k != field}
        yield f"no {field}", KEY, sealed(rest)
        yield f"no {field}, format 1", KEY, unsealed(rest) if field != "format" else \
            json.dumps(rest, indent=1).encode()
        for value in WRONG_FIELDS[field]:
            yield f"{field} {value!r}", KEY, sealed({**m, field: value})
            if field != "format":
                yield f"{field} {value!r}, format 1", KEY, unsealed({**m, field: value})
    yield "an unknown field", KEY, sealed({**m, "extra": 1})
    yield "format 2 without its head", KEY, json.dumps(m, indent=1).encode()
    yield from manifest_envelope_cases(objs)
    yield from ((label, KEY, data) for label, data in cuts(objs.sealed))
    yield from ((label, KEY, data) for label, data in flips(objs.sealed))


def manifest_envelope_cases(objs):
    head, _, body = objs.sealed.partition(b"\n")
    h = json.loads(head)
    for label, bad in [("format 3", {**h, "format": 3}), ('format "2"', {**h, "format": "2"}),
                       ("an unknown head field", {**h, "x": 1}), ("no hash", {"format": 2}),
                       ("a hash not hex", {**h, "hash": "z" * 64}),
                       ("the hash of nothing", {**h, "hash": chunk_hash(b"")}),
                       ("a signature not an object", {**h, "signature": "sig"})]:
        yield f"head: {label}", KEY, json.dumps(bad).encode() + b"\n" + body
    yield "head: format 1", KEY, json.dumps({**h, "format": 1}).encode() + b"\n" + body
    yield "head only", KEY, head + b"\n"
    yield "a repeated key in the head", KEY, head[:-1] + b',"format":2}\n' + body
    yield "a repeated key in the body", KEY, seal(body[:-2] + b',\n "chunks": 4\n}')
    yield "NaN in the body", KEY, seal(body.replace(b'"created": ', b'"created": NaN, "x": '))
    yield "UTF-16", KEY, seal(body.decode().encode("utf-16"))
    yield "not UTF-8", KEY, seal(body.replace(b"ml", b"m\xe9"))
    yield "trailing bytes", KEY, objs.sealed + b"x"
    yield "copied under another name", "manifests/data@other", objs.sealed


def test_damaged_manifests_are_corrupt(remote):  # noqa: F811
    objs = Objects(remote)
    assert remote.chunks.get_manifest("data@s") == objs.manifest
    assert misreadings(remote, list(manifest_cases(objs)),
                       lambda key, _: remote.chunks.read_manifest(key)) == []


# -- segments ------------------------------------------------------------------------

def segment_cases(objs):
    seg, body, key = objs.segment, encode_segment(objs.segment)[1], objs.segment_key
    h, pack = objs.entries[0][0], objs.pack_key
    entry = seg["chunks"][0]
    for label, bad in [
            ("not UTF-8 (the UnicodeDecodeError)", b"\xff\xfe" + body),
            ("latin-1", body.replace(b"]}", b',"\xe9"]}')),
            ("UTF-16", body.decode().encode("utf-16")), ("empty", b""),
            ("an array", b"[]"), ("a string", b'"x"'), ("NaN", b'{"packs":[],"chunks":[NaN]}'),
            ("a repeated key", body[:-1] + b',"packs":[]}')]:
        yield label, bad
    for label, bad in [
            ("no packs", {"chunks": seg["chunks"]}), ("no chunks", {"packs": seg["packs"]}),
            ("an unknown field", {**seg, "x": 1}), ("packs a string", {**seg, "packs": pack}),
            ("a pack number", {**seg, "packs": [1]}), ("a bad pack key", {**seg, "packs": ["p"]}),
            ("a pack twice", {**seg, "packs": [pack, pack]}), ("chunks empty", {**seg, "chunks": []}),
            ("chunks a string", {**seg, "chunks": "x"}), ("chunks an object", {**seg, "chunks": {}})]:
        yield label, encode_segment(bad)[1]
    for label, bad in [
            ("three fields", entry[:3]), ("five fields", entry + [0]), ("an object", {}),
            ("a number", 1), ("pack number 1 of 1", [h, 1, *entry[2:]]),
            ("pack number -1", [h, -1, *entry[2:]]), ("pack number true", [h, True, *entry[2:]]),
            ("offset inside the prefix", [h, 0, PACK_PREFIX - 1, entry[3]]),
            ("offset 10.5", [h, 0, 10.5, entry[3]]), ("length 0", [h, 0, entry[2], 0]),
            ("length past any frame", [h, 0, entry[2], MAX_FRAME + 1]),
            ("hash uppercase", [h.upper(), *entry[1:]]), ("hash short", [h[:-1], *entry[1:]]),
            ("hash null", [None, *entry[1:]])]:
        yield f"an entry: {label}", encode_segment({**seg, "chunks": [bad]})[1]


def test_damaged_segments_are_corrupt(remote):  # noqa: F811
    objs = Objects(remote)
    body = remote.objects.get(objs.segment_key)
    assert remote.chunks.get_segment(objs.segment_key) == objs.segment
    resealed = [(label, "segments/" + chunk_hash(data), data)
                for label, data in segment_cases(objs)]
    every_third = range(0, len(body), 3)        # one check, on the body's hash
    unresealed = [(label, objs.segment_key, data)
                  for label, data in [*cuts(body, every_third), *flips(body, every_third)]]
    assert misreadings(remote, resealed + unresealed,
                       lambda key, _: remote.chunks.get_segment(key)) == []


# -- pack headers --------------------------------------------------------------------

def pack_cases(objs):
    pack, key, end = objs.pack, objs.pack_key, objs.header_end
    header = json.loads(pack[PACK_PREFIX:end])
    frames = pack[end:]
    yield "cut to 8 bytes (the struct.error)", key, pack[:8]
    in_frames = range(end + 1, len(pack), 16)
    yield from ((label, key, data) for label, data in cuts(pack, [*range(end + 1), *in_frames]))
    yield from ((label, key, data) for label, data in flips(pack, range(end)))
    yield "a header length past the pack", key, pack[:6] + b"\xff\xff\xff\xff" + pack[10:]
    yield "trailing bytes", key, pack + b"x"
    yield "not a pack key", "packs/xyz", pack
    yield "an uppercase pack key", "packs/" + key[6:].upper(), pack
    entries = header["chunks"]
    first = entries[0]
    for label, bad in [
            ("not JSON", b"{"), ("an array", b"[]"), ("no chunks", b"{}"),
            ("an unknown field", {**header, "x": 1}), ("chunks empty", {"chunks": []}),
            ("chunks a string", {"chunks": "x"}), ("an entry of two", {"chunks": [first[:2]]}),
            ("a bad hash", {"chunks": [["x" * 64, *first[1:]], *entries[1:]]}),
            ("a gap", {"chunks": [[first[0], first[1] + 1, first[2] - 1], *entries[1:]]}),
            ("an overlap", {"chunks": [first, [entries[1][0], first[1], entries[1][2]],
                                      *entries[2:]]}),
            ("length 0", {"chunks": [[first[0], first[1], 0], *entries[1:]]}),
            ("a fractional length", {"chunks": [[first[0], first[1], first[2] + 0.0],
                                                *entries[1:]]}),
            ("frames ending early", {"chunks": entries[:-1]})]:
        yield f"header: {label}", *rebuilt_pack(bad, frames)


def rebuilt_pack(header, frames):
    """(key, pack) of `header` (a dict, or raw bytes) in front of `frames`,
    keyed by its own hash: what a writer of bad packs could do."""
    text = header if isinstance(header, bytes) else \
        json.dumps(header, separators=(",", ":")).encode()
    return "packs/" + chunk_hash(text), b"RKPK1\n" + len(text).to_bytes(4, "big") + text + frames


def test_damaged_pack_headers_are_corrupt(remote):  # noqa: F811
    objs = Objects(remote)
    assert remote.chunks.pack_entries(objs.pack_key, len(objs.pack)) == objs.entries
    assert misreadings(remote, list(pack_cases(objs)),
                       lambda key, data: remote.chunks.pack_entries(key, len(data))) == []


def test_packs_keyed_by_their_whole_body_still_read(remote):  # noqa: F811
    """Before the key named the header, it was blake3 of the whole pack:
    such a pack is read whole once and checked against that."""
    items = [(chunk_hash(c), compress(c)) for c in (b"a" * CS, b"b" * CS)]
    _, body, entries = encode_pack(items)
    old_key = "packs/" + chunk_hash(bytes(body))
    remote.objects.put(old_key, body)
    assert remote.chunks.pack_entries(old_key, len(body)) == entries
    changed = bytearray(body)
    changed[-10] ^= 1
    remote.objects.put(old_key, changed)
    with pytest.raises(errors.Corrupt, match="header does not match the key"):
        remote.chunks.pack_entries(old_key, len(body))


# -- chunk frames ----------------------------------------------------------------------

def test_damaged_chunk_frames_are_corrupt():
    squeezed, stored = b"ab" * (CS // 2), os.urandom(CS)
    wrong = []
    for data in (squeezed, stored):
        frame, want = compress(data), chunk_hash(data)
        assert open_chunk(frame, want, CS) == data
        for label, bad in [*cuts(frame), *flips(frame),
                           ("end mark replaced", frame[:-4] + b"\1\0\0\0"),
                           ("a chunk too big", compress(data + data)),
                           ("1 MiB of zeros", compress(bytes(1 << 20)))]:
            try:
                if open_chunk(bad, want, CS) != data:     # lz4 may ignore a bit
                    wrong.append((label, "opened to other content"))
            except errors.Corrupt:
                pass
            except Exception as exc:    # noqa: BLE001
                wrong.append((label, repr(exc)))
    assert wrong == []


def test_a_chunk_placed_past_the_end_of_its_pack_is_corrupt(remote):  # noqa: F811
    """S3 answers a range past an object's end with 416: a short read, as in
    a directory, so Corrupt, not a remote failure."""
    objs = Objects(remote)
    length = objs.segment["chunks"][0][3]
    for place in (len(objs.pack), len(objs.pack) - 5, 1 << 30):
        with pytest.raises(errors.Corrupt, match="short read"):
            remote.chunks.read_range(objs.pack_key, place, place + length)


# -- the manifest's segments must fit it -------------------------------------------------

async def test_a_segment_with_fewer_chunks_than_its_manifest_says_is_corrupt(remote):  # noqa: F811
    objs = Objects(remote)
    manifest = {**objs.manifest, "size": 5 * CS, "chunks": 5}
    with pytest.raises(errors.Corrupt, match="must hold 5 chunks"):
        await remote.locate(manifest, [4])
    got = await remote.fetch(objs.manifest, range(4), CS)
    assert got[3] is None and len(got[0]) == CS


# -- format 1 --------------------------------------------------------------------------

def test_format_1_manifests_are_checked_but_read_unverified(remote, caplog):  # noqa: F811
    objs = Objects(remote)
    remote.objects.put(KEY, unsealed(objs.manifest))
    got = remote.chunks.get_manifest("data@s")
    assert got == {**objs.manifest, "format": 1}
    remote.chunks.get_manifest("data@s")
    warnings = [r for r in caplog.records if "manifest_unverified" in r.getMessage()]
    assert len(warnings) == 1 and KEY in warnings[0].getMessage()   # once per key


def test_a_sealed_manifest_carries_the_hash_of_its_body():
    m = new_manifest("data@s", 4 * CS, CS, {}, None, [OTHER_SEGMENT], 4)
    data = encode_manifest(m)
    head, _, body = data.partition(b"\n")
    assert json.loads(head) == {"format": 2, "hash": chunk_hash(body)}
    assert decode_manifest(data, KEY) == m
    signed = json.dumps({**json.loads(head), "signature": {"by": "later"}}).encode()
    assert decode_manifest(signed + b"\n" + body, KEY) == m    # room for the registry's
