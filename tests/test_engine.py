"""Engine behaviour and bad input, on a temporary directory."""

import errno
import os
import subprocess
import sys

import pytest

from rokfs import errors
from rokfs.fsck import fsck
from rokfs.pool import Pool

CHUNK = 4096


def test_write_read_roundtrip_across_chunks(pool):
    vol = pool.create_volume("data", 1 << 20)
    payload = os.urandom(3 * CHUNK + 123)
    vol.pwrite(CHUNK - 17, payload)
    assert vol.pread(CHUNK - 17, len(payload)) == payload
    assert vol.pread(0, CHUNK - 17) == bytes(CHUNK - 17)


def test_snapshot_is_frozen_and_volume_moves_on(pool):
    vol = pool.create_volume("data", 1 << 20)
    vol.pwrite(0, b"A" * 10000)
    snap = pool.create_snapshot("data@before", {"run": "42"})
    vol.pwrite(5, b"B" * 100)
    vol.trim(0, CHUNK)
    assert snap.pread(0, 10000) == b"A" * 10000
    assert vol.pread(0, CHUNK) == bytes(CHUNK)
    assert snap.labels == {"run": "42"}


def test_owned_chunk_is_written_in_place_and_shared_chunk_is_copied(pool):
    vol = pool.create_volume("data", 1 << 20)
    vol.pwrite(0, b"x" * CHUNK)
    slot = vol.entry(0)
    vol.pwrite(100, b"y")
    assert vol.entry(0) == slot                 # in place
    pool.create_snapshot("data@s")
    vol.pwrite(200, b"z")
    copied = vol.entry(0)
    assert copied != slot                       # copy-on-write
    assert vol.pread(0, 300) == b"x" * 100 + b"y" + b"x" * 99 + b"z" + b"x" * 99
    pool.commit()
    vol.pwrite(300, b"w")
    assert vol.entry(0) == copied               # ours now: in place again


def test_snapshot_of_huge_volume_costs_one_reference(pool):
    vol = pool.create_volume("huge", 1 << 40)
    vol.pwrite((1 << 40) - CHUNK, b"end")
    nodes_before = len(pool.nodes.rc)
    pool.create_snapshot("huge@s")
    assert len(pool.nodes.rc) == nodes_before
    assert pool.nodes.rc[vol.root] == 2


def test_clone_from_snapshot_and_from_volume(pool):
    vol = pool.create_volume("data", 1 << 20)
    vol.pwrite(0, b"original")
    pool.create_snapshot("data@s")
    vol.pwrite(0, b"changed!")
    from_snap = pool.clone("data@s", "c1")
    from_vol = pool.clone("data", "c2")
    from_snap.pwrite(0, b"clone-1!")
    assert vol.pread(0, 8) == b"changed!"
    assert from_vol.pread(0, 8) == b"changed!"
    assert from_snap.pread(0, 8) == b"clone-1!"
    assert pool.get_snapshot("data@s").pread(0, 8) == b"original"
    assert from_snap.origin == "data@s"


def test_extents_report_data_and_holes(pool):
    vol = pool.create_volume("data", 8 * CHUNK)
    vol.pwrite(2 * CHUNK, b"x" * (2 * CHUNK))
    assert vol.extents(0, 8 * CHUNK) == [(0, 2 * CHUNK, 3), (2 * CHUNK, 2 * CHUNK, 0),
                                         (4 * CHUNK, 4 * CHUNK, 3)]
    vol.trim(2 * CHUNK, CHUNK)
    assert vol.extents(2 * CHUNK, 2 * CHUNK) == [(2 * CHUNK, CHUNK, 3), (3 * CHUNK, CHUNK, 0)]


def test_status_counts_exclusive_and_shared(pool):
    vol = pool.create_volume("data", 1 << 20)
    vol.pwrite(0, b"x" * 4 * CHUNK)
    pool.create_snapshot("data@s")
    vol.pwrite(0, b"y" * CHUNK)
    usage = vol.usage()
    assert usage["allocated"] == 4 * CHUNK
    assert usage["exclusive"] == CHUNK and usage["shared"] == 3 * CHUNK
    assert pool.get_snapshot("data@s").usage()["exclusive"] == CHUNK


