"""The registry's signed documents as bytes: versions, heads and ACLs.

A document is a one-line head, then a body (JSON):

    {"format": 1, "hash": <blake3 of the body>, "key": <ed25519 public key,
     hex>, "signature": <ed25519 signature of SIGNED_PREFIX + kind + hash, hex>}
    {"kind": "version" | "head" | "acl", "bucket": "team/exp1", ...}

Invariants of what `decode` returns (anything else is Corrupt naming the
key, or NotAllowed for a valid signature by a key not trusted for it):
- the body's blake3 is the head's hash and the signature over it checks
  out with the head's key; the signature covers the kind, so a head cannot
  pass for a version nor the reverse;
- the body's kind and bucket are the ones the caller expected at that key,
  and a version's number is the one its key names: a document copied to
  another key or bucket is refused;
- the signer is trusted for the bucket (`trusted(key)` answered True);
- a version or ACL comes back with its `digest` (blake3 of its bytes, what
  a head or a child names), a head with the `digest` of the version it names.
Everything read from a remote is untrusted: only `decode` turns it into values.
"""

import json
import re

from ..errors import Corrupt, InvalidArgument, NotAllowed
from ..names import check_bucket, check_labels, check_name
from ..remote.formats import _json, _object, chunk_hash, check_manifest

FORMAT = 1
SIGNED_PREFIX = b"rokfs-registry-signature-v1\n"
HEAD_KEYS = ("format", "hash", "key", "signature")
MAX_HEAD = 4096
MAX_MESSAGE = 4096
MAX_MEMBERS = 64
_HEX = re.compile(r"[0-9a-f]+")
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")

VERSION_KEYS = ("kind", "bucket", "version", "parent", "created", "publisher", "message",
                "labels", "members", "acl")
HEAD_BODY_KEYS = ("kind", "bucket", "version", "digest", "time")
ACL_KEYS = ("kind", "bucket", "serial", "readers", "writers", "generation", "keys")


# -- names ------------------------------------------------------------------------------

def split_version_ref(ref):
    """'team/exp1@v3' -> ('team/exp1', 3); 'team/exp1' -> ('team/exp1', None)."""
    if not isinstance(ref, str):
        raise InvalidArgument(f"bad version {ref!r}: use TEAM/NAME@vN")
    bucket, at, version = ref.partition("@")
    check_bucket(bucket)
    if not at:
        return bucket, None
    m = _VERSION.fullmatch(version)
    if not m:
        raise InvalidArgument(f"bad version {version!r} in {ref!r}: use vN (such as v3)")
    return bucket, int(m.group(1))


def check_key_hex(key, what="key"):
    """A public key as 64 hex digits (ed25519 or X25519, 32 bytes)."""
    if not isinstance(key, str) or len(key) != 64 or not _HEX.fullmatch(key):
        raise InvalidArgument(f"{what} {key!r} must be 64 lowercase hex digits "
                              "(rokctl registry key prints this pool's)")
    return key


# -- signed documents -------------------------------------------------------------------

def encode(body, signer):
    """The bytes of `body` signed by `signer` (keys.Publisher)."""
    data = json.dumps(body, indent=1, sort_keys=True).encode()
    digest = chunk_hash(data)
    head = {"format": FORMAT, "hash": digest, "key": signer.public_hex,
            "signature": signer.sign(_signed(body["kind"], digest)).hex()}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + data


def _signed(kind, digest):
    return SIGNED_PREFIX + kind.encode() + b"\n" + digest.encode()


def decode(data, key, kind, bucket, trusted):
    """The body of the document stored as `key`, checked (see the module's
    invariants); `trusted(public_hex)` says whether the signer may sign it."""
    data = bytes(data)
    line, _, payload = data.partition(b"\n")
    head = _object(_json(line[:MAX_HEAD], key, "the head"), key, "the head", HEAD_KEYS)
    if head["format"] != FORMAT or type(head["format"]) is not int:
        raise Corrupt(f"{key}: format must be {FORMAT} (a newer rokfs wrote it?)")
    for field in ("hash", "key"):
        if not isinstance(head[field], str) or len(head[field]) != 64 \
                or not _HEX.fullmatch(head[field]):
            raise Corrupt(f"{key}: {field} must be 64 hex digits")
    if chunk_hash(payload) != head["hash"]:
        raise Corrupt(f"{key}: the body does not match the hash in its head (tampered?)")
    if not _verify(head, kind):
        raise Corrupt(f"{key}: the signature does not check out (tampered, or not a {kind})")
    if not trusted(head["key"]):
        raise NotAllowed(f"{key}: signed by key {head['key'][:16]}..., which this pool does "
                         f"not trust for {bucket} (rokctl registry trust {bucket.split('/')[0]}"
                         " KEY, if you do)")
    body = _json(payload, key, "the body")
    _require_fields(body, key, kind, bucket)
    out = {**CHECKS[kind](body, key), "signer": head["key"]}
    if kind != "head":                  # a head's digest is that of the version it names
        out["digest"] = chunk_hash(data)
    return out


