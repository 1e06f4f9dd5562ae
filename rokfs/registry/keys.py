"""A pool's registry identity: an ed25519 key pair that signs what it
publishes, and an X25519 key pair that private buckets wrap their data keys
for.

Invariants:
- Each private key lives in its own file under the pool's `registry/`
  directory, created on first use with mode 0600 (created exclusively: two
  first uses never leave two keys); a file with looser permissions or
  another length is refused, never used.
- Public keys travel as 64 hex digits; the private ones never leave the
  pool directory.
"""

import functools
import os

from ..errors import InvalidArgument

KEY_DIR = "registry"
SIGNING_FILE = "publisher.key"
READER_FILE = "reader.key"


class Identity:
    """The pool's signing key and reader key (each made on first use)."""

    def __init__(self, pool_path):
        self.dir = os.path.join(pool_path, KEY_DIR)

    @functools.cached_property
    def signing(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        return Ed25519PrivateKey.from_private_bytes(self._private(SIGNING_FILE))

    @functools.cached_property
    def reader(self):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        return X25519PrivateKey.from_private_bytes(self._private(READER_FILE))

    def _private(self, filename):
        return _load_or_create(os.path.join(self.dir, filename))

    @property
    def public_hex(self):
        """The signing key's public half: what subscribers trust."""
        return _public_raw(self.signing).hex()

    @property
    def reader_hex(self):
        """The reader key's public half: what a private bucket's ACL grants."""
        return _public_raw(self.reader).hex()

    def sign(self, data):
        return self.signing.sign(data)

    def describe(self):
        return {"publisher_key": self.public_hex, "reader_key": self.reader_hex}


def _public_raw(private):
    from cryptography.hazmat.primitives import serialization
    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


def _load_or_create(path):
    """32 private bytes from `path` (hex), made there exclusively, 0600, if absent."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return _load(path)


def _load(path):
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise InvalidArgument(f"{path}: a private key must be readable by its owner only "
                              f"(mode {st.st_mode & 0o777:o}; chmod 600 it)")
    with open(path) as f:
        text = f.read().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidArgument(f"{path}: not a private key (64 hex digits)")
    return raw
