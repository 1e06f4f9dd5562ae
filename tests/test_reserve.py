"""The free-space reserve (`[pool] reserve`, docs/daemon.md): every writer of
data stops short of the reserve it is given (user writes, copy-on-write,
restore installs, on a 24 MiB tmpfs), a restore pauses at it and resumes
when space comes back, and the daemon takes it from its config."""

import os

import pytest
import trio

from daemon_helpers import running, write_config

from rokfs.control import Control
from rokfs.errors import NoSpace
from rokfs.pool import Pool
from rokfs.remote import open_remote

MiB = 1 << 20
RESERVE = 8 * MiB           # four times the default on a 24 MiB filesystem (2 MiB, the minimum)
CHUNK = 64 << 10


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


METADATA = MiB              # what metadata commits may take of the reserve here (it is theirs)


def assert_reserve_kept(fs):
    """The reserve is free but for metadata, and (so that this says
    something) not much more is."""
    assert RESERVE - METADATA <= free_bytes(fs) < 2 * RESERVE, free_bytes(fs)


async def fill(dev, size):
    """Write 1 MiB blocks from the start until the pool refuses; bytes written."""
    done = 0
    with pytest.raises(NoSpace):
        while done < size:
            await dev.pwrite(done, os.urandom(MiB))
            done += MiB
    return done


async def snapshot_on_remote(tmp_path, remote, data):
    a = Control(Pool.create(str(tmp_path / "a"), chunk_size=CHUNK), {"default": remote})
    await a.create_volume("src", len(data))
    dev = a.open_device("src")
    await dev.pwrite(0, data)
    dev.close()
    await a.create_snapshot("src@s")
    await a.push("src@s")
    a.pool.close()


async def test_every_data_writer_keeps_the_reserve_it_is_given(tmp_path, small_fs):
    remote = open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    data = os.urandom(8 * MiB)
    await snapshot_on_remote(tmp_path, remote, data)
    pool = Pool.create(os.path.join(small_fs, "pool"), chunk_size=CHUNK)
    pool.set_reserve(RESERVE)
    b = Control(pool, {"default": remote})
    assert pool.data_reserve() == RESERVE

    await b.create_volume("v", 64 * MiB)
    dev = b.open_device("v")
    assert await fill(dev, 64 * MiB) >= 4 * MiB                    # user writes
    assert_reserve_kept(small_fs)
    await b.create_snapshot("v@s")
    with pytest.raises(NoSpace):
        await dev.pwrite(0, os.urandom(MiB))                        # copy-on-write
    assert_reserve_kept(small_fs)
    dev.close()

    await b.pull("src@s", "r")                                      # restore installs
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run_background)
        with trio.fail_after(30):
            while b.hydration_status("r")["state"] != "paused: disk full":
                await trio.sleep(0.02)
        assert_reserve_kept(small_fs)
        await b.delete_snapshot("v@s")                              # space comes back
        await b.delete_volume("v")
        with trio.fail_after(60):
            assert (await b.wait_hydrated("r"))["state"] == "hydrated"
        nursery.cancel_scope.cancel()
    dev = b.open_device("r")
    assert await dev.pread(0, len(data)) == data
    dev.close()
    b.pool.close()


def test_the_daemon_keeps_the_configured_reserve(tmp_path, small_fs):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(
        f'path = "{tmp_path / "pool"}"', f'path = "{small_fs}/pool"\nreserve = "8M"'))
    with running(config) as daemon:
        daemon.ok("volume", "create", "v", "--size", "64M")
        out = daemon.nbdsh("v", "import os\nn = 0\ntry:\n"
                                "    for i in range(64):\n"
                                "        h.pwrite(os.urandom(1 << 20), i << 20)\n"
                                "        n += 1\n"
                                "except nbd.Error as e:\n"
                                "    print(n, e.errno)\n")
        written, err = out.split()
        assert err == "ENOSPC" and int(written) >= 4, out
        assert_reserve_kept(small_fs)
        daemon.ok("volume", "rm", "v")                  # metadata work at the reserve
