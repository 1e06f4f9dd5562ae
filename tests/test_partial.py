"""Partial slots (rokfs/partial.py): a small write right after a snapshot
writes only its 4 KiB blocks; reads assemble the chunk; later writes, whole
writes and the filler complete it; every verb, fsck, reopen, push and
hydration handle the state."""

import os
import sqlite3

import trio

from rokfs.control import Control
from rokfs.fsck import fsck
from rokfs.partial import BLOCK, runs
from rokfs.pool import Pool
from rokfs.remote import open_remote
from s3_helpers import s3_spec
from test_remote import hydrate_all, make_control, read_volume, write_volume

CS = 32 * 1024
SIZE = 64 * CS
SLOT_BASE = 2


def pool_with_snapshot(tmp_path, data=None):
    pool = Pool.create(str(tmp_path / "pool"), CS)
    vol = pool.create_volume("v", SIZE)
    data = bytearray(os.urandom(SIZE) if data is None else data)
    vol.pwrite(0, data)
    pool.commit()
    pool.create_snapshot("v@s")
    return pool, vol, data


def write(vol, model, offset, payload):
    vol.pwrite(offset, payload)
    model[offset:offset + len(payload)] = payload


def slot_of(image, chunk):
    return image.entry(chunk) - SLOT_BASE


def assert_clean(pool):
    report = fsck(pool)
    assert report["clean"], report["problems"]


def test_runs_split_a_bitmap_into_held_and_old_blocks():
    assert list(runs(0b0110, 0, 4)) == [(0, 1, False), (1, 2, True), (3, 1, False)]
    assert list(runs(0b0110, 2, 3)) == [(2, 1, True)]
    assert list(runs(0, 0, 8)) == [(0, 8, False)]
    assert list(runs(0xFF, 0, 8)) == [(0, 8, True)]


