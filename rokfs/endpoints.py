"""Where a server listens: TCP addresses read one way, unix sockets claimed one way.

Invariants:
- `parse_tcp_address` is the only reader of "HOST:PORT" text (NBD listen,
  metrics listen, the config check). It accepts HOST:PORT, [V6ADDR]:PORT,
  :PORT and PORT (host = loopback), and refuses anything else with an
  InvalidArgument that quotes the text: never a ValueError or a traceback.
- `claim_unix_socket` is the one stale-socket policy (control API, NBD,
  CSI): a socket file something answers on is refused (Busy, naming the
  socket); one nobody answers on is left by a dead server and removed; a
  path that is not a socket is never removed. It creates the parent
  directory, so the caller's bind follows at once.
"""

import os
import socket
import stat

from .errors import AlreadyExists, Busy, InvalidArgument

LOOPBACK = "127.0.0.1"
PROBE_SECONDS = 2.0     # a live server with a full accept queue may take this long


def parse_tcp_address(text, what="address"):
    """'HOST:PORT', '[V6]:PORT', ':PORT' or 'PORT' -> (host, port)."""
    text = str(text).strip()
    host, port = _split_host_port(text, what)
    if ":" in host and not text.startswith("["):
        raise _invalid(what, text, "write an IPv6 address as [ADDR]:PORT")
    if not port:
        raise _invalid(what, text, "missing port (expected HOST:PORT)")
    if not _is_number(port) or int(port) > 65535:
        raise _invalid(what, text, "the port must be a number from 0 to 65535")
    return host or LOOPBACK, int(port)


def _split_host_port(text, what):
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise _invalid(what, text, "expected [ADDR]:PORT")
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon:                      # a lone port, or a lone host
        return ("", text) if _is_number(text) else (text, "")
    return host, port


def _is_number(text):
    return text.isascii() and text.isdigit()


def _invalid(what, text, reason):
    return InvalidArgument(f"invalid {what} {text!r}: {reason}")


def claim_unix_socket(path, service):
    """Make `path` free for `service`'s new unix socket (see the invariants)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AlreadyExists(f"{service} socket {path} exists and is not a socket")
    if answers(path):
        raise Busy(f"{service} socket {path} is in use: another server answers on it "
                   "(stop it first, or choose another socket)")
    os.unlink(path)


def answers(path):
    """Does a server accept connections on the unix socket at `path`?"""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(PROBE_SECONDS)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except (TimeoutError, BlockingIOError):      # alive, its accept queue full
            return True
    return True
