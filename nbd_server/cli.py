"""`rokfs nbd`: serve a pool's volumes (read-write) and snapshots (read-only) over NBD.

Invariants
- This module declares the command only: its arguments, the TLS check
  made before the pool is opened, and `main`, which serves until
  cancelled. The rokfs program (rokfs.cli) opens the pool (it must exist),
  runs `main` through the one run sequence and closes the pool, with a
  final commit, on SIGTERM/SIGINT.
- Without --socket or --listen the server listens on 127.0.0.1:10809 only;
  TCP binds to loopback unless an address is given explicitly.
"""

from rokfs.args import add_pool_argument
from rokfs.errors import InvalidArgument

from .handshake import TLS_MODES
from .server import serve
from .tls import tls_config


def add_arguments(parser, name="nbd"):
    add_pool_argument(parser, must_exist=True)
    parser.add_argument("--socket", metavar="PATH", help="listen on a unix socket")
    parser.add_argument("--listen", metavar="ADDR:PORT",
                        help="listen on TCP (default 127.0.0.1:10809 when no --socket)")
    parser.add_argument("--tls", choices=TLS_MODES, default="off",
                        help="off, on (client's choice) or require (default: %(default)s)")
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain)")
    parser.add_argument("--tls-key", metavar="PEM", help="server private key")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA that must have signed client "
                        "certificates (verification is off without it)")
    parser.set_defaults(prepare=check_tls, main=serve_until_stopped, service=True)


def check_tls(args):
    """Load the TLS files before anything is opened (args.tls_config)."""
    try:
        args.tls_config = tls_config(args.tls, args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as exc:
        raise InvalidArgument(str(exc)) from None


async def serve_until_stopped(control, args):
    await serve(control, socket_path=args.socket, listen=args.listen, tls=args.tls_config)
