"""`rokfs push`, `rokfs pull`, `rokfs remote ls|rm|gc` for a pool no daemon holds.

Invariants:
- Each command is a Control verb (push, pull, list_remote, delete_remote,
  gc_remote; run_background and wait_hydrated for `pull --wait`) given
  `--remote` as the verb's `remote` (a URL; without it the verbs' "default",
  a directory next to the pool). The rokfs program runs it through the one
  run sequence, which flushes and closes the pool.
- Progress bars (bytes, rate, ETA) go to stderr when it is a terminal or
  when --progress is given; results go to stdout (human or -o json).
"""

import functools
import json
import time

import trio

from ..args import add_output_argument, add_pool_argument, add_progress_argument
from ..progress import ProgressBar
from ..units import format_size


def add_arguments(parser, name):
    ARGUMENTS[name](parser)


def _common(p, verb):
    add_pool_argument(p, must_exist=True)
    p.add_argument("--remote", default="default", metavar="URL",
                   help="file:///path or s3://bucket/prefix?endpoint_url=...&region=... "
                        "(default: a directory next to the pool)")
    add_output_argument(p)
    add_progress_argument(p)
    p.set_defaults(main=functools.partial(_run, verb))


def _push_arguments(p):
    p.add_argument("name", metavar="VOLUME@SNAP")
    _common(p, _push)


def _pull_arguments(p):
    p.add_argument("name", metavar="VOLUME@SNAP", help="the snapshot's name on the remote")
    p.add_argument("--as", dest="new_name", required=True, metavar="NAME")
    p.add_argument("--wait", action="store_true", help="hydrate to completion before exiting")
    _common(p, _pull)


def _remote_arguments(p):
    rsub = p.add_subparsers(dest="remote_command", required=True)
    _common(rsub.add_parser("ls", help="list snapshots on the remote"), _ls)
    r = rsub.add_parser("rm", help="delete a snapshot from the remote (run gc to free space)")
    r.add_argument("name", metavar="VOLUME@SNAP")
    _common(r, _rm)
    r = rsub.add_parser("gc", help="delete chunks no remote snapshot references")
    r.add_argument("--grace", type=float, default=3600,
                   help="keep unreferenced objects younger than this many seconds "
                        "(default: %(default)s)")
    _common(r, _gc)


ARGUMENTS = {"push": _push_arguments, "pull": _pull_arguments, "remote": _remote_arguments}


async def _run(verb, control, args):
    result = await verb(control, args)
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif result is not None:
        print(_human(args, result))
    return 0


async def _push(control, args):
    bar = ProgressBar(f"push {args.name}", args.progress)
    try:
        return await control.push(args.name, remote=args.remote, progress=bar)
    finally:
        bar.close()


async def _pull(control, args):
    info = await control.pull(args.name, args.new_name, remote=args.remote)
    if not args.wait:
        return info
    bar = ProgressBar(f"hydrate {args.new_name}", args.progress)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(control.run_background)
            await control.wait_hydrated(args.new_name, progress=bar)
            nursery.cancel_scope.cancel()
    finally:
        bar.close()
    return control.volume_info(args.new_name)


async def _ls(control, args):
    return await control.list_remote(remote=args.remote)


async def _rm(control, args):
    await control.delete_remote(args.name, remote=args.remote)
    return {"deleted": args.name}


async def _gc(control, args):
    return await control.gc_remote(remote=args.remote, grace_seconds=args.grace)


def _human(args, result):
    if isinstance(result, list):
        lines = [f"{m['name']:<32} {format_size(m['size']):>9}  "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m['created']))}  "
                 f"{','.join(f'{k}={v}' for k, v in sorted(m['labels'].items()))}"
                 for m in result]
        return "\n".join(lines) or "(no snapshots on the remote)"
    if "uploaded_bytes" in result:
        return (f"pushed {result['snapshot']} to {result['remote']}: {result['chunks']} chunks, "
                f"{result['uploaded_chunks']} uploaded ({format_size(result['uploaded_bytes'])}),"
                f" {result['skipped_chunks']} already there, {result['seconds']:.1f}s")
    if "deleted_objects" in result:
        return (f"gc: deleted {result['deleted_objects']} objects "
                f"({format_size(result['deleted_bytes'])}), kept {result['kept_objects']}")
    if "deleted" in result:
        return f"deleted {result['deleted']} from the remote"
    return (f"volume {result['name']} ({format_size(result['size'])}), "
            f"{format_size(result['unhydrated'])} still on the remote")
