"""Snapshot policies on a pool: the runner under trio's MockClock (90
simulated days checked run by run against a small reference of the
retention rules, a held snapshot, an open snapshot deleted from under
nobody), missed runs caught up once, storage, plans, group policies, errors.

The runner is watched through its observer, never with sleeps: a sleeping
test task would let the MockClock jump while a commit runs in a thread."""

import datetime
import os
import shutil
import sqlite3
import struct
import tempfile

import pytest
import trio
import trio.testing

from rokfs import errors
from rokfs.control import Control
from rokfs.fsck import fsck
from rokfs.policies import PolicyRunner
from rokfs.pool import Pool

UTC = datetime.timezone.utc
START = datetime.datetime(2026, 1, 1, tzinfo=UTC).timestamp()      # a Thursday, 00:00
MINUTE, HOUR, DAY = 60, 3600, 86400
KIB = 1024
NINETY_DAYS = ("every 15m keep-last 4 keep-hourly 24 keep-daily 7 keep-weekly 4 "
               "keep-monthly 3 tz UTC")


@pytest.fixture
def clock():
    """Jumps to the next deadline once the loop has been idle 1 ms: with 0
    it would spin (holding the GIL) while commits run in worker threads."""
    return trio.testing.MockClock(autojump_threshold=0.003)


@pytest.fixture
def memory_pool(tmp_path):
    """A pool in memory (/dev/shm) where the machine has one: the 90-day
    test makes some 17,000 commits, and what it checks is retention, not
    fsync (on disk it takes three times as long)."""
    shm = "/dev/shm"
    where = tempfile.mkdtemp(prefix="rokfs-policy-", dir=shm) \
        if os.path.isdir(shm) and os.access(shm, os.W_OK) else str(tmp_path)
    c = Control(Pool.create(os.path.join(where, "pool"), chunk_size=4096))
    yield c
    c.pool.close()
    if where != str(tmp_path):
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def control(tmp_path):
    c = Control(Pool.create(str(tmp_path / "pool"), chunk_size=4096))
    yield c
    if not c.pool.closed:
        c.pool.close()


