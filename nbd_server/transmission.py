"""The NBD transmission phase, without I/O: request headers in, `Request`
and `WriteData` events out; replies in, bytes out.

Invariants
- Only requests that pass `validate_request()` (one pure function of the
  request and the negotiated `Session`, returning an errno) become
  `Request` events. A rejected request is answered here; a rejected WRITE's
  payload is drained (skipped as it arrives, never accumulated), and one
  too large to drain ends the session.
- A reply's error is an errno until `send_error()` maps it, through
  `nbd_error()`, the one mapping.
- Read payloads are queued as given, never copied; a WRITE's payload is a
  view of the input buffer.
- A streamed WRITE is cut into pieces that cover its payload once, in
  order, each but the last ending at an offset that is a multiple of the
  granule.
- The flags advertised for an export (`transmission_flags()`) are only what
  this phase implements; the command table of a session is derived from
  them, so what is advertised and what is accepted cannot disagree.
"""

import errno as E
import os
import struct
from dataclasses import dataclass

from .constants import (
    BASE_ALLOCATION_ID, CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO,
    CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES, MAX_PAYLOAD, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR,
    REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC, STATE_HOLE, STATE_ZERO, STRUCTURED_REPLY_MAGIC, TF_CAN_MULTI_CONN,
    TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_CACHE, TF_SEND_DF, TF_SEND_FAST_ZERO, TF_SEND_FLUSH,
    TF_SEND_FUA, TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, U64, encode_message, nbd_error)
from .events import Closed, LocalProtocolError, Request, WriteData

MAX_DRAIN = 2 * MAX_PAYLOAD           # a bigger rejected WRITE ends the session
MAX_EXTENTS = 1 << 20                 # descriptors per block status chunk

_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_STRUCTURED = struct.Struct(">IHHQI")
_DATA_CHUNK = struct.Struct(">IHHQIQ")


def transmission_flags(info, structured):
    """The flags we advertise for `info`: only what we implement, truthfully."""
    flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_CACHE
    if info.read_only:
        flags |= TF_READ_ONLY
    else:
        flags |= TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO
    if info.multi_conn:
        flags |= TF_CAN_MULTI_CONN
    if structured:
        flags |= TF_SEND_DF
    return flags


# -- validation ----------------------------------------------------------------

_WRITE_CMDS = frozenset((CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES))
_CMD_NEEDS = {CMD_READ: 0, CMD_WRITE: 0, CMD_FLUSH: TF_SEND_FLUSH,
              CMD_TRIM: TF_SEND_TRIM, CMD_CACHE: TF_SEND_CACHE,
              CMD_WRITE_ZEROES: TF_SEND_WRITE_ZEROES, CMD_BLOCK_STATUS: 0}
_CMD_FLAGS = {CMD_READ: CMD_FLAG_DF, CMD_WRITE: 0, CMD_FLUSH: 0, CMD_TRIM: 0,
              CMD_CACHE: 0, CMD_BLOCK_STATUS: CMD_FLAG_REQ_ONE,
              CMD_WRITE_ZEROES: CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO}
_FLAG_NEEDS = ((CMD_FLAG_FUA, TF_SEND_FUA), (CMD_FLAG_DF, TF_SEND_DF),
               (CMD_FLAG_FAST_ZERO, TF_SEND_FAST_ZERO))
_NO_RANGE = frozenset((CMD_FLUSH,))


def allowed_flags(cmd, tflags):
    """Command flags valid for `cmd` under the advertised transmission flags."""
    allowed = _CMD_FLAGS[cmd] | CMD_FLAG_FUA
    for flag, needs in _FLAG_NEEDS:
        if not tflags & needs:
            allowed &= ~flag
    return allowed


def command_error(cmd, tflags, block_status):
    """The errno every use of `cmd` fails with under these flags, or 0."""
    if cmd not in _CMD_NEEDS:
        return E.EINVAL
    if cmd in _WRITE_CMDS and tflags & TF_READ_ONLY:
        return E.EPERM
    if _CMD_NEEDS[cmd] & ~tflags or (cmd == CMD_BLOCK_STATUS and not block_status):
        return E.EINVAL
    return 0


def command_table(tflags, block_status):
    """({cmd: command_error}, {cmd: allowed_flags}) for a session."""
    refused = {cmd: command_error(cmd, tflags, block_status) for cmd in _CMD_NEEDS}
    return refused, {cmd: allowed_flags(cmd, tflags) for cmd in _CMD_NEEDS}