def test_rename_keeps_snapshots(pool):
    pool.create_volume("a", 1 << 20).pwrite(0, b"hi")
    pool.create_snapshot("a@s")
    pool.rename_volume("a", "b")
    assert pool.get_snapshot("b@s").pread(0, 2) == b"hi"
    with pytest.raises(errors.NotFound):
        pool.get_volume("a")


def test_reopen_keeps_everything(pool_dir):
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        pool.create_volume("data", 1 << 20).pwrite(77, b"persist")
        pool.create_snapshot("data@s", {"k": "v"})
    with Pool.open(pool_dir) as pool:
        assert pool.get_volume("data").pread(77, 7) == b"persist"
        assert pool.get_snapshot("data@s").labels == {"k": "v"}
        assert fsck(pool)["clean"]


# -- bad input ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "Data", "-x", ".x", "a" * 64, "a/b", "a@b", "a b",
                                  "é", None, 7])
def test_invalid_volume_names_refused(pool, name):
    with pytest.raises(errors.InvalidArgument) as exc:
        pool.create_volume(name, 1 << 20)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("name", ["data", "data@", "data@@x", "data@X", "@x", "data@a/b"])
def test_invalid_snapshot_names_refused(pool, name):
    pool.create_volume("data", 1 << 20) if "data" not in [v.name for v in pool.list_volumes()] \
        else None
    with pytest.raises(errors.InvalidArgument):
        pool.create_snapshot(name)


def test_bad_labels_refused(pool):
    pool.create_volume("data", 1 << 20)
    with pytest.raises(errors.InvalidArgument):
        pool.create_snapshot("data@s", {"bad key": "v"})
    with pytest.raises(errors.InvalidArgument):
        pool.create_snapshot("data@s", {"k": "x" * 1000})


def test_duplicates_and_missing_names(pool):
    pool.create_volume("data", 1 << 20)
    with pytest.raises(errors.AlreadyExists):
        pool.create_volume("data", 1 << 20)
    pool.create_snapshot("data@s")
    with pytest.raises(errors.AlreadyExists):
        pool.create_snapshot("data@s")
    with pytest.raises(errors.NotFound):
        pool.get_volume("nope")
    with pytest.raises(errors.NotFound):
        pool.get_snapshot("data@nope")
    with pytest.raises(errors.NotFound):
        pool.clone("nope@s", "c")


@pytest.mark.parametrize("offset,length", [(-1, 1), (1 << 20, 1), ((1 << 20) - 1, 2),
                                           (0, (1 << 20) + 1), (1 << 62, 1)])
def test_out_of_range_io_refused(pool, offset, length):
    vol = pool.create_volume("data", 1 << 20)
    for call in (lambda: vol.pread(offset, length), lambda: vol.pwrite(offset, b"x" * length),
                 lambda: vol.trim(offset, length), lambda: vol.extents(offset, length)):
        with pytest.raises(errors.OutOfRange) as exc:
            call()
        assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("size", [1, 511, 1000, -512, 1.5, "1G", 1 << 62])
def test_unaligned_or_impossible_sizes_refused(pool, size):
    with pytest.raises(errors.InvalidArgument):
        pool.create_volume("data", size)


def test_bad_chunk_size_refused(tmp_path):
    for size in (1000, 2048, 3 * 4096, 1 << 30):
        with pytest.raises(errors.InvalidArgument):
            Pool.create(str(tmp_path / f"p{size}"), chunk_size=size)


def test_shrink_below_data_refused_unless_forced(pool):
    vol = pool.create_volume("data", 1 << 20)
    vol.pwrite(600 * 1024, b"keep me")
    with pytest.raises(errors.InvalidArgument, match="trim it first or force"):
        pool.resize_volume("data", 512 * 1024)
    vol.pwrite(512 * 1024 + 10, b"x")
    with pytest.raises(errors.InvalidArgument):
        pool.resize_volume("data", 512 * 1024 + 512)     # tail of a partial chunk
    assert vol.size == 1 << 20 and vol.pread(600 * 1024, 7) == b"keep me"
    pool.resize_volume("data", 512 * 1024, force=True)
    pool.resize_volume("data", 1 << 20)
    assert vol.pread(512 * 1024, 512 * 1024) == bytes(512 * 1024)


