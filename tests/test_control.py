"""The control verbs and devices, on the trio loop."""

import errno

import pytest
import trio

from rokfs import errors
from rokfs.control import Control
from rokfs.pool import Pool


@pytest.fixture
def control(pool):
    return Control(pool)


async def test_verbs_are_durable_when_they_return(control, pool_dir):
    await control.create_volume("data", 1 << 20)
    dev = control.open_device("data")
    await dev.pwrite(0, b"flushed", fua=True)
    await control.create_snapshot("data@s", {"run": "42"})
    await control.clone("data@s", "copy")
    await control.set_labels("data@s", {"step": "1"})
    dev.close()
    control.pool.slots.close()      # simulate a crash: no close(), no final commit
    control.pool.store.close()
    import os
    os.close(control.pool._lock_fd)
    control.pool.closed = True
    with Pool.open(pool_dir) as pool:
        assert pool.get_volume("data").pread(0, 7) == b"flushed"
        assert pool.get_snapshot("data@s").labels == {"run": "42", "step": "1"}
        assert pool.get_volume("copy").pread(0, 7) == b"flushed"


async def test_concurrent_flushes_share_commits(control):
    await control.create_volume("data", 1 << 20)
    dev = control.open_device("data")
    before = control._commits_done
    async with trio.open_nursery() as nursery:
        for i in range(20):
            await dev.pwrite(i * 4096, b"x" * 4096)
            nursery.start_soon(dev.flush)
    assert control._commits_done - before < 20


async def test_snapshot_device_is_read_only(control):
    await control.create_volume("data", 1 << 20)
    await control.create_snapshot("data@s")
    snap = control.open_device("data@s")
    assert snap.read_only
    for call in (snap.pwrite(0, b"x"), snap.trim(0, 4096), snap.write_zeroes(0, 4096)):
        with pytest.raises(errors.ReadOnly) as exc:
            await call
        assert exc.value.errno == errno.EROFS
    assert await snap.pread(0, 4) == bytes(4)


async def test_open_device_blocks_delete_and_deferred_delete_waits_for_close(control):
    await control.create_volume("data", 1 << 20)
    dev = control.open_device("data", front="nbd")
    await dev.pwrite(0, b"mine")
    with pytest.raises(errors.Busy, match="held by 1 NBD connection"):
        await control.delete_volume("data")
    await control.delete_volume("data", defer=True)
    with pytest.raises(errors.NotFound):
        control.open_device("data")
    assert [v["name"] for v in control.list_volumes()] == []
    assert await dev.pread(0, 4) == b"mine"         # the holder still reads its own bytes
    dev.close()
    assert dev.image.state == "freed"
    with pytest.raises(errors.NotFound):
        await dev.pread(0, 1)
    await control.create_volume("data", 1 << 20)    # the name is free again


async def test_list_snapshots_by_label_and_exports(control):
    await control.create_volume("data", 1 << 20)
    await control.create_snapshot("data@pre", {"run": "42", "phase": "pre"})
    await control.create_snapshot("data@post", {"run": "42", "phase": "post"})
    await control.create_snapshot("data@other", {"run": "7"})
    names = [s["name"] for s in await control.list_snapshots(labels={"run": "42"})]
    assert names == ["data@pre", "data@post"]
    exports = {name: ro for name, _, ro, _ in control.list_exports()}
    assert exports == {"data": False, "data@pre": True, "data@post": True, "data@other": True}


async def test_device_cache_without_remote_is_a_no_op_for_local_data(control):
    await control.create_volume("data", 1 << 20)
    dev = control.open_device("data")
    await dev.cache(0, 1 << 20)
    with pytest.raises(errors.OutOfRange):
        await dev.cache(0, 2 << 20)


async def test_stat_allocated_is_info_allocated(control):
    """The cheap `allocated` of stat (the FUSE view's st_blocks) is the one
    usage() reports, for volumes, snapshots, clones, trims and shrinks."""
    cs = control.pool.chunk_size
    await control.create_volume("data", 3000 * cs)        # more than one map leaf
    dev = control.open_device("data")
    for chunk in (0, 1, 5, 1023, 1024, 2999):
        await dev.pwrite(chunk * cs, b"x" * cs)
    await dev.write_zeroes(5 * cs, cs)
    await control.create_snapshot("data@s")
    await dev.trim(0, cs)
    await dev.pwrite(2000 * cs + 7, b"partial")
    dev.close()
    await control.clone("data@s", "copy")
    await control.resize_volume("copy", 1024 * cs, force=True)
    await control.create_volume("empty", 0)
    for name in ("data", "data@s", "copy", "empty"):
        image = control.pool.get_image(name)
        assert control.stat(name)["allocated"] == image.usage()["allocated"], name
    assert control.stat("data")["allocated"] == 5 * cs
    assert control.stat("copy")["allocated"] == 3 * cs          # 0, 1, 1023 (5 is zero)