def _verify(head, kind):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(head["key"]))
        public.verify(bytes.fromhex(head["signature"]), _signed(kind, head["hash"]))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _require_fields(body, key, kind, bucket):
    if not isinstance(body, dict) or body.get("kind") != kind:
        raise Corrupt(f"{key}: not a {kind} document")
    if body.get("bucket") != bucket:
        raise Corrupt(f"{key}: names bucket {body.get('bucket')!r}, not {bucket!r} "
                      "(copied from another bucket?)")


def _is_int(value, lo, hi):
    return type(value) is int and lo <= value <= hi


def _need(ok, key, what):
    if not ok:
        raise Corrupt(f"{key}: {what}")


def _is_digest(value):
    return isinstance(value, str) and len(value) == 64 and bool(_HEX.fullmatch(value))


def _check_version(body, key):
    v = _object(body, key, "the version", VERSION_KEYS)
    _need(_is_int(v["version"], 1, 10**9), key, "version must be a number from 1")
    parent = v["parent"]
    if v["version"] == 1:
        _need(parent is None, key, "version 1 has no parent")
    else:
        _need(isinstance(parent, dict) and set(parent) == {"version", "digest"}
              and parent["version"] == v["version"] - 1 and _is_digest(parent["digest"]),
              key, f"parent must be {{version: {v['version'] - 1}, digest}}")
    _need(isinstance(v["message"], str) and len(v["message"]) <= MAX_MESSAGE, key,
          "message must be a string")
    _need(type(v["created"]) in (int, float), key, "created must be a time")
    _need(_is_digest(v["publisher"]), key, "publisher must be a key")
    _need(v["acl"] is None or (isinstance(v["acl"], dict) and set(v["acl"]) == {"generation"}
                               and _is_int(v["acl"]["generation"], 1, 10**9)), key,
          "acl must be null or {generation}")
    try:
        check_labels(v["labels"])
    except InvalidArgument as exc:
        raise Corrupt(f"{key}: labels: {exc}") from None
    _check_members(v["members"], key)
    return v


def _check_members(members, key):
    _need(isinstance(members, list) and 1 <= len(members) <= MAX_MEMBERS, key,
          f"members must be 1 to {MAX_MEMBERS} snapshots")
    seen = set()
    for i, m in enumerate(members):
        _object(m, key, f"members[{i}]", ("volume", "manifest"))
        try:
            check_name(m["volume"])
        except InvalidArgument:
            raise Corrupt(f"{key}: members[{i}]: bad volume name {m['volume']!r}") from None
        _need(m["volume"] not in seen, key, f"members[{i}]: volume {m['volume']} repeated")
        seen.add(m["volume"])
        manifest = m["manifest"]
        name = manifest.get("name") if isinstance(manifest, dict) else None
        check_manifest(manifest, f"{key} members[{i}]", name)


def _check_head(body, key):
    h = _object(body, key, "the head", HEAD_BODY_KEYS)
    _need(_is_int(h["version"], 1, 10**9), key, "version must be a number from 1")
    _need(_is_digest(h["digest"]), key, "digest must be 64 hex digits")
    _need(type(h["time"]) in (int, float), key, "time must be a time")
    return h


def _check_acl(body, key):
    a = _object(body, key, "the ACL", ACL_KEYS)
    _need(_is_int(a["serial"], 1, 10**9) and _is_int(a["generation"], 1, 10**9), key,
          "serial and generation must be numbers from 1")
    for field in ("readers", "writers"):
        _need(isinstance(a[field], list) and all(_is_digest(k) for k in a[field]), key,
              f"{field} must be a list of keys")
    _need(a["writers"], key, "an ACL lists at least one writer")
    _need(isinstance(a["keys"], dict) and all(
        g.isdigit() and _is_int(int(g), 1, a["generation"]) and isinstance(wrapped, dict)
        and all(_is_digest(r) and isinstance(w, str) for r, w in wrapped.items())
        for g, wrapped in a["keys"].items()), key,
        "keys must map generations to {reader key: wrapped data key}")
    return a


CHECKS = {"version": _check_version, "head": _check_head, "acl": _check_acl}


def check_version_number(key, body):
    """Corrupt unless the version body's number is the one its key names."""
    want = int(key.rsplit("/", 1)[1])
    if body["version"] != want:
        raise Corrupt(f"{key}: holds version {body['version']}, not {want} (copied?)")
