"""Group snapshots (one consistent cut across volumes), holds, lineage."""

import os
import struct

import pytest
import trio

from rokfs import errors
from rokfs.control import Control
from rokfs.fsck import fsck
from rokfs.pool import Pool
from rokfs.remote import open_remote
from test_remote import push_new_volume

KIB = 1024
MiB = 1 << 20


@pytest.fixture
def control(tmp_path):
    c = Control(Pool.create(str(tmp_path / "pool"), chunk_size=4096))
    yield c
    c.pool.close()


async def read_counter(control, name):
    dev = control.open_device(name)
    try:
        return struct.unpack("<Q", bytes(await dev.pread(0, 8)))[0]
    finally:
        dev.close()


async def test_a_group_snapshot_is_one_consistent_cut(control):
    """A writer bumps a counter in volume a, then in b, each write answered
    before the next, while group snapshots are taken: in every group a is
    b or one ahead, and both are at least what was acknowledged before the
    snapshot call started."""
    for name in ("a", "b"):
        await control.create_volume(name, MiB)
    devs = [control.open_device(n) for n in ("a", "b")]
    acked = [0]
    taken = []

    async def writer():
        for value in range(1, 100000):
            for dev in devs:
                await dev.pwrite(0, struct.pack("<Q", value))
                await trio.sleep(0)
            acked[0] = value

    async def snapshotter():
        for i in range(40):
            before = acked[0]
            await control.create_group_snapshot(f"g{i}", ["a", "b"])
            taken.append((f"g{i}", before))
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await snapshotter()
        nursery.cancel_scope.cancel()
    for dev in devs:
        dev.close()
    lagging = 0
    for group, before in taken:
        a, b = [await read_counter(control, f"{v}@{group}") for v in ("a", "b")]
        assert a in (b, b + 1), (group, a, b)
        assert min(a, b) >= before, (group, a, b, before)
        lagging += a == b + 1
    assert 0 < lagging < len(taken)        # the cut really fell between the two writes


async def test_groups_are_listed_labelled_cloned_and_deleted_as_one(control):
    for name in ("a", "b", "c"):
        await control.create_volume(name, MiB)
    group = await control.create_group_snapshot("step1", ["a", "b"], {"run": "7"})
    assert group["members"] == ["a@step1", "b@step1"]
    with pytest.raises(errors.AlreadyExists):
        await control.create_group_snapshot("step1", ["c"])
    with pytest.raises(errors.NotFound):                  # all or none
        await control.create_group_snapshot("step2", ["c", "nope"])
    assert await control.list_snapshots(volume="c") == []
    with pytest.raises(errors.InvalidArgument, match="group name"):
        await control.create_group_snapshot("Bad Name", ["a"])
    assert [g["name"] for g in control.list_groups(labels={"run": "7"})] == ["step1"]
    members = await control.list_snapshots(group="step1")
    assert [s["name"] for s in members] == ["a@step1", "b@step1"]
    clones = await control.clone_group("step1")
    assert [v["name"] for v in clones] == ["a-step1", "b-step1"]
    await control.delete_group("step1")
    assert control.list_groups() == [] and await control.list_snapshots() == []
    with pytest.raises(errors.NotFound):
        await control.delete_group("step1")


async def test_group_info_says_what_deleting_the_group_frees(control):
    """g1 alone holds the 64 KiB its volume overwrote after it: group info
    says deleting g1 frees that, and deleting it does."""
    async def fill(name, byte, length):
        dev = control.open_device(name)
        try:
            await dev.pwrite(0, bytes([byte]) * length)
        finally:
            dev.close()
    await control.create_volume("a", 256 * KIB)
    await fill("a", 1, 256 * KIB)
    await control.create_group_snapshot("g1", ["a"])
    await fill("a", 2, 64 * KIB)                       # g1 alone holds 64 KiB of byte 1
    info = control.group_info("g1")["space"]
    assert (info["frees"], info["frees_exact"]) == (64 * KIB, True) == (info["exclusive"], True)
    before = control.pool.status()["used_bytes"]
    await control.delete_group("g1")
    assert before - control.pool.status()["used_bytes"] == info["frees"]


async def test_held_snapshots_need_force_and_name_their_holds(control):
    await control.create_volume("a", MiB)
    await control.create_snapshot("a@keep")
    info = await control.hold_snapshot("a@keep", "audit 2026")
    assert info["holds"] == {"user": "audit 2026"}
    with pytest.raises(errors.Busy, match=r"holds user \(audit 2026\).*--force"):
        await control.delete_snapshot("a@keep")
    with pytest.raises(errors.Busy, match="holds"):
        await control.delete_volume("a", recursive=True)
    await control.release_snapshot("a@keep")
    await control.hold_snapshot("a@keep", tag="legal")
    await control.delete_snapshot("a@keep", force=True)
    assert await control.list_snapshots() == []
    control.pool.commit()
    assert fsck(control.pool)["clean"]


