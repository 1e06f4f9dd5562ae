"""Private buckets: data keys wrapped for readers, and an object store that
encrypts everything it holds.

Invariants:
- A bucket's chunks, segments and packs live under its own prefix and
  generation (`registry/private/TEAM/NAME/g<N>/`), encrypted with that
  generation's 256-bit data key (AES-256-GCM, a fresh 96-bit nonce per
  object, the object's name as associated data: a body moved to another
  name does not open). Object names are encrypted too (AES-SIV, so a name
  maps to one ciphertext and lookups work): nothing under the prefix
  names a chunk hash, and no two buckets (nor generations) share an
  object, so nothing leaks by dedup across them.
- A data key is wrapped for a reader's X25519 public key: an ephemeral
  key pair, ECDH, HKDF-SHA256 bound to the bucket and generation, then
  AES-256-GCM. Only the holder of the reader's private key unwraps it; a
  wrapped key that does not open is NotAllowed, never a wrong key.
"""

import collections
import os
import threading

from ..errors import Corrupt, NotAllowed, NotFound
from ..remote.objects import ObjectInfo, ObjectStore

PRIVATE_ROOT = "registry/private/"
NONCE = 12
TAG = 16                       # AES-GCM's tag, at the end of every body
DECRYPTED_CACHE = 8            # whole objects kept decrypted, for ranged reads of packs


def new_data_key():
    return os.urandom(32)


def _hkdf(secret, info, length=32):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def _raw_public(private):
    from cryptography.hazmat.primitives import serialization
    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


def _wrap_info(bucket, generation):
    return f"rokfs-registry-wrap\n{bucket}\n{generation}".encode()


def wrap(data_key, reader_hex, bucket, generation):
    """`data_key` wrapped for the reader whose X25519 public key is `reader_hex`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (X25519PrivateKey,
                                                                  X25519PublicKey)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(reader_hex)))
    nonce = os.urandom(NONCE)
    sealed = AESGCM(_hkdf(shared, _wrap_info(bucket, generation))).encrypt(
        nonce, data_key, _wrap_info(bucket, generation))
    return (_raw_public(ephemeral) + nonce + sealed).hex()


def unwrap(wrapped_hex, reader_private, bucket, generation):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    try:
        raw = bytes.fromhex(wrapped_hex)
        shared = reader_private.exchange(X25519PublicKey.from_public_bytes(raw[:32]))
        return AESGCM(_hkdf(shared, _wrap_info(bucket, generation))).decrypt(
            raw[32:32 + NONCE], raw[32 + NONCE:], _wrap_info(bucket, generation))
    except (InvalidTag, ValueError) as exc:
        raise NotAllowed(f"{bucket}: the data key of generation {generation} does not open "
                         f"with this pool's reader key ({type(exc).__name__})") from None


def private_prefix(bucket, generation):
    return f"{PRIVATE_ROOT}{bucket}/g{generation}/"


class EncryptedObjects(ObjectStore):
    """An ObjectStore over `inner` that keeps everything under `prefix`,
    names and bodies encrypted with `data_key` (see the module's invariants)."""

    def __init__(self, inner, prefix, data_key):
        super().__init__()
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
        self.inner, self.prefix = inner, prefix
        self.url = f"{inner.url}#{prefix.rstrip('/')}"
        self.deadline = inner.deadline
        self.body = AESGCM(_hkdf(data_key, b"rokfs-registry-bodies"))
        self.names = AESSIV(_hkdf(data_key, b"rokfs-registry-names", 64))
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    def _outer(self, key):
        """Our name of `key`: its first part (packs/, segments/, ...) in the
        clear, the rest encrypted."""
        kind, _, rest = key.partition("/")
        return f"{self.prefix}{kind}/{self.names.encrypt(rest.encode(), [kind.encode()]).hex()}"

    def _inner_name(self, outer):
        from cryptography.exceptions import InvalidTag
        kind, _, rest = outer[len(self.prefix):].partition("/")
        try:
            return f"{kind}/{self.names.decrypt(bytes.fromhex(rest), [kind.encode()]).decode()}"
        except (InvalidTag, ValueError):
            return None                 # not ours (another key's object): not listed

    def put(self, key, data):
        nonce = os.urandom(NONCE)
        self.inner.put(self._outer(key), nonce + self.body.encrypt(nonce, bytes(data),
                                                                    key.encode()))

    def get(self, key, start=None, end=None):
        data = self._plain(key)
        return data if start is None else data[start:end]

    def _plain(self, key):
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        from cryptography.exceptions import InvalidTag
        sealed = self.inner.get(self._outer(key))
        try:
            data = self.body.decrypt(sealed[:NONCE], sealed[NONCE:], key.encode())
        except (InvalidTag, ValueError):
            raise Corrupt(f"{key} in {self.url}: does not decrypt (tampered, or another "
                          "key's)") from None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > DECRYPTED_CACHE:
                self._cache.popitem(last=False)
        return data

    def exists(self, key):
        return self.inner.exists(self._outer(key))

    def list(self, prefix=""):
        out = []
        for obj in self.inner.list(self.prefix + prefix.split("/")[0]):
            name = self._inner_name(obj.key)
            if name is not None and name.startswith(prefix):
                out.append(ObjectInfo((name, obj.size - NONCE - TAG, obj.mtime)))
        return sorted(out)

    def delete(self, key):
        self.inner.delete(self._outer(key))
        with self._lock:
            self._cache.pop(key, None)

    def put_new(self, key, data):
        raise NotFound("a private bucket's store holds chunks only")

    get_tagged = put_new
