"""Crash test: SIGKILL a writer at random moments; the reopened pool must
hold every write acknowledged by a flush, every snapshot exactly as it was
taken, and pass fsck; the filler then completes the partial slots it holds
without changing a byte, and fsck stays clean."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from rokfs.fsck import fsck
from rokfs.pool import Pool

from crash_child import BLOCK, VOLUME_BLOCKS, block_content, workload

KILL_POINTS = int(os.environ.get("ROKFS_CRASH_POINTS", "50"))
ZERO_BLOCK = bytes(BLOCK)


def replay(seed, upto):
    """Per block, the list of versions written by writes numbered < upto, in order."""
    history = {}
    for n, action, arg in workload(seed):
        if n >= upto:
            break
        if action == "write":
            block, nblocks, version = arg
            for b in range(block, block + nblocks):
                history.setdefault(b, []).append(version)
    return history


def run_child(pool_dir, seed, delay):
    child = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "crash_child.py"),
         pool_dir, str(seed)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "READY"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    return out.splitlines()


def last_acks(lines):
    flushed, snaps = 0, {}
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "FLUSH":
            flushed = int(parts[1])
        elif len(parts) == 3 and parts[0] == "SNAP":
            snaps[parts[1]] = int(parts[2])
            flushed = max(flushed, int(parts[2]))
    return flushed, snaps


def check_volume(vol, seed, flushed, total_seen):
    durable = replay(seed, flushed)
    anything = replay(seed, total_seen)
    data = vol.pread(0, vol.size)
    for b in range(VOLUME_BLOCKS):
        got = bytes(data[b * BLOCK:(b + 1) * BLOCK])
        done = durable.get(b, [])
        later = anything.get(b, [])[len(done):]
        allowed = {block_content(b, v) for v in [*done[-1:], *later]}
        if not done:
            allowed.add(ZERO_BLOCK)
        assert got in allowed, f"block {b}: not the flushed or a later version"


def check_snapshot(snap, seed, upto):
    history = replay(seed, upto)
    data = snap.pread(0, snap.size)
    for b in range(VOLUME_BLOCKS):
        want = block_content(b, history[b][-1]) if b in history else ZERO_BLOCK
        assert bytes(data[b * BLOCK:(b + 1) * BLOCK]) == want, f"{snap.full_name} block {b}"


@pytest.mark.parametrize("point", range(KILL_POINTS))
def test_kill9_at_random_point(tmp_path, point):
    rng = random.Random(point)
    seed, delay = rng.randrange(1 << 30), rng.uniform(0.0, 0.6)
    pool_dir = str(tmp_path / "pool")
    lines = run_child(pool_dir, seed, delay)
    flushed, snaps = last_acks(lines)
    with Pool.open(pool_dir) as pool:
        report = fsck(pool)
        assert report["clean"], report["problems"]
        for name, upto in snaps.items():
            check_snapshot(pool.get_snapshot(f"v@{name}"), seed, upto)
        for snap in pool.list_snapshots("v"):      # unacknowledged ones must be whole too
            check_snapshot(snap, seed, int(snap.name[1:]))
        # writes issued after the last ack may have landed: bound them generously
        check_volume(pool.get_volume("v"), seed, flushed, flushed + 100000)
        fill_then_check(pool)


def fill_then_check(pool):
    """The partial slots the crash left complete without changing a byte."""
    images = [pool.get_volume("v"), *pool.list_snapshots("v")]
    before = [bytes(image.pread(0, image.size)) for image in images]
    pool.fill_partials(pool.partial_count())
    assert pool.partial_count() == 0
    pool.commit()
    report = fsck(pool)
    assert report["clean"], report["problems"]
    assert [bytes(image.pread(0, image.size)) for image in images] == before
