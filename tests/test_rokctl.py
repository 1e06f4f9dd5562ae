"""End to end: a real `rokfs serve` (NBD + control API + metrics, an S3 remote on
a moto server, FUSE when rokfs.fusefs exists) driven by every rokctl subcommand,
with effects checked through nbdinfo/nbdsh, getfattr and the S3 bucket."""

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from daemon_helpers import Daemon, write_config
from s3_helpers import make_bucket, moto_server  # noqa: F401  (fixture)

from rokfs import errors
from rokfs.client import Client



@pytest.fixture(scope="module")
def daemon(tmp_path_factory, moto_server):  # noqa: F811
    tmp = tmp_path_factory.mktemp("serve")
    make_bucket(moto_server, "rokfs-test")
    extra = f"""
[remotes.default]
type = "s3"
bucket = "rokfs-test"
prefix = "e2e"
endpoint_url = "{moto_server}"
region = "us-east-1"
"""
    (tmp / "mnt").mkdir()
    extra += f'[fuse]\nmountpoint = "{tmp / "mnt"}"\n'
    d = Daemon(write_config(tmp, extra)).start()
    d.tmp, d.s3_endpoint = tmp, moto_server
    yield d
    rc, out, err = d.stop()
    assert rc == 0, err


def test_volume_commands_human_and_json(daemon):
    out = daemon.ok("volume", "create", "vol1", "--size", "20M")
    assert "vol1" in out and "20M" in out
    assert daemon.nbd_exports()["vol1"]["export-size"] == 20 << 20
    assert [v["name"] for v in daemon.json("volume", "ls")] == ["vol1"]
    assert "vol1" in daemon.ok("volume", "ls")
    assert daemon.json("volume", "resize", "vol1", "32M")["size"] == 32 << 20
    assert daemon.nbd_exports()["vol1"]["export-size"] == 32 << 20
    assert daemon.json("volume", "rename", "vol1", "vol2")["name"] == "vol2"
    assert daemon.json("volume", "info", "vol2")["size"] == 32 << 20
    assert "name:       vol2\n" in daemon.ok("volume", "info", "vol2")
    assert set(daemon.nbd_exports()) == {"vol2"}
    assert daemon.json("volume", "rm", "vol2") == {"deleted": "vol2", "deferred": False}
    assert daemon.nbd_exports() == {}


def test_snapshots_labels_and_clone_through_nbd(daemon):
    daemon.ok("volume", "create", "data", "--size", "16M")
    daemon.nbdsh("data", "h.pwrite(b'before!!' * 512, 65536); h.flush()")
    snap = daemon.json("snapshot", "create", "data@before", "--label", "run=42",
                       "--label", "step=prep")
    assert snap["labels"] == {"run": "42", "step": "prep"}
    daemon.nbdsh("data", "h.pwrite(b'after!!!' * 512, 65536); h.flush()")
    exports = daemon.nbd_exports()
    assert exports["data@before"]["is_read_only"] is True
    assert "data@before" in daemon.ok("snapshot", "ls", "--label", "run=42")
    assert daemon.json("snapshot", "ls", "--label", "run=43") == []
    assert [s["name"] for s in daemon.json("snapshot", "ls", "data")] == ["data@before"]
    labelled = daemon.json("snapshot", "label", "data@before", "owner=ann")
    assert labelled["labels"] == {"run": "42", "step": "prep", "owner": "ann"}
    assert daemon.json("snapshot", "info", "data@before")["labels"]["owner"] == "ann"
    assert daemon.json("clone", "data@before", "data2")["origin"] == "data@before"
    out = daemon.nbdsh("data2", "print(h.pread(8, 65536))")
    assert "before!!" in out
    daemon.ok("volume", "rm", "data2")
    daemon.ok("snapshot", "rm", "data@before")
    assert "data@before" not in daemon.nbd_exports()


@pytest.mark.parametrize("args, code, message", [
    (["volume", "info", "absent"], 3, "no volume"),
    (["volume", "create", "Bad/Name", "--size", "1M"], 2, "invalid volume name"),
    (["volume", "create", "x", "--size", "lots"], 2, "invalid size"),
    (["snapshot", "create", "nosnapname"], 2, "VOLUME@SNAP"),
    (["snapshot", "create", "x@y", "--label", "novalue"], 2, "KEY=VALUE"),
    (["volume", "bogus"], 2, "invalid choice"),
    (["snapshot", "create", "Bad@x"], 2, "invalid volume name 'Bad' in 'Bad@x'"),
    (["snapshot", "create", "x@Bad"], 2, "invalid snapshot name 'Bad' in 'x@Bad'"),
    (["clone", "x@y", "New"], 2, "invalid new volume name 'New'"),
    (["volume", "rename", "x", "New"], 2, "invalid new volume name 'New'"),
    (["pull", "x@y", "--as", "New"], 2, "invalid new volume name 'New'"),
    (["volume", "create", "x", "--size", "nan"], 2, "invalid size 'nan'"),
    (["remote", "ls", "--remote", "s3://b/p?endpont_url=http://h"], 2,
     "unknown parameter 'endpont_url'"),
    (["remote", "ls", "--remote", "s3:/b"], 2, "bucket must be a non-empty string"),
])
def test_errors_have_meaningful_exit_codes(daemon, args, code, message):
    rc, out, err = daemon.rokctl(*args)
    assert rc == code and message in err, (rc, err)