@dataclass(slots=True)
class Session:
    """The negotiated transmission parameters that validation depends on;
    `refused` and `allowed` are `command_table()` of the flags."""

    size: int
    flags: int
    structured: bool
    block_status: bool
    min_block: int
    max_payload: int
    refused: dict = None
    allowed: dict = None

    def __post_init__(self):
        self.refused, self.allowed = command_table(self.flags, self.block_status)


def validate_request(cmd, flags, offset, length, session):
    """The errno a request must fail with, or 0 if it may run. Pure."""
    refused = session.refused.get(cmd, E.EINVAL)
    if refused:
        return refused
    if flags & ~session.allowed[cmd]:
        return E.EINVAL
    if cmd in _NO_RANGE:
        return E.EINVAL if offset or length else 0
    return _validate_range(cmd, flags, offset, length, session)


def _validate_range(cmd, flags, offset, length, session):
    if length == 0 or (offset | length) % session.min_block:
        return E.EINVAL
    if cmd in (CMD_READ, CMD_WRITE) and length > session.max_payload:
        return E.EOVERFLOW if cmd == CMD_READ and session.structured else E.EINVAL
    if offset + length > session.size:
        return E.ENOSPC if cmd in (CMD_WRITE, CMD_WRITE_ZEROES) else E.EINVAL
    if cmd == CMD_WRITE_ZEROES and flags & CMD_FLAG_FAST_ZERO and flags & CMD_FLAG_NO_HOLE:
        return E.ENOTSUP              # allocating zeroes is no faster than writing
    return 0


# -- reply payloads ------------------------------------------------------------

def block_status_descriptors(req, extents):
    """(offset, length, flags) extents -> [(length, flags)] for `req`.

    Merges neighbours with equal flags, clips to the request (to exactly one
    descriptor with REQ_ONE), and caps the count at MAX_EXTENTS.
    """
    end = req.offset + req.length
    pos, out = req.offset, []
    for off, length, flags in extents:
        if off + length <= pos:
            continue
        if off > pos or pos >= end:
            break
        take = min(off + length, end) - pos
        flags &= STATE_HOLE | STATE_ZERO
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + take, flags)
        else:
            out.append((take, flags))
        pos += take
    if not out:
        raise LocalProtocolError(f"extents do not cover offset {req.offset}")
    return out[:1] if req.flags & CMD_FLAG_REQ_ONE else out[:MAX_EXTENTS]


def zero_runs(data, offset, granule):
    """Split read data at absolute `offset` into pieces: a memoryview for
    data, an int (its length) for each run of all-zero `granule`-aligned
    blocks. Data blocks cost one failed memcmp."""
    view, zero = memoryview(data), bytes(granule)
    pieces, start, pos, end = [], 0, 0, len(data)
    first = min(end, -offset % granule)
    while pos < end:
        step = first if pos == 0 and first else min(granule, end - pos)
        if step == granule and data.startswith(zero, pos, pos + step):
            if start < pos:
                pieces.append(view[start:pos])
            if pieces and isinstance(pieces[-1], int):
                pieces[-1] += step
            else:
                pieces.append(step)
            start = pos + step
        pos += step
    if start < end:
        pieces.append(view[start:end])
    return pieces


# -- the phase -----------------------------------------------------------------

