"""The NBD server: a thin trio layer over nbd_server.protocol and the control API.

Invariants
- Per connection, one reader task feeds the sans-I/O protocol. Replies are
  only queued on the protocol object and leave through one path, in order:
  `_push()` writes them at once when no send is in flight and the socket
  takes them (no task switch), the writer task sends whatever is left.
- The reader parses every complete request in what one read returned and
  runs reads, writes, trims, zeroes and block status inline: engine calls are
  synchronous pread/pwrite on the page cache and never suspend. Requests
  that may block (FLUSH, FUA, CACHE, and any request on a range that still
  has chunks on the remote: Device.may_block) run as concurrent handler
  tasks, at most MAX_SPAWNED per connection, so a slow remote read holds
  no request for local data.
- On plain sockets reads land straight in the protocol's buffer (readv on the
  non-blocking fd) and replies go out with writev, read data uncopied; TLS
  goes through trio's SSLStream. The reader stops taking requests while
  more than HIGH_WATER reply bytes wait to be sent.
- A large read on a plain socket whose send path is idle goes out with
  sendfile from the extent files (no copy through user space): its reply is
  sent in the same step that planned it, and what the socket does not take
  at once is read into memory there and then, so a file region never
  outlives the map it was planned from.
- A large WRITE is written piece by piece as its payload arrives (the
  protocol's streamed writes, pieces ending on chunk boundaries), so the
  client refills the socket while the server writes. Each piece is one
  engine write; a snapshot taken between pieces holds a prefix of the
  request, as a disk snapshot taken during an unacknowledged write may. A
  piece that fails fails the request; the rest of the payload is drained.
- An engine error becomes an NBD error through its errno (mapped once, by
  `constants.nbd_error()`); an unexpected exception fails that request with
  EIO. A broken, hostile or vanished peer ends its own connection only.
- FLUSH is pool-wide (the control API's group commit), which is what makes
  CAN_MULTI_CONN true.
- DISC, EOF or a protocol violation: stop reading, let in-flight handlers
  finish, send what is queued, close.
"""

import errno
import logging
import os
import socket

import trio

from rokfs.endpoints import claim_unix_socket, parse_tcp_address
from rokfs.errors import RokfsError
from rokfs.fileio import pread_full

from .channel import State
from .constants import (CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
                        CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
                        CMD_WRITE_ZEROES, REP_ERR_UNKNOWN)
from .events import (Closed, ExportInfo, ExportQuery, ListExports, LocalProtocolError,
                     NEED_DATA, PAUSED, RemoteProtocolError, Request, StartTLS, WriteData)
from .protocol import ServerConnection
from .transmission import zero_runs

log = logging.getLogger(__name__)

RECV_SIZE = 256 * 1024
SOCKET_BUFFER = 4 << 20       # asked for; the kernel caps it (net.core.wmem_max)
HIGH_WATER = 32 << 20        # queued reply bytes that stop the reader
MAX_SPAWNED = 64
MAX_IOV = 512
EAGER_BYTES = 64 * 1024      # queued reply bytes that are sent without waiting for the batch
FAIR_STREAK = 128             # inline requests (a read counts 16) between yields to others
HANDSHAKE_TIMEOUT = 60
STATUS_CAP = 4 << 30          # bytes a BLOCK_STATUS reply may describe (a request's 32-bit
                              # length at most; the device may describe less)
STATUS_WINDOW = 1 << 20       # first look for a REQ_ONE block status, growing 8x
BIG_OP = 256 << 20            # trims and zeroes run in pieces this large, letting others in
HOLE_GRANULE = 64 * 1024     # zero blocks this large go out as holes
ZERO_COPY_MIN = 64 * 1024    # reads this large go out with sendfile when they can
STREAM_WRITES_FROM = 128 * 1024  # writes this large are written as their payload arrives
DEFAULT_PORT = 10809


