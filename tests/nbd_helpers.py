"""Shared helpers for the NBD tests: a tiny client-side codec for byte
fixtures, a driver for the sans-I/O connection, and a real `rokfs nbd`
server started as a subprocess on a unix socket in a temporary directory.

Client-side encoding here is written independently of nbd_server's protocol modules
(only the numeric constants are shared) so that the tests do not check the
server against itself.
"""

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from nbd_server import constants as C
from nbd_server.events import Closed, ExportQuery, ListExports, NEED_DATA, PAUSED, Request, StartTLS

REPO = Path(__file__).resolve().parent.parent

# -- client-side encoding ----------------------------------------------------


def client_flags(flags=C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES):
    return struct.pack(">I", flags)


def opt(option, data=b""):
    return struct.pack(">QII", C.IHAVEOPT, option, len(data)) + data


def info_data(name, requests=()):
    raw = name.encode() if isinstance(name, str) else name
    return (struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(requests))
            + b"".join(struct.pack(">H", r) for r in requests))


def meta_data(name, queries):
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        q = q.encode()
        out += struct.pack(">I", len(q)) + q
    return out


def request(cmd, offset=0, length=0, flags=0, cookie=1, data=b""):
    return struct.pack(">IHHQQI", C.REQUEST_MAGIC, flags, cmd, cookie, offset, length) + data


def write(offset, data, cookie=1, flags=0):
    return request(C.CMD_WRITE, offset, len(data), flags, cookie, data)


# -- client-side decoding ----------------------------------------------------


def split_option_replies(buf):
    """Option replies -> [(option, reply type, data)]; asserts they parse."""
    out, pos = [], 0
    while pos < len(buf):
        magic, option, kind, length = struct.unpack_from(">QIII", buf, pos)
        assert magic == C.OPT_REPLY_MAGIC, hex(magic)
        pos += 20
        out.append((option, kind, bytes(buf[pos:pos + length])))
        pos += length
    assert pos == len(buf)
    return out


def split_replies(buf, read_lengths=None):
    """Transmission replies -> list of dicts; simple READ replies need the
    request length, given as {cookie: length} in `read_lengths`, or as
    {cookie: [length, ...]} in the order they were answered when a client
    reused a cookie (the protocol allows it): such lists are consumed, so
    replies split in several calls take their lengths in turn."""
    pending = {cookie: n if isinstance(n, list) else [n]
               for cookie, n in (read_lengths or {}).items()}
    out, pos = [], 0
    while pos < len(buf):
        (magic,) = struct.unpack_from(">I", buf, pos)
        if magic == C.SIMPLE_REPLY_MAGIC:
            _, error, cookie = struct.unpack_from(">IIQ", buf, pos)
            pos += 16
            n = _next_read_length(pending, cookie) if error == 0 else 0
            out.append(dict(kind="simple", error=error, cookie=cookie, data=bytes(buf[pos:pos + n])))
            pos += n
        else:
            assert magic == C.STRUCTURED_REPLY_MAGIC, hex(magic)
            _, flags, rtype, cookie, length = struct.unpack_from(">IHHQI", buf, pos)
            pos += 20
            out.append(dict(kind="structured", flags=flags, type=rtype, cookie=cookie,
                            payload=bytes(buf[pos:pos + length])))
            pos += length
    assert pos == len(buf), "trailing partial reply"
    return out


def _next_read_length(pending, cookie):
    lengths = pending.get(cookie, [0])
    return lengths.pop(0) if len(lengths) > 1 else lengths[0]


def error_of(reply):
    """The NBD error of a reply dict (0 for success)."""
    if reply["kind"] == "simple":
        return reply["error"]
    if reply["type"] & 0x8000:
        return struct.unpack_from(">I", reply["payload"])[0]
    return 0


# -- driving the sans-I/O connection ----------------------------------------


class Catalog:
    """Answers handshake events like the server would, from ExportInfos."""

    def __init__(self, *exports):
        self.exports = {e.name: e for e in exports}

    def answer(self, conn, event):
        if isinstance(event, ListExports):
            conn.send_export_list(self.exports.values())
        elif isinstance(event, ExportQuery):
            info = self.exports.get(event.name)
            if info is None:
                conn.reject_export(C.REP_ERR_UNKNOWN, f"no export {event.name!r}")
            else:
                conn.accept_export(info)
        elif isinstance(event, StartTLS):
            conn.tls_started()


