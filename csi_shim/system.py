"""Host commands the node service runs: mount table, mount/umount, blkid, mkfs.

Every command failure becomes a CsiError carrying the command's stderr, so the
CO's event says what went wrong on the node.
"""

import logging
import os
import subprocess
import time
from dataclasses import dataclass

import grpc

from .errors import CsiError

log = logging.getLogger("csi_shim.node")


def run(*argv, ok_codes=(0,), timeout=120):
    """Run a command; return its stdout, or raise INTERNAL with its stderr."""
    log.debug("event=run argv=%s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CsiError(grpc.StatusCode.INTERNAL, f"{argv[0]}: {exc}") from exc
    if proc.returncode not in ok_codes:
        raise CsiError(grpc.StatusCode.INTERNAL,
                       f"{' '.join(argv)} failed ({proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


@dataclass
class Mount:
    root: str        # the path inside the mounted filesystem (bind mounts)
    target: str
    fstype: str
    source: str
    options: str     # per-mount options (ro/rw first)


def _unescape(field):
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts():
    """The current mount table, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            out.append(Mount(root=_unescape(fields[3]), target=_unescape(fields[4]),
                             fstype=tail[0], source=_unescape(tail[1]), options=fields[5]))
    return out


def mount_at(path):
    """The topmost mount on `path`, or None."""
    path = os.path.realpath(path) if os.path.exists(path) else path
    found = [m for m in mounts() if m.target == path]
    return found[-1] if found else None


def is_mount_of_device(m, device):
    """True if mount `m` shows block device `device` (a filesystem on it, or the
    device node itself bind-mounted for raw block access)."""
    name = os.path.basename(device)
    return m.source == device or (m.fstype == "devtmpfs" and m.root == f"/{name}")


def unmount_all(path):
    """Unmount every mount stacked on `path` (idempotent)."""
    for _ in range(16):
        if mount_at(path) is None:
            return
        run("umount", path)
    raise CsiError(grpc.StatusCode.INTERNAL, f"{path} is still mounted after 16 umounts")


def filesystem_of(device):
    """The filesystem type blkid finds on `device`, or '' if it is blank."""
    out = run("blkid", "-p", "-s", "TYPE", "-o", "value", device, ok_codes=(0, 2))
    return out.strip()


def device_size(device):
    return int(run("blockdev", "--getsize64", device).strip())


def wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise CsiError(grpc.StatusCode.INTERNAL, f"timed out waiting for {what}")
        time.sleep(0.05)
