"""`rokfs serve`: embedded defaults, restart safety (SIGTERM under load keeps
what was flushed, SIGKILL then restart serves the same data), refusal of a
second daemon on the same pool, and the config precedence."""

import os
import signal
import subprocess
import sys
import time

import pytest

from daemon_helpers import running, write_config
from nbd_helpers import NBDSH_ENV
from rokfs import config
from rokfs.errors import InvalidArgument
from rokfs.pool import Pool

WRITER = """
import sys
n = 0
while True:
    for i in range(16):
        block = n * 16 + i
        h.pwrite(block.to_bytes(8, 'little') * 512, (block % 4096) * 4096)
    h.flush()
    print(n, flush=True)
    n += 1
"""


def test_embedded_default_prints_how_to_use_it(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "ROKFS_METRICS_LISTEN": "127.0.0.1:0"}
    env.pop("ROKFS_CONTROL", None)
    env.pop("ROKFS_POOL", None)
    proc = subprocess.Popen([sys.executable, "-m", "rokfs.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = tmp_path / "run" / "rokfs" / "control.sock"
    deadline = time.monotonic() + 30
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    status = subprocess.run([sys.executable, "-m", "rokfs.rokctl", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert status.returncode == 0 and "chunk size 32K" in status.stdout, status.stderr
    assert f"socket={tmp_path}/run/rokfs/nbd.sock" in out
    assert "try:  rokctl volume create data --size 10G" in out
    assert "nbdfuse" in out and "mount -o loop" in out
    assert "rokfs serve --mount ~/rok" in out
    assert os.path.exists(tmp_path / "data" / "rokfs" / "pool" / "meta.db")


def test_sigterm_during_heavy_writes_keeps_flushed_data(tmp_path):
    with running(write_config(tmp_path)) as daemon:
        daemon.ok("volume", "create", "data", "--size", "16M")
        uri = f"nbd+unix:///data?socket={daemon.nbd_socket}"
        writer = subprocess.Popen(["nbdsh", "-u", uri, "-c", WRITER], env=NBDSH_ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines = [writer.stdout.readline() for _ in range(20)]
        rc, out, log = daemon.stop(signal.SIGTERM)
        rest = writer.stdout.read().split()
        writer.wait(timeout=30)
    assert rc == 0, log
    assert writer.returncode != 0                  # it was still writing when the daemon stopped
    last_flushed = int((lines + rest)[-1])
    assert '"event": "shutdown"' in log
    with Pool.open(str(tmp_path / "pool")) as pool:
        vol = pool.get_volume("data")
        for block in range(max(0, (last_flushed - 200) * 16), (last_flushed + 1) * 16):
            got = int.from_bytes(vol.pread((block % 4096) * 4096, 8), "little")
            assert got >= block, (block, got)     # flushed, or overwritten later


def test_sigkill_then_restart_serves_the_same_data(tmp_path):
    cfg = write_config(tmp_path)
    with running(cfg) as daemon:
        daemon.ok("volume", "create", "data", "--size", "8M")
        daemon.nbdsh("data", "h.pwrite(b'survive!' * 8192, 65536); h.flush()")
        daemon.ok("snapshot", "create", "data@s1", "--label", "run=1")
        daemon.stop(signal.SIGKILL)
    with running(cfg) as daemon:
        assert "survive!" in daemon.nbdsh("data", "print(h.pread(8, 65536 + 8000))")
        assert daemon.json("snapshot", "ls", "--label", "run=1")[0]["name"] == "data@s1"


def test_second_serve_on_the_same_pool_is_refused(tmp_path):
    cfg = write_config(tmp_path)
    with running(cfg) as daemon:
        second = subprocess.run([sys.executable, "-m", "rokfs.cli", "serve", "--config",
                                 str(cfg), "--control-socket", str(tmp_path / "c2.sock"),
                                 "--nbd-socket", str(tmp_path / "n2.sock")],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 6
        assert "already open by pid" in second.stderr
        assert "another rokfs daemon already serves this pool" in second.stderr
        third = subprocess.run([sys.executable, "-m", "rokfs.cli", "serve", "--config",
                                str(cfg), "--pool", str(tmp_path / "pool2"),
                                "--nbd-socket", str(tmp_path / "n3.sock")],
                               capture_output=True, text=True, timeout=60)
        assert third.returncode == 6, third.stderr
        assert f"control socket {daemon.control} is in use" in third.stderr
        fourth = subprocess.run([sys.executable, "-m", "rokfs.cli", "serve", "--config",
                                 str(cfg), "--pool", str(tmp_path / "pool3"),
                                 "--control-socket", str(tmp_path / "c4.sock")],
                                capture_output=True, text=True, timeout=60)
        assert fourth.returncode == 6, fourth.stderr
        assert f"NBD socket {daemon.nbd_socket} is in use" in fourth.stderr
        assert daemon.ok("status")                 # the first one is unharmed


@pytest.mark.parametrize("extra, flags, message", [
    ("sokcet = '/x'\n", [], "unknown key 'sokcet' in [nbd]"),
    ("", ["--nbd-tls", "require"], "NBD TLS: --tls=require needs --tls-cert"),
    ("", ["--metrics-listen", "nowhere"], "invalid metrics address 'nowhere'"),
    ("", ["--nbd-listen", "127.0.0.1:x"], "invalid NBD listen address '127.0.0.1:x'"),
    ("", ["--chunk-size", "3K"], "chunk"),
])
def test_bad_settings_are_refused_clearly(tmp_path, extra, flags, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(write_config(tmp_path).read_text().replace("[nbd]\n", "[nbd]\n" + extra))
    proc = subprocess.run([sys.executable, "-m", "rokfs.cli", "serve", "--config", str(bad),
                           *flags], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "control.sock")


def test_config_precedence_flag_env_file_default(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[nbd]\nsocket = "/file.sock"\nlisten = "127.0.0.1:1"\n'
                    '[metrics]\nlisten = "127.0.0.1:2"\n'
                    '[remotes.s3]\ntype = "s3"\nbucket = "b"\n')

    class Flags:
        nbd_socket = "/flag.sock"
    env = {"ROKFS_NBD_SOCKET": "/env.sock", "ROKFS_NBD_LISTEN": "127.0.0.1:3"}
    cfg = config.load(str(path), env=env, flags=Flags())
    assert cfg["nbd"]["socket"] == "/flag.sock"
    assert cfg["nbd"]["listen"] == "127.0.0.1:3"
    assert cfg["metrics"]["listen"] == "127.0.0.1:2"
    assert cfg["log"]["format"] == "kv"
    assert cfg["remotes"] == {"s3": {"type": "s3", "bucket": "b"}}
    assert config.load(None, env={})["remotes"] == {}   # Control makes "default": remote/ by the pool


@pytest.mark.parametrize("text, message", [
    ("[nbd\n", "not valid TOML"),
    ("[bogus]\nx = 1\n", "unknown section [bogus]"),
    ("[log]\nformat = 'xml'\n", "log.format"),
    ("[control]\nmode = 'rw'\n", "control.mode"),
])
def test_config_errors(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        config.load(str(path), env={})


BAD_FILES = [   # (file content, words of the one line `rokfs serve --config` must print)
    (b"\xff", "is not UTF-8 text (byte 0xff at offset 0)"),
    (b"a = " + b"[" * 5000 + b"]" * 5000, "nests arrays or tables too deeply"),
    (b"[remotes.x]\ntype = 'dir'\n", "[remotes.x]: path is missing"),
    (b"[remotes.x]\ntype = 's3'\nbucket = 'b'\ndeadline = 'soon'\n",
     "[remotes.x]: deadline must be a number of seconds from 0 to 86400, not 'soon'"),
    (b"[remotes.x]\ntype = 's3'\nbucket = 'b'\nregion = 'eu west'\n",
     "[remotes.x]: region: 'eu west' is not a region name"),
    (b"[remotes.x]\ntype = 's3'\nbucket = 'b'\nendpoint_url = 'localhost:9000'\n",
     "[remotes.x]: endpoint_url: 'localhost:9000' is not an endpoint URL"),
    (b"[remotes.x]\ntype = 's3'\nbucket = 'b'\nendpont_url = 'http://h'\n",
     "[remotes.x]: unknown key 'endpont_url' for a 's3' remote"),
    (b"[remotes]\nx = 's3://b/p?endpont_url=http://h'\n",
     "[remotes.x]: remote URL 's3://b/p?endpont_url=http://h': unknown parameter 'endpont_url'"),
    (b"[remotes]\nx = 42\n", "[remotes.x] must be a table or a URL, not an integer"),
    (b"[control]\nsocket = { path = '/x' }\n", "control.socket (from config "),
    (b"[nbd]\nlisten = '127.0.0.1:x'\n", "invalid NBD listen address '127.0.0.1:x'"),
    (b"[pool]\nchunk_size = 3000\n", "pool.chunk_size (from config "),
    (b"[pool]\nreserve = '1K'\n", "must be auto or a size from 2M to 1T, not '1K'"),
    (b"[pool]\nreserve = { size = '8M' }\n",
     "must be auto or a size such as 64M, not a table"),
    (b"[pool]\nreserve = 'plenty'\n", "invalid pool.reserve (from config "),
    (b"[control]\nmode = 999\n", "control.mode (from config "),
    (b"[log]\nlevel = ['info']\n", "log.level (from config "),
]


@pytest.mark.parametrize("content, message", BAD_FILES, ids=[str(i) for i in range(len(BAD_FILES))])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "rokfs.cli", "serve", "--config", str(path),
                           "--pool", str(tmp_path / "pool")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("rokfs: error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == ["bad.toml"]            # nothing opened or created


def test_config_values_are_checked_wherever_they_come_from(tmp_path):
    with pytest.raises(InvalidArgument, match=r"control.mode \(from ROKFS_CONTROL_MODE\)"):
        config.load(None, env={"ROKFS_CONTROL_MODE": "rw"})

    class Flags:
        chunk_size = "1.5K"
    with pytest.raises(InvalidArgument, match=r"pool.chunk_size \(from --chunk-size\)"):
        config.load(None, env={}, flags=Flags())
    path = tmp_path / "c.toml"
    path.write_text("[control]\nmode = 660\ngroup = 0\n[pool]\nchunk_size = 65536\n"
                    "[log]\nlevel = 'DEBUG'\n")
    cfg = config.load(str(path), env={})
    assert cfg["control"]["mode"] == 0o660 and cfg["control"]["group"] == 0
    assert cfg["pool"]["chunk_size"] == 64 << 10 and cfg["log"]["level"] == "debug"
    assert config.load(None, env={})["pool"]["chunk_size"] == 32 << 10
    assert config.load(None, env={})["pool"]["reserve"] is None          # auto
    assert config.load(None, env={"ROKFS_POOL_RESERVE": "1G"})["pool"]["reserve"] == 1 << 30
    path.write_text("[pool]\nreserve = 16777216\n")
    assert config.load(str(path), env={})["pool"]["reserve"] == 16 << 20

    class Reserve:
        pool_reserve = "2T"
    with pytest.raises(InvalidArgument, match=r"pool.reserve \(from --pool-reserve\) must be"):
        config.load(None, env={}, flags=Reserve())
