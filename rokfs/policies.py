"""Policies at work: a run (snapshot, push, publish, retention), retention plans, and
the runner the daemon starts next to the hydrators.

    runner = PolicyRunner(control)              # now = trio.current_time() + offset
    await nursery.start(runner.run)

A policy's snapshots are the ones labelled POLICY_LABEL=target (policy.py);
retention judges only those: a volume policy's snapshots one by one, a
group policy's group snapshots as units. A unit's time is its AT_LABEL,
the runner's clock when it was taken.

Invariants:
- Only Control verbs (and its policy helpers) are used: nothing here
  touches the pool.
- The runner's notion of now is `trio.current_time() + offset` (the offset
  fixed when it starts: the wall clock then), so a MockClock drives it; it
  sleeps until the next run the schedule names after the policy's anchor
  (the last run, or when the schedule was set). A run moves the anchor
  before it snapshots, so the snapshot's commit carries it: runs missed
  while the daemon was down are caught up by ONE run at start, and a
  crash never makes a slot run twice once its snapshot is durable.
- Retention deletes deferred and never forced: an open snapshot keeps
  serving its readers and is freed when the last one closes; a held one
  is kept (the plan says so, and the pool refuses it anyway).
- A failing run (a gone volume, an unreachable remote, a bug) is recorded
  in the policy's last result and logged; the runner and other policies
  go on.
- "frees" is what deleting the plan's snapshots together frees, chunks
  they share only among themselves included (Pool.frees_together: exact
  unless the dry run would read more than a few dozen leaves, then a lower
  bound, and the plan says so).
"""

import contextlib
import dataclasses
import logging
import time

import trio

from . import names
from .errors import AlreadyExists, Busy, InvalidArgument, NotFound, RokfsError
from .policy import format_time, parse_policy, snapshot_labels, snapshot_stem, taken_at
from .retention import judge

log = logging.getLogger("rokfs.policies")
NAME_TRIES = 100          # suffixes -2, -3, ... tried when a run's name is taken


@dataclasses.dataclass
class Unit:
    """What retention judges: one snapshot, or one group snapshot."""

    name: str
    time: float
    members: list
    holds: dict             # member -> {tag: reason}, members with holds only


# -- checking and describing ---------------------------------------------------------

def check_target(control, target, policy):
    """A volume policy's target is a volume; a group policy's names a group
    no volume is called, and its volumes exist."""
    if not policy.volumes:
        control.stat(names.check_name(target))
        return
    names.check_name(target, "group")
    if _is_volume(control, target):
        raise InvalidArgument(f"{target!r} is a volume: a group policy needs a name of its "
                              "own (or drop 'volumes' for a policy of that volume)")
    for volume in policy.volumes:
        control.stat(volume)


def _is_volume(control, name):
    try:
        control.stat(name)
        return True
    except NotFound:
        return False


def show(control, target, record, last_result=None):
    """A policy as JSON: its spec's fields, next run, last result, space."""
    policy = parse_policy(record["spec"])
    anchor = record["anchor"]
    out = {"target": target, "kind": "group" if policy.volumes else "volume",
           **policy.describe(),
           "next_run": format_time(policy.schedule.next_after(anchor, policy.zone))
           if anchor is not None else None,
           "last_result": last_result}
    try:
        out["space"] = space(plan(control, target, policy))
    except NotFound as exc:
        out["space"] = {"error": str(exc)}
    return out


def space(planned):
    """Totals of a plan: the policy's snapshots and what applying it frees."""
    units = planned["keep"] + planned["delete"]
    return {"snapshots": len(units), "exclusive_bytes": sum(u["exclusive"] for u in units),
            "would_delete": len(planned["delete"]), "frees_bytes": planned["frees_bytes"],
            "frees_exact": planned["frees_exact"],
            "shares_bytes": planned["shares_bytes"]}


# -- retention ------------------------------------------------------------------------------

