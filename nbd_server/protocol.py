"""The NBD protocol, server side, without I/O: bytes in, events out.

The caller feeds what it read with `receive_data()` (b"" means EOF), pulls
events with `next_event()`, answers the events that need the application
(`ExportQuery`, `ListExports`, `Request`) with the reply methods, and sends
whatever `data_to_send()` returns. Modeled on h11.

Invariants
- No sockets, no clock, no engine here: everything is a pure function of the
  bytes received and the replies the application chose.
- States and the triggers that move between them are the table
  `_TRANSITIONS`; a move not in the table is a bug (`LocalProtocolError`).
- A protocol violation by the peer moves to ERROR and the connection stays
  there (sticky): every later `next_event()` raises `RemoteProtocolError`
  again, and the caller hard-disconnects.
- Only requests that pass `validate_request()` (one pure function returning
  an errno) become `Request` events. A rejected request is answered here; a
  rejected WRITE's payload is drained (skipped, never buffered).
- POSIX errno values become NBD error codes in one place, `nbd_error()`.
- Output keeps the order of the calls that produced it; read payloads are
  queued as given, never copied.
- Input lands in one buffer that is never resized in place (it is replaced
  when it must grow), filled either by `receive_data()` or, without a copy,
  by reading into `get_buffer()` and calling `buffer_updated()`. A WRITE's
  `Request.data` is a view of that buffer: valid until the next
  `get_buffer()`/`receive_data()`, so copy it to keep it longer.
"""

import enum
import errno as E
import os
import struct
from dataclasses import dataclass

# -- protocol constants (doc/proto.md in NetworkBlockDevice/nbd) ------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0          # handshake flags
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0        # client flags
FLAG_C_NO_ZEROES = 1 << 1

TF_HAS_FLAGS = 1 << 0                 # transmission flags
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

STATE_HOLE = 1 << 0                   # base:allocation flags
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1

MAX_STRING = 4096                     # spec limit on names and messages
MAX_OPTION_DATA = 64 * 1024           # larger options are drained, not parsed
MAX_PAYLOAD = 32 * 1024 * 1024        # 2**25: advertised maximum payload
MAX_DRAIN = 2 * MAX_PAYLOAD           # a bigger rejected WRITE ends the session
MAX_EXTENTS = 1 << 20                 # descriptors per block status chunk
MIN_BUFFER = 256 * 1024               # initial input buffer
BUFFER_SLACK = 8                      # grow to this many times what one message needs
MAX_BUFFER = 8 * MAX_PAYLOAD
PREFERRED_BLOCK = 4096

_GREETING = struct.Struct(">QQH")
_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
_STRUCTURED = struct.Struct(">IHHQI")
_DATA_CHUNK = struct.Struct(">IHHQIQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ZEROES_124 = bytes(124)


# -- errors and events -------------------------------------------------------

class ProtocolError(Exception):
    pass


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the session must end (hard disconnect)."""


class LocalProtocolError(ProtocolError):
    """The application called a method the current state does not allow."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")    # feed more bytes
PAUSED = _Sentinel("PAUSED")          # waiting for the application's answer


class Event:
    __slots__ = ()


@dataclass(slots=True, frozen=True)
class ListExports(Event):
    """NBD_OPT_LIST: answer with `send_export_list()`."""


@dataclass(slots=True, frozen=True)
class ExportQuery(Event):
    """INFO, GO or EXPORT_NAME: answer with `accept_export()` or `reject_export()`."""

    name: str
    option: int
    info_requests: tuple = ()

    @property
    def enters_transmission(self):
        return self.option != OPT_INFO


@dataclass(slots=True, frozen=True)
class StartTLS(Event):
    """Send what is queued, upgrade the stream, then call `tls_started()`."""


@dataclass(slots=True, frozen=True)
class Closed(Event):
    """The session is over: reason is 'abort', 'disc' or 'eof'."""

    reason: str


@dataclass(slots=True)
class Request(Event):
    """A validated transmission request; `data` is the WRITE payload (a view
    into the input buffer, valid until more input is added). A `streamed`
    WRITE has no data: its payload follows as WriteData events."""

    cmd: int
    flags: int
    cookie: int
    offset: int
    length: int
    data: bytes = None
    streamed: bool = False

    @property
    def fua(self):
        return bool(self.flags & CMD_FLAG_FUA)


