"""TLS for the NBD server: an x509 server context from PEM files.

Invariants
- Modes are the handshake's: 'off' (STARTTLS refused), 'on' (TLS at the
  client's choice), 'require' (every option but STARTTLS/ABORT refused
  until TLS is up).
- TLS 1.2 is the floor. With a CA file, clients must present a certificate
  it signed; without one, any client may connect once TLS is up.
"""

import ssl
from dataclasses import dataclass

from .handshake import TLS_MODES


@dataclass(frozen=True)
class TLSConfig:
    mode: str
    context: ssl.SSLContext


def server_context(cert, key, ca=None):
    """An SSLContext serving `cert`/`key`, verifying clients against `ca` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_config(mode, cert=None, key=None, ca=None):
    """A TLSConfig, or None for mode 'off'; certificate and key are required otherwise."""
    if mode not in TLS_MODES:
        raise ValueError(f"--tls must be one of {', '.join(TLS_MODES)}")
    if mode == "off":
        return None
    if not cert or not key:
        raise ValueError(f"--tls={mode} needs --tls-cert and --tls-key")
    return TLSConfig(mode, server_context(cert, key, ca))