class Transmission:
    """Requests and replies on a channel, once `begin()` gave the session."""

    def __init__(self, channel):
        self.channel = channel
        self.session = None
        self._stream_from = None      # WRITEs this large stream their payload...
        self._granule = 1             # ...in pieces ending on multiples of this
        self._streaming = None        # [request, next offset, bytes left]

    def begin(self, session):
        self.session = session

    def stream_writes(self, min_length, granule):
        """From now on, a WRITE of at least `min_length` bytes whose payload is
        not all here yet comes as a streamed Request followed by WriteData
        pieces as bytes arrive (so the application can write while the rest
        is on its way), each ending on a multiple of `granule`."""
        self._stream_from, self._granule = min_length, granule

    # ---- input ----

    def next_request(self):
        """The next Request, WriteData or Closed event, or NEED_DATA."""
        ch = self.channel
        while True:
            if self._streaming is not None:
                return self._next_write_piece()
            if ch.skip:
                return ch.need(1, 2, "a rejected write payload")
            have = ch.end - ch.pos
            if have < 28:
                return ch.need(have, 28, "a request header")
            magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(ch.buf, ch.pos)
            if magic != REQUEST_MAGIC:
                ch.violation(f"bad request magic {magic:#x}")
            if cmd == CMD_DISC:
                ch.pos += 28
                ch.move("disc")
                return Closed("disc")
            err = validate_request(cmd, flags, offset, length, self.session)
            if err:
                self._reject(cmd, flags, cookie, offset, length, err)
                continue
            if cmd == CMD_WRITE:
                return self._write_request(flags, cookie, offset, length, have)
            ch.pos += 28
            return Request(cmd, flags, cookie, offset, length)

    def _write_request(self, flags, cookie, offset, length, have):
        """A valid WRITE with its payload, a streamed one without, or NEED_DATA."""
        ch = self.channel
        if have < 28 + length and self._stream_from is not None \
                and length >= self._stream_from:
            ch.pos += 28
            req = Request(CMD_WRITE, flags, cookie, offset, length, streamed=True)
            self._streaming = [req, offset, length]
            return req
        if have < 28 + length:
            return ch.need(have, 28 + length, "a write payload")
        start = ch.pos + 28
        ch.pos = start + length
        return Request(CMD_WRITE, flags, cookie, offset, length, memoryview(ch.buf)[start:ch.pos])

    def _next_write_piece(self):
        ch = self.channel
        req, offset, left = self._streaming
        n = min(ch.end - ch.pos, left)
        if n < left:                  # whole granules only, but for the last piece
            boundary = (offset + n) // self._granule * self._granule
            if boundary <= offset:
                goal = min(offset + left, boundary + self._granule)
                return ch.need(1, 1 + goal - offset - n, "a write payload")
            n = boundary - offset
        start = ch.pos
        ch.pos += n
        self._streaming = [req, offset + n, left - n] if n < left else None
        return WriteData(req, offset, memoryview(ch.buf)[start:ch.pos], n == left)

    def _reject(self, cmd, flags, cookie, offset, length, err):
        self.channel.pos += 28
        if cmd == CMD_WRITE:
            if length > MAX_DRAIN:
                self.channel.violation(f"write of {length} bytes is too large to drain")
            self.channel.drain(length)
        self.send_error(Request(cmd, flags, cookie, offset, length), err)

    # ---- replies ----

    def send_ok(self, req):
        """Success without payload (anything but READ and BLOCK_STATUS)."""
        ch = self.channel
        ch.out.append(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie))
        ch.out_bytes += 16

    def send_read(self, req, *data):
        """The whole read as one data chunk: buffers of req.length bytes in
        all. A buffer is anything with a length that the I/O layer can send
        (bytes-like, or the server's own file-region objects)."""
        length = sum(len(d) for d in data)
        if length != req.length:
            raise LocalProtocolError(f"read returned {length} of {req.length} bytes")
        if self.session.structured:
            header = _DATA_CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                      REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + length, req.offset)
        else:
            header = _SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie)
        ch = self.channel
        ch.out += (header, *data)
        ch.out_bytes += len(header) + length

    def send_read_sparse(self, req, pieces):
        """The read as consecutive pieces: buffers for data, an int for a hole."""
        if not self.session.structured or req.flags & CMD_FLAG_DF:
            return self.send_read(req, *(bytes(p) if isinstance(p, int) else p for p in pieces))
        offset, chunks = req.offset, []
        for piece in pieces:
            chunks.extend(_content_chunk(req.cookie, offset, piece))
            offset += piece if isinstance(piece, int) else len(piece)
        if offset != req.offset + req.length:
            raise LocalProtocolError("sparse read pieces do not cover the request")
        self.channel.queue(*chunks, _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                                     REPLY_TYPE_NONE, req.cookie, 0))

    def send_block_status(self, req, extents):
        """Answer BLOCK_STATUS with engine extents (offset, length, flags)."""
        descs = block_status_descriptors(req, extents)
        body = struct.pack(f">I{2 * len(descs)}I", BASE_ALLOCATION_ID,
                           *(v for d in descs for v in d))
        self.channel.queue(_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                            REPLY_TYPE_BLOCK_STATUS, req.cookie, len(body)) + body)

    def send_error(self, req, posix_errno, message=""):
        """Fail a request; `posix_errno` is mapped to an NBD error here."""
        code = nbd_error(posix_errno)
        if not self.session.structured:
            return self.channel.queue(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, code, req.cookie))
        text = encode_message(message or os.strerror(posix_errno))
        self.channel.queue(_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                            REPLY_TYPE_ERROR, req.cookie, 6 + len(text))
                           + struct.pack(">IH", code, len(text)) + text)


def _content_chunk(cookie, offset, piece):
    """A structured reply chunk (not the last) for one piece of a sparse read."""
    if isinstance(piece, int):
        return (_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, 0, REPLY_TYPE_OFFSET_HOLE,
                                 cookie, 12) + struct.pack(">QI", offset, piece),)
    return (_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, 0, REPLY_TYPE_OFFSET_DATA,
                             cookie, 8 + len(piece)) + U64.pack(offset), piece)