def test_small_write_after_a_snapshot_writes_only_its_blocks(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    snap = pool.get_snapshot("v@s")
    first = bytes(model)
    old = slot_of(vol, 3)
    write(vol, model, 3 * CS + 2 * BLOCK, b"\7" * BLOCK)
    new = slot_of(vol, 3)
    assert new != old and pool.partial_count() == 1
    assert pool.slots.partials.get(new) == [old, 0b100, 3]
    assert pool.slots.rc[old] == 2                   # the snapshot's leaf and the record
    raw = bytearray(CS)
    pool.slots.read_raw(new, 0, memoryview(raw))
    assert raw[2 * BLOCK:3 * BLOCK] == b"\7" * BLOCK
    assert raw[:2 * BLOCK] == bytes(2 * BLOCK)       # nothing copied from the old slot
    assert vol.pread(0, SIZE) == model
    assert snap.pread(0, SIZE) == first
    # a read inside one block is one piece, from the slot that holds it
    assert len(vol.read_plan(3 * CS + 2 * BLOCK, BLOCK)) == 1
    assert len(vol.read_plan(3 * CS + BLOCK, 100)) == 1
    assert len(vol.read_plan(3 * CS, CS)) == 3
    assert_clean(pool)
    pool.close()


def test_later_writes_fill_the_partial_slot_in_place_then_complete_it(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    old = slot_of(vol, 5)
    write(vol, model, 5 * CS, b"\1" * BLOCK)
    new = slot_of(vol, 5)
    write(vol, model, 5 * CS + 5 * BLOCK + 100, b"\2" * 5000)   # unaligned: edges merged
    assert slot_of(vol, 5) == new and pool.slots.partials.get(new)[1] == 0b1100001
    assert vol.pread(0, SIZE) == model
    pool.commit()
    assert_clean(pool)
    for block in range(8):
        write(vol, model, 5 * CS + block * BLOCK, bytes([block + 9]) * BLOCK)
    assert slot_of(vol, 5) == new and pool.partial_count() == 0
    assert pool.slots.rc[old] == 1                   # only the snapshot now
    assert vol.pread(0, SIZE) == model
    assert_clean(pool)
    pool.close()


def test_a_whole_chunk_write_over_a_partial_slot_completes_it(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    write(vol, model, 7 * CS + 512, b"\3" * 512)
    assert pool.partial_count() == 1
    write(vol, model, 6 * CS, os.urandom(3 * CS))
    assert pool.partial_count() == 0
    assert vol.pread(0, SIZE) == model
    assert_clean(pool)
    pool.close()


def test_snapshot_and_clone_of_a_volume_with_partial_chunks(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    first = bytes(model)
    base = slot_of(vol, 2)
    write(vol, model, 2 * CS + BLOCK, b"\4" * BLOCK)
    pool.create_snapshot("v@t")
    second = bytes(model)
    clone = pool.clone("v@t", "c")
    clone_model = bytearray(model)
    write(vol, model, 2 * CS + 3 * BLOCK, b"\5" * BLOCK)    # over a shared partial slot
    write(clone, clone_model, 2 * CS + 6 * BLOCK, b"\6" * 10)
    # each new partial slot lies over the first old slot, with the blocks copied
    assert pool.slots.partials.get(slot_of(vol, 2)) == [base, 0b1010, 2]
    assert pool.slots.partials.get(slot_of(clone, 2)) == [base, 0b1000010, 2]
    assert pool.slots.rc[base] == 4                  # v@s's leaf and three records
    assert pool.get_snapshot("v@s").pread(0, SIZE) == first
    assert pool.get_snapshot("v@t").pread(0, SIZE) == second
    assert vol.pread(0, SIZE) == model and clone.pread(0, SIZE) == clone_model
    assert_clean(pool)
    pool.delete_snapshot("v@t")
    pool.delete_volume("c")
    assert pool.partial_count() == 1 and pool.slots.rc[base] == 2
    assert_clean(pool)
    pool.close()


def test_zero_trim_resize_and_delete_drop_partial_slots(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    for chunk in range(8):
        write(vol, model, chunk * CS + BLOCK, b"\1" * BLOCK)
    assert pool.partial_count() == 8
    vol.trim(0, CS)                                  # a whole chunk: ZERO, record gone
    model[0:CS] = bytes(CS)
    vol.trim(CS + BLOCK, BLOCK)                      # blocks: zeros written into the slot
    model[CS + BLOCK:CS + 2 * BLOCK] = bytes(BLOCK)
    vol.write_zeroes(2 * CS + 2 * BLOCK, 3 * BLOCK, no_hole=True)
    model[2 * CS + 2 * BLOCK:2 * CS + 5 * BLOCK] = bytes(3 * BLOCK)
    assert pool.partial_count() == 7
    assert vol.pread(0, SIZE) == model
    pool.resize_volume("v", 4 * CS, force=True)      # chunks 4..7 dropped
    assert pool.partial_count() == 3
    assert vol.pread(0, 4 * CS) == model[:4 * CS]
    assert_clean(pool)
    pool.delete_volume("v", recursive=True)
    pool.commit()
    assert pool.partial_count() == 0 and pool.slots.used_slots() == 0
    assert_clean(pool)
    pool.close()


def test_partial_slots_are_committed_with_the_map_and_survive_reopen(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    write(vol, model, 9 * CS, b"\1" * BLOCK)
    pool.commit()
    flushed = bytes(model)
    write(vol, model, 9 * CS + BLOCK, b"\2" * BLOCK)  # in place, not committed
    pool.slots.close()                                # "crash": drop memory, no commit
    pool.store.close()
    os.close(pool._lock_fd)
    with Pool.open(str(tmp_path / "pool")) as again:
        assert again.partial_count() == 1
        assert again.get_volume("v").pread(0, SIZE) == flushed   # the hole reads the old slot
        assert_clean(again)


def test_the_filler_completes_partial_slots_without_changing_a_byte(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    snap = pool.get_snapshot("v@s")
    first = snap.pread(0, SIZE)
    olds = []
    for chunk in range(0, 64, 3):
        olds.append(slot_of(vol, chunk))
        write(vol, model, chunk * CS + (chunk % 8) * BLOCK, os.urandom(BLOCK))
    assert pool.partial_count() == 22
    pool.hold(snap, "push")                           # a push reads slots: no filling
    assert pool.fill_partials(100) == 0
    pool.release(snap, "push")
    assert pool.fill_partials(5) == 5 and pool.partial_count() == 17
    assert pool.fill_partials(100) == 17 and pool.partial_count() == 0
    assert all(pool.slots.rc[old] == 1 for old in olds)
    pool.commit()
    assert vol.pread(0, SIZE) == model and snap.pread(0, SIZE) == first
    assert_clean(pool)
    pool.close()


def test_fsck_reports_damaged_partial_records_and_repair_drops_orphans(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    write(vol, model, 0, b"\1" * BLOCK)
    write(vol, model, CS, b"\1" * BLOCK)
    new = slot_of(vol, 0)
    pool.close()
    db = sqlite3.connect(str(tmp_path / "pool" / "meta.db"))
    with db:
        db.execute("UPDATE partial_slots SET blocks = ? WHERE slot = ?", (b"\xff", new))
        db.execute("INSERT INTO partial_slots VALUES (9999, 0, ?, 0)", (b"\x01",))
    db.close()
    with Pool.open(str(tmp_path / "pool")) as pool:
        report = fsck(pool)
        assert not report["clean"]
        assert any(f"partial slot {new} has a bitmap" in p for p in report["problems"])
        assert any("partial slot 9999 is referenced by no map" in p for p in report["problems"])
        assert report["errors"] >= 1 and report["leaks"] >= 1


def test_fsck_repair_drops_a_record_of_an_unreferenced_slot(tmp_path):
    pool, vol, model = pool_with_snapshot(tmp_path)
    write(vol, model, 0, b"\1" * BLOCK)
    pool.close()
    db = sqlite3.connect(str(tmp_path / "pool" / "meta.db"))
    with db:
        db.execute("INSERT INTO partial_slots VALUES (9999, 1, ?, 1)", (b"\x01",))
    db.close()
    with Pool.open(str(tmp_path / "pool")) as pool:
        assert fsck(pool, repair=True)["repaired"]
        assert pool.partial_count() == 1
        assert_clean(pool)
        assert pool.get_volume("v").pread(0, SIZE) == model


# -- through Control: the idle filler, push, hydration ------------------------------------

async def test_the_idle_filler_runs_when_io_stops(tmp_path):
    control = Control(Pool.create(str(tmp_path / "pool"), CS))
    control.fill_idle_seconds = 0.3
    await control.create_volume("v", SIZE)
    data = bytearray(os.urandom(SIZE))
    await write_volume(control, "v", data)
    await control.create_snapshot("v@s")
    dev = control.open_device("v")
    for chunk in range(0, 64, 2):
        await dev.pwrite(chunk * CS, b"\1" * BLOCK)
        data[chunk * CS:chunk * CS + BLOCK] = b"\1" * BLOCK
    assert control.pool.partial_count() == 32
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.fill_when_idle)
            while control.pool.partial_count():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert await dev.pread(0, SIZE) == data
    dev.close()
    assert (await control.fsck())["clean"]
    control.pool.close()


async def written_with_partials(control, name, data, rounds=3):
    """`name` holding `data` (of a multiple of 3 blocks), reached through
    snapshots and 4 KiB writes, so that its chunks end up partial slots over
    partial slots' old slots; returns the content."""
    await control.create_volume(name, len(data))
    await write_volume(control, name, bytes(len(data)))
    dev = control.open_device(name)
    for r in range(rounds):
        await control.create_snapshot(f"{name}@r{r}")
        for offset in range(r * BLOCK, len(data), 3 * BLOCK):
            await dev.pwrite(offset, data[offset:offset + BLOCK])
    await dev.flush()
    dev.close()
    return data


async def push_round_trip(tmp_path, remote_spec):
    data = os.urandom(SIZE - 8 * BLOCK) + bytes(8 * BLOCK)
    a = Control(Pool.create(str(tmp_path / "a"), CS), {"default": open_remote(remote_spec)})
    await written_with_partials(a, "data", data)
    assert a.pool.partial_count() > 0
    assert await read_volume(a, "data") == data
    await a.create_snapshot("data@push")
    pushed = await a.push("data@push")
    assert pushed["uploaded_chunks"] > 0
    b = make_control(tmp_path / "b", open_remote(remote_spec))
    await b.pull("data@push", "copy")
    await hydrate_all(b, "copy")
    assert await read_volume(b, "copy") == data
    # the same bytes written plainly, in a third pool: the remote has every chunk
    c, again = await pushed_plainly(tmp_path / "c", remote_spec, "plain", data)
    assert again["uploaded_chunks"] == 0 and c.pool.partial_count() == 0
    for control in (a, b, c):
        assert (await control.fsck())["clean"]
        control.pool.close()


async def pushed_plainly(path, remote_spec, name, data):
    """A pool at `path` whose volume `name` was written once with `data`
    and pushed as NAME@push: (its Control, the push's result)."""
    control = make_control(path, open_remote(remote_spec))
    await control.create_volume(name, len(data))
    await write_volume(control, name, data)
    await control.create_snapshot(f"{name}@push")
    return control, await control.push(f"{name}@push")


async def test_push_of_partial_chunks_round_trips_and_dedups_dir(tmp_path):
    await push_round_trip(tmp_path, {"type": "dir", "path": str(tmp_path / "remote")})


async def test_push_of_partial_chunks_round_trips_and_dedups_s3(tmp_path, s3_server):
    await push_round_trip(tmp_path, s3_spec(s3_server))


async def test_plain_push_first_then_partial_push_uploads_nothing(tmp_path):
    spec = {"type": "dir", "path": str(tmp_path / "remote")}
    data = os.urandom(SIZE)
    c, pushed = await pushed_plainly(tmp_path / "c", spec, "plain", data)
    assert pushed["uploaded_chunks"] == SIZE // CS
    a = Control(Pool.create(str(tmp_path / "a"), CS), {"default": open_remote(spec)})
    await written_with_partials(a, "data", data)
    assert a.pool.partial_count() > 0
    await a.create_snapshot("data@push")
    assert (await a.push("data@push"))["uploaded_chunks"] == 0
    for control in (a, c):
        control.pool.close()


async def test_hydration_under_partial_writes(tmp_path):
    spec = {"type": "dir", "path": str(tmp_path / "remote")}
    data = os.urandom(SIZE)
    src, _ = await pushed_plainly(tmp_path / "src", spec, "data", data)
    b = Control(Pool.create(str(tmp_path / "b"), CS), {"default": open_remote(spec)})
    await b.pull("data@push", "r")
    model = bytearray(data)
    dev = b.open_device("r")
    assert await dev.pread(0, 8 * CS) == model[:8 * CS]       # chunks 0..7 fetched
    await b.create_snapshot("r@s")                            # the rest still cold
    for chunk in range(0, 16):
        offset = chunk * CS + BLOCK
        await dev.pwrite(offset, b"\x09" * BLOCK)                # partial or fetch-then-write
        model[offset:offset + BLOCK] = b"\x09" * BLOCK
    assert b.pool.partial_count() >= 8                        # the fetched ones (and read-ahead)
    await hydrate_all(b, "r")
    assert await dev.pread(0, SIZE) == model
    assert bytes(b.pool.get_snapshot("r@s").pread(0, 8 * CS)) == data[:8 * CS]
    dev.close()
    assert (await b.fsck())["clean"]
    for control in (src, b):
        control.pool.close()


def test_partial_chunks_in_space_accounting_and_block_status(tmp_path):
    pool = Pool.create(str(tmp_path / "pool"), CS)
    vol = pool.create_volume("v", SIZE)
    vol.pwrite(3 * CS, os.urandom(2 * CS))            # chunks 3 and 4
    pool.commit()
    snap = pool.create_snapshot("v@s")
    assert vol.usage()["exclusive"] == 0 and snap.usage()["exclusive"] == 0
    vol.pwrite(3 * CS + BLOCK, b"\1" * BLOCK)         # chunk 3 goes partial
    # the volume holds its partial slot alone; the old slot is the snapshot's
    # and the record's, so deleting the snapshot alone would not free it
    assert vol.usage()["allocated"] == 2 * CS and vol.usage()["exclusive"] == CS
    assert snap.usage()["exclusive"] == 0
    assert pool.space()["allocated"] == 3 * CS        # a partial chunk holds two slots
    assert vol.extents(0, SIZE) == [(0, 3 * CS, 3), (3 * CS, 2 * CS, 0),
                                    (5 * CS, SIZE - 5 * CS, 3)]
    assert_clean(pool)
    pool.fill_partials(1)                             # the record lets go of the old slot
    assert snap.usage()["exclusive"] == CS and vol.usage()["exclusive"] == CS
    assert_clean(pool)
    pool.delete_snapshot("v@s")
    assert vol.usage()["exclusive"] == 2 * CS
    assert_clean(pool)
    pool.close()
