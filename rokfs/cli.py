"""`rokfs`: the administrator's program (pool set-up and checks, every front end).

Invariants:
- COMMANDS is the one table of subcommands: (name, module, help). The
  parser built for a command line imports the chosen command's module only,
  so `rokfs fsck` or `rokfs create` load no front end (and need no pyfuse3).
- A command module's `add_arguments(parser, name)` adds command `name`'s
  arguments and sets either
    `main`: `async main(control, args) -> exit code`, which this program
        runs through the one run sequence (rokfs.runner) on the pool that
        --pool names (rokfs.args.add_pool_argument); optionally with
        `prepare(args)`, checks that must pass before the pool is opened
        (an InvalidArgument there is a usage error, exit 2), and
        `service=True`, a main that runs until SIGINT/SIGTERM stops it;
    or `run(args) -> exit code`, a command that opens its pool itself.
- Every way the program ends goes through rokfs.exits.run_program: an
  error is one line on stderr and the exit code of its row in
  rokfs.errors.ERRORS (the same codes as rokctl's), never a traceback.
"""

import argparse
import importlib
import logging
import sys

from .args import add_version_argument
from .errors import EXIT_INTERRUPTED, exit_code_help
from .exits import run_program
from .runner import run_with_pool

COMMANDS = [   # name, module defining it, help
    ("init", "rokfs.admin", "create a pool"),
    ("status", "rokfs.admin", "show a pool's volumes and snapshots"),
    ("create", "rokfs.admin", "create a volume in a pool no daemon holds"),
    ("snapshot", "rokfs.admin", "snapshot VOLUME@SNAP in a pool no daemon holds"),
    ("rm", "rokfs.admin", "delete a volume or snapshot in a pool no daemon holds"),
    ("fsck", "rokfs.admin", "check a pool's metadata and reference counts"),
    ("serve", "rokfs.daemon", "run the daemon: NBD, FUSE, control API, metrics"),
    ("nbd", "nbd_server.cli", "serve volumes and snapshots over NBD"),
    ("mount", "rokfs.fusefs.cli", "mount the FUSE view of a pool (volumes as image files)"),
    ("push", "rokfs.remote.cli", "push a snapshot to a remote (dedup, compressed)"),
    ("pull", "rokfs.remote.cli", "restore a remote snapshot as a new volume (lazy)"),
    ("remote", "rokfs.remote.cli", "list, delete or garbage-collect remote snapshots"),
]


def build_parser(chosen=None):
    """The parser; with `chosen`, only that command gets its arguments
    (and only its module is imported)."""
    parser = argparse.ArgumentParser(prog="rokfs", description=__doc__.splitlines()[0],
                                     epilog=exit_code_help())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen in (None, name):
            p.set_defaults(run=run_main, prepare=None, service=False)
            importlib.import_module(module).add_arguments(p, name)
    return parser


def chosen_command(argv):
    """The subcommand named in `argv` (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), "")


def run_main(args):
    """Run the command's `main(control, args)` on its pool, through the run sequence."""
    if args.prepare is not None:
        args.prepare(args)
    code = run_with_pool(args.pool, args.main, args, must_exist=args.pool_must_exist)
    if code is None:                              # a signal stopped it
        return 0 if args.service else EXIT_INTERRUPTED
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_program("rokfs", lambda: run(argv))


def run(argv):
    args = build_parser(chosen_command(argv)).parse_args(argv)
    quiet = logging.INFO if args.service else logging.WARNING   # a one-shot command's
    logging.basicConfig(level=logging.DEBUG if args.verbose else quiet,   # result is its output
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.verbose:                  # "Found credentials in ..." is no news to a user
        logging.getLogger("botocore").setLevel(logging.WARNING)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
