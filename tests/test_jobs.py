"""Jobs and cancellation (docs/daemon.md, "Jobs"): the registry on its own;
a push and a pull cancelled through the verbs on a directory remote; then a
real `rokfs serve` with an S3 remote (moto over HTTP behind a proxy that
holds pack requests until the test releases them, so that a push or a
hydration is caught mid-way however fast or loaded the machine is), driven
by rokctl subprocesses interrupted with SIGINT or killed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import trio

from daemon_helpers import Daemon, write_config
from s3_helpers import FlakyProxy, new_bucket

from rokfs import errors
from rokfs.control import Control
from rokfs.jobs import BY_REQUEST, CLIENT_GONE, KEEP_FINISHED, Job, Jobs
from rokfs.pool import Pool
from rokfs.remote import open_remote

MiB = 1 << 20
PACKS = "/jobs/packs/"          # in the request line of a pack's PUT or GET (not of a LIST)
PASS_BEFORE_HOLD = 2            # pack requests let through before the proxy holds the rest


class Recorder:
    """A progress callback that keeps what it is told, job first."""

    def __init__(self, on_progress=None):
        self.job, self.updates = None, []
        self.on_progress = on_progress

    def on_job(self, info):
        self.job = info

    def __call__(self, done, total):
        self.updates.append((done, total))
        if self.on_progress is not None:
            self.on_progress(self, done, total)


# -- the registry ------------------------------------------------------------------------------

async def test_an_attached_job_reports_progress_and_its_result():
    jobs, progress = Jobs(), Recorder()

    async def work(job):
        assert progress.job["id"] == job.id and progress.job["state"] == "running"
        job.report(5, 10)
        await trio.sleep(0)
        return {"answer": 42}

    assert await jobs.run(Job("push", "v@s"), work, progress=progress) == {"answer": 42}
    assert progress.updates == [(5, 10)]
    [info] = jobs.list()
    assert info["state"] == "succeeded" and info["result"] == {"answer": 42}
    assert info["message"] == "push of v@s completed" and info["ended"] >= info["started"]


async def test_cancel_stops_a_job_and_says_what_it_left():
    jobs, paused = Jobs(), []
    job = Job("pull", "vol", cancelled_note="vol stays usable", on_cancel=lambda: paused.append(1))
    outcome = []

    async def work(job):
        job.report(MiB, 4 * MiB)
        await trio.sleep_forever()

    async def caller():
        with pytest.raises(errors.Cancelled) as info:
            await jobs.run(job, work)
        outcome.append(str(info.value))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await trio.sleep(0.05)
        ended = await jobs.cancel(job.id)
    assert ended["state"] == "cancelled" and paused == [1]
    assert outcome == [ended["message"]]
    assert ended["message"] == (f"pull of vol cancelled at 25%, 1M of 4M ({BY_REQUEST}): "
                                "vol stays usable")
    assert (await jobs.cancel(job.id))["state"] == "cancelled"      # again: same answer


async def test_a_caller_that_goes_away_cancels_its_attached_job():
    jobs = Jobs()
    job = Job("push", "v@s")
    with trio.move_on_after(0.05):               # the RPC layer's scope, cancelled
        await jobs.run(job, lambda job: trio.sleep_forever())
    assert job.state == "cancelled" and job.reason == CLIENT_GONE
    assert jobs.list()[0]["message"].startswith("push of v@s cancelled at 0% (its client")


async def test_detached_jobs_run_on_their_own_and_can_be_followed():
    jobs = Jobs()
    with pytest.raises(errors.Unsupported, match="only in a daemon"):
        await jobs.run(Job("push", "v@s"), lambda job: trio.sleep(0), detach=True)
    assert jobs.list() == []

    async def slow_then(result, job):
        for done in range(1, 4):
            job.report(done, 3)
            await trio.sleep(0.02)
        if isinstance(result, Exception):
            raise result
        return result

    async with trio.open_nursery() as nursery:
        await nursery.start(jobs.serve)
        ok = await jobs.run(Job("push", "a@s"), lambda job: slow_then({"n": 1}, job),
                            detach=True)
        bad = await jobs.run(Job("push", "b@s"),
                             lambda job: slow_then(errors.RemoteError("remote gone"), job),
                             detach=True)
        assert ok["state"] == "running" and ok["detached"]
        follower = Recorder()
        assert (await jobs.follow(ok["id"], follower))["result"] == {"n": 1}
        assert follower.job["id"] == ok["id"] and follower.updates[-1] == (3, 3)
        with pytest.raises(errors.RemoteError, match="remote gone"):
            await jobs.follow(bad["id"])             # the failure, not a dead nursery
        forever = await jobs.run(Job("hydration", "v"), lambda job: trio.sleep_forever(),
                                 detach=True)
        nursery.cancel_scope.cancel()                # the daemon stops
    assert jobs.get(forever["id"]).reason == "the daemon stopped"
    with pytest.raises(errors.NotFound, match="no job"):
        jobs.get("nope")


async def test_a_cancel_too_late_to_stop_the_work_reports_success():
    jobs = Jobs()

    async def finishes_without_a_checkpoint(job):
        job.cancel()
        return "done"

    assert await jobs.run(Job("push", "v@s"), finishes_without_a_checkpoint) == "done"
    assert jobs.list()[0]["state"] == "succeeded"


async def test_finished_jobs_are_kept_up_to_a_limit():
    jobs = Jobs()
    for n in range(KEEP_FINISHED + 5):
        await jobs.run(Job("push", f"v@s{n}"), lambda job: trio.sleep(0))
    listed = jobs.list()
    assert len(listed) == KEEP_FINISHED and listed[-1]["target"] == f"v@s{KEEP_FINISHED + 4}"


# -- through the verbs, on a directory remote ----------------------------------------------------

def chunks_in_packs(remote):
    """Every chunk hash stored on the remote, once per pack holding it."""
    return [h for o in remote.objects.list("packs/") for h, _, _ in
            remote.chunks.pack_entries(o.key, o.size)]


def chunks_of(remote, snapshot):
    manifest = remote.chunks.get_manifest(snapshot)
    return {e[0] for key in manifest["segments"]
            for e in remote.chunks.get_segment(key)["chunks"] if e}


def cancel_at(fraction, control):
    def on_progress(progress, done, total):
        if done >= total * fraction:
            control.jobs.get(progress.job["id"]).cancel()
    return on_progress


async def test_a_cancelled_push_writes_no_manifest_and_the_next_one_resumes(tmp_path):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    control = Control(Pool.create(str(tmp_path / "pool"), chunk_size=4096), {"default": remote})
    await control.create_volume("data", 8 * MiB)
    dev = control.open_device("data")
    await dev.pwrite(0, os.urandom(8 * MiB))
    dev.close()
    await control.create_snapshot("data@s")

    progress = Recorder(cancel_at(0.25, control))
    with pytest.raises(errors.Cancelled, match="no manifest was written") as info:
        await control.push("data@s", progress=progress)
    assert "push of data@s cancelled at" in str(info.value)
    assert remote.objects.list("manifests/") == [] and remote.objects.list("locks/") == []
    assert not control.pool.get_snapshot("data@s").holders        # let go
    before = set(chunks_in_packs(remote))
    assert 0 < len(before) < 2048                      # mid-way

    resumed = await control.push("data@s")
    assert resumed["uploaded_chunks"] == 2048 - len(before)
    stored = chunks_in_packs(remote)
    assert len(stored) == len(set(stored)) == 2048     # nothing uploaded twice
    assert chunks_of(remote, "data@s") == set(stored)
    assert [j["state"] for j in control.list_jobs()] == ["cancelled", "succeeded"]


async def test_a_cancelled_pull_leaves_a_usable_volume_with_hydration_paused(tmp_path):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    a = Control(Pool.create(str(tmp_path / "a"), chunk_size=4096), {"default": remote})
    data = os.urandom(4 * MiB)
    await a.create_volume("data", len(data))
    dev = a.open_device("data")
    await dev.pwrite(0, data)
    dev.close()
    await a.create_snapshot("data@s")
    await a.push("data@s")

    b = Control(Pool.create(str(tmp_path / "b"), chunk_size=4096), {"default": remote})
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run_background)
        progress = Recorder(cancel_at(0.0, b))
        with pytest.raises(errors.Cancelled, match="hydration is paused"):
            await b.pull("data@s", "copy", wait=True, progress=progress)
        status = b.hydration_status("copy")
        assert status["state"] == "paused: by request"
        await trio.sleep(0.5)
        assert b.hydration_status("copy")["bytes_done"] < len(data)    # stays paused
        dev = b.open_device("copy")
        assert await dev.pread(len(data) - 4096, 4096) == data[-4096:]  # usable
        dev.close()
        b.resume_hydration("copy")
        with trio.fail_after(60):
            assert (await b.wait_hydrated("copy"))["state"] == "hydrated"
        nursery.cancel_scope.cancel()


# -- a real daemon, rokctl subprocesses, S3 over HTTP -------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory, s3_server):
    tmp = tmp_path_factory.mktemp("jobs")
    proxy = FlakyProxy(s3_server.port)
    bucket = new_bucket(s3_server.url)
    extra = f"""