def drive(conn, data, catalog=None, bytewise=False):
    """Feed `data` (one byte at a time if bytewise), answer handshake events
    from `catalog`; returns (events, output bytes). Stops at NEED_DATA with
    everything fed, or at a Closed event."""
    events = []
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces + [None]:
        if piece is not None:
            conn.receive_data(piece)
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            if isinstance(ev, Request) and ev.data is not None:
                ev.data = bytes(ev.data)   # a view is only valid until more input
            events.append(ev)
            if catalog is not None:
                catalog.answer(conn, ev)
            if isinstance(ev, Closed):
                break
    out = b"".join(bytes(b) for b in conn.data_to_send())
    return events, out


GREETING = bytes.fromhex("4e42444d41474943" "49484156454f5054" "0003")


# -- a real server in a subprocess ------------------------------------------


def pool_with_volumes(path, volumes=(("data", 64 << 20),), snapshots=(), chunk_size=65536):
    """Create a pool at `path` with volumes and snapshots, through the engine."""
    import trio
    from rokfs.control import Control
    from rokfs.pool import Pool

    async def build():
        pool = Pool.create(path, chunk_size=chunk_size)
        try:
            ctl = Control(pool)
            for name, size in volumes:
                await ctl.create_volume(name, size)
            for snap in snapshots:
                await ctl.create_snapshot(snap, labels={})
        finally:
            pool.close()

    trio.run(build)
    return path


class ServerProcess:
    """`rokfs nbd` (python -m rokfs.cli nbd) serving a pool on a unix socket."""

    def __init__(self, pool, sock, extra=()):
        self.pool, self.sock, self.extra = Path(pool), Path(sock), list(extra)
        self.proc = None

    def start(self, timeout=20):
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        cmd = [sys.executable, "-m", "rokfs.cli", "nbd", "--pool", str(self.pool),
               "--socket", str(self.sock), *self.extra]
        self.log = open(self.sock.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._connectable():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.read_log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start: {self.read_log()}")
            time.sleep(0.05)
        return self

    def _connectable(self):
        if not self.sock.exists():
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.sock))
            except OSError:
                return False
        return True

    def read_log(self):
        return self.sock.with_suffix(".log").read_text(errors="replace")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        """SIGTERM (a clean shutdown commits the pool), SIGKILL if stuck."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, *exc):
        self.stop()
        if exc_type is None:
            self.assert_clean_log()

    def assert_clean_log(self):
        """No traceback: every failure the server saw was one it expected."""
        log = self.read_log()
        assert "Traceback" not in log and "connection failed" not in log, log

    def restart(self):
        self.stop()
        return self.start()

    def uri(self, export, tls_dir=None):
        scheme = "nbds+unix" if tls_dir else "nbd+unix"
        query = f"socket={self.sock}" + (f"&tls-certificates={tls_dir}" if tls_dir else "")
        return f"{scheme}:///{export}?{query}"

    def qemu(self, export):
        return f"nbd+unix:///{export}?socket={self.sock}"

    def alive(self):
        return self.proc.poll() is None


def run(cmd, check=True, timeout=60, **kw):
    """Run a peer tool; returns CompletedProcess with text output."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


# nbdsh runs `python3 -m nbd`; the libnbd bindings are built for the system
# python, which a virtualenv or pyenv earlier on PATH would hide.
NBDSH_ENV = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}


def nbdsh(uri, script, check=True, timeout=60):
    """Run a python snippet in nbdsh (handle `h`), connected to `uri` if given."""
    connect = ["-u", uri] if uri else []
    return run(["nbdsh", *connect, "-c", script], check=check, timeout=timeout, env=NBDSH_ENV)


def nbdinfo_json(*args):
    return json.loads(run(["nbdinfo", "--json", *args]).stdout)


def raw_connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"got {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def raw_handshake(path, export="data", structured=False):
    """Open a raw socket and GO to `export`; returns (socket, size, flags)."""
    s = raw_connect(path)
    assert recv_exact(s, 18) == GREETING
    s.sendall(client_flags())
    if structured:
        s.sendall(opt(C.OPT_STRUCTURED_REPLY))
        assert split_option_replies(recv_exact(s, 20))[0][1] == C.REP_ACK
    s.sendall(opt(C.OPT_GO, info_data(export)))
    size = flags = None
    while True:
        _, _, kind, length = struct.unpack(">QIII", recv_exact(s, 20))
        data = recv_exact(s, length)
        if kind == C.REP_INFO and struct.unpack_from(">H", data)[0] == C.INFO_EXPORT:
            size, flags = struct.unpack_from(">QH", data, 2)
        if kind == C.REP_ACK:
            return s, size, flags
        assert not kind & (1 << 31), f"GO failed: {kind:#x} {data!r}"
