"""`rokctl`: the command-line client of a running rokfs daemon.

    rokctl volume create data --size 20G
    rokctl snapshot create data@before --label run=42
    rokctl snapshot ls --label run=42
    rokctl push data@before

Human tables by default, `-o json` for scripts. The daemon is found with
--socket, else ROKFS_CONTROL, else the default control socket. Exit codes
are listed in EXIT_CODES (and docs/daemon.md).
"""

import argparse
import json
import sys
import time

from . import errors, paths
from .args import add_output_argument, add_progress_argument
from .client import Client
from .names import parse_labels
from .rpc import DaemonUnreachable
from .progress import ProgressBar
from .units import format_size, parse_size

EXIT_CODES = [   # (error class, code); first match wins; 0 = ok, 2 = usage
    (DaemonUnreachable, 4),
    (errors.InvalidArgument, 2),
    (errors.NotFound, 3),
    (errors.AlreadyExists, 5),
    (errors.Busy, 6), (errors.NotEmpty, 6), (errors.ReadOnly, 6),
    (errors.NoSpace, 7),
    (errors.RemoteError, 8),
    (errors.Unsupported, 9),
]


def exit_code(exc):
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), 1)


# -- output ------------------------------------------------------------------------------

def table(rows, columns):
    """Print rows (dicts) as aligned columns: [(header, key or function)]."""
    cells = [[h.upper() for h, _ in columns]]
    for row in rows:
        cells.append([str(f(row) if callable(f) else row.get(f, "")) for _, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _labels(row):
    return ",".join(f"{k}={v}" for k, v in sorted(row.get("labels", {}).items()))


def _when(row):
    created = row.get("created")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created else ""


VOLUME_COLUMNS = [("name", "name"), ("size", lambda r: format_size(r["size"])),
                  ("allocated", lambda r: format_size(r.get("allocated", 0))),
                  ("snapshots", lambda r: len(r.get("snapshots", []))),
                  ("origin", lambda r: r.get("origin") or ""), ("created", _when)]
SNAPSHOT_COLUMNS = [("name", "name"), ("size", lambda r: format_size(r["size"])),
                    ("exclusive", lambda r: format_size(r.get("exclusive", 0))),
                    ("created", _when), ("labels", _labels)]
GROUP_COLUMNS = [("name", "name"), ("volumes", lambda r: ",".join(r["volumes"])),
                 ("created", _when), ("labels", _labels)]
REMOTE_COLUMNS = [("name", "name"), ("size", lambda r: format_size(r.get("size", 0))),
                  ("parent", lambda r: r.get("parent") or ""), ("created", _when),
                  ("labels", _labels)]


# -- commands ---------------------------------------------------------------------------------

def _show(args, result, human):
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif human is not None:
        human(result)


def _one(columns):
    return lambda row: table([row], columns)


def volume_create(c, a):
    _show(a, c.create_volume(a.name, parse_size(a.size)), _one(VOLUME_COLUMNS))


def volume_ls(c, a):
    _show(a, c.list_volumes(), lambda rows: table(rows, VOLUME_COLUMNS))


def volume_rm(c, a):
    c.delete_volume(a.name, recursive=a.recursive or None, defer=a.defer or None,
                    force=a.force or None)
    _show(a, {"deleted": a.name, "deferred": a.defer}, lambda r: print(_deleted("volume", a)))


def volume_resize(c, a):
    _show(a, c.resize_volume(a.name, parse_size(a.size), force=a.force or None),
          _one(VOLUME_COLUMNS))


def volume_rename(c, a):
    _show(a, c.rename_volume(a.old, a.new), _one(VOLUME_COLUMNS))


def volume_info(c, a):
    _show(a, c.volume_info(a.name), lambda r: print(json.dumps(r, indent=2)))


def snapshot_create(c, a):
    if a.group:
        _show(a, c.create_group_snapshot(a.group, a.names, parse_labels(a.label) or None,
                                         a.freeze or None), _one(GROUP_COLUMNS))
    elif len(a.names) != 1 or a.freeze:
        raise errors.InvalidArgument("several volumes, or --freeze, need --group NAME "
                                     "(one consistent snapshot of them all)")
    else:
        _show(a, c.create_snapshot(a.names[0], parse_labels(a.label)), _one(SNAPSHOT_COLUMNS))


def snapshot_ls(c, a):
    _show(a, c.list_snapshots(a.volume, parse_labels(a.label) or None, a.group),
          lambda rows: table(rows, SNAPSHOT_COLUMNS))


def snapshot_rm(c, a):
    c.delete_snapshot(a.name, defer=a.defer or None, force=a.force or None)
    _show(a, {"deleted": a.name, "deferred": a.defer}, lambda r: print(_deleted("snapshot", a)))


def snapshot_hold(c, a):
    _show(a, c.hold_snapshot(a.name, a.reason, tag=a.tag), lambda r: print(
        f"held {a.name} ({a.tag}{': ' + a.reason if a.reason else ''})"))


def snapshot_release(c, a):
    _show(a, c.release_snapshot(a.name, tag=a.tag), lambda r: print(
        f"released {a.name} ({a.tag})" + (f"; still held: {', '.join(r['holds'])}"
                                           if r["holds"] else "")))


def group_ls(c, a):
    _show(a, c.list_groups(parse_labels(a.label) or None), lambda rows: table(rows, GROUP_COLUMNS))


def group_info(c, a):
    _show(a, c.group_info(a.name), lambda r: print(json.dumps(r, indent=2)))


def group_rm(c, a):
    c.delete_group(a.name, defer=a.defer or None, force=a.force or None)
    _show(a, {"deleted": a.name, "deferred": a.defer}, lambda r: print(_deleted("group", a)))


def group_clone(c, a):
    _show(a, c.clone_group(a.name, a.suffix), lambda rows: table(rows, VOLUME_COLUMNS))


def lineage(c, a):
    _show(a, c.lineage(a.name), lambda r: print("\n".join(lineage_lines(r))))


def lineage_lines(result):
    """The ancestors, one per line, then the image's own tree, indented."""
    lines, depth = [], 0
    for node in result["ancestors"]:
        lines.append(f"{'   ' * (depth - 1) + '└─ ' if depth else ''}{_node_text(node)}")
        depth += 1

    def tree(node, depth):
        lines.append(f"{'   ' * (depth - 1) + '└─ ' if depth else ''}{_node_text(node)}")
        for child in node.get("children", []):
            tree(child, depth + 1)
    tree(result["tree"], depth)
    return lines


def _node_text(node):
    group = f", group {node['group']}" if node.get("group") else ""
    return f"{node['name']}  ({node['kind']}{group})"


def _deleted(kind, a):
    if a.defer:
        return f"deleting {kind} {a.name}: hidden now, freed when its last holder closes"
    return f"deleted {kind} {a.name}"


def snapshot_label(c, a):
    _show(a, c.set_labels(a.name, parse_labels(a.labels), replace=a.replace or None),
          _one(SNAPSHOT_COLUMNS))


def snapshot_info(c, a):
    _show(a, c.snapshot_info(a.name), lambda r: print(json.dumps(r, indent=2)))


def clone(c, a):
    _show(a, c.clone(a.source, a.new_name), _one(VOLUME_COLUMNS))


def push(c, a):
    bar = ProgressBar(f"push {a.name}", a.progress)
    result = c.push(a.name, remote=a.remote, progress=bar)
    bar.close()
    _show(a, result, lambda r: print(
        f"pushed {r['snapshot']} to {r['remote']}: {r['uploaded_chunks']} of {r['chunks']} "
        f"chunks uploaded ({format_size(r['uploaded_bytes'])}), "
        f"{r['skipped_chunks']} already there, {r['seconds']:.1f}s"))


def _remote_and_snapshot(a):
    """'archive/data@v1' names remote 'archive'; URLs go to the daemon as they are."""
    name = a.remote_snapshot
    if "/" in name and "://" not in name:
        remote, name = name.split("/", 1)
        return remote, name
    return a.remote, name


def pull(c, a):
    remote, name = _remote_and_snapshot(a)
    result = c.pull(name, a.new_volume, remote=remote)
    if a.wait:
        bar = ProgressBar(f"hydrate {a.new_volume}", a.progress)
        c.wait_hydrated(a.new_volume, progress=bar)
        bar.close()
        result = c.volume_info(a.new_volume)
    _show(a, result, _one(VOLUME_COLUMNS))


def remote_ls(c, a):
    _show(a, c.list_remote(remote=a.remote), lambda rows: table(rows, REMOTE_COLUMNS))


def remote_rm(c, a):
    c.delete_remote(a.name, remote=a.remote)
    _show(a, {"deleted": a.name}, lambda r: print(f"deleted {a.name} from remote {a.remote}"))


def remote_gc(c, a):
    _show(a, c.gc_remote(remote=a.remote, grace_seconds=a.grace), lambda r: print(
        f"deleted {r['deleted_objects']} objects ({format_size(r['deleted_bytes'])}), "
        f"kept {r['kept_objects']}"))


def hydration(c, a):
    action, a.volume = _hydration_action(a.what)
    if action == "pause":
        result = c.pause_hydration(a.volume)
    elif action == "resume":
        result = c.resume_hydration(a.volume)
    elif a.wait:
        bar = ProgressBar(f"hydrate {a.volume}", a.progress)
        result = c.wait_hydrated(a.volume, progress=bar)
        bar.close()
    else:
        result = c.hydration_status(a.volume)
    _show(a, result, lambda r: print(
        f"{r['volume']}: {r['state']} {format_size(r['bytes_done'])}/"
        f"{format_size(r['bytes_total'])} ({r['chunks_done']}/{r['chunks_total']} chunks)"
        + (f" error: {r['error']}" if r.get("error") else "")))


def _hydration_action(words):
    """[VOLUME] or [pause|resume, VOLUME] -> (action or None, volume)."""
    if len(words) == 1:
        return None, words[0]
    if len(words) == 2 and words[0] in ("pause", "resume"):
        return words[0], words[1]
    raise errors.InvalidArgument("usage: rokctl hydration [pause|resume] VOLUME")


def status(c, a):
    result = {**c.status(), "volumes_list": c.list_volumes(), "policies": _policies(c)}
    _show(a, result, lambda r: (
        print(f"pool {r['path']}: chunk size {format_size(r['chunk_size'])}, "
              f"{r['volumes']} volumes, {r['snapshots']} snapshots, "
              f"{format_size(r['used_bytes'])} used, {format_size(r['free_bytes'])} free of "
              f"{format_size(r['capacity_bytes'])}"),
        r["volumes_list"] and table(r["volumes_list"], VOLUME_COLUMNS),
        r["policies"] and table(r["policies"], POLICY_COLUMNS)))


# -- parser --------------------------------------------------------------------------------------

def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="daemon control socket (env ROKFS_CONTROL; default "
                             f"{paths.control_socket()})")
    add_output_argument(common, default=argparse.SUPPRESS)
    add_progress_argument(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="rokctl", parents=[common],
                                     description=__doc__.splitlines()[0],
                                     epilog="exit codes: 0 ok, 1 error, 2 usage or invalid "
                                     "argument, 3 not found, 4 daemon unreachable, 5 already "
                                     "exists, 6 busy/not empty/read-only, 7 no space, "
                                     "8 remote error, 9 unsupported")
    sub = parser.add_subparsers(dest="noun", required=True)

    def cmd(parent, name, func, help_text, *arguments):
        p = parent.add_parser(name, parents=[common], help=help_text)
        for flags, kw in arguments:
            p.add_argument(*flags, **kw)
        p.set_defaults(func=func)
        return p

    def group(name, help_text):
        return sub.add_parser(name, help=help_text).add_subparsers(dest="verb", required=True)

    A = lambda *flags, **kw: (flags, kw)      # noqa: E731
    remote = A("--remote", default="default", help="remote name (default: %(default)s)")
    labels = A("--label", action="append", default=[], metavar="KEY=VALUE")
    defer_help = ("if it is open (NBD, FUSE, a push), hide it now and free it when the "
                  "last holder closes, instead of refusing")

    v = group("volume", "create, list, remove, resize, rename volumes")
    cmd(v, "create", volume_create, "create a volume", A("name"), A("--size", required=True))
    cmd(v, "ls", volume_ls, "list volumes")
    cmd(v, "rm", volume_rm, "delete a volume", A("name"),
        A("-r", "--recursive", action="store_true", help="and its snapshots"),
        A("--defer", action="store_true", help=defer_help),
        A("--force", action="store_true", help="even if a snapshot of it is held"))
    cmd(v, "resize", volume_resize, "grow (or --force shrink) a volume", A("name"), A("size"),
        A("--force", action="store_true"))
    cmd(v, "rename", volume_rename, "rename a volume", A("old"), A("new"))
    cmd(v, "info", volume_info, "one volume's details", A("name"))

    force = A("--force", action="store_true", help="even if held (rokctl snapshot hold)")
    s = group("snapshot", "create, list, remove, label, hold snapshots")
    cmd(s, "create", snapshot_create, "snapshot VOLUME@SNAP, or with --group several volumes "
        "as VOLUME@GROUP at one instant", A("names", nargs="+", metavar="VOLUME@SNAP|VOLUME"),
        A("--group", metavar="NAME", help="one consistent snapshot of every VOLUME given"),
        A("--freeze", action="append", default=[], metavar="MOUNTPOINT",
          help="with --group: fsfreeze this mounted filesystem around the snapshot"), labels)
    cmd(s, "ls", snapshot_ls, "list snapshots", A("volume", nargs="?"), labels,
        A("--group", metavar="NAME", help="only this group snapshot's members"))
    cmd(s, "rm", snapshot_rm, "delete a snapshot", A("name", metavar="VOLUME@SNAP"),
        A("--defer", action="store_true", help=defer_help), force)
    tag = A("--tag", default="user", help="the hold's tag (default: %(default)s)")
    cmd(s, "hold", snapshot_hold, "keep a snapshot from deletion (and retention)",
        A("name", metavar="VOLUME@SNAP"), A("--reason", default="", metavar="TEXT"), tag)
    cmd(s, "release", snapshot_release, "release a hold", A("name", metavar="VOLUME@SNAP"), tag)
    cmd(s, "label", snapshot_label, "set labels", A("name", metavar="VOLUME@SNAP"),
        A("labels", nargs="+", metavar="KEY=VALUE"),
        A("--replace", action="store_true", help="drop labels not given"))
    cmd(s, "info", snapshot_info, "one snapshot's details", A("name", metavar="VOLUME@SNAP"))

    g = group("group", "group snapshots: list, inspect, clone, remove")
    cmd(g, "ls", group_ls, "list group snapshots", labels)
    cmd(g, "info", group_info, "one group snapshot", A("name"))
    cmd(g, "clone", group_clone, "a new volume from each member",
        A("name"), A("--suffix", help="new volume names: VOLUME+SUFFIX (default: -GROUP)"))
    cmd(g, "rm", group_rm, "delete every member", A("name"),
        A("--defer", action="store_true", help=defer_help), force)
    cmd(sub, "lineage", lineage, "where an image came from and what came from it",
        A("name", metavar="VOLUME|VOLUME@SNAP"))
    cmd(sub, "clone", clone, "clone VOLUME@SNAP into a new volume",
        A("source", metavar="VOLUME@SNAP"), A("new_name", metavar="NEW_VOLUME"))
    cmd(sub, "push", push, "push a snapshot to a remote", A("name", metavar="VOLUME@SNAP"),
        remote)
    cmd(sub, "pull", pull, "restore a remote snapshot as a new volume (lazily)",
        A("remote_snapshot", metavar="[REMOTE/]VOLUME@SNAP"),
        A("--as", dest="new_volume", required=True, metavar="VOLUME"), remote,
        A("--wait", action="store_true", help="wait until fully hydrated"))
    r = group("remote", "snapshots on a remote")
    cmd(r, "ls", remote_ls, "list a remote's snapshots", remote)
    cmd(r, "rm", remote_rm, "delete a remote snapshot", A("name", metavar="VOLUME@SNAP"), remote)
    cmd(r, "gc", remote_gc, "delete chunks no manifest names", remote,
        A("--grace", type=float, default=3600, metavar="SECONDS",
          help="keep objects younger than this (default: %(default)s)"))
    cmd(sub, "hydration", hydration, "a restored volume's hydration; pause or resume it",
        A("what", nargs="+", metavar="[pause|resume] VOLUME"),
        A("--wait", action="store_true", help="until hydrated, with a progress bar"))
    cmd(sub, "status", status, "the pool's state")
    add_policy_commands(group("policy", "snapshot schedules and retention"), cmd, A)
    return parser


# -- policies: schedules and retention (docs/daemon.md, "Snapshot policies") ----------------

def _space(r):
    sp = r.get("space") or {}
    if "error" in sp:
        return sp["error"]
    return (f"{sp['snapshots']} ({format_size(sp['exclusive_bytes'])} exclusive), "
            f"{sp['would_delete']} to delete now")


POLICY_COLUMNS = [("policy", "target"), ("kind", "kind"), ("schedule", "schedule"),
                  ("keep", lambda r: " ".join(f"{k}={v}" for k, v in r["keep"].items())
                   or "all"),
                  ("next run", lambda r: r.get("next_run") or ""), ("snapshots", _space)]
PLAN_COLUMNS = [("snapshot", "name"), ("taken", "taken"), ("action", "action"),
                ("why / frees", "why")]


def _policies(c):
    """Every policy, or none from a daemon that has no policies yet."""
    try:
        return c.list_policies()
    except errors.Unsupported:
        return []


def policy_set(c, a):
    _show(a, c.set_policy(a.target, " ".join(a.spec)), _policy_text)


def policy_show(c, a):
    if a.target:
        _show(a, c.show_policy(a.target), _policy_text)
    else:
        _show(a, c.list_policies(), lambda rows: table(rows, POLICY_COLUMNS))


def policy_rm(c, a):
    c.delete_policy(a.target)
    _show(a, {"deleted": a.target}, lambda r: print(
        f"removed the policy of {a.target} (the snapshots it took stay)"))


def policy_plan(c, a):
    _show(a, c.plan_policy(a.target), _plan_text)


def policy_run(c, a):
    _show(a, c.run_policy(a.target), lambda r: print(run_text(r)))


def _policy_text(r):
    print(f"{r['target']} ({r['kind']}): {r['spec']}")
    print(f"  next run   {r.get('next_run') or 'when the daemon runs it'}")
    if r.get("last_result"):
        print(f"  last run   {run_text(r['last_result'])}")
    print(f"  snapshots  {_space(r)}")


def _plan_text(plan):
    """The plan as a table, then what applying it would free."""
    rows = [{**row, "action": "keep", "why": ", ".join(row["reasons"])} for row in plan["keep"]]
    rows += [{**row, "action": "delete", "why": format_size(row["exclusive"])}
             for row in plan["delete"]]
    print(f"policy of {plan['target']}: {plan['policy']}")
    table(rows, PLAN_COLUMNS)
    print(f"would delete {len(plan['delete'])}, freeing at least "
          f"{format_size(plan['frees_bytes'])} (and {format_size(plan['shares_bytes'])} "
          "they share with other images)")


def run_text(report):
    text = f"{report['at']}: took {', '.join(report['snapshots']) or 'nothing'}"
    text += f"; deleted {', '.join(report['deleted']) or 'none'}"
    if report.get("pushed"):
        text += f"; pushed {', '.join(report['pushed'])}"
    return text + "".join(f"; error: {e}" for e in report["errors"])


def add_policy_commands(p, cmd, A):
    target = A("target", metavar="VOLUME|GROUP")
    cmd(p, "set", policy_set, "give a volume (or a group: 'volumes A,B' in SPEC) a policy",
        target, A("spec", nargs="+", metavar="SPEC",
                  help="e.g. every 15m keep-last 4 keep-daily 7 label k=v push REMOTE"))
    cmd(p, "show", policy_show, "one policy, or all", A("target", nargs="?",
                                                        metavar="VOLUME|GROUP"))
    cmd(p, "rm", policy_rm, "remove a policy (its snapshots stay)", target)
    cmd(p, "plan", policy_plan, "what retention would delete now, and why the rest is kept",
        target)
    cmd(p, "run", policy_run, "run a policy now: snapshot, push, retention", target)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)     # common options may come before or after the verb
    args.socket = getattr(args, "socket", None)
    args.output = getattr(args, "output", "human")
    if not hasattr(args, "progress"):
        args.progress = sys.stdout.isatty() and args.output == "human"
    try:
        with Client(args.socket) as client:
            args.func(client, args)
    except errors.RokfsError as exc:
        print(f"rokctl: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