class _Wakeup:
    """Park until poked; a poke with nobody parked is remembered as nothing."""

    def __init__(self):
        self._lot = trio.lowlevel.ParkingLot()

    async def wait(self):
        await self._lot.park()

    def poke(self):
        self._lot.unpark_all()


_PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
              RemoteProtocolError)


class NbdServer:
    """Serves every volume (read-write) and snapshot (read-only) of a pool."""

    def __init__(self, control, tls=None):
        self.control = control
        self.tls = tls
        self.tls_mode = tls.mode if tls else "off"
        self.connections = 0

    def exports(self):
        return [ExportInfo(name, size, ro, desc)
                for name, size, ro, desc in self.control.list_exports()]

    def describe(self, name):
        for item in self.control.list_exports():
            if item[0] == name:
                return item[3]
        return ""

    async def handle(self, stream):
        """One client connection, start to end; never raises."""
        self.connections += 1
        conn = _Connection(self, stream)
        try:
            await conn.run()
        except* _PEER_GONE as group:
            log.debug("connection ended: %r", group.exceptions[0])
        except* trio.TooSlowError:
            log.info("client too slow in the handshake; disconnected")
        except* Exception as group:
            log.error("connection failed", exc_info=group)
        finally:
            conn.close_device()
            await trio.aclose_forcefully(conn.stream)
            self.connections -= 1