def test_shrink_over_trimmed_tail_allowed(pool):
    vol = pool.create_volume("data", 1 << 20)
    vol.pwrite(600 * 1024, b"gone")
    vol.trim(512 * 1024, 512 * 1024)
    pool.resize_volume("data", 512 * 1024)
    assert vol.size == 512 * 1024


def test_delete_volume_with_snapshots_or_held_refused(pool):
    vol = pool.create_volume("data", 1 << 20)
    pool.create_snapshot("data@s")
    with pytest.raises(errors.NotEmpty):
        pool.delete_volume("data")
    pool.delete_snapshot("data@s")
    pool.hold(vol, "NBD connection")
    with pytest.raises(errors.Busy, match="volume data is held by 1 NBD connection"):
        pool.delete_volume("data")
    pool.release(vol, "NBD connection")
    pool.delete_volume("data")
    assert vol.state == "freed"


def _snapshot_owning_its_slots(pool):
    """v@s whose chunks only the snapshot references (v overwritten since)."""
    vol = pool.create_volume("v", 8 * CHUNK)
    vol.pwrite(0, b"snapshot" * (CHUNK // 8) * 8)
    snap = pool.create_snapshot("v@s")
    vol.pwrite(0, b"overwrit" * (CHUNK // 8) * 8)
    pool.commit()
    return snap


def _fill_new_volume_with_secret(pool):
    w = pool.create_volume("w", 8 * CHUNK)
    w.pwrite(0, b"SECRET!!" * (CHUNK // 8) * 8)
    pool.commit()


def test_held_snapshot_delete_is_refused_naming_holders(pool):
    snap = _snapshot_owning_its_slots(pool)
    pool.hold(snap, "NBD connection")
    pool.hold(snap, "FUSE handle")
    pool.hold(snap, "FUSE handle")
    with pytest.raises(errors.Busy, match="1 FUSE handle|2 FUSE handles") as exc:
        pool.delete_snapshot("v@s")
    assert "2 FUSE handles, 1 NBD connection" in str(exc.value)
    assert pool.get_snapshot("v@s") is snap and snap.state == "live"
    with pytest.raises(errors.Busy):
        pool.delete_volume("v", recursive=True)
    _fill_new_volume_with_secret(pool)
    assert snap.pread(0, 8 * CHUNK) == b"snapshot" * (CHUNK // 8) * 8


def test_deferred_delete_serves_own_bytes_until_released_then_frees(pool):
    snap = _snapshot_owning_its_slots(pool)
    used = pool.status()["used_bytes"]
    pool.hold(snap, "NBD connection")
    pool.delete_snapshot("v@s", defer=True)
    assert snap.state == "deleting"
    with pytest.raises(errors.NotFound, match="being deleted"):
        pool.get_snapshot("v@s")
    assert pool.list_snapshots() == [] and pool.status()["deleting"] == 1
    with pytest.raises(errors.NotFound):
        pool.hold(snap, "FUSE handle")            # no new holders
    with pytest.raises(errors.AlreadyExists, match="being deleted"):
        pool.create_snapshot("v@s")
    _fill_new_volume_with_secret(pool)            # needs new slots: none of the snapshot's
    assert snap.pread(0, 8 * CHUNK) == b"snapshot" * (CHUNK // 8) * 8
    used_before_release = pool.status()["used_bytes"]
    assert pool.release(snap, "NBD connection") is True
    assert snap.state == "freed"
    assert pool.status()["used_bytes"] == used_before_release - 8 * CHUNK
    pool.commit()
    assert fsck(pool)["clean"]
    pool.create_snapshot("v@s")                   # the name is free again
    assert used > 0


def test_hydrator_holder_does_not_block_a_delete(pool):
    vol = pool.create_volume("v", 8 * CHUNK)
    pool.hold(vol, "hydrator")
    pool.delete_volume("v")                       # the hydrator yields: deferred
    assert vol.state == "deleting" and pool.list_volumes() == []
    pool.release(vol, "hydrator")
    assert vol.state == "freed"


def test_deleting_images_are_freed_when_the_pool_reopens(pool_dir):
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        snap = _snapshot_owning_its_slots(pool)
        used = pool.status()["used_bytes"]
        pool.hold(snap, "NBD connection")
        pool.delete_snapshot("v@s", defer=True)
        pool.commit()                             # a crash now: the holder is gone
        pool.store.close()
        os.close(pool._lock_fd)
        pool.closed = True
    with Pool.open(pool_dir) as pool:
        assert pool.status()["used_bytes"] == used - 8 * CHUNK
        assert pool.status()["deleting"] == 0 and pool.list_snapshots() == []
        assert fsck(pool)["clean"]


def test_pool_opened_twice_is_refused(pool_dir):
    with Pool.create(pool_dir, chunk_size=CHUNK):
        with pytest.raises(errors.Busy, match=f"already open by pid {os.getpid()}"):
            Pool.open(pool_dir)
        code = ("import sys; from rokfs.pool import Pool\n"
                "try: Pool.open(sys.argv[1])\n"
                "except Exception as e: print(type(e).__name__, e); sys.exit(3)")
        other = subprocess.run([sys.executable, "-c", code, pool_dir],
                               capture_output=True, text=True)
        assert other.returncode == 3 and "Busy" in other.stdout
    Pool.open(pool_dir).close()   # released on close


def test_open_missing_pool_and_create_twice(tmp_path):
    with pytest.raises(errors.NotFound, match="rokfs init"):
        Pool.open(str(tmp_path / "none"))
    Pool.create(str(tmp_path / "p")).close()
    with pytest.raises(errors.AlreadyExists):
        Pool.create(str(tmp_path / "p"))


def test_deleting_everything_returns_disk_space(pool_dir):
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        empty = pool.slots.disk_bytes()
        vol = pool.create_volume("data", 64 << 20)
        for i in range(0, 16 << 20, 1 << 20):
            vol.pwrite(i, os.urandom(1 << 20))
        pool.create_snapshot("data@s")
        vol.pwrite(0, os.urandom(4 << 20))
        pool.clone("data@s", "copy").pwrite(8 << 20, os.urandom(1 << 20))
        assert pool.slots.disk_bytes() >= 21 << 20
        pool.delete_volume("copy")
        pool.delete_volume("data", recursive=True)
        pool.commit()
        assert pool.slots.disk_bytes() <= empty
        assert pool.slots.used_slots() == 0
        # freed slots are reused, from the lowest
        vol = pool.create_volume("again", 1 << 20)
        vol.pwrite(0, b"x")
        assert vol.entry(0) - 2 == 0


def test_fsck_finds_and_repairs_leaks(pool):
    pool.create_volume("data", 1 << 20).pwrite(0, b"x" * 3 * CHUNK)
    pool.slots.rc[1] += 1
    pool.slots.dirty_blocks.add(0)
    report = fsck(pool)
    assert not report["clean"] and report["leaks"] == 1
    assert fsck(pool, repair=True)["repaired"]
    assert fsck(pool)["clean"]


def test_fsck_reports_undercounted_slot_as_error(pool):
    pool.create_volume("data", 1 << 20).pwrite(0, b"x" * CHUNK)
    pool.create_snapshot("data@s")
    pool.slots.rc[0] = 0
    assert fsck(pool)["errors"] == 1


def test_fsck_cli_exit_codes(pool_dir):
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        pool.create_volume("data", 1 << 20).pwrite(0, b"x")
    rokfs = [sys.executable, "-m", "rokfs.cli"]
    ok = subprocess.run([*rokfs, "fsck", pool_dir], capture_output=True, text=True)
    assert ok.returncode == 0 and "clean" in ok.stdout
    with Pool.open(pool_dir) as pool:
        pool.slots.rc[0] += 1
        pool.slots.dirty_blocks.add(0)
    bad = subprocess.run([*rokfs, "fsck", pool_dir], capture_output=True, text=True)
    assert bad.returncode == 1 and "leak: slot 0" in bad.stdout
    fixed = subprocess.run([*rokfs, "fsck", "--repair", pool_dir], capture_output=True, text=True)
    assert fixed.returncode == 0
    assert subprocess.run([*rokfs, "fsck", pool_dir]).returncode == 0


def test_full_disk_surfaces_enospc_and_keeps_metadata(tiny_fs):
    pool_dir = os.path.join(tiny_fs, "pool")
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        vol = pool.create_volume("data", 64 << 20)
        vol.pwrite(0, b"before" * 100)
        pool.commit()
        with pytest.raises(errors.NoSpace) as exc:
            for i in range(0, 64 << 20, 1 << 20):
                vol.pwrite(i + (1 << 20), b"z" * (1 << 20))
        assert exc.value.errno == errno.ENOSPC
        assert vol.pread(0, 600) == b"before" * 100
        pool.delete_volume("data")     # frees space, the pool keeps working
        pool.commit()
        pool.create_volume("next", 1 << 20).pwrite(0, b"after")
    with Pool.open(pool_dir) as pool:
        assert fsck(pool)["clean"]
        assert pool.get_volume("next").pread(0, 5) == b"after"


def test_cli_create_snapshot_status(tmp_path):
    pool_dir = str(tmp_path / "pool")
    rokfs = [sys.executable, "-m", "rokfs.cli"]
    out = subprocess.run([*rokfs, "create", "--pool", pool_dir, "data", "--size", "1G"],
                         capture_output=True, text=True)
    assert out.returncode == 3 and "no rokfs pool" in out.stderr    # a typo makes no pool
    assert not os.path.exists(pool_dir)
    subprocess.run([*rokfs, "init", "--pool", pool_dir], check=True, capture_output=True)
    out = subprocess.run([*rokfs, "create", "--pool", pool_dir, "data", "--size", "1G"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "created volume data (1G)" in out.stdout
    out = subprocess.run([*rokfs, "snapshot", "--pool", pool_dir, "data@s", "--label", "run=42"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([*rokfs, "create", "--pool", pool_dir, "Bad!", "--size", "1G"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid volume name" in bad.stderr
    bad = subprocess.run([*rokfs, "create", "--pool", pool_dir, "x", "--size", "12Q"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid size" in bad.stderr
    status = subprocess.run([*rokfs, "status", "--pool", pool_dir, "-o", "json"],
                            capture_output=True, text=True, check=True)
    import json
    report = json.loads(status.stdout)
    assert [v["name"] for v in report["volumes"]] == ["data"]
    assert report["snapshots"][0]["labels"] == {"run": "42"}


def _install(pool, vol, fetched):
    """The daemon's install steps, synchronously: reserve, write, map."""
    plan = pool.reserve_install(vol, fetched)
    pool.slots.write_runs(pool.slots.plan_runs([(slot, data) for _, slot, data in plan]))
    return pool.finish_install(vol, plan)


def test_installed_chunks_read_back_and_survive_reopen(pool_dir):
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        vol = pool.create_volume("copy", 8 * CHUNK, base="remote-snap", base_chunks=8)
        chunks = {c: os.urandom(CHUNK) for c in (0, 1, 2, 5)}
        assert _install(pool, vol, {**chunks, 3: None}) == 4
        assert vol.cold_chunks() == [4, 6, 7]
        for c, data in chunks.items():
            assert vol.pread(c * CHUNK, CHUNK) == data
        assert vol.pread(3 * CHUNK, CHUNK) == bytes(CHUNK)
        pool.commit()
    with Pool.open(pool_dir) as pool:
        vol = pool.get_volume("copy")
        assert vol.pread(0, 3 * CHUNK) == chunks[0] + chunks[1] + chunks[2]
        assert fsck(pool)["clean"]



def test_cold_chunks_across_leaves_match_the_entries_one_by_one(pool):
    from rokfs.extentmap import FANOUT
    vol = pool.create_volume("copy", 3 * FANOUT * CHUNK, base="remote-snap",
                             base_chunks=2 * FANOUT + 5)
    fetched = {c: os.urandom(CHUNK) for c in (FANOUT - 3, FANOUT, FANOUT + 1, 2 * FANOUT + 2)}
    assert _install(pool, vol, {**fetched, 5: None}) == 4
    vol.pwrite((FANOUT + 7) * CHUNK, b"w" * CHUNK)    # a whole-chunk write: never fetched
    for start, stop in [(0, 3 * FANOUT), (FANOUT - 10, FANOUT + 10), (FANOUT, FANOUT),
                        (2 * FANOUT, 3 * FANOUT), (7, 9)]:
        one_by_one = [c for c in range(start, min(stop, vol.base_chunks))
                      if vol.is_cold(c, vol.entry(c))]
        assert vol.cold_chunks(start, stop) == one_by_one
    assert vol.cold_count() == len(vol.cold_chunks())

def test_install_loses_to_a_write_that_got_there_first(pool):
    vol = pool.create_volume("copy", 4 * CHUNK, base="remote-snap", base_chunks=4)
    plan = pool.reserve_install(vol, {0: b"r" * CHUNK, 1: b"r" * CHUNK})
    vol.pwrite(0, b"u" * CHUNK)          # a user write lands while the fetch writes
    vol.trim(CHUNK, CHUNK)               # a trim of a cold chunk: never fetch it
    pool.slots.write_runs(pool.slots.plan_runs([(s, d) for _, s, d in plan]))
    assert pool.finish_install(vol, plan) == 0
    assert vol.pread(0, 2 * CHUNK) == b"u" * CHUNK + bytes(CHUNK)
    pool.commit()
    assert fsck(pool)["clean"]
    assert pool.slots.used_slots() == 1


def test_failed_install_gives_its_slots_back(pool):
    vol = pool.create_volume("copy", 4 * CHUNK, base="remote-snap", base_chunks=4)
    plan = pool.reserve_install(vol, {0: b"r" * CHUNK, 2: b"r" * CHUNK})
    pool.release_install(plan)
    pool.commit()
    assert vol.cold_chunks() == [0, 1, 2, 3]
    assert pool.slots.used_slots() == 0
    assert fsck(pool)["clean"]


def test_install_refuses_a_chunk_of_the_wrong_size(pool):
    vol = pool.create_volume("copy", 4 * CHUNK, base="remote-snap", base_chunks=4)
    with pytest.raises(errors.InvalidArgument):
        pool.reserve_install(vol, {0: b"short"})
    assert pool.slots.used_slots() == 0


def test_a_commit_during_an_install_records_nothing_of_it(pool_dir, monkeypatch):
    """Fetched chunks go into taken slots: no fallocate (the write allocates
    the blocks), and no count until mapped, so a commit (or a crash) while
    the install is in flight leaves them free."""
    data = {0: os.urandom(CHUNK), 1: os.urandom(CHUNK)}
    fallocated = []
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate",
                        lambda fd, offset, length: (fallocated.append(length),
                                                    real(fd, offset, length)))
    with Pool.create(pool_dir, chunk_size=CHUNK) as pool:
        vol = pool.create_volume("copy", 4 * CHUNK, base="remote-snap", base_chunks=4)
        plan = pool.reserve_install(vol, data)
        pool.slots.write_runs(pool.slots.plan_runs([(s, d) for _, s, d in plan]))
        assert fallocated == []
        pool.commit()                              # between the write and the map
        assert fsck(pool)["clean"]
    with Pool.open(pool_dir) as pool:              # as after a crash at that point
        vol = pool.get_volume("copy")
        assert vol.cold_chunks() == [0, 1, 2, 3] and pool.slots.used_slots() == 0
        assert fsck(pool)["clean"]
        assert _install(pool, vol, data) == 2      # the install is simply done again
        pool.commit()
    with Pool.open(pool_dir) as pool:
        assert pool.get_volume("copy").pread(0, 2 * CHUNK) == data[0] + data[1]
        assert fsck(pool)["clean"]