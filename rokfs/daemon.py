"""`rokfs serve`: one trio process serving a pool over NBD (and FUSE when a
mountpoint is given) until SIGTERM/SIGINT, then flushing and closing it.

This is the wiring module: it opens the pool, builds the one Control, and
starts each front end with nursery.start() so that it reports its address.
"""

import functools
import importlib.util
import logging
import os
import signal
import tempfile

import trio

from .control import Control
from .errors import Unsupported
from .pool import Pool

log = logging.getLogger("rokfs.daemon")


def default_runtime_dir():
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0
                                                 else tempfile.gettempdir())
    return os.path.join(base, "rokfs")


def add_parser(sub):
    from .cli import add_pool_argument
    p = sub.add_parser("serve", help="run the daemon: NBD (and FUSE with --mount)")
    add_pool_argument(p)
    p.add_argument("--nbd-socket", default=os.path.join(default_runtime_dir(), "nbd.sock"),
                   help="NBD unix socket (default: %(default)s)")
    p.add_argument("--nbd-listen", metavar="ADDR:PORT", help="also serve NBD on TCP")
    p.add_argument("--mount", metavar="MOUNTPOINT", help="also mount the FUSE view here")
    p.set_defaults(func=run_cli)


def run_cli(args):
    if args.mount and importlib.util.find_spec("rokfs.fusefs") is None:
        raise Unsupported("this rokfs has no FUSE view yet: serve without --mount")
    if args.mount:
        from .fusefs import check_mountpoint
        check_mountpoint(os.path.abspath(args.mount))   # stale/busy: a clear error first
    pool = Pool.open_or_create(args.pool)
    try:
        trio.run(serve, Control(pool), args)
    finally:
        pool.close()
    return 0


async def serve(control, args):
    from nbd_server.server import serve as serve_nbd
    os.makedirs(os.path.dirname(args.nbd_socket), mode=0o700, exist_ok=True)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(
                serve_nbd, control, socket_path=args.nbd_socket, listen=args.nbd_listen))
            if args.mount:
                from .fusefs import mount
                await nursery.start(functools.partial(mount, control, args.mount))
            _print_welcome(control, args)
            async for signum in signals:
                log.info("event=shutdown signal=%s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    await control.flush()


def _print_welcome(control, args):
    sock = args.nbd_socket
    lines = [f"rokfs: serving pool {control.pool.path}",
             f"  NBD   nbd+unix:///VOLUME?socket={sock}",
             f"        list exports:  nbdinfo --list 'nbd+unix:///?socket={sock}'"]
    if args.mount:
        lines += [f"  FUSE  {args.mount}/volumes/NAME (images), {args.mount}/snapshots/NAME/SNAP",
                  f"        new volume:    truncate -s 10G {args.mount}/volumes/data",
                  f"        snapshot:      setfattr -n user.rokfs.snapshot -v before "
                  f"{args.mount}/volumes/data"]
    else:
        lines.append("  FUSE  off (add --mount ~/rok for the workstation view)")
    lines.append("  stop with Ctrl-C or SIGTERM: flushes and closes the pool")
    print("\n".join(lines), flush=True)