def test_already_exists_and_busy(daemon):
    daemon.ok("volume", "create", "dup", "--size", "1M")
    rc, _, err = daemon.rokctl("volume", "create", "dup", "--size", "1M")
    assert rc == 5 and "exists" in err
    daemon.ok("snapshot", "create", "dup@s")
    rc, _, err = daemon.rokctl("volume", "rm", "dup")
    assert rc == 6, err
    assert daemon.ok("volume", "ls").count("dup") == 1       # nothing lost
    daemon.ok("volume", "rm", "-r", "dup")


def test_client_raises_the_server_side_error_class(daemon):
    with Client(daemon.control) as rok:
        with pytest.raises(errors.NotFound):
            rok.volume_info("missing")
        with pytest.raises(errors.InvalidArgument):
            rok.create_volume("UPPER", 1 << 20)
        with pytest.raises(errors.InvalidArgument, match="unknown argument"):
            rok.call("list_volumes", bogus=1)


def test_unreachable_daemon_is_exit_4(tmp_path):
    rc = subprocess.run([sys.executable, "-m", "rokfs.rokctl", "--socket",
                         str(tmp_path / "none.sock"), "status"],
                        capture_output=True, text=True, timeout=60)
    assert rc.returncode == 4 and "no rokfs daemon" in rc.stderr


def test_status_and_console_script(daemon):
    proc = subprocess.run([sys.executable, "-m", "rokfs.rokctl", "-o", "json", "--socket",
                           daemon.control, "status"], capture_output=True, text=True,
                          timeout=60, check=True)
    status = json.loads(proc.stdout)
    assert status["chunk_size"] == 64 << 10 and "capacity_bytes" in status
    assert "chunk size 64K" in daemon.ok("status")


def test_control_socket_is_private(daemon):
    assert oct(os.stat(daemon.control).st_mode & 0o777) == "0o600"


def test_step_snapshots_context_manager(daemon):
    daemon.ok("volume", "create", "nb-data", "--size", "4M")
    daemon.ok("volume", "create", "nb-models", "--size", "4M")
    with Client(daemon.control) as rok:
        with rok.step_snapshots(["nb-data", "nb-models"], run="42", step="train"):
            daemon.nbdsh("nb-data", "h.pwrite(b'x' * 4096, 0); h.flush()")
        with pytest.raises(RuntimeError):         # a failed step still gets its post snapshot
            with rok.step_snapshots(["nb-data"], run="42", step="train"):
                raise RuntimeError("boom")
    found = daemon.json("snapshot", "ls", "--label", "run=42", "--label", "step=train")
    by_phase = {}
    for s in found:
        by_phase.setdefault(s["labels"]["phase"], []).append(s["name"])
    assert sorted(by_phase["pre"]) == ["nb-data@train-42-pre", "nb-data@train-42-pre-2",
                                       "nb-models@train-42-pre"]
    assert sorted(by_phase["post"]) == ["nb-data@train-42-post", "nb-data@train-42-post-2",
                                        "nb-models@train-42-post"]
    assert daemon.json("snapshot", "info", "nb-data@train-42-post-2")["labels"]["outcome"] \
        == "failed"
    out = daemon.nbdsh("nb-data@train-42-post", "print(h.pread(4, 0))")
    assert "xxxx" in out
    out = daemon.nbdsh("nb-data@train-42-pre", "print(h.pread(4, 0))")
    assert "\\x00\\x00" in out
    groups = {g["name"]: g["volumes"] for g in daemon.json("group", "ls", "--label", "run=42")}
    assert groups["train-42-pre"] == ["nb-data", "nb-models"]      # one cut for both
    assert groups["train-42-post-2"] == ["nb-data"]


def test_group_snapshots_holds_and_lineage_from_rokctl(daemon):
    for name in ("ga", "gb"):
        daemon.ok("volume", "create", name, "--size", "1M")
    rc, _, err = daemon.rokctl("snapshot", "create", "ga", "gb")
    assert rc == 2 and "--group" in err
    group = daemon.json("snapshot", "create", "--group", "g1", "ga", "gb", "--label", "k=v")
    assert group["members"] == ["ga@g1", "gb@g1"]
    assert "ga,gb" in daemon.ok("group", "ls")
    assert [s["name"] for s in daemon.json("snapshot", "ls", "--group", "g1")] == \
        ["ga@g1", "gb@g1"]
    daemon.ok("snapshot", "hold", "ga@g1", "--reason", "paper figures")
    rc, _, err = daemon.rokctl("group", "rm", "g1")
    assert rc == 6 and "paper figures" in err
    clones = daemon.json("group", "clone", "g1", "--suffix=-r")
    assert [v["name"] for v in clones] == ["ga-r", "gb-r"]
    tree = daemon.ok("lineage", "ga-r")
    assert tree.splitlines()[:3] == ["ga  (volume)", "└─ ga@g1  (snapshot, group g1)",
                                     "   └─ ga-r  (volume)"]
    daemon.ok("snapshot", "release", "ga@g1")
    daemon.ok("group", "rm", "g1")
    assert "g1" not in {g["name"] for g in daemon.json("group", "ls")}


