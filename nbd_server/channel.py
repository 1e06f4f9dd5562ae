"""What both phases of an NBD connection share: the state, the input buffer
and the output queue.

Invariants
- States and the triggers that move between them are the table
  `TRANSITIONS`; a move not in the table is a bug (`LocalProtocolError`).
- A protocol violation by the peer moves to ERROR, and no trigger leads out
  of ERROR or CLOSED.
- Input lands in one buffer that is never resized in place (it is replaced
  when it must grow), filled either by `receive_data()` or, without a copy,
  by reading into `get_buffer()` and calling `buffer_updated()`. A view of
  it stays valid until the next `get_buffer()`/`receive_data()`.
- Bytes being drained (`skip`) are skipped as they arrive, never
  accumulated.
- Output keeps the order in which it was queued; buffers are queued as
  given, never copied.
"""

import enum

from .constants import MAX_PAYLOAD
from .events import Closed, LocalProtocolError, NEED_DATA, RemoteProtocolError

MIN_BUFFER = 256 * 1024               # initial input buffer
BUFFER_SLACK = 8                      # grow to this many times what one message needs
MAX_BUFFER = 8 * MAX_PAYLOAD


class State(enum.Enum):
    CLIENT_FLAGS = "client-flags"
    OPTIONS = "options"
    WAIT_APP = "wait-app"
    TLS_PENDING = "tls-pending"
    TRANSMISSION = "transmission"
    CLOSED = "closed"
    ERROR = "error"


TRANSITIONS = {
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
        TRANSITIONS[(_state, "eof")] = State.CLOSED
        TRANSITIONS[(_state, "violation")] = State.ERROR


class Channel:
    """The state and the bytes of one connection.

    `buf[pos:end]` is received and not yet consumed; `want` is how many more
    bytes the message being parsed needs; `skip` how many bytes still to come
    are to be dropped; `eof` whether the peer has stopped sending."""

    def __init__(self):
        self.state = State.CLIENT_FLAGS
        self.error = None             # why the peer's input was refused
        self.buf = bytearray(MIN_BUFFER)
        self.pos = 0
        self.end = 0
        self.want = 1
        self.skip = 0
        self.eof = False
        self.out = []
        self.out_bytes = 0

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
        if self.pos == self.end:
            self.pos = self.end = 0
        need = max(sizehint, self.want, 1)
        if len(self.buf) - self.end < need:
            self._make_room(need)
        return memoryview(self.buf)[self.end:]

    def buffer_updated(self, nbytes):
        """`nbytes` were written at the start of the last get_buffer() view;
        0 means end of file."""
        if nbytes == 0:
            self.eof = True
            return
        if self.skip:                 # then everything before was consumed
            take = min(self.skip, nbytes)
            self.skip -= take
            self.pos += take
        self.end += nbytes

    def _make_room(self, need):
        live = self.end - self.pos
        if live + need <= len(self.buf):
            with memoryview(self.buf) as view:
                view[:live] = view[self.pos:self.end]
        else:
            size = max(live + need, min(MAX_BUFFER, BUFFER_SLACK * (live + need)))
            new = bytearray(size)
            new[:live] = memoryview(self.buf)[self.pos:self.end]
            self.buf = new
        self.pos, self.end = 0, live

    @property
    def buffered(self):
        """Bytes received but not yet consumed."""
        return self.end - self.pos

    def need(self, have, total, where):
        """NEED_DATA (`total` bytes make the message, `have` are here), or the
        EOF event/violation if no more bytes will come."""
        if not self.eof:
            self.want = total - have
            return NEED_DATA
        if have == 0:
            self.move("eof")
            return Closed("eof")
        self.violation(f"end of file in the middle of {where}")

    def consume(self, n):
        """The next `n` buffered bytes, copied out."""
        start = self.pos
        self.pos += n
        return bytes(memoryview(self.buf)[start:self.pos])

    def drain(self, n):
        """Discard `n` bytes: those buffered now, the rest as they arrive."""
        have = min(n, self.buffered)
        self.pos += have
        self.skip = n - have

    # ---- output ----

    def data_to_send(self):
        """Everything queued since the last call, as a list of buffers."""
        out, self.out, self.out_bytes = self.out, [], 0
        return out

    def queue(self, *chunks):
        for chunk in chunks:
            self.out.append(chunk)
            self.out_bytes += len(chunk)

    # ---- state ----

    def move(self, trigger):
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(f"{trigger!r} not allowed in state {self.state.value}")
        self.state = new

    def violation(self, why):
        """The peer broke the protocol: ERROR, for good."""
        self.error = why
        self.move("violation")
        raise RemoteProtocolError(why)