[remotes.default]
type = "s3"
bucket = "{bucket}"
prefix = "jobs"
endpoint_url = "{proxy.url}"
region = "us-east-1"
deadline = 300          # held requests wait at the proxy: longer than any hold
"""
    config = write_config(tmp, extra)
    config.write_text(config.read_text().replace('chunk_size = "64K"', 'chunk_size = "16K"'))
    d = Daemon(config).start()
    d.proxy = proxy
    d.remote = open_remote({"type": "s3", "bucket": bucket, "prefix": "jobs",
                            "endpoint_url": s3_server.url, "region": "us-east-1"})
    yield d
    proxy.close()
    rc, out, log = d.stop()
    assert rc == 0, log


def make_snapshot(daemon, snapshot, mib):
    volume = snapshot.split("@")[0]
    daemon.ok("volume", "create", volume, "--size", f"{mib}M")
    daemon.nbdsh(volume, f"import os\nfor i in range({mib}):\n"
                         f"    h.pwrite(os.urandom(1 << 20), i << 20)\nh.flush()")
    daemon.ok("snapshot", "create", snapshot)


def volume_digest(daemon, image, mib):
    return daemon.nbdsh(image, f"import hashlib\nd = hashlib.sha256()\nfor i in range({mib}):\n"
                               f"    d.update(h.pread(1 << 20, i << 20))\nprint(d.hexdigest())")


def rokctl_process(daemon, *args):
    """rokctl as a person runs it in a terminal: SIGINT is a Ctrl-C. (A
    process started in the background by a non-interactive shell, as a
    test runner may be, ignores SIGINT, and so would its children: Python
    then installs no KeyboardInterrupt handler and SIGINT does nothing.)
    Not with a preexec_fn: with one, Popen forks with the fork handlers
    run (not vfork), and gRPC's (this process has channels open) hung the
    fork once, in Popen, for good. Instead: a caught signal is reset to its
    default at exec, an ignored one stays ignored, so SIGINT is caught here
    while the child starts."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "rokfs.rokctl", "--socket",
                                 daemon.control, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_until(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.1)