def units(control, target, policy):
    """The policy's snapshots (or group snapshots), as Units, from facts
    that need no map walk (Control.policy_snapshots)."""
    snaps = control.policy_snapshots(target, None if policy.volumes else target)
    if not policy.volumes:
        return [_unit(s["name"], [s]) for s in snaps]
    groups = {}
    for snap in snaps:
        if snap["group"] is not None:
            groups.setdefault(snap["group"], []).append(snap)
    return [_unit(group, members) for group, members in sorted(groups.items())]


def _unit(name, snaps):
    return Unit(name, min(taken_at(s["labels"], s["created"]) for s in snaps),
                [s["name"] for s in snaps], {s["name"]: s["holds"] for s in snaps if s["holds"]})


def verdicts(control, target, policy):
    """[(unit, reasons)] newest first; no reasons = retention lets it go.
    Held units are kept (and say by whom), whatever the rules say."""
    found = {u.name: u for u in units(control, target, policy)}
    judged = judge([(u.name, u.time) for u in found.values()], policy.rules, policy.zone)
    return [(found[v.name], v.reasons + [_held(found[v.name])] * bool(found[v.name].holds))
            for v in judged]


def plan(control, target, policy):
    """What retention would do now: each unit kept (with its reasons) or
    deleted, its exclusive and shared bytes (Control.snapshot_info), and
    what deleting them together frees and shares."""
    keep, delete = [], []
    for unit, reasons in verdicts(control, target, policy):
        sizes = [control.snapshot_info(m) for m in unit.members]
        row = {"name": unit.name, "taken": format_time(unit.time), "reasons": reasons,
               "exclusive": sum(i["exclusive"] for i in sizes),
               "shared": sum(i["shared"] for i in sizes)}
        if policy.volumes:
            row["members"] = unit.members
        (keep if reasons else delete).append(row)
    frees = control.frees_together([m for r in delete for m in r.get("members", [r["name"]])])
    return {"target": target, "policy": policy.text(), "keep": keep, "delete": delete,
            "frees_bytes": frees["bytes"], "frees_exact": frees["exact"],
            "shares_bytes": sum(r["shared"] for r in delete)}


def _held(unit):
    return "held: " + "; ".join(f"{name} ({', '.join(sorted(holds))})"
                                for name, holds in sorted(unit.holds.items()))


async def apply_retention(control, target, policy):
    """Delete (deferred) what retention lets go; returns the names deleted."""
    deleted = []
    for unit in [u for u, reasons in verdicts(control, target, policy) if not reasons]:
        try:
            if policy.volumes:
                await control.delete_group(unit.name, defer=True)
            else:
                await control.delete_snapshot(unit.name, defer=True)
        except (Busy, NotFound) as exc:      # held or gone since judged: keep going
            log.info("event=retention_skipped target=%s name=%s reason=%s", target,
                     unit.name, exc)
            continue
        deleted.append(unit.name)
    return deleted


# -- a run --------------------------------------------------------------------------------------

async def take(control, target, policy, at):
    """The run's snapshot (volume policy) or group snapshot; returns the
    snapshots' full names."""
    labels = snapshot_labels(policy, target, at)
    stem = snapshot_stem(policy, target, at)
    for n in range(1, NAME_TRIES + 1):
        name = stem if n == 1 else f"{stem}-{n}"
        try:
            if policy.volumes:
                group = await control.create_group_snapshot(name, list(policy.volumes), labels)
                return group["members"]
            return [(await control.create_snapshot(f"{target}@{name}", labels))["name"]]
        except AlreadyExists:
            continue
    raise AlreadyExists(f"policy {target}: names {stem} to {stem}-{NAME_TRIES} are all taken")


