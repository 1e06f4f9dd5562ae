"""`rokfs init | status | create | snapshot | fsck`: a pool no daemon holds.

Invariants:
- status, create and snapshot are Control verbs, run by the rokfs program
  through the one run sequence, which commits and closes the pool; init
  creates the pool through that same sequence (rokfs.runner).
- fsck is the Control verb `fsck` too (it walks every map: fine on a pool
  no daemon serves, which is the only place this program runs it).
"""

import json

from .args import add_output_argument, add_pool_argument
from .names import parse_labels
from .runner import DEFAULT_CHUNK_SIZE, run_with_pool
from .units import format_size, parse_size


def add_arguments(parser, name):
    ARGUMENTS[name](parser)


# -- init ----------------------------------------------------------------------------

def _init_arguments(p):
    add_pool_argument(p)
    p.add_argument("--chunk-size", default=format_size(DEFAULT_CHUNK_SIZE),
                   help="chunk size, a power of two from 4K to 16M (default: %(default)s)")
    p.set_defaults(run=init)


def init(args):
    run_with_pool(args.pool, _report_created, args, must_be_new=True,
                  chunk_size=parse_size(args.chunk_size))
    return 0


async def _report_created(control, args):
    chunk_size = control.status()["chunk_size"]
    print(f"created pool {args.pool} (chunk size {format_size(chunk_size)})")


# -- status, create, snapshot: verbs -------------------------------------------------------

def _status_arguments(p):
    add_pool_argument(p)
    add_output_argument(p)
    p.set_defaults(main=status)


async def status(control, args):
    report = {**control.status(), "volumes": control.list_volumes(),
              "snapshots": control.list_snapshots()}
    if args.output == "json":
        print(json.dumps(report, indent=2))
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


def _create_arguments(p):
    add_pool_argument(p)
    p.add_argument("name")
    p.add_argument("--size", required=True, help="e.g. 20G")
    p.set_defaults(main=create)


async def create(control, args):
    vol = await control.create_volume(args.name, parse_size(args.size))
    print(f"created volume {vol['name']} ({format_size(vol['size'])})")
    return 0


def _snapshot_arguments(p):
    add_pool_argument(p, must_exist=True)
    p.add_argument("name", metavar="VOLUME@SNAP")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(main=snapshot)


async def snapshot(control, args):
    snap = await control.create_snapshot(args.name, parse_labels(args.label))
    print(f"created snapshot {snap['name']}")
    return 0


def _fsck_arguments(p):
    p.add_argument("pool", metavar="POOL")
    p.add_argument("--repair", action="store_true", help="fix leaks and wrong counts")
    add_output_argument(p)
    p.set_defaults(main=check, pool_must_exist=True)


async def check(control, args):
    report = await control.fsck(repair=args.repair)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        for line in report["problems"]:
            print(line)
        print(f"fsck {args.pool}: {report['summary']}")
    return 0 if report["clean"] or (args.repair and report["repaired"]) else 1


ARGUMENTS = {"init": _init_arguments, "status": _status_arguments,
             "create": _create_arguments, "snapshot": _snapshot_arguments,
             "fsck": _fsck_arguments}