def clients_gone(daemon):
    """How many calls the daemon has cancelled because their client went away."""
    return daemon.log().count("rpc_client_gone")


def job_state(daemon, job_id):
    [job] = [j for j in daemon.json("jobs") if j["id"] == job_id]
    return job["state"]


def job_under_way(daemon, kind, target, proc=None, timeout=60):
    """The running job of `kind` on `target`, once it has made progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in daemon.json("jobs"):
            if (job["kind"], job["target"], job["state"]) == (kind, target, "running") \
                    and job["done_bytes"] > 0:
                return job
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"no {kind} of {target} under way: {daemon.json('jobs')}")


def job_ended(daemon, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [job] = [j for j in daemon.json("jobs") if j["id"] == job_id]
        if job["state"] not in ("running", "cancelling"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running")


def assert_push_left_nothing_visible(daemon, snapshot):
    assert f"manifests/{snapshot}" not in {o.key for o in daemon.remote.objects.list("manifests/")}
    assert daemon.remote.objects.list("locks/") == []


def assert_resumed(daemon, snapshot, before, result):
    """`result` (a push's) uploaded exactly the chunks missing `before` it."""
    mine = chunks_of(daemon.remote, snapshot)
    already = mine & before
    assert 0 < len(already) < len(mine)                 # the first push stopped mid-way
    assert result["uploaded_chunks"] == len(mine) - len(already)
    stored = chunks_in_packs(daemon.remote)
    assert len(stored) == len(set(stored))              # no chunk uploaded twice


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_rokctl_push_is_stopped_and_resumed_later(daemon, sig):
    snapshot = f"int{int(sig)}@s"
    make_snapshot(daemon, snapshot, 64)
    gone = clients_gone(daemon)
    daemon.proxy.hold(PACKS, after=PASS_BEFORE_HOLD)       # the push cannot end meanwhile
    try:
        proc = rokctl_process(daemon, "push", snapshot, "--progress")
        job = job_under_way(daemon, "push", snapshot, proc)
        proc.send_signal(sig)
        wait_until(lambda: clients_gone(daemon) > gone, "the daemon to see rokctl go")
    finally:
        daemon.proxy.release()      # the PUTs in flight land (shielded), nothing more starts
    _, err = proc.communicate(timeout=120)
    ended = job_ended(daemon, job["id"])
    assert ended["state"] == "cancelled", ended
    assert "no manifest was written" in ended["message"]
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert re.search(rf"rokctl: interrupted: push of {snapshot} cancelled at \d+%", err), err
    else:
        assert f"({CLIENT_GONE})" in ended["message"]
    assert_push_left_nothing_visible(daemon, snapshot)
    before = set(chunks_in_packs(daemon.remote))
    assert_resumed(daemon, snapshot, before, daemon.json("push", snapshot))


def test_a_detached_push_is_listed_and_cancelled_with_rokctl_jobs(daemon):
    make_snapshot(daemon, "det@s", 64)
    daemon.proxy.hold(PACKS, after=PASS_BEFORE_HOLD)       # the push cannot end meanwhile
    try:
        start = time.monotonic()
        out = daemon.ok("push", "det@s", "--detach")
        assert time.monotonic() - start < 10                      # returns at once
        job_id = re.search(r"runs as job (\w+) \(detached\)", out).group(1)
        assert f"jobs cancel {job_id}" in out and f"jobs wait {job_id}" in out
        job_under_way(daemon, "push", "det@s")
        listing = daemon.ok("jobs")
        assert re.search(rf"{job_id}\s+push\s+det@s\s+running\s+\d+% ", listing), listing
        follower = rokctl_process(daemon, "jobs", "wait", job_id, "--progress")
        follower.stderr.read(1)                                   # it follows: its bar is up
        follower.send_signal(signal.SIGINT)                       # stops following only
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 130 and f"stopped following job {job_id}" in err, err
        assert job_state(daemon, job_id) == "running"
        canceller = rokctl_process(daemon, "jobs", "cancel", job_id)
        wait_until(lambda: job_state(daemon, job_id) == "cancelling", "the cancel to arrive")
    finally:
        daemon.proxy.release()      # the PUTs in flight land (shielded), nothing more starts
    cancelled, err = canceller.communicate(timeout=120)
    assert canceller.returncode == 0, err
    assert re.match(r"push of det@s cancelled at \d+%.*\(by request\): no manifest", cancelled)
    assert_push_left_nothing_visible(daemon, "det@s")
    before = set(chunks_in_packs(daemon.remote))
    again = daemon.json("push", "det@s", "--detach")
    followed = daemon.json("jobs", "wait", again["id"])
    assert followed["state"] == "succeeded"
    assert_resumed(daemon, "det@s", before, followed["result"])
    assert daemon.remote.objects.list("locks/") == []


def test_an_interrupted_pull_leaves_a_usable_volume_paused(daemon):
    make_snapshot(daemon, "src@s", 64)
    daemon.ok("push", "src@s")
    want = volume_digest(daemon, "src@s", 64)
    daemon.proxy.hold(PACKS, after=PASS_BEFORE_HOLD)       # the hydration cannot end meanwhile
    try:
        proc = rokctl_process(daemon, "pull", "src@s", "--as", "dst", "--wait", "--progress")
        job_under_way(daemon, "pull", "dst", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert "rokctl: interrupted: pull of dst cancelled at" in err
        assert "hydration is paused: rokctl hydration resume dst" in err
        status = daemon.json("hydration", "dst")
        assert status["state"] == "paused: by request" and status["bytes_done"] < 64 * MiB
    finally:
        daemon.proxy.release()
    daemon.nbdsh("dst", "assert len(h.pread(65536, 63 << 20)) == 65536")      # cold: fetched

    daemon.proxy.hold(PACKS)                           # no pack data: the hydration cannot end
    try:
        daemon.ok("hydration", "resume", "dst")
        job = daemon.json("hydration", "dst", "--detach")
        assert job["kind"] == "hydration" and job["state"] == "running"
        cancelled = daemon.json("jobs", "cancel", job["id"])
        assert cancelled["state"] == "cancelled"
        assert daemon.json("hydration", "dst")["state"] == "paused: by request"
    finally:
        daemon.proxy.release()
    daemon.ok("hydration", "resume", "dst")
    assert daemon.json("hydration", "dst", "--wait")["state"] == "hydrated"
    assert volume_digest(daemon, "dst", 64) == want


def test_rokctl_jobs_errors_and_json(daemon):
    rc, _, err = daemon.rokctl("jobs", "cancel", "nope")
    assert rc == 3 and "no job 'nope'" in err
    rc, _, err = daemon.rokctl("jobs", "wait", "nope")
    assert rc == 3
    listed = json.loads(daemon.ok("jobs", "ls", "-o", "json"))
    assert all({"id", "kind", "target", "state", "done_bytes", "total_bytes", "message"}
               <= set(j) for j in listed)
