"""The one run sequence: how every rokfs command runs on a pool.

    run_with_pool(path, main, *args, remotes=None, must_exist=False,
                  must_be_new=False, chunk_size=None, reserve=None)
        -> main's result (None if a signal stopped it)

Every `rokfs` command runs this way: `serve`, `nbd`, `mount`,
`push`/`pull`/`remote`, `init`, `status`, `create`, `snapshot`, `fsck`.

Invariants:
- `open_pool` is the only place a command opens (or creates) a pool; a
  pool another process holds is refused, saying a daemon serves it.
- One Control per process, built here over the open pool and the given
  remotes; `main(control, *args)` runs on a trio loop and sees the pool
  only through it.
- SIGINT and SIGTERM cancel `main`; whether it returned, was cancelled or
  failed, the pool is closed (with a final commit) before this returns.
- An error from `main` or its nursery (a service that cannot start) comes
  out as the first error of the ExceptionGroup, plainly: a RokfsError as it
  is, a BrokenPipeError (stdout closed) as it is, another OSError as a
  RokfsError saying it could not start.
"""

import ctypes
import logging
import signal

import trio

from .control import Control
from .errors import Busy, RokfsError, from_os_error
from .pool import DEFAULT_CHUNK_SIZE, MIN_RESERVE, Pool  # noqa: F401 (config reads them)
from .remote import open_remote

log = logging.getLogger("rokfs.runner")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def open_pool(path, *, must_exist=False, must_be_new=False, chunk_size=None):
    """The pool at `path`, locked for this process. Created (with
    `chunk_size`, else the engine's default) when absent, unless `must_exist`;
    `must_be_new` refuses an existing one."""
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
    try:
        if must_be_new:
            return Pool.create(path, chunk_size)
        return Pool.open(path) if must_exist else Pool.open_or_create(path, chunk_size)
    except Busy as exc:
        raise Busy(f"{exc}: another rokfs daemon already serves this pool "
                   "(stop it first, or talk to it with rokctl)") from None


def run_with_pool(path, main, *args, remotes=None, must_exist=False, must_be_new=False,
                  chunk_size=None, reserve=None):
    """Open the pool (as open_pool does), keeping `reserve` bytes free of
    data if given (else the pool's default), and the `remotes` (name -> spec),
    run `await main(control, *args)` until it returns or a signal stops it,
    flush, close; returns main's result, or None when a signal stopped it."""
    pool = open_pool(path, must_exist=must_exist, must_be_new=must_be_new,
                     chunk_size=chunk_size)
    if reserve is not None:
        pool.set_reserve(reserve)
    try:
        control = Control(pool, remotes={name: open_remote(spec)
                                         for name, spec in (remotes or {}).items()})
        tune_allocator()
        return trio.run(_until_signal, main, control, args)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        pool.close()


async def _until_signal(main, control, args):
    result = None
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            result = await main(control, *args)
            nursery.cancel_scope.cancel()
    await control.flush()
    return result


async def _cancel_on_signal(signals, scope):
    async for signum in signals:
        log.info("event=shutdown signal=%s", signal.Signals(signum).name)
        scope.cancel()
        return


def _first_error(group):
    """The first error in a nursery's ExceptionGroup, as a plain error (a
    closed stdout as itself: the program ends quietly, rokfs.exits)."""
    first = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, BrokenPipeError):
        return first
    if isinstance(first, OSError):
        return from_os_error(first, "cannot start")
    return first if isinstance(first, RokfsError) else group


def tune_allocator():
    """Keep large I/O buffers on the heap (glibc): a fresh mmap per 1 MiB
    read or write costs page faults that halve sequential throughput."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20)
    return bool(ok and mallopt(m_trim_threshold, 128 << 20))
