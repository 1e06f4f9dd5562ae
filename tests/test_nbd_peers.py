"""The NBD server against real peers: qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh.

One server (`rokfs nbd` in a subprocess) serves a pool for the module; each
test uses its own volume so the tests do not depend on each other.
"""

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from nbd_helpers import REPO, ServerProcess, nbdinfo_json, nbdsh, pool_with_volumes, run

MiB = 1 << 20
VOLUMES = [("img", 32 * MiB), ("io", 16 * MiB), ("map", 16 * MiB), ("copy", 24 * MiB),
           ("cmds", 8 * MiB), ("base", 8 * MiB), ("multi", 32 * MiB), ("odd", 3 * 512),
           ("big", 1 << 30)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    pool_with_volumes(str(tmp / "pool"), VOLUMES, snapshots=["base@empty"])
    with ServerProcess(tmp / "pool", tmp / "nbd.sock") as srv:
        yield srv


def random_image(path, size, regions):
    """A raw image of `size` bytes, random data in `regions` [(offset, length)]."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in regions:
            f.seek(off)
            f.write(os.urandom(length))
    return path


def strict_off(uri):
    """nbdsh preamble: connect without libnbd's client-side checks, so that
    the server itself has to refuse what is wrong."""
    return f"h.set_strict_mode(0)\nh.connect_uri({uri!r})\n"


def expect_error(call, name):
    return textwrap.dedent(f"""
        try:
            {call}
        except nbd.Error as e:
            assert e.errno == {name!r}, (e.errno, e.string)
        else:
            raise AssertionError("{call} succeeded")
    """)


def test_qemu_img_convert_and_compare(server, tmp_path):
    src = random_image(tmp_path / "src.raw", 32 * MiB,
                       [(0, MiB), (5 * MiB + 123, 777_777), (31 * MiB, MiB)])
    uri = server.qemu("img")
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri])
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 20M 4k", uri])
    res = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri], check=False)
    assert res.returncode == 1 and "Content mismatch at offset 20971520" in res.stdout


def test_qemu_io_patterns(server):
    uri = server.qemu("io")
    cmds = ["write -P 0xa5 0 1M", "write -P 0x3c 1M 65536", "write -P 0x77 3000 1000",
            "aio_write -P 0x11 8M 512k", "aio_write -P 0x22 9M 512k", "aio_flush",
            "read -P 0xa5 0 3000", "read -P 0x77 3000 1000", "read -P 0xa5 4000 1044576",
            "read -P 0x3c 1M 65536", "read -P 0x11 8M 512k", "read -P 0x22 9M 512k",
            "read -P 0 2M 1M", "write -z 8M 4k", "read -P 0 8M 4k", "read -P 0x11 8196k 508k",
            "flush"]
    res = run(["qemu-io", "-f", "raw", *sum((["-c", c] for c in cmds), []), uri])
    assert "failed" not in res.stdout + res.stderr
    res = run(["qemu-io", "-f", "raw", "-c", "read -P 0xa6 0 4k", uri], check=False)
    assert "Pattern verification failed" in res.stdout


def test_nbdinfo_list_json(server):
    info = nbdinfo_json("--list", server.uri(""))
    exports = {e["export-name"]: e for e in info["exports"]}
    assert set(exports) == {name for name, _ in VOLUMES} | {"base@empty"}
    assert exports["img"]["export-size"] == 32 * MiB and not exports["img"]["is_read_only"]
    assert exports["base@empty"]["is_read_only"] and not exports["base@empty"]["can_trim"]
    assert exports["io"]["description"] == "rokfs volume io"
    vol = exports["copy"]
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
                 "can_cache", "can_multi_conn", "can_df"):
        assert vol[flag] is True, flag
    assert "base:allocation" in vol["contexts"]
    assert vol["block_size_minimum"] == 1 and vol["block_size_maximum"] == 32 * MiB


def test_nbdinfo_map_follows_writes_trims_and_zeroes(server):
    uri = server.uri("map")
    nbdsh(uri, textwrap.dedent("""
        h.pwrite(b"\\x01" * (1 << 20), 0)
        h.pwrite(b"\\x02" * (2 << 20), 4 << 20)
        h.trim(1 << 20, 5 << 20)
        h.zero(1 << 20, 1 << 20, nbd.CMD_FLAG_NO_HOLE)
        h.pwrite(b"\\x03" * 65536, 10 << 20)
        h.zero(65536, 10 << 20)
        h.flush()
    """))
    extents = [(e["offset"], e["length"], e["type"]) for e in nbdinfo_json("--map", uri)]
    data, hole = 0, 3
    assert extents == [(0, 2 * MiB, data), (2 * MiB, 2 * MiB, hole), (4 * MiB, MiB, data),
                       (5 * MiB, 11 * MiB, hole)]
    totals = run(["nbdinfo", "--map", "--totals", uri]).stdout.splitlines()
    assert totals[0].split()[:3] == [str(3 * MiB), "18.8%", "0"], totals


def test_nbdcopy_both_ways(server, tmp_path):
    src = random_image(tmp_path / "in.raw", 24 * MiB, [(0, 3 * MiB), (10 * MiB, 7 * MiB + 512)])
    out = tmp_path / "out.raw"
    uri = server.uri("copy")
    run(["nbdcopy", "--flush", str(src), uri])
    run(["nbdcopy", uri, str(out)])
    assert out.read_bytes() == src.read_bytes()
    piped = subprocess.run(["nbdcopy", "--connections=4", uri, "-"], capture_output=True,
                           timeout=60, check=True).stdout
    assert piped == src.read_bytes()


def test_multi_conn_writers_then_flush(server, tmp_path):
    """Four connections write, one flushes: CAN_MULTI_CONN makes it cover all."""
    src = random_image(tmp_path / "m.raw", 32 * MiB, [(0, 32 * MiB)])
    uri = server.uri("multi")
    run(["nbdcopy", "--connections=4", "--request-size=262144", str(src), uri])
    run(["nbdcopy", uri, str(tmp_path / "back.raw")])
    assert (tmp_path / "back.raw").read_bytes() == src.read_bytes()


def test_nbdsh_trim(server):
    uri = server.uri("cmds")
    nbdsh(None, f"h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)\nh.connect_uri({uri!r})\n"
          + textwrap.dedent("""
        h.pwrite(b"T" * (256 << 10), 0)
        h.trim(64 << 10, 128 << 10)         # (count, offset)
        h.trim(1 << 20, 1 << 20, nbd.CMD_FLAG_FUA)
        buf = h.pread(256 << 10, 0)
        assert buf[:128 << 10] == b"T" * (128 << 10)
        assert buf[128 << 10:192 << 10] == bytes(64 << 10)
        assert buf[192 << 10:] == b"T" * (64 << 10)
        seen = []
        h.block_status(256 << 10, 0, lambda ctx, off, ents, err: seen.extend(ents))
        assert seen[:6] == [128 << 10, 0, 64 << 10, 3, 64 << 10, 0], seen
    """))


def test_nbdsh_write_zeroes(server):
    nbdsh(server.uri("cmds"), textwrap.dedent("""
        h.pwrite(b"Z" * (512 << 10), 2 << 20)
        h.zero(100000, (2 << 20) + 1000)
        h.zero(65536, (2 << 20) + (256 << 10), nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
        h.zero(65536, (2 << 20) + (384 << 10), nbd.CMD_FLAG_FAST_ZERO)
        buf = h.pread(512 << 10, 2 << 20)
        assert buf[:1000] == b"Z" * 1000
        assert buf[1000:101000] == bytes(100000)
        assert buf[101000:256 << 10] == b"Z" * ((256 << 10) - 101000)
        assert buf[256 << 10:320 << 10] == bytes(65536)
        assert buf[384 << 10:448 << 10] == bytes(65536)
        assert buf[448 << 10:] == b"Z" * (64 << 10)
    """) + expect_error("h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)",
                        "ENOTSUP"))


def test_nbdsh_flush_fua_and_cache(server):
    nbdsh(server.uri("cmds"), textwrap.dedent("""
        assert h.can_flush() and h.can_fua() and h.can_cache()
        h.pwrite(b"F" * 4096, 4 << 20, nbd.CMD_FLAG_FUA)
        h.pwrite(b"G" * 4096, 5 << 20)
        h.flush()
        h.cache(1 << 20, 4 << 20)
        cookies = [h.aio_flush() for _ in range(8)]
        while h.aio_in_flight() > 0:
            h.poll(-1)
        assert all(h.aio_command_completed(c) for c in cookies)
        assert h.pread(4096, 4 << 20) == b"F" * 4096
        assert h.pread(4096, 5 << 20) == b"G" * 4096
    """))


def test_zeroing_a_whole_large_export_in_one_request(server):
    """qemu-img convert style: fast-zero everything, then write the data."""
    nbdsh(server.uri("big"), textwrap.dedent("""
        h.pwrite(b"B" * 65536, 600 << 20)
        h.pwrite(b"C" * 100, (1 << 30) - 100)
        h.zero(1 << 30, 0, nbd.CMD_FLAG_FAST_ZERO)
        assert h.pread(65536, 600 << 20) == bytes(65536)
        assert h.pread(100, (1 << 30) - 100) == bytes(100)
        h.pwrite(b"D" * 4096, 700 << 20)
        h.trim((1 << 30) - 4096, 4096, nbd.CMD_FLAG_FUA)
        assert h.pread(4096, 700 << 20) == bytes(4096)
    """))


def test_block_status_req_one_on_a_large_export(server):
    uri = server.uri("big")
    nbdsh(None, f"h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)\nh.connect_uri({uri!r})\n"
          + textwrap.dedent("""
        h.pwrite(b"R" * 4096, 900 << 20)
        def one(length, offset):
            seen = []
            h.block_status(length, offset, lambda c, o, e, err: seen.extend(e),
                           nbd.CMD_FLAG_REQ_ONE)
            return seen
        assert one((1 << 30) - 4096, 0) == [(900 << 20) & ~0xffff, 3], one((1 << 30) - 4096, 0)
        assert one(4096, 900 << 20) == [4096, 0]
        assert one(1 << 20, (900 << 20) + 4096) == [65536 - 4096, 0]
        assert one(8192, (1 << 30) - 8192) == [8192, 3]
    """))


def test_write_to_snapshot_is_eperm(server):
    uri = server.uri("base@empty")
    script = strict_off(uri) + "assert h.is_read_only()\n"
    for call in ("h.pwrite(b'x' * 512, 0)", "h.trim(512, 0)", "h.zero(512, 0)",
                 "h.pwrite(b'x' * 65536, 4096, nbd.CMD_FLAG_FUA)"):
        script += expect_error(call, "EPERM")
    script += "assert h.pread(512, 0) == bytes(512)\nh.flush()\n"
    nbdsh(None, script)


def test_out_of_range_and_bad_flags_get_errors_and_the_connection_survives(server):
    script = strict_off(server.uri("odd"))
    script += expect_error("h.pread(512, 1536)", "EINVAL")
    script += expect_error("h.pwrite(b'x' * 1024, 1024)", "ENOSPC")
    script += expect_error("h.zero(1024, 1024)", "ENOSPC")
    script += expect_error("h.trim(1024, 1024)", "EINVAL")
    script += expect_error("h.pread(512, 0, nbd.CMD_FLAG_NO_HOLE)", "EINVAL")
    script += expect_error("h.pwrite(b'', 0)", "EINVAL")
    script += "h.pwrite(b'abc', 1533)\nassert h.pread(3, 1533) == b'abc'\n"
    nbdsh(None, script)


def test_unknown_export_is_refused(server):
    for name in ("nope", "Bad%20Name", "a@b@c"):
        res = run(["nbdinfo", server.uri(name)], check=False)
        assert res.returncode != 0 and "server replied with error to opt_go" in res.stderr


def test_qemu_nbd_old_export_name_path(server):
    """qemu-io with a non-structured, EXPORT_NAME-style client still works."""
    script = ("h.set_request_structured_replies(False)\nh.set_opt_mode(False)\n"
              f"h.connect_uri({server.uri('io')!r})\n"
              "assert not h.get_structured_replies_negotiated()\n"
              "h.pwrite(b'S' * 1000, 12345)\nassert h.pread(1000, 12345) == b'S' * 1000\n")
    nbdsh(None, script)


def listening_addresses(port):
    """Local IPv4 addresses with a TCP socket listening on `port`."""
    out = []
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def serving_port(srv, timeout=10):
    """The TCP port `srv` logged that it serves NBD on."""
    deadline = time.monotonic() + timeout
    while not (m := re.search(r"serving NBD on \('[^']*', (\d+)\)", srv.read_log())):
        assert time.monotonic() < deadline, srv.read_log()
        time.sleep(0.05)
    return int(m.group(1))


def test_tcp_listener_defaults_to_loopback(tmp_path):
    pool_with_volumes(str(tmp_path / "pool"), [("tcp", MiB)])
    # port 0: the kernel picks one, so no other process can take it first
    srv = ServerProcess(tmp_path / "pool", tmp_path / "x.sock", ["--listen", ":0"])
    with srv:
        port = serving_port(srv)
        assert listening_addresses(port) == ["127.0.0.1"]
        uri = f"nbd://127.0.0.1:{port}/tcp"
        nbdsh(uri, "h.pwrite(b'net' * 100, 0)\nassert h.pread(300, 0) == b'net' * 100\n")


def test_snapshot_export_keeps_old_content(tmp_path):
    pool = tmp_path / "pool"
    pool_with_volumes(str(pool), [("vol", 4 * MiB)])
    srv = ServerProcess(pool, tmp_path / "s.sock")
    with srv:
        nbdsh(srv.uri("vol"), "h.pwrite(b'old!' * 1024, 0)\nh.flush()\n")
    run([sys.executable, "-m", "rokfs.cli", "snapshot", "vol@s1", "--pool", str(pool)], cwd=REPO)
    with srv:
        nbdsh(srv.uri("vol"), "h.pwrite(b'new!' * 1024, 0)\nh.flush()\n")
        nbdsh(srv.uri("vol@s1"), "assert h.pread(4096, 0) == b'old!' * 1024\n")
        nbdsh(srv.uri("vol"), "assert h.pread(4096, 0) == b'new!' * 1024\n")


def test_missing_pool_is_a_clear_error(tmp_path):
    res = run([sys.executable, "-m", "rokfs.cli", "nbd", "--pool", str(tmp_path / "nope"),
               "--socket", str(tmp_path / "s.sock")], check=False, cwd=REPO)
    assert res.returncode == 3 and "no rokfs pool at" in res.stderr
