"""What the NBD protocol and the application say to each other: the events
`next_event()` returns, its two sentinels, the errors it raises, and
`ExportInfo`, the application's description of an export.

Invariants
- Events are plain data: they hold no reference to the connection and act
  on nothing, so both phases and the application share them.
- Each handshake event (ListExports, ExportQuery, StartTLS) waits for one
  answer, named in its docstring; until it comes `next_event()` returns
  PAUSED. A Request is answered by one reply; WriteData pieces are not
  answered, their Request is.
- `Request.data` and `WriteData.data` are views into the connection's input
  buffer, valid until more input is added: copy them to keep them longer.
- RemoteProtocolError means the peer broke the protocol (the session ends);
  LocalProtocolError means the application called what the state forbids.
"""

from dataclasses import dataclass

from .constants import CMD_FLAG_FUA, MAX_PAYLOAD, OPT_INFO

PREFERRED_BLOCK = 4096                # advertised unless the export says otherwise


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
