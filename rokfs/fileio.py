"""Whole reads and writes at an offset of a file descriptor.

Shared vocabulary: the engine reads and writes extent files with these and
builds read plans with `add_piece`, and protocol adapters read the file
pieces of a read plan with `pread_full`.
A short read past the end of a file yields zeros (sparse extent files end
where their last written slot ends); a failed write is a RokfsError.
"""

import os

from .errors import from_os_error


def pread_full(fd, view, offset):
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            view[done:] = bytes(len(view) - done)
            return
        done += n


def pwrite_full(fd, data, offset):
    try:
        done = os.pwrite(fd, data, offset)    # all of it, nearly always
        if done < len(data):
            view = memoryview(data)
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
    except OSError as exc:
        raise from_os_error(exc, "writing chunk data") from exc


def add_piece(plan, fd, file_offset, length):
    """Append the file piece [fd, file_offset, length] to a read plan,
    extending its last piece when the two are adjacent in one file."""
    last = plan[-1] if plan else None
    if type(last) is list and last[0] == fd and last[1] + last[2] == file_offset:
        last[2] += length
    else:
        plan.append([fd, file_offset, length])
