"""Fuzzing: random and mutated handshakes and requests, first against the
sans-I/O protocol (thousands of inputs, fed in random pieces), then a
bounded number against a live server while a well-behaved client keeps
working on another connection."""

import os
import random
import socket
import struct
import threading
import time

import pytest

from nbd_helpers import (Catalog, ServerProcess, client_flags, info_data, meta_data, opt,
                         pool_with_volumes, raw_handshake, recv_exact, request, run,
                         split_option_replies, split_replies)
from nbd_server import constants as C
from nbd_server.channel import State
from nbd_server.events import (Closed, ExportInfo, ExportQuery, NEED_DATA, PAUSED,
                               RemoteProtocolError, Request, WriteData)
from nbd_server.protocol import ServerConnection

SIZE = 1 << 20
CATALOG = Catalog(ExportInfo("fz", SIZE), ExportInfo("fz@s", SIZE, read_only=True))
COMMANDS = [C.CMD_READ, C.CMD_WRITE, C.CMD_FLUSH, C.CMD_TRIM, C.CMD_CACHE,
            C.CMD_WRITE_ZEROES, C.CMD_BLOCK_STATUS]


# -- generating input ---------------------------------------------------------

def random_option(rng):
    choice = rng.randrange(12)
    if choice == 0:
        return opt(C.OPT_LIST)
    if choice == 1:
        return opt(C.OPT_STRUCTURED_REPLY)
    if choice == 2:
        queries = rng.choice([["base:allocation"], [], ["base:"], ["x:y", "base:allocation"]])
        kind = rng.choice([C.OPT_SET_META_CONTEXT, C.OPT_LIST_META_CONTEXT])
        return opt(kind, meta_data(rng.choice(["fz", "fz@s", "zz"]), queries))
    if choice == 3:
        return opt(C.OPT_INFO, info_data(rng.choice(["fz", "fz@s", "", "nope"]),
                                         rng.sample(range(5), rng.randrange(4))))
    if choice == 4 and rng.random() < 0.3:
        return opt(C.OPT_STARTTLS)
    if choice == 5:
        return opt(rng.randrange(11, 1 << 32), os.urandom(rng.randrange(16)))
    return opt(C.OPT_INFO, info_data("fz"))


def random_request(rng, cookie):
    cmd = rng.choice(COMMANDS + [rng.randrange(8, 1 << 16)])
    offset = rng.choice([0, 512, rng.randrange(SIZE), SIZE - 512, SIZE, rng.randrange(1 << 64)])
    length = rng.choice([0, 1, 512, 4096, rng.randrange(1 << 16), SIZE, rng.randrange(1 << 32)])
    flags = rng.choice([0, 0, 0, C.CMD_FLAG_FUA, C.CMD_FLAG_DF, C.CMD_FLAG_REQ_ONE,
                        C.CMD_FLAG_NO_HOLE | C.CMD_FLAG_FAST_ZERO, rng.randrange(1 << 16)])
    if cmd == C.CMD_WRITE:
        length = rng.choice([1, 512, 4096, rng.randrange(1, 1 << 14)])
        return request(cmd, offset, length, flags, cookie, os.urandom(length))
    if cmd == C.CMD_FLUSH and rng.random() < 0.7:
        offset = length = 0
    return request(cmd, offset, length, flags, cookie)


def valid_session(rng):
    out = client_flags(rng.choice([3, 3, 1]))
    for _ in range(rng.randrange(4)):
        out += random_option(rng)
    out += rng.choice([opt(C.OPT_GO, info_data(rng.choice(["fz", "fz@s"]))),
                       opt(C.OPT_EXPORT_NAME, rng.choice([b"fz", b"fz@s"]))])
    for cookie in range(rng.randrange(30)):
        out += random_request(rng, cookie)
    if rng.random() < 0.5:
        out += request(C.CMD_DISC)
    return out


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:                        # flip bytes
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:                               # truncate: early EOF
            del data[pos:]
        elif kind == 2:                               # insert garbage
            data[pos:pos] = os.urandom(rng.randrange(1, 64))
        elif kind == 3 and len(data) >= pos + 4:      # a huge length or count
            data[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                            b"\x02\x00\x00\x01", b"\x00\x00\x00\x00"])
        elif kind == 4:                               # duplicate a slice
            data[pos:pos] = data[rng.randrange(len(data) + 1):][:rng.randrange(100)]
        elif kind == 5:                               # a valid prefix, then garbage
            data[pos:] = os.urandom(rng.randrange(200))
        else:                                         # bad magic somewhere
            data[pos:pos] = rng.choice([b"IHAVEOPX", b"\x25\x60\x95\x14", b"NBDMAGIC"])
    return bytes(data)


# -- driving the sans-I/O layer --------------------------------------------

