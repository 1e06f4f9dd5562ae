"""`rokfs`: the administrator's command (pool set-up, fsck, serving).

Each front end contributes its subcommands through an `add_parser(sub)`
function in its own module, listed in FRONT_ENDS; the parser it adds sets
`func(args) -> exit code`.
"""

import argparse
import importlib
import json
import logging
import os
import sys

from .errors import RokfsError
from .pool import DEFAULT_CHUNK_SIZE, Pool
from .names import parse_labels
from .units import format_size, parse_size

FRONT_ENDS = ("rokfs.daemon", "nbd_server.cli", "rokfs.fusefs", "rokfs.remote.cli")


def default_pool_path():
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.environ.get("ROKFS_POOL") or os.path.join(data, "rokfs", "pool")


def add_pool_argument(parser):
    parser.add_argument("--pool", default=default_pool_path(),
                        help="pool directory (default: %(default)s)")


def cmd_init(args):
    pool = Pool.create(args.pool, parse_size(args.chunk_size))
    print(f"created pool {args.pool} (chunk size {format_size(pool.chunk_size)})")
    pool.close()
    return 0


def cmd_status(args):
    with Pool.open_or_create(args.pool) as pool:
        status = pool.status()
        status["volumes"] = [v.info() for v in pool.list_volumes()]
        status["snapshots"] = [s.info() for s in pool.list_snapshots()]
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0
    print(f"pool {status['path']}: chunk size {format_size(status['chunk_size'])}, "
          f"{format_size(status['used_bytes'])} used, "
          f"{format_size(status['free_bytes'])} free on disk")
    for vol in status["volumes"]:
        print(f"  volume {vol['name']:<24} {format_size(vol['size']):>9} "
              f"allocated {format_size(vol['allocated'])}")
    for snap in status["snapshots"]:
        print(f"  snapshot {snap['name']:<22} {format_size(snap['size']):>9} "
              f"exclusive {format_size(snap['exclusive'])}")
    return 0


def cmd_create(args):
    with Pool.open_or_create(args.pool) as pool:
        vol = pool.create_volume(args.name, parse_size(args.size))
    print(f"created volume {vol.name} ({format_size(vol.size)})")
    return 0


def cmd_snapshot(args):
    with Pool.open(args.pool) as pool:
        snap = pool.create_snapshot(args.name, parse_labels(args.label))
    print(f"created snapshot {snap.full_name}")
    return 0


def cmd_fsck(args):
    from .fsck import fsck
    with Pool.open(args.pool_dir) as pool:
        report = fsck(pool, repair=args.repair)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        for line in report["problems"]:
            print(line)
        print(f"fsck {args.pool_dir}: {report['summary']}")
    return 0 if report["clean"] or (args.repair and report["repaired"]) else 1


def build_parser():
    parser = argparse.ArgumentParser(prog="rokfs", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a pool")
    add_pool_argument(p)
    p.add_argument("--chunk-size", default=str(DEFAULT_CHUNK_SIZE),
                   help="chunk size, a power of two (default: %(default)s)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("status", help="show a pool's volumes and snapshots")
    add_pool_argument(p)
    p.add_argument("-o", "--output", choices=("human", "json"), default="human")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("create", help="create a volume in a pool no daemon holds")
    add_pool_argument(p)
    p.add_argument("name")
    p.add_argument("--size", required=True, help="e.g. 20G")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("snapshot", help="snapshot VOLUME@SNAP in a pool no daemon holds")
    add_pool_argument(p)
    p.add_argument("name", metavar="VOLUME@SNAP")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("fsck", help="check a pool's metadata and reference counts")
    p.add_argument("pool_dir", metavar="POOL")
    p.add_argument("--repair", action="store_true", help="fix leaks and wrong counts")
    p.add_argument("-o", "--output", choices=("human", "json"), default="human")
    p.set_defaults(func=cmd_fsck)

    for module in FRONT_ENDS:
        try:
            front_end = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        front_end.add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return args.func(args)
    except RokfsError as exc:
        print(f"rokfs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
