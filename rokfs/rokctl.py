"""`rokctl`: the command-line client of a running rokfs daemon.

    rokctl volume create data --size 20G
    rokctl snapshot create data@before --label run=42
    rokctl snapshot ls --label run=42
    rokctl push data@before

Invariants:
- Every command is one Client call of a Control verb; rokctl computes
  nothing of its own. Push, pull --wait and hydration --wait run as jobs
  in the daemon, attached to this command: Ctrl-C cancels the job and says
  how it ended (exit 130); with --detach they return at once and print how
  to follow and cancel the job (`rokctl jobs`).
- Human output shows sizes in binary units and times in local time; `-o
  json` prints the verb's result with sizes in bytes and times as ISO-8601
  UTC, the number kept beside them as FIELD_epoch (rokfs.units.json_view).
- The daemon is found with --socket, else ROKFS_CONTROL, else the default
  control socket.
- The program ends through rokfs.exits: the exit code of the error's row
  in rokfs.errors.ERRORS (listed by --help and in docs/daemon.md), one
  line per error, never a traceback, quietly on a closed stdout.
"""

import argparse
import contextlib
import json
import logging
import sys
import time

from . import errors, paths
from .args import add_output_argument, add_progress_argument, add_version_argument
from .client import Client
from .exits import run_program
from .names import parse_labels
from .progress import ProgressBar
from .units import TIME_FIELDS, format_size, format_time, json_view, parse_size

SIZE_FIELDS = {"size", "allocated", "exclusive", "shared", "unhydrated", "bytes_done",
               "bytes_total", "chunk_size", "used_bytes", "free_bytes", "capacity_bytes",
               "disk_bytes", "uploaded_bytes"}


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
    return format_time(row.get("created"))


def details(info):
    """One `field: value` line per field of a result, sizes and times for people."""
    width = max(map(len, info), default=0) + 1
    for key, value in info.items():
        print(f"{key + ':':<{width}} {_human_value(key, value)}")