def seconds(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()


def taken_times(control, volume):
    """{time the policy took it: name} of the policy's snapshots of `volume`
    (listed without their space figures: a map walk each, on main)."""
    return {seconds(s["labels"]["rokfs.policy.at"]): s["name"]
            for s in control.policy_snapshots(volume, volume)}


def reference_keep(times, last, hourly, daily, weekly, monthly):
    """restic forget's rules, restated: the `last` newest; for each period
    kind the newest snapshot of each of its newest N periods, plus the
    oldest snapshot when fewer than N periods have one."""
    newest_first = sorted(times, reverse=True)
    keep = set(newest_first[:last])
    periods = [(hourly, lambda d: (d.date(), d.hour)), (daily, lambda d: d.date()),
               (weekly, lambda d: d.isocalendar()[:2]), (monthly, lambda d: (d.year, d.month))]
    for count, period in periods:
        newest_of = {}
        for t in newest_first:
            newest_of.setdefault(period(datetime.datetime.fromtimestamp(t, UTC)), t)
        keep.update(list(newest_of.values())[:count])
        if len(newest_of) < count:
            keep.add(newest_first[-1])
    return keep


async def start_runner(nursery, control, observer):
    runner = PolicyRunner(control, offset=START, observer=observer)   # MockClock starts at 0
    await nursery.start(runner.run)
    return runner


# -- acceptance 3 -----------------------------------------------------------------------

async def test_ninety_days_keep_what_the_reference_keeps_held_and_open_ones_too(
        memory_pool, clock):
    control = memory_pool
    await control.create_volume("v", 64 * KIB)
    volume = control.open_device("v")
    expected, held, runs = set(), set(), []
    opened = {}
    finished = trio.Event()

    async def observer(report):
        nonlocal expected
        assert report["errors"] == [] and len(report["snapshots"]) == 1
        at = seconds(report["at"])
        runs.append(at)
        assert at == START + len(runs) * 15 * MINUTE          # on the slot, every slot
        expected = reference_keep(expected | {at}, 4, 24, 7, 4, 3) | held
        assert set(taken_times(control, "v")) == expected, len(runs)
        await volume.pwrite(0, struct.pack("<Q", len(runs)))   # the next snapshot's bytes
        await volume.pwrite(4096 * (len(runs) % 16), struct.pack("<Q", len(runs)))
        await watch_special_snapshots(report, at)
        if at >= START + 90 * DAY:
            finished.set()

    async def watch_special_snapshots(report, at):
        n = len(runs)
        if n == 2:                                  # would go at run 6: held, it stays
            await control.hold_snapshot(report["snapshots"][0], "audit")
            held.add(at)
        if n == 6:                                  # goes at run 10, while open
            opened["dev"] = control.open_device(report["snapshots"][0])
            opened["name"] = report["snapshots"][0]
            opened["bytes"] = bytes(await opened["dev"].pread(0, 64 * KIB))
            assert opened["bytes"][:8] == struct.pack("<Q", 5)
        if n == 10:
            assert opened["name"] in report["deleted"]
            with pytest.raises(errors.NotFound, match="being deleted"):
                control.snapshot_info(opened["name"])
            assert control.status()["deleting"] == 1
        if 10 <= n < 400:                           # its own bytes while others churn
            assert bytes(await opened["dev"].pread(0, 64 * KIB)) == opened["bytes"]
        if n == 400:
            opened["dev"].close()
            assert control.status()["deleting"] == 0

    async with trio.open_nursery() as nursery:
        await start_runner(nursery, control, observer)
        await control.set_policy("v", NINETY_DAYS)
        await finished.wait()
        nursery.cancel_scope.cancel()
    volume.close()
    assert len(runs) == 90 * 24 * 4
    kept = taken_times(control, "v")
    assert set(kept) == expected and min(held) in kept
    assert 30 < len(kept) < 4 + 24 + 7 + 4 + 3 + 1
    await control.flush()
    assert fsck(control.pool)["clean"]


async def test_runs_missed_while_the_daemon_was_down_are_caught_up_once(tmp_path,
                                                                        clock):
    path = str(tmp_path / "pool")
    control = Control(Pool.create(path, chunk_size=4096))
    await control.create_volume("v", 64 * KIB)
    reports = await run_until(control, 4, "every 15m tz UTC")
    assert [r["at"] for r in reports] == [f"2026-01-01T0{h}:{m}:00Z" for h, m in
                                          (("0", "15"), ("0", "30"), ("0", "45"), ("1", "00"))]
    control.pool.close()                            # the daemon stops at 01:00 ...
    clock.jump(5 * HOUR + 5 * MINUTE)      # ... and starts again at 06:05
    control = Control(Pool.open(path))
    reports = await run_until(control, 2)
    assert [r["at"] for r in reports] == ["2026-01-01T06:05:00Z", "2026-01-01T06:15:00Z"]
    assert len(taken_times(control, "v")) == 6
    control.pool.close()


async def run_until(control, count, spec=None):
    """Run the policies until `count` runs have been reported; their reports."""
    reports, enough = [], trio.Event()

    async def observer(report):
        reports.append(report)
        if len(reports) == count:
            enough.set()
    async with trio.open_nursery() as nursery:
        await start_runner(nursery, control, observer)
        if spec:
            await control.set_policy("v", spec)
        await enough.wait()
        nursery.cancel_scope.cancel()
    return reports


async def test_the_runner_follows_changes_and_survives_a_gone_volume(control, clock):
    """Changes are made by the observer, between runs: a test task doing
    them would let the clock jump to the runner's next run meanwhile."""
    await control.create_volume("v", 64 * KIB)
    reports, stopped = [], trio.Event()
    changes = [lambda: control.set_policy("v", "every 15m tz UTC"),   # counted from 01:00
               lambda: control.delete_volume("v", recursive=True),
               lambda: control.delete_policy("v")]

    async def observer(report):
        reports.append(report)
        await changes[len(reports) - 1]()
        if len(reports) == len(changes):
            stopped.set()
    async with trio.open_nursery() as nursery:
        await start_runner(nursery, control, observer)
        await control.set_policy("v", "hourly tz UTC")
        await stopped.wait()
        await trio.sleep(DAY)                               # nothing runs any more
        nursery.cancel_scope.cancel()
    assert [r["at"] for r in reports] == ["2026-01-01T01:00:00Z", "2026-01-01T01:15:00Z",
                                          "2026-01-01T01:30:00Z"]
    assert reports[-1]["errors"] == ["snapshot: no volume named 'v'",
                                     "retention: no volume named 'v'"]
    assert control.list_policies() == []


# -- storage -----------------------------------------------------------------------------

async def test_policies_are_stored_in_the_pool_and_older_pools_open(tmp_path):
    path = str(tmp_path / "pool")
    Pool.create(path).close()
    db = sqlite3.connect(f"{path}/meta.db")
    db.execute("DROP TABLE policies")               # a pool from before policies
    db.commit()
    db.close()
    control = Control(Pool.open(path))
    assert control.list_policies() == []
    await control.create_volume("v", 64 * KIB)
    shown = await control.set_policy("v", "daily 02:00 keep-daily 7 label team=ml tz UTC")
    assert shown["spec"] == "daily 02:00 keep-daily 7 label team=ml tz UTC"
    control.pool.close()
    control = Control(Pool.open(path))
    assert [(p["target"], p["keep"], p["labels"]) for p in control.list_policies()] == [
        ("v", {"daily": 7}, {"team": "ml"})]
    control.pool.close()


async def test_a_new_schedule_counts_from_now_and_an_unchanged_one_keeps_its_anchor(control):
    await control.create_volume("v", 64 * KIB)
    await control.set_policy("v", "daily 02:00 tz UTC")
    anchor = control.policy_records()["v"]["anchor"]
    await control.set_policy("v", "daily 02:00 keep-last 3 tz UTC")
    assert control.policy_records()["v"]["anchor"] == anchor
    await control.set_policy("v", "daily 03:00 keep-last 3 tz UTC")
    assert control.policy_records()["v"]["anchor"] > anchor


@pytest.mark.parametrize("target, spec, error, message", [
    ("v", "every 15m keep-daily seven", errors.InvalidArgument,
     "keep-daily: expected a number or 'unlimited', got 'seven'"),
    ("v", "keep-last 3", errors.InvalidArgument, "has no schedule"),
    ("v", "every 15m sometimes", errors.InvalidArgument, "unknown word 'sometimes'"),
    ("v", "every 15m label rokfs.policy=x", errors.InvalidArgument, "the policy's own"),
    ("v", "every 15m tz Nowhere/Land", errors.InvalidArgument, "tz 'Nowhere/Land'"),
    ("v", "cron 0 25 * * *", errors.InvalidArgument, "cron hour field '25'"),
    ("nope", "every 15m", errors.NotFound, "no volume named 'nope'"),
    ("v@s", "every 15m", errors.InvalidArgument, "invalid volume name"),
    ("v", "volumes v,w every 15m", errors.InvalidArgument, "'v' is a volume"),
    ("g", "volumes v,nope every 15m", errors.NotFound, "no volume named 'nope'"),
    ("G", "volumes v every 15m", errors.InvalidArgument, "invalid group name"),
])
async def test_bad_policies_are_refused_naming_the_bad_part(control, target, spec, error,
                                                           message):
    await control.create_volume("v", 64 * KIB)
    with pytest.raises(error, match=message):
        await control.set_policy(target, spec)
    assert control.list_policies() == []


async def test_verbs_on_a_target_without_a_policy_say_so(control):
    for verb in (control.show_policy, control.plan_policy):
        with pytest.raises(errors.NotFound, match="no policy for 'v'"):
            verb("v")
    for verb in (control.delete_policy, control.run_policy):
        with pytest.raises(errors.NotFound, match="no policy for 'v'"):
            await verb("v")


# -- plans, groups, failures ------------------------------------------------------------------

async def overwrite(control, name, byte):
    dev = control.open_device(name)
    try:
        await dev.pwrite(0, bytes([byte]) * (64 * KIB))
    finally:
        dev.close()


async def test_the_plan_says_why_each_is_kept_and_what_deleting_frees(control):
    await control.create_volume("v", 64 * KIB)
    await control.set_policy("v", "daily 02:00 keep-last 3")
    names = []
    for byte in (1, 2, 3):
        await overwrite(control, "v", byte)          # each snapshot owns its slots
        names += (await control.run_policy("v"))["snapshots"]
    await control.hold_snapshot(names[1], "audit", tag="legal")
    await control.set_policy("v", "daily 02:00 keep-last 1")
    plan = control.plan_policy("v")
    assert [(r["name"], r["reasons"]) for r in plan["keep"]] == [
        (names[2], ["last"]), (names[1], [f"held: {names[1]} (legal)"])]
    assert [r["name"] for r in plan["delete"]] == [names[0]]
    assert plan["frees_bytes"] == control.snapshot_info(names[0])["exclusive"] == 64 * KIB
    assert control.show_policy("v")["space"] == {
        "snapshots": 3, "exclusive_bytes": 2 * 64 * KIB, "would_delete": 1,
        "frees_bytes": 64 * KIB, "frees_exact": True, "shares_bytes": 0}
    report = await control.run_policy("v")
    assert report["deleted"] == [names[2], names[0]]          # the run's snapshot is last
    assert names[1] in taken_times(control, "v").values()


async def test_the_plan_counts_what_the_deleted_snapshots_share_only_among_themselves(control):
    await control.create_volume("v", 64 * KIB)
    await overwrite(control, "v", 1)
    await control.set_policy("v", "daily 02:00 keep-last 3")
    old = [(await control.run_policy("v"))["snapshots"][0] for _ in range(2)]
    await overwrite(control, "v", 2)               # the two old ones now alone hold byte 1
    newest = (await control.run_policy("v"))["snapshots"][0]
    assert [control.snapshot_info(n)["exclusive"] for n in old] == [0, 0]
    await control.set_policy("v", "daily 02:00 keep-last 1")
    plan = control.plan_policy("v")
    assert [r["name"] for r in plan["keep"]] == [newest]
    assert sorted(r["name"] for r in plan["delete"]) == sorted(old)
    assert (plan["frees_bytes"], plan["frees_exact"]) == (64 * KIB, True)
    before = control.pool.status()["used_bytes"]
    report = await control.run_policy("v")          # its new snapshot shares all with v
    assert sorted(report["deleted"]) == sorted(old + [newest])
    assert before - control.pool.status()["used_bytes"] == plan["frees_bytes"]


def test_a_dry_run_past_its_leaf_budget_says_its_count_is_a_lower_bound(tmp_path):
    """s0 and s1 alone share the slot chunk 1 had before the last write:
    neither's exclusive bytes count it, deleting both frees it."""
    pool = Pool.create(str(tmp_path / "pool"), chunk_size=4096)
    try:
        vol = pool.create_volume("v", 128 * KIB)
        vol.pwrite(0, b"\1" * (128 * KIB))
        s0 = pool.create_snapshot("v@s0")
        vol.pwrite(0, b"\2" * 4096)
        s1 = pool.create_snapshot("v@s1")
        vol.pwrite(4096, b"\3" * 4096)
        roots = [s0.root, s1.root]
        assert [pool.nodes.exclusive_chunks(r) for r in roots] == [1, 0]
        assert pool.nodes.frees_together(roots) == (2, True)
        assert pool.nodes.frees_together(roots, budget=0) == (1, False)
        assert pool.frees_together([s0, s1]) == {"bytes": 2 * 4096, "exact": True}
        before = pool.slots.used_slots()
        pool.delete_snapshot("v@s0")
        pool.delete_snapshot("v@s1")
        assert before - pool.slots.used_slots() == 2
    finally:
        pool.close()


async def test_a_group_policy_takes_group_snapshots_and_deletes_whole_groups(control):
    for name in ("a", "b"):
        await control.create_volume(name, 64 * KIB)
    shown = await control.set_policy("env", "volumes a,b hourly keep-last 2 label run=7")
    assert shown["kind"] == "group" and shown["volumes"] == ["a", "b"]
    groups = []
    for _ in range(3):
        report = await control.run_policy("env")
        group = report["snapshots"][0].split("@")[1]
        assert report["snapshots"] == [f"a@{group}", f"b@{group}"]
        groups.append(group)
    assert groups[0].startswith("env-")
    assert [g["name"] for g in control.list_groups({"run": "7"})] == groups[1:]
    assert report["deleted"] == [groups[0]]
    await control.hold_snapshot(f"b@{groups[1]}")
    await control.set_policy("env", "volumes a,b hourly keep-last 1 label run=7")
    plan = control.plan_policy("env")
    assert [(r["name"], r["members"]) for r in plan["keep"]] == [
        (groups[2], [f"a@{groups[2]}", f"b@{groups[2]}"]),
        (groups[1], [f"a@{groups[1]}", f"b@{groups[1]}"])]
    assert plan["keep"][1]["reasons"] == [f"held: b@{groups[1]} (user)"]
    assert (await control.run_policy("env"))["deleted"] == [groups[2]]


async def test_a_failing_step_is_reported_and_the_others_still_run(control):
    await control.create_volume("v", 64 * KIB)
    await control.set_policy("v", "hourly keep-last 1 push nowhere")
    first = await control.run_policy("v")
    second = await control.run_policy("v")
    assert second["errors"] == [f"push {second['snapshots'][0]}: no remote named 'nowhere' "
                                "(give a URL or a configured name)"]
    assert second["deleted"] == first["snapshots"] and second["pushed"] == []


async def test_a_push_after_each_snapshot(control, tmp_path):
    await control.create_volume("v", 64 * KIB)
    await overwrite(control, "v", 7)
    await control.set_policy("v", f"hourly push file://{tmp_path / 'remote'}")
    report = await control.run_policy("v")
    assert report["pushed"] == report["snapshots"] and report["errors"] == []
    listed = await control.list_remote(remote=f"file://{tmp_path / 'remote'}")
    assert [r["name"] for r in listed] == report["snapshots"]


# -- through a real daemon ------------------------------------------------------------------

def test_rokctl_plans_and_runs_a_policy_and_an_open_snapshot_outlives_retention(tmp_path):
    """rokctl policy set/show/plan/run/rm and the client; retention deletes a
    snapshot an NBD client has open: it keeps reading its own bytes (while
    another volume takes freed space), and the space returns on close."""
    import json as json_module
    from daemon_helpers import running, write_config
    from rokfs.client import Client
    from test_lifecycle import NbdReader, sha, used_bytes, wait_until, write_file
    mib = 1 << 20
    (tmp_path / "mnt").mkdir()
    config = write_config(tmp_path, f'[fuse]\nmountpoint = "{tmp_path / "mnt"}"\n')
    with running(config) as d, Client(d.control) as rok:
        d.ok("volume", "create", "v", "--size", "1M")
        image = tmp_path / "mnt" / "volumes" / "v"
        first_bytes = b"first!!!" * (mib // 8)
        write_file(image, first_bytes)
        spec = ["cron", "0 0 1 1 *", "keep-last", "2", "label", "team=ml"]   # not during a test
        shown = d.json("policy", "set", "v", *spec)
        assert shown["spec"] == "cron 0 0 1 1 * keep-last 2 label team=ml"
        first = d.json("policy", "run", "v")["snapshots"][0]
        write_file(image, b"second!!" * (mib // 8))
        second = rok.run_policy("v")["snapshots"][0]
        assert d.json("snapshot", "info", first)["labels"]["team"] == "ml"
        d.ok("snapshot", "hold", second, "--reason", "audit")
        d.ok("policy", "set", "v", "cron", "0 0 1 1 *", "keep-last", "1", "label", "team=ml")
        plan = d.json("policy", "plan", "v")
        assert [(r["name"], r["exclusive"]) for r in plan["delete"]] == [(first, mib)]
        assert plan["keep"][0]["reasons"] == ["last", f"held: {second} (user)"]
        human = d.ok("policy", "plan", "v")
        assert "would delete 1, freeing 1M" in human and "held: " in human
        assert "v" in d.ok("policy", "show") and "cron 0 0 1 1 *" in d.ok("status")

        reader = NbdReader(d.nbd_socket, first)
        try:
            write_file(image, b"third!!!" * (mib // 8))
            report = d.json("policy", "run", "v")
            assert report["deleted"] == [first] and report["errors"] == []
            assert [s["name"] for s in d.json("snapshot", "ls")] == [second,
                                                                     report["snapshots"][0]]
            d.ok("volume", "create", "w", "--size", "1M")
            write_file(tmp_path / "mnt" / "volumes" / "w", b"SECRET!!" * (mib // 8))
            before_close = used_bytes(d)
            assert reader.sha(0, mib) == sha(first_bytes)
        finally:
            reader.close()
        wait_until(lambda: used_bytes(d) == before_close - mib, "the deleted snapshot's space")
        assert json_module.loads(os.getxattr(image, "user.rokfs.policy"))["keep"] == {"last": 1}
        d.ok("policy", "rm", "v")
        rc, _, err = d.rokctl("policy", "show", "v")
        assert rc == 3 and "no policy for 'v'" in err
        rc, _, err = d.rokctl("policy", "set", "v", "every", "15x")
        assert rc == 2 and "every: expected an interval like 15m, 2h or 1d, got '15x'" in err
        group = d.json("policy", "set", "env", "volumes", "v,w", "hourly", "keep-daily", "7")
        assert (group["kind"], group["volumes"]) == ("group", ["v", "w"])
