"""Where servers listen (rokfs.endpoints): the one HOST:PORT reader and the one
stale-socket policy, and each server that binds a unix socket (control API,
NBD, CSI) refusing one that another server answers on."""

import functools
import os
import socket
import subprocess
import sys

import pytest
import trio

from nbd_server.server import serve as serve_nbd
from rokfs import rpc
from rokfs.control import Control
from rokfs.endpoints import claim_unix_socket, parse_tcp_address
from rokfs.errors import AlreadyExists, Busy, InvalidArgument
from rokfs.pool import Pool


@pytest.mark.parametrize("text, expected", [
    ("10.1.2.3:10809", ("10.1.2.3", 10809)), (":7000", ("127.0.0.1", 7000)),
    ("7001", ("127.0.0.1", 7001)), ("[::1]:7002", ("::1", 7002)),
    ("0.0.0.0:0", ("0.0.0.0", 0)), ("localhost:65535", ("localhost", 65535)),
    (" 127.0.0.1:9436 ", ("127.0.0.1", 9436))])
def test_tcp_addresses_accepted(text, expected):
    assert parse_tcp_address(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("127.0.0.1:x", "the port must be a number"),
    ("127.0.0.1:", "missing port"),
    ("127.0.0.1", "missing port"),
    ("nowhere", "missing port"),
    ("", "missing port"),
    ("1.2.3.4:70000", "from 0 to 65535"),
    ("1.2.3.4:-1", "the port must be a number"),
    ("host:port", "the port must be a number"),
    ("::1:80", "[ADDR]:PORT"),
    ("[::1]", "[ADDR]:PORT"),
    ("[::1:80", "[ADDR]:PORT"),
])
def test_tcp_addresses_refused_clearly(text, reason):
    with pytest.raises(InvalidArgument) as caught:
        parse_tcp_address(text, "NBD listen address")
    message = str(caught.value)
    assert message.startswith(f"invalid NBD listen address {text.strip()!r}")
    assert reason in message


# -- the stale-socket policy ------------------------------------------------------------

@pytest.fixture
def alive(tmp_path):
    """A unix socket something listens on."""
    path = str(tmp_path / "alive.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        yield path


def dead_socket(path):
    """A socket file left by a server that died (bound, then closed)."""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
    return str(path)


def bind_and_listen(path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)


def test_absent_socket_is_bound_with_its_directory(tmp_path):
    path = str(tmp_path / "new" / "dir" / "s.sock")
    claim_unix_socket(path, "test")
    bind_and_listen(path)


def test_dead_socket_is_reused(tmp_path):
    path = dead_socket(tmp_path / "dead.sock")
    claim_unix_socket(path, "test")
    assert not os.path.exists(path)
    bind_and_listen(path)


def test_alive_socket_is_refused_naming_it(alive):
    with pytest.raises(Busy, match=f"test socket {alive} is in use"):
        claim_unix_socket(alive, "test")
    assert os.path.exists(alive)


def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path):
    path = tmp_path / "precious"
    path.write_text("data")
    with pytest.raises(AlreadyExists, match="exists and is not a socket"):
        claim_unix_socket(str(path), "test")
    assert path.read_text() == "data"


# -- each server refuses a live socket -------------------------------------------------------

@pytest.fixture
def control(tmp_path):
    pool = Pool.create(str(tmp_path / "pool"), chunk_size=4096)
    yield Control(pool)
    pool.close()


async def test_control_api_refuses_a_live_socket(control, alive):
    with pytest.raises(Busy, match=f"control socket {alive} is in use"):
        await rpc.serve_control(control, alive)
    assert os.path.exists(alive)


async def test_nbd_server_refuses_a_live_socket(control, alive):
    with pytest.raises(Busy, match=f"NBD socket {alive} is in use"):
        await serve_nbd(control, socket_path=alive)
    assert os.path.exists(alive)


async def test_control_api_takes_over_a_dead_socket(control, tmp_path):
    path = dead_socket(tmp_path / "ctl.sock")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(functools.partial(rpc.serve_control, control, path))
        assert bound == path
        nursery.cancel_scope.cancel()


def test_csi_driver_refuses_a_live_socket(tmp_path, alive):
    proc = subprocess.run(
        [sys.executable, "-m", "csi_shim", "--endpoint", f"unix://{alive}", "--node-id", "n1",
         "--rokfs", f"unix://{tmp_path}/none.sock", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"rokfs-csi: error: CSI socket {alive} is in use: another server answers on it "
        "(stop it first, or choose another socket)"]


# -- a bad address on the command line is one line, not a traceback -------------------------

def rokfs(*args):
    return subprocess.run([sys.executable, "-m", "rokfs.cli", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("flags, message", [
    (["serve", "--nbd-listen", "127.0.0.1:x"],
     "invalid NBD listen address '127.0.0.1:x': the port must be a number from 0 to 65535"),
    (["serve", "--metrics-listen", "127.0.0.1:"],
     "invalid metrics address '127.0.0.1:': missing port (expected HOST:PORT)"),
])
def test_serve_refuses_a_bad_address_before_opening_anything(tmp_path, flags, message):
    proc = rokfs(*flags, "--pool", str(tmp_path / "pool"),
                 "--control-socket", str(tmp_path / "control.sock"),
                 "--nbd-socket", str(tmp_path / "nbd.sock"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"rokfs: error: {message}"]
    assert not os.listdir(tmp_path)                    # no pool, no socket


def test_nbd_refuses_a_bad_listen_address(tmp_path):
    Pool.create(str(tmp_path / "pool")).close()
    proc = rokfs("nbd", "--pool", str(tmp_path / "pool"), "--listen", "127.0.0.1:x")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rokfs: error: invalid NBD listen address '127.0.0.1:x': the port must be a number "
        "from 0 to 65535"]
