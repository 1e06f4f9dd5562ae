"""Push and pull snapshots through a real S3 server (moto over HTTP) and a
local directory: round trip with ext4, lazy reads, hydration, incremental
push, dedup across clones, garbage collection."""

import functools
import hashlib
import os
import subprocess

import pytest
import trio

from rokfs import errors
from rokfs.control import Control
from rokfs.fsck import fsck
from rokfs.pool import Pool
from rokfs.remote import open_remote
from s3_helpers import S3Server, s3_spec

MiB = 1 << 20


def make_control(path, remote):
    return Control(Pool.create(str(path)), {"default": remote})


async def write_volume(control, name, data):
    dev = control.open_device(name)
    for off in range(0, len(data), MiB):
        await dev.pwrite(off, data[off:off + MiB])
    await dev.flush()
    dev.close()


async def push_new_volume(control, snapshot, data, labels=None):
    """Create VOLUME of snapshot VOLUME@SNAP holding `data`, snapshot it, push
    it; returns what push returned."""
    volume = snapshot.split("@")[0]
    await control.create_volume(volume, len(data))
    await write_volume(control, volume, data)
    await control.create_snapshot(snapshot, labels)
    return await control.push(snapshot)


async def read_volume(control, name):
    dev = control.open_device(name)
    out = bytearray()
    for off in range(0, dev.size, MiB):
        out += await dev.pread(off, min(MiB, dev.size - off))
    dev.close()
    return bytes(out)


def ext4_image(tmp_path, size=32 * MiB):
    src = tmp_path / "files"
    src.mkdir()
    for i in range(20):
        (src / f"file{i}.bin").write_bytes(os.urandom(200_000 + i * 1000))
    (src / "text.txt").write_text("hello rokfs\n" * 1000)
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(img)], check=True)
    return img.read_bytes(), {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in src.iterdir()}


def mount_and_hash(image_path, mnt):
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-o", "loop,ro", str(image_path), str(mnt)], check=True)
    try:
        return {name: hashlib.sha256(open(os.path.join(mnt, name), "rb").read()).hexdigest()
                for name in os.listdir(mnt) if name != "lost+found"}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def hydrate_all(control, name, timeout=60):
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            await nursery.start(control.run_background)
            while control.hydration_status(name)["state"] != "hydrated":
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_round_trip_ext4_through_s3(tmp_path):
    server = S3Server().start()
    try:
        spec = s3_spec(server, deadline=2)
        image, want = ext4_image(tmp_path)
        a = make_control(tmp_path / "a", open_remote(spec))
        pushed = await push_new_volume(a, "data@v1", image, {"step": "1"})
        assert pushed["uploaded_chunks"] > 0
        listed = await a.list_remote()
        assert [m["name"] for m in listed] == ["data@v1"] and listed[0]["labels"] == {"step": "1"}

        b = make_control(tmp_path / "b", open_remote(spec))
        info = await b.pull("data@v1", "restored")
        assert info["unhydrated"] > 0
        status = b.hydration_status("restored")
        assert status["state"] == "hydrating" and status["chunks_done"] == 0
        dev = b.open_device("restored")
        assert await dev.pread(0, 4096) == image[:4096]          # before any hydration
        dev.close()
        assert b.pool.get_volume("restored").cold_chunks()            # still partly cold
        restored = await read_volume(b, "restored")
        assert restored == image
        out = tmp_path / "restored.img"
        out.write_bytes(restored)
        assert mount_and_hash(out, tmp_path / "mnt") == want

        await hydrate_all(b, "restored")
        assert b.pool.get_volume("restored").base is None
        server.stop()                                             # remote gone
        assert await read_volume(b, "restored") == image
        b.pool.close()
        with Pool.open(str(tmp_path / "b")) as pool:              # and after reopening
            vol = pool.get_volume("restored")
            assert vol.base is None and bytes(vol.pread(0, len(image))) == image
        a.pool.close()
    finally:
        server.stop()


@pytest.fixture(params=["dir", "s3"])
def remote_spec(request, tmp_path):
    if request.param == "dir":
        return {"type": "dir", "path": str(tmp_path / "remote")}
    return s3_spec(request.getfixturevalue("s3_server"))