def test_metrics_count_nbd_io(daemon):
    daemon.ok("volume", "create", "m", "--size", "4M")

    def scrape():
        return urllib.request.urlopen(daemon.metrics_url, timeout=10).read().decode()

    daemon.nbdsh("m", "h.pwrite(b'y' * 65536, 0); h.flush()")
    text = scrape()
    assert 'rokfs_io_bytes_total{image="m",op="write"} 65536.0' in text
    assert 'rokfs_io_ops_total{image="m",op="flush"} 1.0' in text
    assert 'rokfs_request_seconds_count{front="nbd",op="write"}' in text
    assert "rokfs_pool_capacity_bytes" in text and "rokfs_snapshot_seconds_bucket" in text
    daemon.ok("volume", "rm", "m")
    assert 'image="m"' not in scrape()                  # deleted images leave the scrape


def test_fuse_view_sees_rokctl_changes(daemon):
    daemon.ok("volume", "create", "fz", "--size", "2M")
    daemon.ok("snapshot", "create", "fz@one", "--label", "run=7")
    mnt = daemon.tmp / "mnt"
    assert os.path.getsize(mnt / "volumes" / "fz") == 2 << 20
    assert "one" in os.listdir(mnt / "snapshots" / "fz")
    dump = subprocess.run(["getfattr", "-d", "-m", "user.rokfs", str(mnt / "volumes" / "fz")],
                          capture_output=True, text=True, timeout=30)
    assert dump.returncode == 0, dump.stderr


def test_push_pull_remote_and_hydration(daemon):
    import boto3
    daemon.ok("volume", "create", "src", "--size", "8M")
    daemon.nbdsh("src", "h.pwrite(b'remote!!' * 8192, 1 << 20); h.flush()")
    daemon.ok("snapshot", "create", "src@v1", "--label", "run=9")
    pushed = daemon.json("push", "src@v1")
    assert pushed["snapshot"] == "src@v1" and pushed["uploaded_chunks"] >= 1
    rc, out, err = daemon.rokctl("push", "src@v1", "--progress")
    assert rc == 0 and "pushed src@v1" in out
    s3 = boto3.client("s3", endpoint_url=daemon.s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rokfs-test").get("Contents", [])]
    assert keys and all(k.startswith("e2e") for k in keys)
    assert "src@v1" in [m["name"] for m in daemon.json("remote", "ls")]
    assert "src@v1" in daemon.ok("remote", "ls")
    pulled = daemon.json("pull", "src@v1", "--as", "restored")
    assert pulled["name"] == "restored"
    assert daemon.json("hydration", "restored", "--wait")["state"] == "hydrated"
    assert "hydrated" in daemon.ok("hydration", "restored")
    out = daemon.nbdsh("restored", "print(h.pread(8, 1 << 20))")
    assert "remote!!" in out
    daemon.ok("pull", "src@v1", "--as", "restored2", "--wait")
    daemon.ok("remote", "rm", "src@v1")
    assert daemon.json("remote", "ls") == []
    gc = daemon.json("remote", "gc", "--grace", "0")
    assert gc["deleted_objects"] >= 1
    rc, _, err = daemon.rokctl("pull", "src@v1", "--as", "again")
    assert rc == 3, err


def test_human_output_has_human_sizes_and_times_json_iso(daemon):
    import re
    daemon.ok("volume", "create", "shown", "--size", "20M")
    human = daemon.ok("volume", "info", "shown")
    assert re.search(r"^size: +20M$", human, re.M), human
    assert re.search(r"^created: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", human, re.M), human
    assert re.search(r"^snapshots: +-$", human, re.M), human
    info = daemon.json("volume", "info", "shown")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", info["created"])
    assert isinstance(info["created_epoch"], float) and info["size"] == 20 << 20
    listed = daemon.json("volume", "ls")
    assert all(v["created"].endswith("Z") for v in listed)
    daemon.ok("volume", "rm", "shown")


def test_a_closed_stdout_ends_quietly(daemon):
    daemon.ok("volume", "create", "piped", "--size", "1M")
    for args in (["volume", "ls"], ["-o", "json", "status"], ["--help"]):
        read_end, write_end = os.pipe()
        os.close(read_end)                          # `| head` that has already gone
        proc = subprocess.run([sys.executable, "-m", "rokfs.rokctl", "--socket", daemon.control,
                               *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
        os.close(write_end)
        assert proc.stderr == "", (args, proc.stderr)
        assert proc.returncode == (0 if args == ["--help"] else 141)   # argparse ignores it
    daemon.ok("volume", "rm", "piped")
