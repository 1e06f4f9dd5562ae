"""`rokfs nbd`: serve a pool's volumes (read-write) and snapshots (read-only) over NBD.

Invariants
- The pool is opened (and locked) for the server's lifetime and closed, with
  a final commit, on SIGTERM/SIGINT.
- Without --socket or --listen the server listens on 127.0.0.1:10809 only;
  TCP binds to loopback unless an address is given explicitly.
"""

import argparse
import functools
import logging
import signal
import sys

import trio

from rokfs.control import Control
from rokfs.errors import RokfsError
from rokfs.pool import Pool

from .handshake import TLS_MODES
from .server import serve
from .tls import tls_config

log = logging.getLogger(__name__)


def _add_arguments(p):
    from rokfs.cli import add_pool_argument
    add_pool_argument(p)
    p.add_argument("--socket", metavar="PATH", help="listen on a unix socket")
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="listen on TCP (default 127.0.0.1:10809 when no --socket)")
    p.add_argument("--tls", choices=TLS_MODES, default="off",
                   help="off, on (client's choice) or require (default: %(default)s)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--tls-ca", metavar="PEM",
                   help="CA that must have signed client certificates (verification is off without it)")


def add_parser(subparsers):
    """Add the `nbd` subcommand to rokfs's subparsers."""
    p = subparsers.add_parser("nbd", help="serve volumes and snapshots over NBD",
                              description=__doc__.splitlines()[0])
    _add_arguments(p)
    p.set_defaults(func=run_cli)
    return p


add_cli = add_parser


def run_cli(args):
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    try:
        tls = tls_config(args.tls, args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as exc:
        print(f"rokfs nbd: error: {exc}", file=sys.stderr)
        return 2
    pool = Pool.open(args.pool)
    try:
        trio.run(_serve_until_signal, pool, args, tls)
    finally:
        pool.close()
    return 0


async def _serve_until_signal(pool, args, tls):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(
                serve, Control(pool), socket_path=args.socket, listen=args.listen, tls=tls))
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nbd_server", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return run_cli(args)
    except RokfsError as exc:
        print(f"rokfs nbd: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