def _human_value(key, value):
    if value is None or value == [] or value == {}:
        return "-"
    if key in TIME_FIELDS:
        return format_time(value)
    if key in SIZE_FIELDS and isinstance(value, int):
        return format_size(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


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
        print(json.dumps(json_view(result), indent=2))
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
    _show(a, c.volume_info(a.name), details)


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
    _show(a, c.group_info(a.name), lambda r: (print(json.dumps(r, indent=2)),
                                              print("space: " + _space_line(r["space"]))))


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
    _show(a, c.snapshot_info(a.name), details)


def clone(c, a):
    _show(a, c.clone(a.source, a.new_name), _one(VOLUME_COLUMNS))


def push(c, a):
    if a.detach:
        return _detached(a, c.push(a.name, remote=a.remote, detach=True))
    with _attached_job(c, f"push {a.name}", a.progress) as follow:
        result = c.push(a.name, remote=a.remote, progress=follow)
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
    if a.detach:
        return _detached(a, c.pull(name, a.new_volume, remote=remote, detach=True))
    if not a.wait:
        return _show(a, c.pull(name, a.new_volume, remote=remote), _one(VOLUME_COLUMNS))
    with _attached_job(c, f"pull {a.new_volume}", a.progress) as follow:
        result = c.pull(name, a.new_volume, remote=remote, wait=True, progress=follow)
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
    elif a.detach:
        return _detached(a, c.wait_hydrated(a.volume, detach=True))
    elif a.wait:
        with _attached_job(c, f"hydrate {a.volume}", a.progress) as follow:
            result = c.wait_hydrated(a.volume, progress=follow)
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


# -- jobs ----------------------------------------------------------------------------------------

class _JobFollower:
    """The progress callback of an attached job: draws the bar and keeps the
    job's description, to cancel it and say how it ended if interrupted."""

    def __init__(self, label, enabled):
        self.bar = ProgressBar(label, enabled)
        self.job = None

    def __call__(self, done, total):
        self.bar(done, total)

    def on_job(self, info):
        self.job = info


@contextlib.contextmanager
def _attached_job(client, label, progress):
    """Follow a job the command runs; on Ctrl-C (the call is cancelled, and
    so is the job in the daemon) wait for the job to stop and say how it
    ended, then exit 130."""
    follow = _JobFollower(label, progress)
    try:
        yield follow
    except KeyboardInterrupt:
        follow.bar.close()
        print(f"rokctl: interrupted: {_how_it_ended(client, follow.job, label)}",
              file=sys.stderr)
        raise
    follow.bar.close()


def _how_it_ended(client, job, label):
    if job is None:
        return f"{label} cancelled before the daemon started it"
    try:
        return client.cancel_job(job["id"])["message"]
    except errors.RokfsError as exc:
        return f"{label} (job {job['id']}): could not learn how it ended: {exc}"


def _rokctl(a):
    """How to call rokctl again for the same daemon."""
    return f"rokctl --socket {a.socket}" if a.socket else "rokctl"


def _detached(a, job):
    ctl = _rokctl(a)
    _show(a, job, lambda j: print(
        f"{j['kind']} of {j['target']} runs as job {j['id']} (detached)\n"
        f"  follow: {ctl} jobs wait {j['id']}    (or {ctl} jobs)\n"
        f"  cancel: {ctl} jobs cancel {j['id']}"))


def _job_progress(row):
    done, total = row.get("done_bytes", 0), row.get("total_bytes", 0)
    return f"{done / total:.0%} {format_size(done)}/{format_size(total)}" if total else "-"


def _age(row):
    seconds = int(time.time() - row["started"])
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m ago" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s ago"


JOB_COLUMNS = [("id", "id"), ("kind", "kind"), ("target", "target"), ("state", "state"),
               ("progress", _job_progress), ("started", _age)]


def jobs_ls(c, a):
    _show(a, c.list_jobs(), lambda rows: table(rows, JOB_COLUMNS) if rows else print("no jobs"))


def jobs_cancel(c, a):
    _show(a, c.cancel_job(a.id), lambda r: print(r["message"]))


def jobs_wait(c, a):
    bar = ProgressBar(f"job {a.id}", a.progress)
    try:
        result = c.wait_job(a.id, progress=bar)
    except KeyboardInterrupt:
        bar.close()
        print(f"rokctl: interrupted: stopped following job {a.id}, which goes on "
              f"({_rokctl(a)} jobs cancel {a.id} cancels it)", file=sys.stderr)
        raise
    bar.close()
    _show(a, result, lambda r: print(r["message"]))


def _space_line(space):
    """'1.0 GiB allocated (256 MiB exclusive, ...)' from a space summary
    (a group's also says what deleting it frees)."""
    line = (f"{format_size(space['allocated'])} allocated ({format_size(space['exclusive'])} "
            f"exclusive, {format_size(space['shared'])} shared), "
            f"{format_size(space['unhydrated'])} unhydrated")
    if "frees" in space:
        line += (f"; deleting it frees {'' if space['frees_exact'] else 'at least '}"
                 f"{format_size(space['frees'])}")
    return line


def status(c, a):
    result = {**c.status(), "volumes_list": c.list_volumes(), "policies": _policies(c)}
    _show(a, result, lambda r: (
        print(f"pool {r['path']}: chunk size {format_size(r['chunk_size'])}, "
              f"{r['volumes']} volumes, {r['snapshots']} snapshots, "
              f"{format_size(r['used_bytes'])} used, {format_size(r['free_bytes'])} free of "
              f"{format_size(r['capacity_bytes'])}"),
        print("space: " + _space_line(r["space"])),
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
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging (a bug's traceback)")
    parser = argparse.ArgumentParser(prog="rokctl", parents=[common],
                                     description=__doc__.splitlines()[0],
                                     epilog=errors.exit_code_help())
    add_version_argument(parser)
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
    detach = A("--detach", action="store_true",
               help="run it as a job in the daemon and return at once (see rokctl jobs)")

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
    cmd(sub, "push", push, "push a snapshot to a remote (Ctrl-C cancels it)",
        A("name", metavar="VOLUME@SNAP"), remote, detach)
    cmd(sub, "pull", pull, "restore a remote snapshot as a new volume (lazily)",
        A("remote_snapshot", metavar="[REMOTE/]VOLUME@SNAP"),
        A("--as", dest="new_volume", required=True, metavar="VOLUME"), remote,
        A("--wait", action="store_true",
          help="wait until fully hydrated (Ctrl-C pauses the hydration)"), detach)
    r = group("remote", "snapshots on a remote")
    cmd(r, "ls", remote_ls, "list a remote's snapshots", remote)
    cmd(r, "rm", remote_rm, "delete a remote snapshot", A("name", metavar="VOLUME@SNAP"), remote)
    cmd(r, "gc", remote_gc, "delete chunks no manifest names", remote,
        A("--grace", type=float, default=3600, metavar="SECONDS",
          help="keep objects younger than this (default: %(default)s)"))
    cmd(sub, "hydration", hydration, "a restored volume's hydration; pause or resume it",
        A("what", nargs="+", metavar="[pause|resume] VOLUME"),
        A("--wait", action="store_true",
          help="until hydrated, with a progress bar (Ctrl-C pauses the hydration)"), detach)
    _jobs_parser(sub, cmd, A, common)
    cmd(sub, "status", status, "the pool's state")
    add_policy_commands(group("policy", "snapshot schedules and retention"), cmd, A)
    add_registry_commands(group("registry", "publish and subscribe buckets of versions"),
                          cmd, A, remote, detach)
    return parser


def _jobs_parser(sub, cmd, A, common):
    p = sub.add_parser("jobs", parents=[common],
                       help="running pushes, pulls and hydrations; cancel or follow one")
    p.set_defaults(func=jobs_ls)
    jobs = p.add_subparsers(dest="verb")
    job_id = A("id", metavar="ID")
    cmd(jobs, "ls", jobs_ls, "list jobs: running ones, then the last finished")
    cmd(jobs, "cancel", jobs_cancel, "cancel a job; returns once it has stopped", job_id)
    cmd(jobs, "wait", jobs_wait, "follow a job until it ends (Ctrl-C stops following, "
        "not the job)", job_id)


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
    print(f"would delete {len(plan['delete'])}, freeing "
          f"{'' if plan['frees_exact'] else 'at least '}{format_size(plan['frees_bytes'])} "
          f"(and {format_size(plan['shares_bytes'])} they share with other images)")


def run_text(report):
    text = f"{report['at']}: took {', '.join(report['snapshots']) or 'nothing'}"
    text += f"; deleted {', '.join(report['deleted']) or 'none'}"
    if report.get("pushed"):
        text += f"; pushed {', '.join(report['pushed'])}"
    if report.get("published"):
        text += f"; published {report['published']}"
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


# -- registry: buckets of signed versions (docs/registry.md) ----------------------------------

BUCKET_COLUMNS = [("bucket", "bucket"), ("head", lambda r: f"v{r['version']}" if "version" in r
                                           else r.get("error", "")),
                  ("published", lambda r: format_time(r.get("time"))),
                  ("signer", lambda r: r.get("signer", "")[:16]),
                  ("subscribed", lambda r: "yes" if r["subscribed"] else "")]
VERSION_COLUMNS = [("version", lambda r: f"v{r['version']}"), ("created", _when),
                   ("members", lambda r: ", ".join(m["snapshot"] for m in r.get("members", ()))
                    or r.get("error", "")),
                   ("publisher", lambda r: r.get("publisher", "")[:16]),
                   ("message", lambda r: r.get("message", ""))]
SUBSCRIPTION_COLUMNS = [("bucket", "bucket"), ("local", "local"),
                        ("as", lambda r: "clones" if r["clone"] else "snapshots"),
                        ("version", lambda r: f"v{r['version']}" if r["version"] else "-"),
                        ("remote", "remote"), ("error", lambda r: r.get("error") or "")]
TRUST_COLUMNS = [("scope", "scope"), ("key", "key")]


def registry_key(c, a):
    _show(a, c.registry_key(), details)


def registry_trust(c, a):
    _show(a, c.registry_trust(a.scope, a.key), lambda rows: table(rows, TRUST_COLUMNS))


def registry_distrust(c, a):
    _show(a, c.registry_distrust(a.scope, a.key), lambda rows: table(rows, TRUST_COLUMNS))


def registry_trusted(c, a):
    _show(a, c.registry_trusted(), lambda rows: table(rows, TRUST_COLUMNS))


def registry_publish(c, a):
    args = dict(message=a.message, labels=parse_labels(a.label), remote=a.remote,
                private=a.private or None)
    if a.detach:
        return _detached(a, c.registry_publish(a.target, a.bucket, detach=True, **args))
    with _attached_job(c, f"publish {a.bucket}", a.progress) as follow:
        result = c.registry_publish(a.target, a.bucket, progress=follow, **args)
    _show(a, result, lambda r: print(
        f"published {', '.join(r['members'])} as {r['bucket']}@v{r['version']} on "
        f"{r['remote']}: {r['uploaded_chunks']} of {r['chunks']} chunks uploaded "
        f"({format_size(r['uploaded_bytes'])}), {r['seconds']:.1f}s"))


def registry_ls(c, a):
    if a.bucket:
        _show(a, c.registry_ls(a.bucket, remote=a.remote),
              lambda rows: table(rows, VERSION_COLUMNS))
    else:
        _show(a, c.registry_ls(remote=a.remote), lambda rows: table(rows, BUCKET_COLUMNS))


def registry_subscribe(c, a):
    _show(a, c.registry_subscribe(a.bucket, remote=a.remote, local=a.local, clone=a.clone,
                                  hydrate=not a.on_demand),
          lambda r: print(f"subscribed to {r['bucket']} on {r['remote']} as {r['local']}; "
                          f"now at {'v' + str(r['version']) if r['version'] else 'no version'}"))


def registry_unsubscribe(c, a):
    c.registry_unsubscribe(a.bucket)
    _show(a, {"unsubscribed": a.bucket}, lambda r: print(
        f"unsubscribed from {a.bucket} (its local snapshots stay)"))


def registry_subscriptions(c, a):
    _show(a, c.registry_subscriptions(), lambda rows: table(rows, SUBSCRIPTION_COLUMNS))


def registry_sync(c, a):
    _show(a, c.registry_sync(a.bucket), lambda r: [print(
        f"{b}: {'made ' + ', '.join(f'v{n}' for n in made) if made else 'up to date'}")
        for b, made in r.items()])


def registry_pull(c, a):
    _show(a, c.registry_pull(a.version, a.new_volume, remote=a.remote),
          lambda rows: table(rows, VOLUME_COLUMNS))


def registry_rm(c, a):
    c.registry_rm(a.version, remote=a.remote)
    _show(a, {"deleted": a.version}, lambda r: print(
        f"removed {a.version} (its chunks go at the next rokctl remote gc)"))


def _acl_text(r):
    print(f"{r['bucket']}: private, key generation {r['generation']}, ACL serial {r['serial']}"
          f" (signed by {r['signer'][:16]}...)")
    for key in r["writers"]:
        print(f"  writer  {key}")
    for key in r["readers"]:
        print(f"  reader  {key}")


def registry_acl(c, a):
    if a.action == "show":
        result = c.registry_acl_show(a.bucket, remote=a.remote)
    elif a.key is None:
        raise errors.InvalidArgument(f"usage: rokctl registry acl {a.action} TEAM/NAME KEY")
    elif a.action == "grant":
        result = c.registry_acl_grant(a.bucket, a.key, writer=a.writer or None,
                                      remote=a.remote)
    else:
        result = c.registry_acl_revoke(a.bucket, a.key, remote=a.remote)
    _show(a, result, _acl_text)


def registry_policy(c, a):
    print(json.dumps(c.registry_policy(a.bucket, remote=a.remote), indent=2))


def add_registry_commands(p, cmd, A, remote, detach):
    bucket = A("bucket", metavar="TEAM/NAME")
    version = A("version", metavar="TEAM/NAME@vN")
    scope = (A("scope", metavar="TEAM|TEAM/NAME"), A("key", metavar="KEY"))
    cmd(p, "key", registry_key, "this pool's publisher and reader keys")
    cmd(p, "trust", registry_trust, "trust a publisher key for a team or a bucket", *scope)
    cmd(p, "distrust", registry_distrust, "stop trusting a publisher key", *scope)
    cmd(p, "trusted", registry_trusted, "the publisher keys this pool trusts")
    cmd(p, "publish", registry_publish, "publish a snapshot or group snapshot as the next "
        "version of a bucket", A("target", metavar="VOLUME@SNAP|GROUP"),
        A("--bucket", required=True, metavar="TEAM/NAME"), A("--message", default=""),
        A("--label", action="append", default=[], metavar="KEY=VALUE"),
        A("--private", action="store_true", help="make a new bucket private: encrypted, "
          "readable by the reader keys of its ACL only"), remote, detach)
    cmd(p, "ls", registry_ls, "the buckets on a remote, or one bucket's versions",
        A("bucket", nargs="?", metavar="TEAM/NAME"), remote)
    cmd(p, "subscribe", registry_subscribe, "follow a bucket: each version becomes "
        "snapshots LOCAL@vN (or clones LOCAL-vN)", bucket, remote,
        A("--as", dest="local", metavar="LOCAL", help="local volume name (default: NAME)"),
        A("--clone", action="store_true", help="writable clones instead of snapshots"),
        A("--on-demand", action="store_true",
          help="fetch only what is read (no background hydration)"))
    cmd(p, "unsubscribe", registry_unsubscribe, "stop following a bucket", bucket)
    cmd(p, "subscriptions", registry_subscriptions, "the buckets this pool follows")
    cmd(p, "sync", registry_sync, "poll subscribed heads now",
        A("bucket", nargs="?", metavar="TEAM/NAME"))
    cmd(p, "pull", registry_pull, "restore a version as new volumes (lazily)", version,
        A("--as", dest="new_volume", required=True, metavar="VOLUME"), remote)
    cmd(p, "rm", registry_rm, "remove a version from its bucket", version, remote)
    cmd(p, "acl", registry_acl, "a private bucket's readers and writers: show, grant, revoke",
        A("action", choices=("show", "grant", "revoke")), bucket,
        A("key", nargs="?", metavar="KEY", help="a reader key (or a publisher key with "
          "--writer); rokctl registry key prints a pool's"),
        A("--writer", action="store_true", help="grant KEY (a publisher key) as a writer"),
        remote)
    cmd(p, "policy", registry_policy, "print an S3 bucket policy (prefix-scoped) enforcing "
        "who writes and reads the bucket", bucket, remote)


def main(argv=None):
    return run_program("rokctl", lambda: run(argv))


def run(argv):
    args = build_parser().parse_args(argv)  # common options may come before or after the verb
    args.socket = getattr(args, "socket", None)
    args.output = getattr(args, "output", "human")
    if not hasattr(args, "progress"):
        args.progress = sys.stdout.isatty() and args.output == "human"
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.DEBUG)
    with Client(args.socket) as client:
        args.func(client, args)
    return errors.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
