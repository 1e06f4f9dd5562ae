"""Command-line arguments that several commands share, spelled once.

Invariants:
- A command that works on a pool takes it with `add_pool_argument`: the
  same flag, default (rokfs.paths) and help everywhere. Whether the pool
  must already exist is declared there too (`pool_must_exist` on the
  parsed arguments), for the one place that opens it.
- Imports only base modules: building a parser loads no engine and no
  front end.
"""

from . import __version__, paths

OUTPUTS = ("human", "json")


def add_pool_argument(parser, *, must_exist=False):
    parser.add_argument("--pool", default=paths.pool_path(),
                        help="pool directory (env ROKFS_POOL; default: %(default)s)")
    parser.set_defaults(pool_must_exist=must_exist)


def add_output_argument(parser, default="human"):
    parser.add_argument("-o", "--output", choices=OUTPUTS, default=default,
                        help="human tables or JSON for scripts")


def add_progress_argument(parser, default=None):
    parser.add_argument("--progress", action="store_true", default=default,
                        help="show progress bars even when stderr is not a terminal")


def add_version_argument(parser):
    """--version: the program's name and rokfs's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