async def run_once(control, target, policy, at):
    """One run at time `at`: snapshot, push, retention. Returns its report;
    each step's failure is recorded there and does not stop the next."""
    report = {"target": target, "at": format_time(at), "snapshots": [], "pushed": [],
              "deleted": [], "errors": []}
    control.mark_policy_run(target, at)
    with _step(report, "snapshot"):
        report["snapshots"] = await take(control, target, policy, at)
    for name in report["snapshots"] if policy.push else ():
        with _step(report, f"push {name}"):
            await control.push(name, remote=policy.push)
            report["pushed"].append(name)
    if policy.publish and report["snapshots"]:
        with _step(report, f"publish {policy.publish}"):
            report["published"] = await publish(control, policy, report["snapshots"])
    with _step(report, "retention"):
        report["deleted"] = await apply_retention(control, target, policy)
    log.info("event=policy_run target=%s snapshots=%s deleted=%d errors=%d", target,
             ",".join(report["snapshots"]), len(report["deleted"]), len(report["errors"]))
    return report


async def publish(control, policy, snapshots):
    """Publish a run's snapshot (a group policy's: its group snapshot) to
    the policy's registry bucket; 'TEAM/NAME@vN'."""
    target = snapshots[0].split("@")[1] if policy.volumes else snapshots[0]
    result = await control.registry_publish(target, policy.publish,
                                            remote=policy.push or "default")
    return f"{result['bucket']}@v{result['version']}"


@contextlib.contextmanager
def _step(report, what):
    """`with _step(report, what):` records a failure of the block in the
    report (a bug as such) instead of raising it; cancellation passes."""
    try:
        yield
    except Exception as exc:
        reason = str(exc) if isinstance(exc, RokfsError) else f"internal error: {exc!r}"
        report["errors"].append(f"{what}: {reason}")
        log.warning("event=policy_step_failed target=%s step=%r error=%s", report["target"],
                    what, reason, exc_info=not isinstance(exc, RokfsError))


# -- the runner ---------------------------------------------------------------------------------

class PolicyRunner:
    """Runs every policy of the pool on its schedule, one task per policy,
    restarted when its spec changes. `observer(report)` (async) sees each
    scheduled run's report."""

    def __init__(self, control, *, offset=None, observer=None):
        self.control = control
        self.offset = offset
        self.observer = observer
        self.last = {}                  # target -> report of its last run
        self._tasks = {}                # target -> (spec, cancel scope)
        self._changed = trio.Event()

    def now(self):
        return trio.current_time() + self.offset

    def wake(self):
        """Policies were set or removed: look again."""
        self._changed.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        if self.offset is None:
            self.offset = time.time() - trio.current_time()
        self.control.policy_runner = self
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    self._changed = trio.Event()
                    self._reconcile(nursery)
                    await self._changed.wait()
        finally:
            self.control.policy_runner = None

    async def run_now(self, target, policy):
        """One run of `target` now (scheduled or asked for); its report."""
        report = await run_once(self.control, target, policy, self.now())
        self.last[target] = report
        if self.observer is not None:
            await self.observer(report)
        return report

    def _reconcile(self, nursery):
        specs = {t: r["spec"] for t, r in self.control.policy_records().items()}
        for target, (spec, scope) in list(self._tasks.items()):
            if specs.get(target) != spec:
                scope.cancel()
                del self._tasks[target]
        for target, spec in specs.items():
            if target not in self._tasks:
                scope = trio.CancelScope()
                self._tasks[target] = (spec, scope)
                nursery.start_soon(self._serve, target, spec, scope)

    async def _serve(self, target, spec, scope):
        with scope:
            try:
                policy = parse_policy(spec)
            except InvalidArgument as exc:          # stored by another version of rokfs?
                log.error("event=policy_unreadable target=%s error=%s", target, exc)
                return
            while True:
                await trio.sleep_until(self._next_run(target, policy) - self.offset)
                await self.run_now(target, policy)

    def _next_run(self, target, policy):
        """The first slot after the anchor; an anchor later than now (a wall
        clock that went back, one set by another clock) counts as now."""
        record = self.control.policy_records().get(target) or {}
        anchor = record.get("anchor")
        now = self.now()
        anchor = now if anchor is None else min(anchor, now)
        return policy.schedule.next_after(anchor, policy.zone)
