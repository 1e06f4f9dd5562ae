"""Freezing a mounted filesystem for an application-consistent snapshot.

`freeze(mountpoint)` is FIFREEZE on the mountpoint (what `fsfreeze -f`
does): the filesystem flushes its dirty data and journal and blocks new
writes; `thaw(mountpoint)` (FITHAW) lets them go on. Both are blocking
system calls: callers run them in worker threads. Thawing what is not
frozen is no error, so a thaw can always be run on the way out.
"""

import errno
import fcntl
import os

from .errors import InvalidArgument, from_os_error

FIFREEZE = 0xC0045877       # _IOWR('X', 119, int)
FITHAW = 0xC0045878         # _IOWR('X', 120, int)


def freeze(mountpoint):
    _ioctl(mountpoint, FIFREEZE, "freezing")


def thaw(mountpoint):
    try:
        _ioctl(mountpoint, FITHAW, "thawing")
    except InvalidArgument:
        pass                 # it was not frozen


def _ioctl(mountpoint, request, what):
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InvalidArgument(f"{what} {mountpoint}: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, request, 0)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP):
            raise InvalidArgument(f"{what} {mountpoint}: not a mounted filesystem that "
                                  f"can be frozen ({exc.strerror})") from None
        raise from_os_error(exc, f"{what} {mountpoint}") from None
    finally:
        os.close(fd)
