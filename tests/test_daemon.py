"""`rokfs serve`: starts on a pool, serves NBD, shuts down cleanly on
SIGTERM keeping flushed data, and refuses a pool another process holds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rokfs.pool import Pool


def start_daemon(pool_dir, sock, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "rokfs.cli", "serve", "--pool", pool_dir,
                             "--nbd-socket", sock, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"daemon did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def nbdsh(sock, export, script):
    from nbd_helpers import NBDSH_ENV
    uri = f"nbd+unix:///{export}?socket={sock}"
    return subprocess.run(["nbdsh", "-u", uri, "-c", script], capture_output=True,
                          text=True, timeout=60, env=NBDSH_ENV)


def test_serve_nbd_then_sigterm_keeps_flushed_data(tmp_path):
    pool_dir, sock = str(tmp_path / "pool"), str(tmp_path / "run" / "nbd.sock")
    with Pool.create(pool_dir) as pool:
        pool.create_volume("data", 16 << 20)
    proc = start_daemon(pool_dir, sock)
    try:
        listing = subprocess.run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={sock}"],
                                 capture_output=True, text=True, check=True, timeout=30)
        assert [e["export-name"] for e in json.loads(listing.stdout)["exports"]] == ["data"]
        result = nbdsh(sock, "data", "h.pwrite(b'durable!' * 512, 8192); h.flush()")
        assert result.returncode == 0, result.stderr
        second = subprocess.run([sys.executable, "-m", "rokfs.cli", "serve", "--pool", pool_dir,
                                 "--nbd-socket", str(tmp_path / "other.sock")],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and "already open by pid" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serving pool" in out
    with Pool.open(pool_dir) as pool:
        assert pool.volume("data").pread(8192, 4096) == b"durable!" * 512


def test_serve_creates_the_default_pool(tmp_path):
    pool_dir, sock = str(tmp_path / "fresh"), str(tmp_path / "nbd.sock")
    proc = start_daemon(pool_dir, sock)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert os.path.exists(os.path.join(pool_dir, "meta.db"))
