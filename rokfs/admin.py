"""`rokfs init | status | create | snapshot | rm | fsck`: a pool no daemon holds.

Invariants:
- Every command here is Control verbs run by the rokfs program through the
  one run sequence (rokfs.runner), which commits and closes the pool; init
  creates the pool through that same sequence.
- Only init creates a pool: the others refuse a pool directory that holds
  none (a mistyped --pool is an error, not a new empty pool).
- fsck is the Control verb `fsck` (it walks every map: fine on a pool no
  daemon serves, the only place this program runs it).
- COMMANDS is the one table of these commands' arguments and mains.
"""

import json

from .args import add_output_argument, add_pool_argument
from .names import parse_labels
from .runner import DEFAULT_CHUNK_SIZE, run_with_pool
from .units import format_size, json_view, parse_size


def add_arguments(parser, name):
    flags, main = COMMANDS[name]
    if name == "fsck":
        parser.add_argument("pool", metavar="POOL")
        parser.set_defaults(pool_must_exist=True)
    else:
        add_pool_argument(parser, must_exist=name != "init")
    for add in flags:
        add(parser)
    if name == "init":
        parser.set_defaults(run=init)
    else:
        parser.set_defaults(main=main)


def init(args):
    run_with_pool(args.pool, _report_created, args, must_be_new=True,
                  chunk_size=parse_size(args.chunk_size))
    return 0


async def _report_created(control, args):
    chunk_size = control.status()["chunk_size"]
    print(f"created pool {args.pool} (chunk size {format_size(chunk_size)})")


async def status(control, args):
    report = {**control.status(), "volumes": control.list_volumes(),
              "snapshots": await control.list_snapshots()}
    if args.output == "json":
        print(json.dumps(json_view(report), indent=2))
    else:
        print("\n".join(_status_lines(report)))
    return 0


def _status_lines(report):
    yield (f"pool {report['path']}: chunk size {format_size(report['chunk_size'])}, "
           f"{format_size(report['used_bytes'])} used, "
           f"{format_size(report['free_bytes'])} free on disk")
    for vol in report["volumes"]:
        yield (f"  volume {vol['name']:<24} {format_size(vol['size']):>9} "
               f"allocated {format_size(vol['allocated'])}")
    for snap in report["snapshots"]:
        yield (f"  snapshot {snap['name']:<22} {format_size(snap['size']):>9} "
               f"exclusive {format_size(snap['exclusive'])}")


async def create(control, args):
    vol = await control.create_volume(args.name, parse_size(args.size))
    print(f"created volume {vol['name']} ({format_size(vol['size'])})")
    return 0


async def snapshot(control, args):
    snap = await control.create_snapshot(args.name, parse_labels(args.label))
    print(f"created snapshot {snap['name']}")
    return 0


async def remove(control, args):
    """Delete a volume (with -r, its snapshots too) or a snapshot. No daemon
    holds the pool, so nothing has it open."""
    if "@" in args.name:
        await control.delete_snapshot(args.name)
    else:
        await control.delete_volume(args.name, recursive=args.recursive)
    print(f"deleted {args.name}")
    return 0


async def check(control, args):
    report = await control.fsck(repair=args.repair)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        for line in report["problems"]:
            print(line)
        print(f"fsck {args.pool}: {report['summary']}")
    return 0 if report["clean"] or (args.repair and report["repaired"]) else 1


def _flag(*names, **options):
    return lambda parser: parser.add_argument(*names, **options)


OUTPUT = add_output_argument
COMMANDS = {   # name -> ([adds an argument to a parser], main)
    "init": ([_flag("--chunk-size", default=format_size(DEFAULT_CHUNK_SIZE),
                    help="chunk size, a power of two from 4K to 16M (default: %(default)s)")],
             None),
    "status": ([OUTPUT], status),
    "create": ([_flag("name"), _flag("--size", required=True, help="e.g. 20G")], create),
    "snapshot": ([_flag("name", metavar="VOLUME@SNAP"),
                  _flag("--label", action="append", default=[], metavar="KEY=VALUE")],
                 snapshot),
    "rm": ([_flag("name", metavar="VOLUME|VOLUME@SNAP"),
            _flag("-r", "--recursive", action="store_true",
                  help="a volume with its snapshots")], remove),
    "fsck": ([_flag("--repair", action="store_true", help="fix leaks and wrong counts"),
              OUTPUT], check),
}
