"""The FUSE view: `rokfs mount MOUNTPOINT` (rokfs.fusefs.cli) and `rokfs serve --mount DIR`.

`mount(control, mountpoint)` runs pyfuse3's session on the current trio
loop until cancelled (then unmounts) or until someone runs `fusermount3 -u`
(then returns). pyfuse3 keeps global state: one mount per process.
A stale mount (its daemon died: ENOTCONN) is refused with how to fix it.
pyfuse3 (and the handlers, rokfs.fusefs.ops) load when a mount starts, so
checking a mountpoint, or a daemon that mounts nothing, needs no pyfuse3.
"""

import errno
import logging
import os

import trio

from ..errors import Busy, NotFound

log = logging.getLogger("rokfs.fuse")

DEFAULT_WORKERS = 16


def is_mounted(mountpoint):
    """Is `mountpoint` in this mount namespace's table (works for dead mounts too)?"""
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == os.fsencode(mountpoint) for line in f)


def check_mountpoint(mountpoint):
    """Refuse a stale or busy mountpoint with a message saying how to fix it."""
    try:
        os.statvfs(mountpoint)       # never answered from the kernel's cache
    except FileNotFoundError:
        os.makedirs(mountpoint, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise Busy(f"{mountpoint} is a stale FUSE mount (its daemon is gone): "
                       f"run `fusermount3 -u {mountpoint}` and try again") from None
        raise NotFound(f"cannot use mountpoint {mountpoint}: {exc.strerror}") from None
    if os.path.ismount(mountpoint):
        raise Busy(f"{mountpoint} is already a mount point: unmount it first "
                   f"(`fusermount3 -u {mountpoint}`)")
    if not os.path.isdir(mountpoint):
        raise NotFound(f"mountpoint {mountpoint} is not a directory")


def mount_options(allow_other=False):
    import pyfuse3
    options = set(pyfuse3.default_options)      # default_permissions
    options |= {"fsname=rokfs", "subtype=rokfs"}
    if allow_other:
        options.add("allow_other")
    return options


async def mount(control, mountpoint, *, allow_other=False, page_cache=False,
                workers=DEFAULT_WORKERS, task_status=trio.TASK_STATUS_IGNORED):
    """Serve the FUSE view of `control` at `mountpoint` until cancelled or
    unmounted from outside; reports the absolute mountpoint when ready.

    `workers` bounds pyfuse3's request tasks. While a request awaits
    (fsync's commit, a fetch from a slow or stalled remote) the others need
    a task of their own: with one, a single cold read froze the whole view
    (`ls` included) until the remote answered. One task is ~10-15% faster
    for 4 KiB reads at queue depth 1 (no hand-off of the FUSE fd between
    tasks): `--fuse-workers 1` for pools that restore nothing lazily."""
    import pyfuse3
    from .ops import RokfsOperations
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    ops = RokfsOperations(control, page_cache=page_cache)
    pyfuse3.init(ops, mountpoint, mount_options(allow_other))
    log.info("event=fuse_mounted mountpoint=%s", mountpoint)
    try:
        task_status.started(mountpoint)
        await pyfuse3.main(min_tasks=1, max_tasks=max(1, workers))  # ends on unmount
    finally:
        still_mounted = is_mounted(mountpoint)
        pyfuse3.close(unmount=still_mounted)
        log.info("event=fuse_unmounted mountpoint=%s by=%s", mountpoint,
                 "us" if still_mounted else "fusermount")
