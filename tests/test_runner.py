"""The one run sequence (rokfs.runner.run_with_pool): a main's result comes
back, a signal stops it cleanly, a failure inside its nursery comes out as
one plain error, and the pool is closed every time."""

import errno
import os
import signal

import pytest
import trio

from rokfs.errors import AlreadyExists, Busy, InvalidArgument, NotFound, RokfsError
from rokfs.pool import Pool
from rokfs.runner import open_pool, run_with_pool


def pool_is_closed(path):
    Pool.open(path).close()          # the lock is free again
    return True


async def make_volume(control, name):
    return (await control.create_volume(name, 1 << 20))["name"]


def test_main_result_comes_back_and_the_pool_is_committed(pool_dir):
    assert run_with_pool(pool_dir, make_volume, "data") == "data"
    with Pool.open(pool_dir) as pool:
        assert [v.name for v in pool.list_volumes()] == ["data"]


def test_a_signal_stops_main_and_the_pool_is_closed(pool_dir):
    async def until_signalled(control):
        await control.create_volume("kept", 1 << 20)
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep_forever()

    assert run_with_pool(pool_dir, until_signalled) is None
    with Pool.open(pool_dir) as pool:
        assert [v.name for v in pool.list_volumes()] == ["kept"]


async def fail_in_a_nursery(control, exc):
    async def service(task_status=trio.TASK_STATUS_IGNORED):
        raise exc
    async with trio.open_nursery() as nursery:
        await nursery.start(service)


def test_a_failure_in_a_nursery_is_one_plain_error(pool_dir):
    with pytest.raises(InvalidArgument, match="bad flag"):
        run_with_pool(pool_dir, fail_in_a_nursery, InvalidArgument("bad flag"))
    assert pool_is_closed(pool_dir)


def test_an_os_error_says_what_could_not_start(pool_dir):
    with pytest.raises(RokfsError, match="cannot start: Address already in use"):
        run_with_pool(pool_dir, fail_in_a_nursery,
                      OSError(errno.EADDRINUSE, "Address already in use"))
    assert pool_is_closed(pool_dir)


def test_a_held_pool_is_refused_saying_a_daemon_serves_it(pool_dir):
    with open_pool(pool_dir):
        with pytest.raises(Busy, match="already open by pid .*another rokfs daemon "
                                       "already serves this pool"):
            run_with_pool(pool_dir, make_volume, "x")


def test_how_the_pool_is_opened(pool_dir):
    with pytest.raises(NotFound, match="no rokfs pool"):
        open_pool(pool_dir, must_exist=True)
    open_pool(pool_dir, chunk_size=64 << 10).close()
    with pytest.raises(AlreadyExists):
        open_pool(pool_dir, must_be_new=True)
    with open_pool(pool_dir, must_exist=True) as pool:
        assert pool.chunk_size == 64 << 10