class _Connection:
    def __init__(self, server, stream):
        self.server = server
        self.stream = stream
        self.proto = ServerConnection(tls=server.tls_mode)
        self.device = None
        self._closing = False
        self._kick = _Wakeup()
        self._drained = _Wakeup()
        self._limit = trio.Semaphore(MAX_SPAWNED)
        self._fd = _tune_socket(stream)
        self._streak = 0
        self._sending = False
        self._rest = []
        self._sparse_reads = False    # holes as OFFSET_HOLE chunks: structured replies only
        self._write_error = None      # how the streamed WRITE in progress failed

    async def run(self):
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            go = await self._handshake()
        if go:
            await self._transmission()

    def close_device(self):
        if self.device is not None:
            self.device.close()
            self.device = None

    # -- handshake -------------------------------------------------------------

    async def _handshake(self):
        """Haggle options; True when transmission starts."""
        proto = self.proto
        while True:
            ev = proto.next_event()
            await self._send(proto.data_to_send())
            if ev is NEED_DATA:
                await self._receive()
            elif isinstance(ev, Closed):
                return False
            elif ev is PAUSED:
                raise LocalProtocolError("handshake event left unanswered")
            else:
                await self._answer(ev)
            if proto.state is State.TRANSMISSION:
                await self._send(proto.data_to_send())
                self._enter_transmission()
                return True
            if proto.state is State.CLOSED:
                return False

    async def _answer(self, ev):
        if isinstance(ev, ListExports):
            self.proto.send_export_list(self.server.exports())
        elif isinstance(ev, ExportQuery):
            self._answer_export(ev)
        elif isinstance(ev, StartTLS):
            await self._start_tls()

    def _answer_export(self, query):
        if not query.name:
            return self.proto.reject_export(REP_ERR_UNKNOWN, "no default export: name a "
                                            "volume or VOLUME@SNAPSHOT (see NBD_OPT_LIST)")
        try:
            device = self.server.control.open_device(query.name)
        except RokfsError as exc:
            return self.proto.reject_export(REP_ERR_UNKNOWN, str(exc))
        info = ExportInfo(device.name, device.size, device.read_only,
                          self.server.describe(device.name),
                          preferred_block=device.chunk_size)
        self.proto.accept_export(info)
        if query.enters_transmission:
            self.device = device
        else:
            device.close()

    def _enter_transmission(self):
        self._sparse_reads = self.proto.session.structured
        if not self.device.read_only:
            self.proto.stream_writes(STREAM_WRITES_FROM, self.device.chunk_size)

    async def _start_tls(self):
        await self._send(self.proto.data_to_send())
        self._fd = None
        self.stream = trio.SSLStream(self.stream, self.server.tls.context, server_side=True)
        await self.stream.do_handshake()
        self.proto.tls_started()

    # -- transmission ------------------------------------------------------------

    async def _transmission(self):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            try:
                async with trio.open_nursery() as handlers:
                    await self._reader(handlers)
            finally:
                self._closing = True
                self._kick.poke()

    async def _reader(self, handlers):
        proto = self.proto
        try:
            while True:
                ev = proto.next_event()
                if ev is NEED_DATA:
                    self._push()
                    while proto.pending_output > HIGH_WATER:
                        await self._drained.wait()
                    await self._receive()
                elif isinstance(ev, Closed):
                    return
                elif isinstance(ev, WriteData):
                    done = await self._write_piece(ev)
                    if done is not None:
                        await self._limit.acquire()
                        handlers.start_soon(self._spawned, done)
                    await self._fair_share(1)
                elif ev.streamed:
                    self._write_error = None
                elif (ev.cmd in _SPAWNED or ev.flags & CMD_FLAG_FUA
                      or self.device.may_block(ev.offset, ev.length)):
                    if ev.data is not None:
                        ev.data = bytes(ev.data)  # outlives the input buffer
                    await self._limit.acquire()
                    handlers.start_soon(self._spawned, ev)
                else:
                    await self._handle(ev)
                    await self._fair_share(1)
                    if proto.pending_output >= EAGER_BYTES:
                        self._push()
                        while proto.pending_output > HIGH_WATER:
                            await self._drained.wait()
        except RemoteProtocolError as exc:
            log.info("closing connection to %s: %s", self.device.name, exc)

    async def _spawned(self, req):
        try:
            await self._handle(req)
        finally:
            self._limit.release()
            self._push()

    async def _handle(self, req):
        try:
            await _HANDLERS[req.cmd](self, req)
        except Exception as exc:
            self._fail(req, exc)

    def _fail(self, req, exc):
        """Answer `req` with the NBD error for `exc`."""
        if isinstance(exc, RokfsError):
            return self.proto.send_error(req, exc.errno, str(exc))
        log.error("request %d on %s failed", req.cmd, self.device.name, exc_info=exc)
        self.proto.send_error(req, errno.EIO, "internal server error")

    def _can_send_now(self):
        return self._fd is not None and not self._sending and not self._rest

    def _push(self):
        """Send what is queued right away if the socket takes it (no task
        switch); the writer task sends any rest, in order, from memory."""
        if not self._can_send_now():
            return self._kick.poke()
        bufs = self.proto.data_to_send()
        if bufs:
            self._rest = _in_memory(_writev_now(self._fd, bufs))
            if self._rest:
                self._kick.poke()

    async def _writer(self):
        proto = self.proto
        while True:
            bufs, self._rest = self._rest + _in_memory(proto.data_to_send()), []
            if bufs:
                self._sending = True
                try:
                    await self._send(bufs)
                finally:
                    self._sending = False
                self._drained.poke()
            elif self._closing:
                return
            else:
                await self._kick.wait()

    # -- request handlers --------------------------------------------------------

    async def _read(self, req):
        if req.length >= ZERO_COPY_MIN and self._can_send_now():
            return await self._read_uncopied(req)
        data = await self.device.pread(req.offset, req.length)
        if req.length >= HOLE_GRANULE and self._sparse_reads and not req.flags & CMD_FLAG_DF:
            pieces = zero_runs(data, req.offset, HOLE_GRANULE)
            if len(pieces) > 1 or isinstance(pieces[0], int):
                return self.proto.send_read_sparse(req, pieces)
        self.proto.send_read(req, data)

    async def _write_piece(self, piece):
        """Write one piece of a streamed WRITE; at the last one, answer it, or
        return the FLUSH that must run before a FUA write is answered."""
        req = piece.request
        if self._write_error is None:
            try:
                await self.device.pwrite(piece.offset, piece.data, ops=int(piece.last))
            except Exception as exc:  # answered once the payload is all drained
                self._write_error = exc
        if not piece.last:
            return None
        error, self._write_error = self._write_error, None
        if error is not None:
            self._fail(req, error)
        elif req.fua:
            return Request(CMD_FLUSH, 0, req.cookie, 0, 0)
        else:
            self.proto.send_ok(req)
            self._push()              # the client may be waiting on it to send more
        return None

    async def _read_uncopied(self, req):
        """Send the read straight from the extent files, in this step."""
        plan = await self.device.read_plan(req.offset, req.length)
        pieces = [p if type(p) is int else FileRegion(*p) for p in plan]
        if len(pieces) > 1:           # holes go as such where the session allows
            self.proto.send_read_sparse(req, pieces)
        else:
            piece = pieces[0]
            self.proto.send_read(req, bytes(piece) if type(piece) is int else piece)
        self._push()

    async def _write(self, req):
        await self.device.pwrite(req.offset, req.data, fua=req.fua)
        self.proto.send_ok(req)

    async def _flush(self, req):
        await self.device.flush()
        self.proto.send_ok(req)

    async def _trim(self, req):
        for offset, length, last in _pieces(req.offset, req.length, BIG_OP):
            await self.device.trim(offset, length, fua=req.fua and last)
            if not last:
                await trio.lowlevel.checkpoint()
        self.proto.send_ok(req)

    async def _write_zeroes(self, req):
        no_hole = bool(req.flags & CMD_FLAG_NO_HOLE)
        for offset, length, last in _pieces(req.offset, req.length, BIG_OP):
            await self.device.write_zeroes(offset, length, fua=req.fua and last, no_hole=no_hole)
            if not last:
                await trio.lowlevel.checkpoint()
        self.proto.send_ok(req)

    async def _cache(self, req):
        await self.device.cache(req.offset, req.length)
        self.proto.send_ok(req)

    async def _block_status(self, req):
        if not req.flags & CMD_FLAG_REQ_ONE:
            extents = await self.device.extents(req.offset, min(req.length, STATUS_CAP))
            return self.proto.send_block_status(req, extents)
        window = min(req.length, STATUS_WINDOW)
        while True:                   # one extent wanted: look only as far as it goes
            extents = await self.device.extents(req.offset, window)
            if len(extents) > 1 or window >= min(req.length, STATUS_CAP):
                return self.proto.send_block_status(req, extents[:1])
            window = min(window * 8, req.length, STATUS_CAP)

    # -- I/O ---------------------------------------------------------------------

    async def _receive(self):
        """Read what is available straight into the protocol's buffer."""
        proto = self.proto
        if self._fd is None:
            return proto.receive_data(await self.stream.receive_some(RECV_SIZE))
        while True:
            with proto.get_buffer(RECV_SIZE) as view:
                try:
                    n = os.readv(self._fd, [view])
                except BlockingIOError:
                    n = None
            if n is not None:
                proto.buffer_updated(n)
                return await self._fair_share(FAIR_STREAK // 8)
            self._streak = 0
            await trio.lowlevel.wait_readable(self._fd)

    async def _fair_share(self, cost):
        """Yield now and then while work keeps coming without waiting (reads
        that found data, requests run inline), so other connections get a turn."""
        self._streak += cost
        if self._streak >= FAIR_STREAK:
            self._streak = 0
            await trio.lowlevel.checkpoint()

    async def _send(self, bufs):
        if not bufs:
            return
        if self._fd is None:
            return await self.stream.send_all(b"".join(bufs))
        await _writev_all(self._fd, bufs)


def _pieces(offset, length, most):
    """(offset, length, is_last) pieces of at most `most` bytes."""
    end = offset + length
    while offset < end:
        n = min(most, end - offset)
        yield offset, n, offset + n == end
        offset += n


_SPAWNED = frozenset((CMD_FLUSH, CMD_CACHE))
_HANDLERS = {
    CMD_READ: _Connection._read,
    CMD_WRITE: _Connection._write,
    CMD_FLUSH: _Connection._flush,
    CMD_TRIM: _Connection._trim,
    CMD_WRITE_ZEROES: _Connection._write_zeroes,
    CMD_CACHE: _Connection._cache,
    CMD_BLOCK_STATUS: _Connection._block_status,
}


class FileRegion:
    """`length` bytes of a file at `offset`, sent with sendfile (no copy)."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd, offset, length):
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self):
        return self.length

    def after(self, n):
        return FileRegion(self.fd, self.offset + n, self.length - n)

    def in_memory(self):
        data = bytearray(self.length)
        pread_full(self.fd, memoryview(data), self.offset)
        return data


def _in_memory(bufs):
    """The buffers with every file region read into memory."""
    return [b.in_memory() if type(b) is FileRegion else b for b in bufs]


def _send_some(fd, bufs, i):
    """Send from bufs[i] on (a file region alone, or a run of buffers)."""
    if type(bufs[i]) is FileRegion:
        region = bufs[i]
        sent = os.sendfile(fd, region.fd, region.offset, region.length)
        if sent == 0:
            raise OSError(errno.EIO, "extent file ended before the read did")
        return sent
    j = i + 1
    while j < len(bufs) and j - i < MAX_IOV and type(bufs[j]) is not FileRegion:
        j += 1
    return os.writev(fd, bufs[i:j])


def _writev_now(fd, bufs):
    """Write what a non-blocking fd takes now, in order; returns the rest."""
    bufs = [b for b in bufs if len(b)]
    i = 0
    while i < len(bufs):
        try:
            sent = _send_some(fd, bufs, i)
        except BlockingIOError:
            break
        while sent:
            n = len(bufs[i])
            if sent >= n:
                sent -= n
                i += 1
            else:
                b = bufs[i]
                bufs[i] = b.after(sent) if type(b) is FileRegion else memoryview(b)[sent:]
                sent = 0
    return bufs[i:]


async def _writev_all(fd, bufs):
    """Write every buffer, in order, waiting for the fd when it is full."""
    while True:
        bufs = _writev_now(fd, bufs)
        if not bufs:
            return await trio.lowlevel.checkpoint_if_cancelled()
        await trio.lowlevel.wait_writable(fd)


def _tune_socket(stream):
    """Large socket buffers (a 1 MiB reply goes out in one write); returns
    the fd for direct non-blocking I/O, or None for other streams."""
    if not isinstance(stream, trio.SocketStream):
        return None
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            stream.socket.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass
    return stream.socket.fileno()


# -- listeners -------------------------------------------------------------------

async def open_unix_listener(path):
    """A listener on a unix socket at `path` (mode 0600), once the path is
    claimed by the one stale-socket policy (rokfs.endpoints)."""
    claim_unix_socket(path, "NBD")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)
    sock.listen(128)
    return trio.SocketListener(sock)


async def serve(control, *, socket_path=None, listen=None, tls=None,
                task_status=trio.TASK_STATUS_IGNORED):
    """Serve the exports of `control` (a rokfs Control) until cancelled.

    Binds a unix socket at `socket_path` and/or TCP at `listen` ('ADDR:PORT';
    loopback by default; with neither, 127.0.0.1:10809). Reports the bound
    addresses (unix paths, (host, port) tuples) through task_status.
    """
    server = NbdServer(control, tls)
    listeners = []
    if listen is not None or socket_path is None:
        host, port = parse_tcp_address(listen if listen is not None else str(DEFAULT_PORT),
                                       "NBD listen address")
        listeners += await trio.open_tcp_listeners(port, host=host)
    if socket_path is not None:       # last: once it accepts, everything does
        listeners.append(await open_unix_listener(socket_path))
    addresses = [lst.socket.getsockname() for lst in listeners]
    log.info("serving NBD on %s (TLS %s)", ", ".join(map(str, addresses)), server.tls_mode)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(addresses)
            await trio.serve_listeners(server.handle, listeners, handler_nursery=nursery)
    finally:
        if socket_path is not None:
            _unlink_quietly(socket_path)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