def answer(conn, ev, reads):
    """Answer `ev`; `reads` gets, per cookie and in order, the data length
    of each simple success reply sent (clients may reuse a cookie, for a
    read or anything else, once its reply is in)."""
    if isinstance(ev, WriteData):
        if ev.last:
            reads.setdefault(ev.request.cookie, []).append(0)
            conn.send_ok(ev.request)
    elif isinstance(ev, Request):
        if ev.streamed:
            return
        if ev.cmd == C.CMD_READ:
            if not conn.session.structured:
                reads.setdefault(ev.cookie, []).append(ev.length)
            conn.send_read(ev, bytes(ev.length))
        elif ev.cmd == C.CMD_BLOCK_STATUS:
            conn.send_block_status(ev, [(ev.offset, ev.length, 3)])
        else:
            reads.setdefault(ev.cookie, []).append(0)
            conn.send_ok(ev)
    else:
        CATALOG.answer(conn, ev)


def check_output(chunks, sent_cookies, reads):
    """Everything the server wrote must parse: the greeting, option replies,
    an EXPORT_NAME answer, transmission replies to cookies that were sent."""
    for phase, data in chunks:
        if phase == "greeting":
            assert data == b"NBDMAGICIHAVEOPT\x00\x03"
        elif phase == "options":
            split_option_replies(data)
        elif phase == "export-name":
            assert len(data) in (10, 134)
        else:
            for reply in split_replies(data, reads):
                assert reply["cookie"] in sent_cookies


def feed_all(data, rng, tls="off", stream=False):
    """Feed `data` in random pieces; returns (events, error or None). With
    `stream`, writes of 16 bytes or more stream their payload in pieces."""
    conn = ServerConnection(tls=tls)
    if stream:
        conn.stream_writes(16, rng.choice([1, 8, 512]))
    chunks = [("greeting", b"".join(conn.data_to_send()))]
    events, reads, error = [], {}, None
    pos, steps = 0, 0
    sent_cookies = {struct.unpack_from(">Q", data, i + 8)[0]
                    for i in range(max(0, len(data) - 27))} if len(data) < 4096 else None
    while error is None:
        steps += 1
        assert steps < 100_000, "the protocol does not make progress"
        before = "transmission" if conn.state is State.TRANSMISSION else "options"
        try:
            ev = conn.next_event()
            out = b"".join(bytes(b) for b in conn.data_to_send())
            if out:                                   # answered inside the protocol
                chunks.append((before, out))
        except RemoteProtocolError as exc:
            error = exc
            with pytest.raises(RemoteProtocolError):
                conn.next_event()                     # sticky
            assert conn.state is State.ERROR
            break
        if ev is NEED_DATA:
            if pos > len(data):
                break
            n = rng.choice([1, 2, 7, 28, 100, 4096])
            conn.receive_data(data[pos:pos + n])      # b"" at the end is EOF
            pos += n
            continue
        if ev is PAUSED or isinstance(ev, Closed):
            break
        was_options = conn.state is not State.TRANSMISSION
        events.append(ev)
        answer(conn, ev, reads)
        phase = "transmission"
        if was_options:
            named = isinstance(ev, ExportQuery) and ev.option == C.OPT_EXPORT_NAME
            phase = "export-name" if named else "options"
        out = b"".join(bytes(b) for b in conn.data_to_send())
        if out:
            chunks.append((phase, out))
    if sent_cookies is not None:
        tail = b"".join(bytes(b) for b in conn.data_to_send())
        phase = "transmission" if conn.session else "options"
        if tail and conn.state is not State.ERROR:
            chunks.append((phase, tail))
        check_output(chunks, sent_cookies, reads)
    return events, error


@pytest.mark.parametrize("seed", range(8))
def test_sans_io_survives_mutated_sessions(seed):
    rng = random.Random(seed)
    outcomes = {"error": 0, "clean": 0}
    for _ in range(600):
        data = valid_session(rng)
        if rng.random() < 0.85:
            data = mutate(rng, data)
        _, error = feed_all(data, rng, tls=rng.choice(["off"] * 8 + ["on", "require"]),
                            stream=rng.random() < 0.5)
        outcomes["error" if error else "clean"] += 1
    assert outcomes["error"] > 50 and outcomes["clean"] > 50, outcomes


def test_sans_io_pure_garbage():
    rng = random.Random(99)
    for _ in range(1000):
        garbage = os.urandom(rng.randrange(1, 300))
        if rng.random() < 0.5:
            garbage = client_flags() + garbage
        feed_all(garbage, rng)


def test_valid_sessions_never_error():
    rng = random.Random(7)
    for i in range(500):
        events, error = feed_all(valid_session(rng), rng, stream=i % 2 == 1)
        assert error is None, error


# -- a live server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    pool_with_volumes(str(tmp / "pool"), [("fz", SIZE), ("good", SIZE)], snapshots=["fz@s"])
    with ServerProcess(tmp / "pool", tmp / "fz.sock") as srv:
        yield srv