@dataclass(slots=True)
class WriteData(Event):
    """A piece of a streamed WRITE's payload, to be written at `offset`; it
    ends on a multiple of the stream granule unless it is the `last`. `data`
    is a view into the input buffer, valid until more input is added."""

    request: Request
    offset: int
    data: memoryview
    last: bool


@dataclass(slots=True, frozen=True)
class ExportInfo:
    """What the application knows about one export."""

    name: str
    size: int
    read_only: bool = False
    description: str = ""
    multi_conn: bool = True
    min_block: int = 1
    preferred_block: int = PREFERRED_BLOCK
    max_payload: int = MAX_PAYLOAD


@dataclass(slots=True)
class _Session:
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


# -- pure helpers ------------------------------------------------------------

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


_NBD_ERRORS = {
    E.EPERM: NBD_EPERM, E.EROFS: NBD_EPERM, E.EACCES: NBD_EPERM,
    E.EIO: NBD_EIO, E.ENOMEM: NBD_ENOMEM, E.EINVAL: NBD_EINVAL,
    E.ENOSPC: NBD_ENOSPC, E.EDQUOT: NBD_ENOSPC, E.EFBIG: NBD_ENOSPC,
    E.EOVERFLOW: NBD_EOVERFLOW, E.ENOTSUP: NBD_ENOTSUP,
    E.EOPNOTSUPP: NBD_ENOTSUP, E.ESHUTDOWN: NBD_ESHUTDOWN,
}


def nbd_error(posix_errno):
    """The one errno -> NBD error mapping; anything unknown is an I/O error."""
    return _NBD_ERRORS.get(posix_errno, NBD_EIO)


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


