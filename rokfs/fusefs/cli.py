"""`rokfs mount MOUNTPOINT`: the FUSE view of a pool, alone in its process.

Invariants:
- This module declares the command only: its arguments, the mountpoint
  check made before the pool is opened (a stale or busy mountpoint creates
  no pool), and `main`, which mounts and serves until SIGINT/SIGTERM or
  `fusermount3 -u`. The rokfs program runs it through the one run sequence
  (rokfs.runner), which then flushes and closes the pool.
"""

import functools
import os

import trio

from ..args import add_pool_argument
from . import DEFAULT_WORKERS, check_mountpoint, mount


def add_arguments(parser, name="mount"):
    add_pool_argument(parser)
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--allow-other", action="store_true",
                        help="let other users in (needs user_allow_other in /etc/fuse.conf)")
    parser.add_argument("--page-cache", action="store_true",
                        help="let the kernel cache image data (faster re-reads; not coherent "
                             "with NBD clients of the same volume)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="concurrent FUSE request tasks (default: %(default)s: fastest for "
                             "I/O; raise it so slow requests such as remote fetches overlap)")
    parser.set_defaults(prepare=prepare, main=mount_until_stopped, service=True)


def prepare(args):
    check_mountpoint(os.path.abspath(args.mountpoint))


async def mount_until_stopped(control, args):
    """Mount, say how to use it, and serve until unmounted or cancelled."""
    async with trio.open_nursery() as nursery:
        where = await nursery.start(functools.partial(
            mount, control, args.mountpoint, allow_other=args.allow_other,
            page_cache=args.page_cache, workers=args.workers))
        print(f"rokfs: pool {args.pool} mounted at {where}\n"
              f"  new volume: truncate -s 10G {where}/volumes/data\n"
              f"  snapshot:   setfattr -n user.rokfs.snapshot -v before "
              f"{where}/volumes/data\n"
              f"  stop with Ctrl-C, SIGTERM or `fusermount3 -u {where}`", flush=True)
    return 0
