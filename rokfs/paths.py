"""Where rokfs keeps things by default: the one place that says so.

Invariants:
- Every default path of the daemon, the admin commands, rokctl, the Python
  client and the CSI shim comes from here; nothing else reads XDG_* or
  spells a socket's file name.
- `default_*` functions give the built-in default (XDG variables only);
  the daemon's configuration layers its own precedence (flag > ROKFS_*
  variable > file) on top of them. The unprefixed functions (`pool_path`,
  `control_socket`, `nbd_socket`) are what a command uses when given no
  flag: the ROKFS_* variable if set, else the default.
- Imports nothing but the standard library: any program may ask.
"""

import os
import tempfile

POOL_ENV = "ROKFS_POOL"
CONTROL_ENV = "ROKFS_CONTROL"
NBD_SOCKET_ENV = "ROKFS_NBD_SOCKET"
CSI_SOCKET = "/csi/csi.sock"          # where kubelet's CSI sidecars expect the driver


def data_dir():
    """$XDG_DATA_HOME/rokfs, else ~/.local/share/rokfs."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "rokfs")


def runtime_dir():
    """$XDG_RUNTIME_DIR/rokfs, else /run/rokfs for root, else <tmp>/rokfs."""
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0
                                                 else tempfile.gettempdir())
    return os.path.join(base, "rokfs")


def default_pool():
    return os.path.join(data_dir(), "pool")


def default_control_socket():
    return os.path.join(runtime_dir(), "control.sock")


def default_nbd_socket():
    return os.path.join(runtime_dir(), "nbd.sock")


def pool_path():
    return os.environ.get(POOL_ENV) or default_pool()


def control_socket():
    return os.environ.get(CONTROL_ENV) or default_control_socket()


def nbd_socket():
    return os.environ.get(NBD_SOCKET_ENV) or default_nbd_socket()