def _string(data):
    """Decode a protocol string, or None if it is not one."""
    if len(data) > MAX_STRING or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _message(text):
    """A human-readable message within the string limit, still valid UTF-8."""
    return text[:MAX_STRING // 4].encode()


class _OptionInvalid(Exception):
    """Raised while parsing option data: reply NBD_REP_ERR_INVALID."""


def _take(data, pos, n):
    if n < 0 or pos + n > len(data):
        raise _OptionInvalid("option data too short")
    return data[pos:pos + n], pos + n


def _take_u32(data, pos):
    raw, pos = _take(data, pos, 4)
    return _U32.unpack(raw)[0], pos


def _take_string(data, pos, n):
    raw, pos = _take(data, pos, n)
    text = _string(raw)
    if text is None:
        raise _OptionInvalid("not a valid string")
    return text, pos


def parse_info_request(data):
    """INFO/GO option data -> (name, info requests)."""
    namelen, pos = _take_u32(data, 0)
    name, pos = _take_string(data, pos, namelen)
    raw, pos = _take(data, pos, 2)
    count = _U16.unpack(raw)[0]
    raw, pos = _take(data, pos, 2 * count)
    if pos != len(data):
        raise _OptionInvalid("trailing bytes after information requests")
    return name, struct.unpack(f">{count}H", raw)


def parse_meta_request(data):
    """LIST/SET_META_CONTEXT option data -> (export name, queries)."""
    namelen, pos = _take_u32(data, 0)
    name, pos = _take_string(data, pos, namelen)
    count, pos = _take_u32(data, pos)
    queries = []
    for _ in range(count):
        qlen, pos = _take_u32(data, pos)
        query, pos = _take_string(data, pos, qlen)
        if ":" not in query:
            raise _OptionInvalid(f"query {query!r} has no namespace")
        queries.append(query)
    if pos != len(data):
        raise _OptionInvalid("trailing bytes after queries")
    return name, queries


def meta_matches(queries, listing):
    """Does any query select base:allocation? Empty list/`base:` lists it."""
    if listing and not queries:
        return True
    wild = ("base:",) if listing else ()
    return any(q == BASE_ALLOCATION or q in wild for q in queries)


# -- the state machine -------------------------------------------------------

class State(enum.Enum):
    CLIENT_FLAGS = "client-flags"
    OPTIONS = "options"
    WAIT_APP = "wait-app"
    TLS_PENDING = "tls-pending"
    TRANSMISSION = "transmission"
    CLOSED = "closed"
    ERROR = "error"


_TRANSITIONS = {
    (State.CLIENT_FLAGS, "flags"): State.OPTIONS,
    (State.OPTIONS, "ask"): State.WAIT_APP,
    (State.OPTIONS, "starttls"): State.TLS_PENDING,
    (State.OPTIONS, "abort"): State.CLOSED,
    (State.WAIT_APP, "answered"): State.OPTIONS,
    (State.WAIT_APP, "go"): State.TRANSMISSION,
    (State.WAIT_APP, "refused"): State.CLOSED,
    (State.TLS_PENDING, "tls-up"): State.OPTIONS,
    (State.TRANSMISSION, "disc"): State.CLOSED,
}
for _state in State:
    if _state not in (State.CLOSED, State.ERROR):
        _TRANSITIONS[(_state, "eof")] = State.CLOSED
        _TRANSITIONS[(_state, "violation")] = State.ERROR

TLS_MODES = ("off", "on", "require")
_TLS_EXEMPT = frozenset((OPT_STARTTLS, OPT_ABORT))


class ServerConnection:
    """One NBD session as seen by the server."""

    def __init__(self, *, tls="off"):
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}")
        self.state = State.CLIENT_FLAGS
        self.tls_mode = tls
        self.tls_active = False
        self.no_zeroes = False
        self.structured = False
        self.session = None
        self._meta = None             # export name base:allocation was set for
        self._error = None
        self._pending = None          # the ExportQuery awaiting an answer
        self._buf = bytearray(MIN_BUFFER)
        self._pos = 0                 # first byte not consumed
        self._end = 0                 # first byte not filled
        self._want = 1                # bytes missing from the message being parsed
        self._skip = 0
        self._eof = False
        self._out = []
        self._out_bytes = 0
        self._stream_from = None      # WRITEs this large stream their payload...
        self._granule = 1             # ...in pieces ending on multiples of this
        self._streaming = None        # [request, next offset, bytes left]
        self._queue(_GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))

    def stream_writes(self, min_length, granule):
        """From now on, a WRITE of at least `min_length` bytes whose payload is
        not all here yet comes as a streamed Request followed by WriteData
        pieces as bytes arrive (so the application can write while the rest
        is on its way), each ending on a multiple of `granule`."""
        self._stream_from, self._granule = min_length, granule

    # ---- input ----

    def receive_data(self, data):
        """Feed bytes read from the peer; b"" means end of file."""
        if not data:
            return self.buffer_updated(0)
        with self.get_buffer(len(data)) as view:
            view[:len(data)] = data
        self.buffer_updated(len(data))

    def get_buffer(self, sizehint=0):
        """A writable view of free input space, at least `sizehint` bytes and
        enough for the message being parsed; release it before calling on."""
        if self._pos == self._end:
            self._pos = self._end = 0
        need = max(sizehint, self._want, 1)
        if len(self._buf) - self._end < need:
            self._make_room(need)
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes):
        """`nbytes` were written at the start of the last get_buffer() view;
        0 means end of file."""
        if nbytes == 0:
            self._eof = True
            return
        if self._skip:                # then everything before was consumed
            take = min(self._skip, nbytes)
            self._skip -= take
            self._pos += take
        self._end += nbytes

    def _make_room(self, need):
        live = self._end - self._pos
        if live + need <= len(self._buf):
            with memoryview(self._buf) as view:
                view[:live] = view[self._pos:self._end]
        else:
            size = max(live + need, min(MAX_BUFFER, BUFFER_SLACK * (live + need)))
            new = bytearray(size)
            new[:live] = memoryview(self._buf)[self._pos:self._end]
            self._buf = new
        self._pos, self._end = 0, live

    def next_event(self):
        """The next event, NEED_DATA, or PAUSED; raises RemoteProtocolError."""
        state = self.state
        if state is State.TRANSMISSION:
            return self._next_request()
        if state is State.OPTIONS:
            return self._next_option()
        if state is State.CLIENT_FLAGS:
            return self._read_client_flags()
        if state is State.ERROR:
            raise RemoteProtocolError(self._error)
        return PAUSED

    @property
    def buffered(self):
        """Bytes received but not yet consumed."""
        return self._end - self._pos

    # ---- output ----

    def data_to_send(self):
        """Everything queued since the last call, as a list of buffers."""
        out, self._out, self._out_bytes = self._out, [], 0
        return out

    @property
    def pending_output(self):
        return self._out_bytes

    def _queue(self, *chunks):
        for chunk in chunks:
            self._out.append(chunk)
            self._out_bytes += len(chunk)

    # ---- state table ----

    def _to(self, trigger):
        new = _TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(f"{trigger!r} not allowed in state {self.state.value}")
        self.state = new

    def _violation(self, why):
        self._error = why
        self._to("violation")
        raise RemoteProtocolError(why)

    def _need(self, have, total, where):
        """NEED_DATA (`total` bytes make the message, `have` are here), or the
        EOF event/violation if no more bytes will come."""
        if not self._eof:
            self._want = total - have
            return NEED_DATA
        if have == 0:
            self._to("eof")
            return Closed("eof")
        self._violation(f"end of file in the middle of {where}")

    def _consume(self, n):
        start = self._pos
        self._pos += n
        return bytes(memoryview(self._buf)[start:self._pos])

    def _drain(self, n):
        """Discard `n` bytes: those buffered now, the rest as they arrive."""
        have = min(n, self.buffered)
        self._pos += have
        self._skip = n - have

    # ---- handshake ----

    def _read_client_flags(self):
        if self.buffered < 4:
            return self._need(self.buffered, 4, "the client flags")
        flags = _U32.unpack(self._consume(4))[0]
        if flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            self._violation(f"unknown client flags {flags:#x}")
        self.no_zeroes = bool(flags & FLAG_C_NO_ZEROES)
        self._to("flags")
        return self._next_option()

    def _next_option(self):
        while self.state is State.OPTIONS:
            if self._skip:
                return self._need(1, 2, "oversized option data")
            event = self._read_option()
            if event is not None:
                return event
        return self.next_event()

    def _read_option(self):
        """Parse one option; returns an event, NEED_DATA, or None if answered."""
        have = self.buffered
        if have < 16:
            return self._need(have, 16, "an option header")
        magic, opt, length = _OPT_HEADER.unpack_from(self._buf, self._pos)
        if magic != IHAVEOPT:
            self._violation(f"bad option magic {magic:#x}")
        if length > MAX_OPTION_DATA:
            return self._oversized_option(opt, length)
        if have < 16 + length:
            return self._need(have, 16 + length, "option data")
        self._pos += 16
        data = self._consume(length)
        return self._dispatch_option(opt, data)

    def _oversized_option(self, opt, length):
        if opt == OPT_EXPORT_NAME:
            self._violation("export name too long")
        self._pos += 16
        self._drain(length)
        kind = REP_ERR_TOO_BIG if opt in _OPTIONS else REP_ERR_UNSUP
        self._opt_reply(opt, kind, b"option data too large")
        return None

    def _dispatch_option(self, opt, data):
        if self.tls_mode == "require" and not self.tls_active and opt not in _TLS_EXEMPT:
            if opt == OPT_EXPORT_NAME:
                self._violation("TLS required before NBD_OPT_EXPORT_NAME")
            return self._opt_reply(opt, REP_ERR_TLS_REQD, b"TLS is required")
        handler = _OPTIONS.get(opt)
        if handler is None:
            return self._opt_reply(opt, REP_ERR_UNSUP, b"unsupported option")
        try:
            return handler(self, opt, data)
        except _OptionInvalid as exc:
            return self._opt_reply(opt, REP_ERR_INVALID, str(exc).encode())

    def _opt_reply(self, opt, kind, data=b""):
        self._queue(_OPT_REPLY.pack(OPT_REPLY_MAGIC, opt, kind, len(data)) + data)
        return None

    def _opt_export_name(self, opt, data):
        name = _string(data)
        if name is None:
            self._violation("export name is not a valid string")
        return self._ask(ExportQuery(name, opt))

    def _opt_abort(self, opt, data):
        self._opt_reply(opt, REP_ACK)
        self._to("abort")
        return Closed("abort")

    def _opt_list(self, opt, data):
        if data:
            raise _OptionInvalid("NBD_OPT_LIST takes no data")
        return self._ask(ListExports())

    def _opt_starttls(self, opt, data):
        if data:
            raise _OptionInvalid("NBD_OPT_STARTTLS takes no data")
        if self.tls_active:
            raise _OptionInvalid("TLS is already active")
        if self.tls_mode == "off":
            return self._opt_reply(opt, REP_ERR_POLICY, b"TLS is not enabled on this server")
        if self.buffered:
            self._violation("data sent after NBD_OPT_STARTTLS before the reply")
        self._opt_reply(opt, REP_ACK)
        self.structured, self._meta = False, None
        self._to("starttls")
        return StartTLS()

    def _opt_info(self, opt, data):
        name, requests = parse_info_request(data)
        return self._ask(ExportQuery(name, opt, requests))

    def _opt_structured_reply(self, opt, data):
        if data:
            raise _OptionInvalid("NBD_OPT_STRUCTURED_REPLY takes no data")
        if self.structured:
            raise _OptionInvalid("structured replies already negotiated")
        self.structured = True
        return self._opt_reply(opt, REP_ACK)

    def _opt_meta_context(self, opt, data):
        listing = opt == OPT_LIST_META_CONTEXT
        if not listing:
            self._meta = None         # replaced even when the option fails
        if not self.structured:
            raise _OptionInvalid("negotiate structured replies first")
        name, queries = parse_meta_request(data)
        if meta_matches(queries, listing):
            ctx_id = 0 if listing else BASE_ALLOCATION_ID
            payload = _U32.pack(ctx_id) + BASE_ALLOCATION.encode()
            self._opt_reply(opt, REP_META_CONTEXT, payload)
            if not listing:
                self._meta = name
        return self._opt_reply(opt, REP_ACK)

    def _ask(self, event):
        self._pending = event
        self._to("ask")
        return event

    # ---- answers to handshake events ----

    def send_export_list(self, exports):
        """Answer ListExports with ExportInfo (or (name, description)) items."""
        self._expect(ListExports)
        for item in exports:
            name, desc = (item.name, item.description) if isinstance(item, ExportInfo) else item
            raw = name.encode()
            self._opt_reply(OPT_LIST, REP_SERVER, _U32.pack(len(raw)) + raw + desc.encode())
        self._opt_reply(OPT_LIST, REP_ACK)
        self._to("answered")

    def accept_export(self, info):
        """Answer an ExportQuery with the export's ExportInfo."""
        query = self._expect(ExportQuery)
        flags = transmission_flags(info, self.structured)
        if query.option == OPT_EXPORT_NAME:
            self._queue(_U64.pack(info.size) + _U16.pack(flags)
                        + (b"" if self.no_zeroes else _ZEROES_124))
        else:
            self._send_infos(query, info, flags)
            self._opt_reply(query.option, REP_ACK)
        if not query.enters_transmission:
            return self._to("answered")
        self.session = _Session(info.size, flags, self.structured,
                                self._meta == query.name, info.min_block, info.max_payload)
        self._to("go")

    def reject_export(self, reply=REP_ERR_UNKNOWN, message=""):
        """Refuse an ExportQuery; after EXPORT_NAME that ends the session."""
        query = self._expect(ExportQuery)
        if not reply & (1 << 31):
            raise LocalProtocolError("reject_export needs an error reply type")
        if query.option == OPT_EXPORT_NAME:
            return self._to("refused")
        self._opt_reply(query.option, reply, _message(message))
        self._to("answered")

    def _send_infos(self, query, info, flags):
        opt = query.option
        self._opt_reply(opt, REP_INFO, _U16.pack(INFO_EXPORT) + _U64.pack(info.size) + _U16.pack(flags))
        if INFO_NAME in query.info_requests:
            self._opt_reply(opt, REP_INFO, _U16.pack(INFO_NAME) + info.name.encode())
        if INFO_DESCRIPTION in query.info_requests and info.description:
            self._opt_reply(opt, REP_INFO, _U16.pack(INFO_DESCRIPTION) + info.description.encode())
        sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, info.min_block,
                            max(info.preferred_block, info.min_block, 512), info.max_payload)
        self._opt_reply(opt, REP_INFO, sizes)

    def _expect(self, kind):
        if self.state is not State.WAIT_APP or not isinstance(self._pending, kind):
            raise LocalProtocolError(f"no {kind.__name__} is waiting for an answer")
        pending, self._pending = self._pending, None
        return pending

    def tls_started(self):
        """The stream is now TLS; option haggling continues over it."""
        self._to("tls-up")
        self.tls_active = True

    # ---- transmission ----

    def _next_request(self):
        while True:
            if self._streaming is not None:
                return self._next_write_piece()
            if self._skip:
                return self._need(1, 2, "a rejected write payload")
            have = self._end - self._pos
            if have < 28:
                return self._need(have, 28, "a request header")
            magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(self._buf, self._pos)
            if magic != REQUEST_MAGIC:
                self._violation(f"bad request magic {magic:#x}")
            if cmd == CMD_DISC:
                self._pos += 28
                self._to("disc")
                return Closed("disc")
            err = validate_request(cmd, flags, offset, length, self.session)
            if err:
                self._reject(cmd, flags, cookie, offset, length, err)
                continue
            if cmd != CMD_WRITE:
                self._pos += 28
                return Request(cmd, flags, cookie, offset, length)
            if have < 28 + length and self._stream_from is not None \
                    and length >= self._stream_from:
                self._pos += 28
                req = Request(cmd, flags, cookie, offset, length, streamed=True)
                self._streaming = [req, offset, length]
                return req
            if have < 28 + length:
                return self._need(have, 28 + length, "a write payload")
            start = self._pos + 28
            self._pos = start + length
            return Request(cmd, flags, cookie, offset, length,
                           memoryview(self._buf)[start:self._pos])

    def _next_write_piece(self):
        req, offset, left = self._streaming
        n = min(self._end - self._pos, left)
        if n < left:                  # whole granules only, but for the last piece
            boundary = (offset + n) // self._granule * self._granule
            if boundary <= offset:
                goal = min(offset + left, boundary + self._granule)
                return self._need(1, 1 + goal - offset - n, "a write payload")
            n = boundary - offset
        start = self._pos
        self._pos += n
        self._streaming = [req, offset + n, left - n] if n < left else None
        return WriteData(req, offset, memoryview(self._buf)[start:self._pos], n == left)

    def _reject(self, cmd, flags, cookie, offset, length, err):
        self._pos += 28
        if cmd == CMD_WRITE:
            if length > MAX_DRAIN:
                self._violation(f"write of {length} bytes is too large to drain")
            self._drain(length)
        self.send_error(Request(cmd, flags, cookie, offset, length), err)

    # ---- answers to requests ----

    def send_ok(self, req):
        """Success without payload (anything but READ and BLOCK_STATUS)."""
        self._out.append(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie))
        self._out_bytes += 16

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
        self._out += (header, *data)
        self._out_bytes += len(header) + length

    def send_read_sparse(self, req, pieces):
        """The read as consecutive pieces: buffers for data, an int for a hole."""
        if not self.session.structured or req.flags & CMD_FLAG_DF:
            return self.send_read(req, *(bytes(p) if isinstance(p, int) else p for p in pieces))
        offset, chunks = req.offset, []
        for piece in pieces:
            chunks.extend(self._content_chunk(req.cookie, offset, piece))
            offset += piece if isinstance(piece, int) else len(piece)
        if offset != req.offset + req.length:
            raise LocalProtocolError("sparse read pieces do not cover the request")
        self._queue(*chunks, _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                              REPLY_TYPE_NONE, req.cookie, 0))

    @staticmethod
    def _content_chunk(cookie, offset, piece):
        if isinstance(piece, int):
            return (_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, 0, REPLY_TYPE_OFFSET_HOLE,
                                     cookie, 12) + struct.pack(">QI", offset, piece),)
        return (_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, 0, REPLY_TYPE_OFFSET_DATA,
                                 cookie, 8 + len(piece)) + _U64.pack(offset), piece)

    def send_block_status(self, req, extents):
        """Answer BLOCK_STATUS with engine extents (offset, length, flags)."""
        descs = block_status_descriptors(req, extents)
        body = struct.pack(f">I{2 * len(descs)}I", BASE_ALLOCATION_ID,
                           *(v for d in descs for v in d))
        self._queue(_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                     REPLY_TYPE_BLOCK_STATUS, req.cookie, len(body)) + body)

    def send_error(self, req, posix_errno, message=""):
        """Fail a request; `posix_errno` is mapped to an NBD error here."""
        code = nbd_error(posix_errno)
        if not self.session.structured:
            return self._queue(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, code, req.cookie))
        text = _message(message or os.strerror(posix_errno))
        self._queue(_STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR,
                                     req.cookie, 6 + len(text))
                    + struct.pack(">IH", code, len(text)) + text)


_OPTIONS = {
    OPT_EXPORT_NAME: ServerConnection._opt_export_name,
    OPT_ABORT: ServerConnection._opt_abort,
    OPT_LIST: ServerConnection._opt_list,
    OPT_STARTTLS: ServerConnection._opt_starttls,
    OPT_INFO: ServerConnection._opt_info,
    OPT_GO: ServerConnection._opt_info,
    OPT_STRUCTURED_REPLY: ServerConnection._opt_structured_reply,
    OPT_LIST_META_CONTEXT: ServerConnection._opt_meta_context,
    OPT_SET_META_CONTEXT: ServerConnection._opt_meta_context,
}