class GoodClient(threading.Thread):
    """Writes and reads back patterns on its own connection until stopped."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.rounds, self.error = path, 0, None
        self.stop = threading.Event()

    def run(self):
        try:
            sock, size, _ = raw_handshake(self.path, "good")
            while not self.stop.is_set():
                self.round(sock, size)
            sock.sendall(request(C.CMD_DISC))
            sock.close()
        except Exception as exc:                      # reported by the test
            self.error = exc

    def round(self, sock, size):
        offset = (self.rounds * 4096) % size
        payload = os.urandom(4096)
        sock.sendall(request(C.CMD_WRITE, offset, 4096, cookie=1, data=payload)
                     + request(C.CMD_READ, offset, 4096, cookie=2))
        magic, err, cookie = struct.unpack(">IIQ", recv_exact(sock, 16))
        assert (magic, err, cookie) == (C.SIMPLE_REPLY_MAGIC, 0, 1)
        magic, err, cookie = struct.unpack(">IIQ", recv_exact(sock, 16))
        assert (magic, err, cookie) == (C.SIMPLE_REPLY_MAGIC, 0, 2)
        assert recv_exact(sock, 4096) == payload
        self.rounds += 1


def throw(path, data, rng):
    """One hostile connection: send `data` in pieces, maybe read, then vanish."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(path))
        try:
            pos = 0
            while pos < len(data):
                n = rng.choice([1, 13, 512, 65536])
                s.sendall(data[pos:pos + n])
                pos += n
            if rng.random() < 0.5:
                s.settimeout(0.05)
                while s.recv(65536):
                    pass
        except OSError:
            pass                                      # the server hung up: fine


def test_live_server_survives_hostile_clients(server):
    good = GoodClient(server.sock)
    good.start()
    rng = random.Random(1234)
    try:
        for _ in range(150):
            data = valid_session(rng)
            throw(server.sock, mutate(rng, data) if rng.random() < 0.8 else data, rng)
        throw(server.sock, client_flags() + opt(C.OPT_GO, info_data("fz"))
              + request(C.CMD_WRITE, 0, 30 << 20, cookie=1) + os.urandom(1 << 16), rng)
        throw(server.sock, client_flags() + opt(C.OPT_GO, info_data("fz"))
              + request(C.CMD_WRITE, 0, 0xFFFFFFFF, cookie=1), rng)
        throw(server.sock, client_flags() + opt(C.OPT_STARTTLS) + b"\x16\x03\x01", rng)
        throw(server.sock, client_flags() + struct.pack(">QII", C.IHAVEOPT, 99, 1 << 31), rng)
        time.sleep(0.5)
        assert good.is_alive() and good.error is None, good.error
    finally:
        good.stop.set()
        good.join(30)
    assert good.error is None, good.error
    assert good.rounds > 20
    assert server.alive()
    assert "export-size: 1048576" in run(["nbdinfo", server.uri("fz")]).stdout


def test_client_that_never_reads_replies(server):
    """Thousands of 64 KiB reads queued and never read: the server stops
    reading the connection (backpressure) and drops it when the peer goes;
    everyone else is served meanwhile."""
    sock, _, _ = raw_handshake(server.sock, "fz")
    sock.sendall(request(C.CMD_WRITE, 0, 65536, cookie=1, data=os.urandom(65536)))
    assert struct.unpack(">IIQ", recv_exact(sock, 16)) == (C.SIMPLE_REPLY_MAGIC, 0, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)   # one big batch
    sock.setblocking(False)
    sent = 0
    try:
        for cookie in range(20000):
            sock.send(request(C.CMD_READ, 0, 65536, cookie=cookie))
            sent += 1
    except BlockingIOError:
        pass
    assert sent > 100
    good = GoodClient(server.sock)
    good.start()
    time.sleep(1)
    good.stop.set()
    good.join(30)
    peak = peak_memory(server.proc.pid)
    sock.close()
    assert good.error is None and good.rounds > 10, good.error
    assert "export-size" in run(["nbdinfo", server.uri("fz")]).stdout
    assert peak < 128 << 20, f"{sent} unread 64 KiB replies grew the server to {peak >> 20} MiB"


def peak_memory(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_client_vanishing_mid_write(server):
    for cut in (10, 28, 1000, 65536):
        s, _, _ = raw_handshake(server.sock, "fz")
        s.sendall(request(C.CMD_WRITE, 0, 131072, cookie=5, data=os.urandom(131072))[:cut])
        s.close()
    s, _, _ = raw_handshake(server.sock, "fz")
    s.sendall(request(C.CMD_READ, 0, 512, cookie=9))
    assert struct.unpack(">IIQ", recv_exact(s, 16)) == (C.SIMPLE_REPLY_MAGIC, 0, 9)
    s.close()
