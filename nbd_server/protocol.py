"""The NBD protocol, server side, without I/O: bytes in, events out.

The caller feeds what it read with `receive_data()` (b"" means EOF), pulls
events with `next_event()`, answers the events that need the application
(`ExportQuery`, `ListExports`, `StartTLS`, `Request`) with the reply
methods, and sends whatever `data_to_send()` returns. Modeled on h11.

`ServerConnection` composes the pieces: a `Channel` (state, input buffer,
output queue), the `Handshake` phase and then the `Transmission` phase.

Invariants
- No sockets, no clock, no engine in any protocol module (constants, events,
  channel, handshake, transmission, this one): everything is a pure
  function of the bytes received and the replies the application chose.
- The handshake phase parses input until an export is entered; from then
  on the transmission phase does, with the Session the handshake produced.
  The two never both parse.
- A protocol violation by the peer is sticky: every later `next_event()`
  raises `RemoteProtocolError` again, and the caller hard-disconnects.
"""

from .channel import Channel, State
from .constants import REP_ERR_UNKNOWN
from .events import PAUSED, RemoteProtocolError
from .handshake import Handshake
from .transmission import Transmission


class ServerConnection:
    """One NBD session as seen by the server."""

    def __init__(self, *, tls="off"):
        self._channel = Channel()
        self._handshake = Handshake(self._channel, tls)
        self._transmission = Transmission(self._channel)

    @property
    def state(self):
        return self._channel.state

    @property
    def session(self):
        """The negotiated transmission parameters; None before transmission."""
        return self._transmission.session

    @property
    def tls_active(self):
        return self._handshake.tls_active

    def stream_writes(self, min_length, granule):
        """See `Transmission.stream_writes`; may be called in any state."""
        self._transmission.stream_writes(min_length, granule)

    # ---- input ----

    def receive_data(self, data):
        """Feed bytes read from the peer; b"" means end of file."""
        self._channel.receive_data(data)

    def get_buffer(self, sizehint=0):
        """A writable view of free input space, at least `sizehint` bytes and
        enough for the message being parsed; release it before calling on."""
        return self._channel.get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        """`nbytes` were written at the start of the last get_buffer() view;
        0 means end of file."""
        self._channel.buffer_updated(nbytes)

    @property
    def buffered(self):
        """Bytes received but not yet consumed."""
        return self._channel.buffered

    def next_event(self):
        """The next event, NEED_DATA, or PAUSED; raises RemoteProtocolError."""
        state = self._channel.state
        if state is State.TRANSMISSION:
            return self._transmission.next_request()
        if state is State.OPTIONS:
            return self._handshake.next_option()
        if state is State.CLIENT_FLAGS:
            return self._handshake.read_client_flags()
        if state is State.ERROR:
            raise RemoteProtocolError(self._channel.error)
        return PAUSED

    # ---- output ----

    def data_to_send(self):
        """Everything queued since the last call, as a list of buffers."""
        return self._channel.data_to_send()

    @property
    def pending_output(self):
        return self._channel.out_bytes

    # ---- answers to handshake events ----

    def send_export_list(self, exports):
        """Answer ListExports with ExportInfo (or (name, description)) items."""
        self._handshake.send_export_list(exports)

    def accept_export(self, info):
        """Answer an ExportQuery with the export's ExportInfo."""
        session = self._handshake.accept_export(info)
        if session is not None:
            self._transmission.begin(session)

    def reject_export(self, reply=REP_ERR_UNKNOWN, message=""):
        """Refuse an ExportQuery; after EXPORT_NAME that ends the session."""
        self._handshake.reject_export(reply, message)

    def tls_started(self):
        """The stream is now TLS; option haggling continues over it."""
        self._handshake.tls_started()

    # ---- answers to requests ----

    def send_ok(self, req):
        """Success without payload (anything but READ and BLOCK_STATUS)."""
        self._transmission.send_ok(req)

    def send_read(self, req, *data):
        """The whole read as one data chunk: buffers of req.length bytes in
        all (bytes-like, or the server's own file-region objects)."""
        self._transmission.send_read(req, *data)

    def send_read_sparse(self, req, pieces):
        """The read as consecutive pieces: buffers for data, an int for a hole."""
        self._transmission.send_read_sparse(req, pieces)

    def send_block_status(self, req, extents):
        """Answer BLOCK_STATUS with engine extents (offset, length, flags)."""
        self._transmission.send_block_status(req, extents)

    def send_error(self, req, posix_errno, message=""):
        """Fail a request; `posix_errno` is mapped to an NBD error."""
        self._transmission.send_error(req, posix_errno, message)
