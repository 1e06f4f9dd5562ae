"""Large reads and writes against a live server.

Large reads go out with sendfile straight from the extent files: a reply
carries the data the volume held when the read was served, even if the
client reads it much later, after the slots it came from were trimmed,
committed and reused by another volume; holes and data mix correctly in
structured replies. Large writes are written piece by piece as their
payload arrives: a piece that fails fails the request, the rest of the
payload is drained and the connection goes on; FUA is honoured; a
snapshot taken while a large write is arriving holds a prefix of it (whole
chunks) and never changes afterwards.
"""

import select
import socket
import struct
import subprocess
import time

import pytest

from nbd_helpers import (ServerProcess, nbdsh, pool_with_volumes, raw_handshake, recv_exact,
                         request, write)
from nbd_server import constants as C

MiB = 1 << 20


@pytest.fixture
def server(tmp_path):
    pool_with_volumes(str(tmp_path / "pool"), [("a", 16 * MiB), ("b", 16 * MiB)])
    with ServerProcess(tmp_path / "pool", tmp_path / "nbd.sock") as srv:
        yield srv


def fill(srv, export, pattern, length):
    nbdsh(srv.uri(export), f"h.pwrite({pattern!r} * ({length} // {len(pattern)}), 0)\n"
                           "h.flush()\n")


def test_unread_reply_keeps_the_data_it_was_served_with(server):
    length = 8 * MiB
    fill(server, "a", b"old!", length)
    sock, _, _ = raw_handshake(server.sock, "a")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(request(C.CMD_READ, 0, length, cookie=7))
    readable, _, _ = select.select([sock], [], [], 30)
    assert readable, "the read was not served"   # served; most of it waits on the server
    nbdsh(server.uri("a"), f"h.trim({length}, 0)\nh.flush()\n")
    fill(server, "b", b"new!", length)  # takes the slots "a" gave back
    magic, error, cookie = struct.unpack(">IIQ", recv_exact(sock, 16))
    assert (magic, error, cookie) == (C.SIMPLE_REPLY_MAGIC, 0, 7)
    data = recv_exact(sock, length)
    sock.close()
    assert data == b"old!" * (length // 4)
    nbdsh(server.uri("a"), f"assert h.pread({length}, 0) == bytes({length})\n")


def structured_chunks(sock):
    """Read structured reply chunks up to the one flagged DONE."""
    chunks = []
    while True:
        magic, flags, kind, cookie, length = struct.unpack(">IHHQI", recv_exact(sock, 20))
        assert magic == C.STRUCTURED_REPLY_MAGIC
        chunks.append((kind, recv_exact(sock, length)))
        if flags & C.REPLY_FLAG_DONE:
            return chunks


def test_structured_read_sends_unwritten_chunks_as_holes(server):
    head, tail = b"head" * 16384, b"tail" * 16384
    nbdsh(server.uri("a"), f"h.pwrite(b'head' * 16384, 0)\n"
                           f"h.pwrite(b'tail' * 16384, {256 * 1024})\n")
    sock, _, _ = raw_handshake(server.sock, "a", structured=True)
    sock.sendall(request(C.CMD_READ, 0, 320 * 1024, cookie=3))
    content = bytearray(320 * 1024)
    kinds = []
    for kind, payload in structured_chunks(sock):
        kinds.append(kind)
        if kind == C.REPLY_TYPE_OFFSET_DATA:
            offset = struct.unpack_from(">Q", payload)[0]
            content[offset:offset + len(payload) - 8] = payload[8:]
        elif kind == C.REPLY_TYPE_OFFSET_HOLE:
            offset, size = struct.unpack(">QI", payload)
            assert content[offset:offset + size] == bytes(size)
    sock.close()
    assert C.REPLY_TYPE_OFFSET_HOLE in kinds
    assert bytes(content) == head + bytes(192 * 1024) + tail


def simple_reply(sock):
    magic, error, cookie = struct.unpack(">IIQ", recv_exact(sock, 16))
    assert magic == C.SIMPLE_REPLY_MAGIC
    return error, cookie


def test_streamed_write_with_fua_reads_back(server):
    payload = b"fua!" * (MiB // 2)
    sock, _, _ = raw_handshake(server.sock, "a")
    sock.sendall(write(MiB, payload, cookie=5, flags=C.CMD_FLAG_FUA))
    assert simple_reply(sock) == (0, 5)
    sock.sendall(request(C.CMD_READ, MiB, len(payload), cookie=6))
    assert simple_reply(sock) == (0, 6)
    assert recv_exact(sock, len(payload)) == payload
    sock.close()


@pytest.fixture
def tiny_server(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        pool_with_volumes(str(mnt / "pool"), [("a", 64 * MiB)])
        with ServerProcess(mnt / "pool", tmp_path / "nbd.sock") as srv:
            yield srv
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_write_that_fills_the_disk_midway_fails_and_the_connection_goes_on(tiny_server):
    sock, _, _ = raw_handshake(tiny_server.sock, "a")
    sock.sendall(write(0, b"keep" * 1024, cookie=1))
    assert simple_reply(sock) == (0, 1)
    sock.sendall(write(MiB, b"full" * (4 * MiB), cookie=2))   # 16 MiB > the disk
    assert simple_reply(sock) == (C.NBD_ENOSPC, 2)
    sock.sendall(request(C.CMD_READ, 0, 4096, cookie=3))     # parsed after the drain
    assert simple_reply(sock) == (0, 3)
    assert recv_exact(sock, 4096) == b"keep" * 1024
    sock.close()


def chunk_patterns(data, size=64 * 1024):
    """The 4-byte pattern of each chunk of `data`, or None for a mixed one."""
    out = []
    for off in range(0, len(data), size):
        piece = data[off:off + size]
        out.append(piece[:4] if piece == piece[:4] * (size // 4) else None)
    return out


def test_snapshot_during_a_streamed_write_holds_a_prefix_and_never_changes(tmp_path):
    from daemon_helpers import running, write_config
    length = 8 * MiB
    with running(write_config(tmp_path)) as daemon:
        daemon.ok("volume", "create", "data", "--size", "16M")
        daemon.nbdsh("data", f"h.pwrite(b'old!' * {length // 4}, 0); h.flush()")
        sock, _, _ = raw_handshake(daemon.nbd_socket, "data")
        payload = b"new!" * (length // 4)
        sock.sendall(write(0, payload, cookie=1)[:28 + length // 2])
        deadline = time.monotonic() + 30  # until the server has written a first piece
        while "new!" not in daemon.nbdsh("data", "print(h.pread(4, 0))"):
            assert time.monotonic() < deadline, "no piece of the write landed"
            time.sleep(0.05)
        daemon.ok("snapshot", "create", "data@mid")
        before = daemon.nbdsh("data@mid", f"print(h.pread({length}, 0).hex())")
        sock.sendall(payload[length // 2:])
        assert simple_reply(sock) == (0, 1)
        sock.close()
        after = daemon.nbdsh("data@mid", f"print(h.pread({length}, 0).hex())")
        volume = daemon.nbdsh("data", f"print(h.pread({length}, 0).hex())")
    assert after == before
    patterns = chunk_patterns(bytes.fromhex(before.strip()))
    new = patterns.index(b"old!")
    assert 0 < new <= len(patterns) // 2
    assert patterns == [b"new!"] * new + [b"old!"] * (len(patterns) - new)
    assert bytes.fromhex(volume.strip()) == payload
