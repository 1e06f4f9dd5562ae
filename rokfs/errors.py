"""The one error vocabulary of rokfs, and the one table of what each error
becomes at every boundary.

Invariants:
- Every failure the engine, the control verbs, the remote store or a client
  reports is a `RokfsError`; nothing below the adapters knows about FUSE,
  NBD, gRPC, CSI or exit codes.
- ERRORS is the one ordered list of error classes: each row gives a class
  its errno, its NBD error, its gRPC status on the control API, its CSI
  status and the exit code of the command-line programs (rokfs, rokctl,
  rokfs-csi). `kind_of(exc)` answers with the first row `exc` is an
  instance of (subclasses come before their bases); the last row,
  RokfsError itself, answers for any other exception, bugs included.
- The adapters derive their mappings from ERRORS and keep none of their
  own: FUSE and NBD through the errno (`nbd_server.constants`), rokfs.rpc
  and csi_shim.errors through `kind_of`, the programs through `exit_code`.
- A class's `errno` attribute is set from its row; an instance may carry
  another one (the errno of the OSError it wraps), which FUSE and NBD pass
  on. gRPC statuses are named by strings (grpc.StatusCode member names), so
  this module imports nothing but the standard library.
"""

import contextlib as _contextlib
import errno as _errno
from typing import NamedTuple


class RokfsError(Exception):
    """Base of every rokfs error; `errno` says what kind it is."""

    def __init__(self, message, *, errno=None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno

    @property
    def message(self):
        return str(self)


class InvalidArgument(RokfsError):
    """A bad name, size, setting, URL or argument: the caller must change it."""


class OutOfRange(InvalidArgument):
    """An offset/length outside the device."""


class NotFound(RokfsError):
    pass


class AlreadyExists(RokfsError):
    pass


class ReadOnly(RokfsError):
    pass


class NoSpace(RokfsError):
    pass


class Busy(RokfsError):
    pass


class NotEmpty(RokfsError):
    pass


class Unsupported(RokfsError):
    pass


class Corrupt(RokfsError):
    """Stored data or metadata failed a consistency or hash check."""


class RemoteError(RokfsError):
    """The object store failed (after retries) or refused us."""


class DaemonUnreachable(RokfsError):
    """No rokfs daemon answers on the control socket."""


class Kind(NamedTuple):
    cls: type
    errno: int
    nbd: str          # the NBD error (named as in the NBD spec)
    grpc: str         # grpc.StatusCode name on the control API
    csi: str          # grpc.StatusCode name the CSI driver answers
    exit: int         # exit code of rokfs, rokctl and rokfs-csi
    meaning: str      # for help texts ("" when a row above says it)


ERRORS = [   # first match wins: a subclass before its base; RokfsError last
    Kind(DaemonUnreachable, _errno.ECONNREFUSED, "EIO", "UNAVAILABLE", "UNAVAILABLE", 4,
         "daemon unreachable"),
    Kind(OutOfRange, _errno.EINVAL, "EINVAL", "OUT_OF_RANGE", "OUT_OF_RANGE", 2,
         ""),                                     # said by InvalidArgument's row
    Kind(InvalidArgument, _errno.EINVAL, "EINVAL", "INVALID_ARGUMENT", "INVALID_ARGUMENT", 2,
         "usage error or invalid argument"),
    Kind(NotFound, _errno.ENOENT, "EIO", "NOT_FOUND", "NOT_FOUND", 3, "not found"),
    Kind(AlreadyExists, _errno.EEXIST, "EIO", "ALREADY_EXISTS", "ALREADY_EXISTS", 5,
         "already exists"),
    Kind(Busy, _errno.EBUSY, "EIO", "FAILED_PRECONDITION", "FAILED_PRECONDITION", 6, "busy"),
    Kind(NotEmpty, _errno.ENOTEMPTY, "EIO", "FAILED_PRECONDITION", "FAILED_PRECONDITION", 6,
         "not empty"),
    Kind(ReadOnly, _errno.EROFS, "EPERM", "FAILED_PRECONDITION", "FAILED_PRECONDITION", 6,
         "read-only"),
    Kind(NoSpace, _errno.ENOSPC, "ENOSPC", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", 7,
         "no space"),
    Kind(RemoteError, _errno.EIO, "EIO", "UNAVAILABLE", "UNAVAILABLE", 8, "remote store error"),
    # CSI keeps UNIMPLEMENTED for RPCs a driver lacks (a CO reads it as a
    # missing capability): an unsupported request is INVALID_ARGUMENT there.
    Kind(Unsupported, _errno.ENOTSUP, "ENOTSUP", "UNIMPLEMENTED", "INVALID_ARGUMENT", 9,
         "unsupported by this daemon"),
    Kind(Corrupt, _errno.EIO, "EIO", "DATA_LOSS", "DATA_LOSS", 10, "corrupt data or metadata"),
    Kind(RokfsError, _errno.EIO, "EIO", "INTERNAL", "INTERNAL", 1, "any other error"),
]
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def _set_errnos():
    for kind in ERRORS:
        kind.cls.errno = kind.errno


_set_errnos()


def kind_of(exc):
    """The ERRORS row for an exception (RokfsError's row for any non-rokfs one)."""
    if not isinstance(exc, RokfsError):
        return ERRORS[-1]
    return next(kind for kind in ERRORS if isinstance(exc, kind.cls))


def exit_code(exc):
    return kind_of(exc).exit


def exit_code_help():
    """'exit codes: 0 ok, 1 any other error, 2 ...' for a program's --help."""
    meanings = {EXIT_OK: ["ok"], EXIT_INTERRUPTED: ["interrupted"]}
    for kind in ERRORS:
        if kind.meaning:
            meanings.setdefault(kind.exit, []).append(kind.meaning)
    return "exit codes: " + ", ".join(f"{code} {' / '.join(words)}"
                                      for code, words in sorted(meanings.items()))


def from_os_error(exc: OSError, what: str) -> RokfsError:
    """Wrap an OSError from the local disk into the rokfs vocabulary."""
    cls = NoSpace if exc.errno in (_errno.ENOSPC, _errno.EDQUOT) else RokfsError
    return cls(f"{what}: {exc.strerror or exc}", errno=exc.errno or _errno.EIO)


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