async def test_incremental_push_and_clone_dedup(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a = make_control(tmp_path / "a", remote)
    size = 32 * MiB
    cs = a.pool.chunk_size
    data = bytearray(os.urandom(size))
    first = await push_new_volume(a, "data@one", data)
    assert first["uploaded_chunks"] == size // cs
    one_copy = remote.chunks.usage()

    again = await a.push("data@one")                 # re-push: nothing uploaded
    assert again["uploaded_bytes"] == 0 and not again["manifest_written"]

    nchunks = size // cs
    await a.clone("data@one", "other")                # a clone diverging by 1%
    dev = a.open_device("other")
    for c in range(50, nchunks, 100):
        await dev.pwrite(c * cs, os.urandom(cs))
    dev.close()
    await a.create_snapshot("other@x")
    await a.push("other@x")
    assert remote.chunks.usage() <= 1.02 * one_copy

    changed = range(0, nchunks, 100)                # 1% of the chunks, partly rewritten
    dev = a.open_device("data")
    for c in changed:
        await dev.pwrite(c * cs + 100, os.urandom(200))
    dev.close()
    await a.create_snapshot("data@two")
    second = await a.push("data@two")
    assert second["uploaded_chunks"] == len(changed)
    assert second["uploaded_bytes"] <= 0.015 * size
    assert {m["name"] for m in await a.list_remote()} == {"data@one", "data@two", "other@x"}

    b = make_control(tmp_path / "b", remote)
    await b.pull("other@x", "o")
    want = await read_volume(a, "other")
    assert await read_volume(b, "o") == want


async def test_zero_chunks_are_never_stored_and_trim_skips_fetch(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    await a.create_volume("data", 64 * cs)
    dev = a.open_device("data")
    await dev.pwrite(0, b"\1" * cs)
    await dev.pwrite(5 * cs, bytes(cs))          # written zeros: a zero chunk
    await dev.pwrite(9 * cs, b"\2" * cs)
    await dev.pwrite(10 * cs, b"\3" * cs)
    dev.close()
    await a.create_snapshot("data@s")
    result = await a.push("data@s")
    assert result["uploaded_chunks"] == 3

    b = make_control(tmp_path / "b", remote)
    await b.pull("data@s", "r")
    vol = b.pool.get_volume("r")
    before = remote.objects.requests
    dev = b.open_device("r")
    await dev.trim(9 * cs, cs)                          # never fetch
    await dev.pwrite(10 * cs, b"\4" * cs)               # whole-chunk write: no fetch
    assert remote.objects.requests == before
    assert await dev.pread(9 * cs, 4) == bytes(4)
    assert await dev.pread(10 * cs, 4) == b"\4" * 4
    assert await dev.pread(0, 4) == b"\1" * 4
    assert await dev.pread(5 * cs, cs) == bytes(cs)
    dev.close()
    await hydrate_all(b, "r")
    assert vol.base is None
    assert bytes(vol.pread(10 * cs, 4)) == b"\4" * 4


async def test_pull_refuses_bad_requests(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    b = make_control(tmp_path / "b", remote)
    with pytest.raises(errors.NotFound):
        await b.pull("nope@x", "r")
    with pytest.raises(errors.InvalidArgument):
        await b.pull("no-at-sign", "r")
    with pytest.raises(errors.InvalidArgument):
        await b.pull("a@b", "Bad Name")
    with pytest.raises(errors.NotFound):
        await b.delete_remote("nope@x")
    assert b.list_volumes() == []


async def test_gc_keeps_live_and_young_objects(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    await push_new_volume(a, "data@one", os.urandom(256 * cs))
    dev = a.open_device("data")
    await dev.pwrite(0, os.urandom(128 * cs))
    dev.close()
    await a.create_snapshot("data@two")
    await a.push("data@two")
    used = remote.chunks.usage()
    assert (await a.gc_remote(grace_seconds=0))["deleted_objects"] == 0
    await a.delete_remote("data@one")
    young = await a.gc_remote(grace_seconds=3600)
    assert young["deleted_objects"] == 0                  # within the grace period
    swept = await a.gc_remote(grace_seconds=0)
    assert swept["deleted_objects"] > 0 and remote.chunks.usage() < used
    b = make_control(tmp_path / "b", remote)               # data@two still whole
    await b.pull("data@two", "r")
    assert await read_volume(b, "r") == await read_volume(a, "data")
    # a push after gc does not trust chunks the gc removed
    await a.delete_snapshot("data@one")
    await a.create_snapshot("data@three")
    await a.push("data@three")
    c = make_control(tmp_path / "c", remote)
    await c.pull("data@three", "r")
    assert await read_volume(c, "r") == await read_volume(a, "data")


async def test_slot_hash_cache_follows_the_slots(tmp_path):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    await a.create_volume("data", 4 * cs)
    dev = a.open_device("data")
    await dev.pwrite(0, b"\1" * cs)
    await a.create_snapshot("data@one")
    await a.push("data@one")
    slot = a.pool.get_snapshot("data@one").entry(0) - 2
    assert a.pool.slot_hashes([slot])                     # cached (committed at the next commit)
    await dev.pwrite(0, b"\2" * cs)                       # CoW: the snapshot keeps the slot
    await a.delete_snapshot("data@one")                   # now the slot is freed
    await a.flush()
    assert a.pool.slot_hashes([slot]) == {}
    await dev.pwrite(cs, b"\3" * cs)                      # may reuse that slot
    dev.close()
    await a.create_snapshot("data@two")
    await a.push("data@two")
    b = make_control(tmp_path / "b", remote)
    await b.pull("data@two", "r")
    assert await read_volume(b, "r") == await read_volume(a, "data")


@pytest.mark.parametrize("reopen", [False, True], ids=["open", "reopened"])
async def test_a_slot_written_in_place_after_its_snapshot_went_is_hashed_again(tmp_path, reopen):
    """The pushed snapshot shares its map with the volume and goes; the
    volume then owns the slot and overwrites it in place: the next push must
    hash the new bytes, not reuse the cached hash of the old ones (a pull
    would read the old bytes). `reopen`: the cache is the store's."""
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    await a.create_volume("data", 4 * cs)
    await write_volume(a, "data", b"\1" * (4 * cs))
    await a.create_snapshot("data@one")
    await a.push("data@one")
    slot = a.pool.get_snapshot("data@one").entry(0) - 2
    await a.delete_snapshot("data@one")
    if reopen:
        a.pool.close()
        a = Control(Pool.open(str(tmp_path / "a")), {"default": remote})
    assert a.pool.slot_hashes([slot])                     # the slot still holds those bytes
    await write_volume(a, "data", b"\2" * cs)             # in place: the volume owns it now
    assert a.pool.get_volume("data").entry(0) - 2 == slot and a.pool.slot_hashes([slot]) == {}
    await a.create_snapshot("data@two")
    await a.push("data@two")
    b = make_control(tmp_path / "b", remote)
    await b.pull("data@two", "r")
    assert await read_volume(b, "r") == await read_volume(a, "data") == \
        b"\2" * cs + b"\1" * (3 * cs)


def test_a_slot_whose_hash_a_commit_is_storing_is_not_written_in_place(tmp_path):
    """Between a commit taking a slot's new hash and storing it, a write in
    place (the volume owns the slot) and a crash before the next commit
    would leave the store with a hash of bytes the slot no longer holds (a
    later push would name old bytes). The slot is pinned until that commit
    ends: the write goes to another slot and the stored hash stays true."""
    import blake3
    pool = Pool.create(str(tmp_path / "p"))
    cs = pool.chunk_size
    vol = pool.create_volume("v", 2 * cs)
    vol.pwrite(0, b"\1" * cs)
    pool.commit()
    slot = vol.entry(0) - 2
    pool.record_slot_hash(slot, blake3.blake3(b"\1" * cs).hexdigest())
    batch = pool.commits.begin()                        # carries the hash
    vol.pwrite(0, b"\2" * cs)                           # meanwhile, a write
    vol.pwrite(cs // 2, b"\3" * 4096)                   # and a small one
    pool.commits.write(batch)                           # the hash is stored
    pool.commits.end(batch)                             # (a crash here)
    held = bytearray(cs)
    pool.slots.read_raw(slot, 0, memoryview(held))
    assert pool.store.load_slot_hashes([slot]) == {slot: blake3.blake3(held).hexdigest()}
    assert vol.entry(0) - 2 != slot and bytes(vol.pread(0, 8)) == b"\2" * 8
    pool.commit()                                       # the old slot was freed:
    assert pool.store.load_slot_hashes([slot]) == {}    # its hash went with it
    pool.close()


async def test_volume_deleted_during_a_fetch_is_left_alone(tmp_path):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    await push_new_volume(a, "data@s", os.urandom(8 * cs))
    b = make_control(tmp_path / "b", remote)
    await b.pull("data@s", "r")
    vol = b.pool.get_volume("r")
    used = b.pool.slots.used_slots()
    await b.delete_volume("r")
    assert await b.fetch_chunks(vol, [0, 1])            # fetched, but not installed
    assert b.pool.slots.used_slots() == used
    await b.flush()
    from rokfs.fsck import fsck
    assert fsck(b.pool)["clean"]



async def test_a_volume_of_several_segments_round_trips(tmp_path):
    """Segments are written all at once: each must land in its place."""
    from rokfs.remote.chunks import SEGMENT_CHUNKS
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    size = 3 * SEGMENT_CHUNKS * cs - cs                  # three segments, the last one short
    await a.create_volume("big", size)
    dev = a.open_device("big")
    marks = {seg * SEGMENT_CHUNKS * cs + 5 * cs: os.urandom(cs) for seg in range(3)}
    marks[size - cs] = os.urandom(cs)
    for offset, data in marks.items():
        await dev.pwrite(offset, data)
    dev.close()
    await a.create_snapshot("big@s")
    first = await a.push("big@s")
    assert first["manifest_written"] and first["uploaded_chunks"] == 4
    assert len(remote.chunks.get_manifest("big@s")["segments"]) == 3
    again = await a.push("big@s")
    assert not again["manifest_written"] and again["uploaded_chunks"] == 0
    b = make_control(tmp_path / "b", remote)
    await b.pull("big@s", "copy")
    dev = b.open_device("copy")
    for offset, data in marks.items():
        assert await dev.pread(offset, cs) == data
        assert await dev.pread(offset - cs, cs) == bytes(cs)
    dev.close()


HYDRATE_CHILD = """
import sys, time, trio
from rokfs.control import Control
from rokfs.extents import ExtentStore
from rokfs.pool import Pool
from rokfs.remote import open_remote
real_write_runs = ExtentStore.write_runs

def slow_write_runs(runs):                      # a slow disk: installs stay in flight
    print("WRITING", flush=True)
    time.sleep(0.5)
    real_write_runs(runs)
ExtentStore.write_runs = staticmethod(slow_write_runs)

async def main(pool_dir, remote_dir):
    control = Control(Pool.create(pool_dir), {"default": open_remote(remote_dir)})
    await control.pull("data@s", "copy")
    await control.fetch_chunks(control.pool.get_volume("copy"), [0])   # one chunk installed
    await control.flush()
    async with trio.open_nursery() as nursery:
        await nursery.start(control.run_background)
        while True:                             # commits keep going, as an NBD client's
            await control.flush()
            print("COMMITTED", flush=True)
            await trio.sleep(0.01)

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_kill9_while_fetched_chunks_are_being_written_leaves_a_consistent_pool(tmp_path):
    """Commits run while installs are in flight; a crash right after one
    leaves a pool that fsck finds clean and that reads the right data."""
    import signal
    import sys
    remote_dir = str(tmp_path / "remote")
    data = os.urandom(8 * MiB)
    await push_new_volume(make_control(tmp_path / "a", open_remote(remote_dir)), "data@s", data)
    pool_dir = str(tmp_path / "b")
    child = subprocess.Popen([sys.executable, "-c", HYDRATE_CHILD, pool_dir, remote_dir],
                             stdout=subprocess.PIPE, text=True)
    try:
        with trio.fail_after(30):
            while await trio.to_thread.run_sync(child.stdout.readline) != "WRITING\n":
                pass
            commits = 0
            while commits < 2:        # the second surely began after the write did
                commits += await trio.to_thread.run_sync(child.stdout.readline) == "COMMITTED\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    from rokfs.fsck import fsck
    with Pool.open(pool_dir) as pool:
        report = fsck(pool)
        assert report["clean"], report["problems"]
        assert 0 < pool.get_volume("copy").cold_count() < len(data) // pool.chunk_size
    b = Control(Pool.open(pool_dir), {"default": open_remote(remote_dir)})
    assert await read_volume(b, "copy") == data         # the rest comes from the remote
    b.pool.close()

async def test_segment_is_fetched_once_for_concurrent_callers(tmp_path, s3_server):
    remote = open_remote(s3_spec(s3_server))
    a = make_control(tmp_path / "a", remote)
    await push_new_volume(a, "data@s", os.urandom(64 * a.pool.chunk_size))
    manifest = remote.chunks.get_manifest("data@s")
    store = open_remote(remote.spec)                    # a fresh store: nothing cached
    got = []

    async def ask(key):
        got.append(await store.segment(key))
    before = store.objects.requests
    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(ask, manifest["segments"][0])
    assert store.objects.requests - before == 1 and len(got) == 16
    assert all(seg is got[0] for seg in got)

    errors_seen = []                                    # a failed GET: every caller sees it

    async def ask_missing():
        try:
            await store.segment("segments/" + "0" * 64)
        except errors.NotFound as exc:
            errors_seen.append(exc)
    before = store.objects.requests
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(ask_missing)
    assert store.objects.requests - before == 1 and len(errors_seen) == 4


async def test_a_cancelled_segment_fetch_hands_over_to_a_waiter(tmp_path, s3_server):
    remote = open_remote(s3_spec(s3_server))
    a = make_control(tmp_path / "a", remote)
    await push_new_volume(a, "data@s", os.urandom(8 * a.pool.chunk_size))
    key = remote.chunks.get_manifest("data@s")["segments"][0]
    store = open_remote(remote.spec, concurrency=1)
    got = []

    async def waiter():
        got.append(await store.segment(key))
    async with trio.open_nursery() as nursery:
        await store.limiter.acquire_on_behalf_of("test")    # the first fetch must queue
        with trio.CancelScope() as first:
            async with trio.open_nursery() as inner:
                inner.start_soon(store.segment, key)
                await trio.sleep(0.05)
                nursery.start_soon(waiter)
                await trio.sleep(0.05)
                first.cancel()
        store.limiter.release_on_behalf_of("test")
    assert got and got[0]["chunks"][0] is not None


async def test_push_records_its_packs_in_a_few_transactions(tmp_path, s3_server):
    remote = open_remote(s3_spec(s3_server))
    a = make_control(tmp_path / "a", remote)
    state = a.remote_state
    sql = []                                            # every statement run on remote.db
    state.db.set_trace_callback(sql.append)
    from rokfs.remote.chunks import PACK_CHUNKS
    data = os.urandom(16 * PACK_CHUNKS * a.pool.chunk_size)     # 16 packs
    await push_new_volume(a, "data@s", data)
    listed = {o.key for o in remote.objects.list("packs/")}
    assert set(state.packs(remote.url)) == listed and len(listed) == 16
    inserts, outside, depth = 0, 0, 0                   # autocommit = one fsync per row
    for statement in sql:
        depth += statement.startswith("BEGIN") - (statement in ("COMMIT", "ROLLBACK"))
        if statement.startswith("INSERT OR REPLACE INTO packs"):
            inserts += 1
            outside += depth == 0
    assert inserts == 16 and outside == 0 and sql.count("COMMIT") <= 2



async def test_hydration_into_a_full_disk_pauses_loses_nothing_and_resumes(tmp_path, tiny_fs):
    """Fetched chunks are written into slots with no fallocate first: a disk
    that fills up fails the install at the write, the slots go back, and the
    hydration pauses until space comes back, then completes."""
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    data = os.urandom(2 * MiB)            # within the space budget taken at the first read
    await push_new_volume(make_control(tmp_path / "a", remote), "data@s", data)
    b = make_control(os.path.join(tiny_fs, "pool"), remote)
    await b.pull("data@s", "copy")
    dev = b.open_device("copy")
    assert await dev.pread(0, 4096) == data[:4096]      # on demand, with read-ahead
    filler = os.path.join(tiny_fs, "filler")
    with open(filler, "wb", buffering=0) as f:          # now fill the disk (unbuffered:
        with pytest.raises(OSError):                    # nothing is left to flush on close)
            while True:
                f.write(b"x" * 65536)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run_background)
        with trio.fail_after(10):
            while b.hydration_status("copy")["state"] != "paused: disk full":
                await trio.sleep(0.01)
        status = b.hydration_status("copy")
        assert "space" in status["error"] and status["chunks_done"] < status["chunks_total"]
        assert await dev.pread(0, 4096) == data[:4096]  # what was installed still reads
        os.unlink(filler)                               # space comes back: it resumes
        with trio.fail_after(20):
            while b.hydration_status("copy")["state"] != "hydrated":
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    dev.close()
    assert fsck(b.pool)["clean"]                        # no slot leaked by the failed install
    assert await read_volume(b, "copy") == data
    b.pool.close()


async def test_a_restore_bigger_than_the_pool_keeps_the_reserve_and_deletes_still_work(
        tmp_path, small_fs):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    await push_new_volume(make_control(tmp_path / "a", remote), "big@s", os.urandom(48 * MiB))
    b = make_control(os.path.join(small_fs, "pool"), remote)
    await b.create_volume("other", 4 * MiB)
    await write_volume(b, "other", os.urandom(4 * MiB))
    await b.pull("big@s", "big")
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run_background)
        with trio.fail_after(30):
            while b.hydration_status("big")["state"] != "paused: disk full":
                await trio.sleep(0.02)
        _, reserve, _ = b.pool.slots.space()
        st = os.statvfs(small_fs)
        assert st.f_bavail * st.f_frsize >= reserve - b.pool.chunk_size   # the reserve holds
        b.pause_hydration("big")
        assert b.hydration_status("big")["state"] == "paused: by request"
        await b.delete_volume("other")                  # metadata work at a full disk
        await b.delete_volume("big")
        nursery.cancel_scope.cancel()
    assert fsck(b.pool)["clean"] and b.pool.status()["used_bytes"] == 0
    b.pool.close()


async def test_installs_run_together_and_a_commit_does_not_wait_for_them(tmp_path):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    data = os.urandom(8 * cs)
    await push_new_volume(a, "data@s", data)
    b = make_control(tmp_path / "b", remote)
    await b.pull("data@s", "r")
    vol = b.pool.get_volume("r")
    import threading
    release, writing = threading.Event(), []
    real_write = b.pool.slots.write_runs

    def slow_write(runs):
        writing.append(len(runs))
        assert release.wait(10)
        real_write(runs)
    b.pool.slots.write_runs = slow_write
    async with trio.open_nursery() as nursery:
        for chunks in ([0, 1], [4, 5]):
            nursery.start_soon(functools.partial(b.fetch_chunks, vol, chunks, readahead=False))
        with trio.fail_after(10):
            while len(writing) < 2:                 # both installs are writing at once
                await trio.sleep(0.01)
        with trio.fail_after(10):
            await b.flush()                         # goes through while they write
        from rokfs.fsck import fsck
        assert fsck(b.pool)["clean"]                # and records none of their slots
        assert vol.cold_count() == 8
        release.set()
    assert vol.cold_count() == 4
    await b.flush()
    assert fsck(b.pool)["clean"]
    b.pool.close()
    c = Control(Pool.open(str(tmp_path / "b")), {"default": remote})
    dev = c.open_device("r")
    assert await dev.pread(0, 2 * cs) == data[:2 * cs]
    assert await dev.pread(4 * cs, 2 * cs) == data[4 * cs:6 * cs]
    dev.close()