async def test_holds_groups_and_origins_survive_a_reopen(tmp_path):
    path = str(tmp_path / "pool")
    c = Control(Pool.create(path))
    for name in ("a", "b"):
        await c.create_volume(name, MiB)
    await c.create_group_snapshot("g", ["a", "b"])
    await c.hold_snapshot("a@g", "keep")
    c.pool.close()
    c = Control(Pool.open(path))
    assert c.list_groups()[0]["members"] == ["a@g", "b@g"]
    assert c.snapshot_info("a@g")["holds"] == {"user": "keep"}
    c.pool.close()


async def test_lineage_of_a_clone_of_a_pulled_volume(tmp_path):
    remote = open_remote(f"file://{tmp_path / 'remote'}")
    a = Control(Pool.create(str(tmp_path / "a")), {"default": remote})
    await push_new_volume(a, "src@s", os.urandom(MiB))
    b = Control(Pool.create(str(tmp_path / "b")), {"default": remote})
    await b.pull("src@s", "r")
    await b.create_snapshot("r@x")
    await b.clone("r@x", "c")
    await b.create_snapshot("c@y")
    lineage = b.lineage("c")
    assert [(n["name"], n["kind"]) for n in lineage["ancestors"]] == [
        (f"{remote.url}#src@s", "remote snapshot"), ("r", "volume"), ("r@x", "snapshot")]
    tree = lineage["tree"]
    assert (tree["name"], [n["name"] for n in tree["children"]]) == ("c", ["c@y"])
    whole = b.lineage("r")["tree"]
    assert whole["children"][0]["name"] == "r@x"
    assert whole["children"][0]["children"][0]["name"] == "c"
    a.pool.close()
    b.pool.close()


# -- through a real daemon -------------------------------------------------------------

def _daemon(tmp_path):
    from daemon_helpers import running, write_config
    (tmp_path / "mnt").mkdir()
    return running(write_config(tmp_path, f'[fuse]\nmountpoint = "{tmp_path / "mnt"}"\n'))


def test_freeze_makes_a_group_snapshot_of_unsynced_files_mountable_without_replay(tmp_path):
    import hashlib
    import subprocess
    from fuse_helpers import fs_mounted, loop_device, run
    from rokfs.client import Client
    with _daemon(tmp_path) as d, Client(d.control) as rok:
        d.ok("volume", "create", "v", "--size", "64M")
        d.ok("volume", "create", "w", "--size", "1M")
        image = tmp_path / "mnt" / "volumes" / "v"
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)])
        with loop_device(image) as dev, fs_mounted(dev, tmp_path / "fs") as fs:
            with pytest.raises(errors.NotFound):            # fails inside the freeze window
                rok.create_group_snapshot("bad", ["v", "nope"], freeze=[str(fs)])
            done = subprocess.run(["sh", "-c", f"echo x > {fs}/after && sync -f {fs}/after"],
                                  timeout=20)              # thawed: writes go on
            assert done.returncode == 0
            sums = {}
            for i in range(4):
                data = os.urandom(256 << 10)
                (fs / f"f{i}").write_bytes(data)            # in the page cache, not synced
                sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
            rok.create_group_snapshot("frozen", ["v", "w"], freeze=[str(fs)])
        snap = tmp_path / "mnt" / "snapshots" / "v" / "frozen"
        with loop_device(snap, read_only=True) as dev, \
                fs_mounted(dev, tmp_path / "snapfs", "ro,noload") as fs:
            got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in fs.iterdir() if p.name.startswith("f")}
        assert got == sums


NBD_WRITER = """
import nbd, struct, sys, time
socket, seconds = sys.argv[1], float(sys.argv[2])
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(f"nbd+unix:///a?socket={socket}")
b.connect_uri(f"nbd+unix:///b?socket={socket}")
print("ready", flush=True)
end, value, log = time.monotonic() + seconds, 0, []
while time.monotonic() < end:
    value += 1
    a.pwrite(struct.pack("<Q", value), 0)
    b.pwrite(struct.pack("<Q", value), 0)
    log.append(f"{time.monotonic()} {value}")
print("\\n".join(log))
"""


def test_a_group_snapshot_is_one_consistent_cut_over_two_nbd_connections(tmp_path):
    import subprocess
    import time
    from nbd_helpers import NBDSH_ENV
    from rokfs.client import Client
    with _daemon(tmp_path) as d, Client(d.control) as rok:
        for name in ("a", "b"):
            d.ok("volume", "create", name, "--size", "1M")
        writer = subprocess.Popen(["python3", "-c", NBD_WRITER, d.nbd_socket, "3"],
                                  env=NBDSH_ENV, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        started = []
        for i in range(20):
            started.append(time.monotonic())
            rok.create_group_snapshot(f"n{i}", ["a", "b"])
            time.sleep(0.05)
        acks = [tuple(map(float, line.split())) for line in writer.stdout.read().split("\n")
                if line]
        assert writer.wait(30) == 0
        for i, start in enumerate(started):
            before = max([v for t, v in acks if t <= start], default=0)
            a, b = (struct.unpack("<Q", bytes.fromhex(d.nbdsh(
                f"{v}@n{i}", "print(h.pread(8, 0).hex())").strip()))[0] for v in ("a", "b"))
            assert a in (b, b + 1) and min(a, b) >= before, (i, a, b, before)
