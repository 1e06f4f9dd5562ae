"""The one error vocabulary of rokfs.

Every failure the engine, the control verbs or the remote store report is a
`RokfsError` carrying an errno. Adapters translate it once, at their
boundary: FUSEError(errno) for FUSE, the NBD error code for NBD, a gRPC
status for the control API and CSI. Nothing below the adapters knows about
any of those.
"""

import contextlib as _contextlib
import errno as _errno


class RokfsError(Exception):
    """Base of every rokfs error; `errno` says what kind it is."""

    errno = _errno.EIO

    def __init__(self, message, *, errno=None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno

    @property
    def message(self):
        return str(self)


class InvalidArgument(RokfsError):
    errno = _errno.EINVAL


class OutOfRange(InvalidArgument):
    """An offset/length outside the device."""


class NotFound(RokfsError):
    errno = _errno.ENOENT


class AlreadyExists(RokfsError):
    errno = _errno.EEXIST


class ReadOnly(RokfsError):
    errno = _errno.EROFS


class NoSpace(RokfsError):
    errno = _errno.ENOSPC


class Busy(RokfsError):
    errno = _errno.EBUSY


class NotEmpty(RokfsError):
    errno = _errno.ENOTEMPTY


class Unsupported(RokfsError):
    errno = _errno.ENOTSUP


class Corrupt(RokfsError):
    """Stored data or metadata failed a consistency or hash check."""

    errno = _errno.EIO


class RemoteError(RokfsError):
    """The object store failed (after retries) or lied."""

    errno = _errno.EIO


class Cancelled(RokfsError):
    """A job (a push, a pull's or a hydration's wait) was cancelled before it
    completed: by request, or because the client that started it went away."""

    errno = _errno.ECANCELED


def from_os_error(exc: OSError, what: str) -> RokfsError:
    """Wrap an OSError from the local disk into the rokfs vocabulary."""
    cls = NoSpace if exc.errno in (_errno.ENOSPC, _errno.EDQUOT) else RokfsError
    return cls(f"{what}: {exc.strerror or exc}", errno=exc.errno or _errno.EIO)


def one_line(exc):
    """A one-line reason for a failure: the message of a rokfs error, the
    class and message of anything else (a bug, reported as such)."""
    return str(exc) if isinstance(exc, RokfsError) else f"internal error: {exc!r}"


def first_leaf(exc):
    """The error a (nested) exception group stands for: its first rokfs
    error, else its first leaf; `exc` itself if it is no group."""
    while isinstance(exc, BaseExceptionGroup):
        ours = [e for e in exc.exceptions if isinstance(first_leaf(e), RokfsError)]
        exc = (ours or exc.exceptions)[0]
    return exc


@_contextlib.asynccontextmanager
async def single_errors():
    """Report the first rokfs error of a nursery as itself, not as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = first_leaf(group)
        if isinstance(first, RokfsError):
            raise first from group
        raise
