"""The one error vocabulary of rokfs, and the one table of what each error
becomes at every boundary.

Invariants:
- Every failure the engine, the control verbs, the remote store or a client
  reports on purpose is a `RokfsError` (anything else is a bug); nothing
  below the adapters knows about FUSE, NBD, gRPC, CSI or exit codes.
- ERRORS (parsed from the text table _TABLE) is the one ordered list of
  error classes: each row gives a class its errno, its NBD error, its gRPC
  status on the control API, its CSI status and the exit code of the
  command-line programs (rokfs, rokctl, rokfs-csi). `kind_of(exc)`
  answers with the first row `exc` is an instance of (subclasses come
  before their bases); the last row, RokfsError itself, answers for any
  other exception, bugs included.
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


class NotAllowed(RokfsError):
    """Refused for want of trust or access: data signed by a key not trusted
    for it, a private bucket this pool is not a reader of, a writer the ACL
    does not list."""


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


class Cancelled(RokfsError):
    """A job (a push, a pull's or a hydration's wait) was cancelled before it
    completed: by request, or because the client that started it went away."""

    errno = _errno.ECANCELED


# First match wins: a subclass before its base; RokfsError last. CSI keeps
# UNIMPLEMENTED for RPCs a driver lacks (a CO reads it as a missing
# capability), so an unsupported request is INVALID_ARGUMENT there.
_TABLE = """
class              errno         NBD       gRPC                 CSI                  exit
DaemonUnreachable  ECONNREFUSED  EIO       UNAVAILABLE          UNAVAILABLE          4
OutOfRange         EINVAL        EINVAL    OUT_OF_RANGE         OUT_OF_RANGE         2
InvalidArgument    EINVAL        EINVAL    INVALID_ARGUMENT     INVALID_ARGUMENT     2
NotFound           ENOENT        EIO       NOT_FOUND            NOT_FOUND            3
AlreadyExists      EEXIST        EIO       ALREADY_EXISTS       ALREADY_EXISTS       5
Busy               EBUSY         EIO       FAILED_PRECONDITION  FAILED_PRECONDITION  6
NotEmpty           ENOTEMPTY     EIO       FAILED_PRECONDITION  FAILED_PRECONDITION  6
ReadOnly           EROFS         EPERM     FAILED_PRECONDITION  FAILED_PRECONDITION  6
NoSpace            ENOSPC        ENOSPC    RESOURCE_EXHAUSTED   RESOURCE_EXHAUSTED   7
RemoteError        EIO           EIO       UNAVAILABLE          UNAVAILABLE          8
NotAllowed         EACCES        EPERM     PERMISSION_DENIED    PERMISSION_DENIED    12
Unsupported        ENOTSUP       ENOTSUP   UNIMPLEMENTED        INVALID_ARGUMENT     9
Corrupt            EIO           EIO       DATA_LOSS            DATA_LOSS            10
Cancelled          ECANCELED     EIO       CANCELLED            ABORTED              11
RokfsError         EIO           EIO       INTERNAL             INTERNAL             1
"""
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
EXIT_MEANINGS = {   # for --help texts
    EXIT_OK: "ok", 1: "any other error", 2: "usage error or invalid argument",
    3: "not found", 4: "daemon unreachable", 5: "already exists",
    6: "busy, not empty or read-only", 7: "no space", 8: "remote store error",
    9: "unsupported by this daemon", 10: "corrupt data or metadata", 11: "cancelled",
    12: "not allowed (untrusted key, not a reader)",
    EXIT_INTERRUPTED: "interrupted"}


def _parse_table(text):
    """The rows of _TABLE as Kinds (its header line skipped)."""
    rows = [line.split() for line in text.strip().splitlines()[1:]]
    return [Kind(globals()[cls], getattr(_errno, errno), nbd, grpc, csi, int(code))
            for cls, errno, nbd, grpc, csi, code in rows]


ERRORS = _parse_table(_TABLE)


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
    return "exit codes: " + ", ".join(f"{code} {meaning}"
                                      for code, meaning in sorted(EXIT_MEANINGS.items()))


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
