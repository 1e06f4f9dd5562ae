"""Metrics: curl of /metrics shows the counters moving during an fio run over NBD."""

import re
import subprocess
import time

from daemon_helpers import running, write_config


def curl(url):
    return subprocess.run(["curl", "-sf", url], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def counter(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if labels else name
    m = re.search(rf"^{re.escape(key)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_counters_move_during_fio(tmp_path):
    with running(write_config(tmp_path)) as daemon:
        daemon.ok("volume", "create", "bench", "--size", "64M")
        uri = f"nbd+unix:///bench?socket={daemon.nbd_socket}"
        fio = subprocess.Popen(
            ["fio", "--name=w", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
             "--bs=4k", "--iodepth=8", "--size=64M", "--time_based", "--runtime=3",
             "--output-format=terse"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        seen = []
        deadline = time.monotonic() + 20
        while fio.poll() is None and time.monotonic() < deadline:
            seen.append(counter(curl(daemon.metrics_url), "rokfs_io_ops_total",
                                image="bench", op="write"))
            time.sleep(0.5)
        out, err = fio.communicate(timeout=30)
        assert fio.returncode == 0, err
        final = curl(daemon.metrics_url)
    print("write ops seen by successive scrapes:", seen)
    moving = [b for a, b in zip(seen, seen[1:]) if b > a]
    assert len(moving) >= 2, seen                     # it rose while fio ran
    written = counter(final, "rokfs_io_bytes_total", image="bench", op="write")
    assert written == counter(final, "rokfs_io_ops_total", image="bench", op="write") * 4096
    assert counter(final, "rokfs_request_seconds_count", front="nbd", op="write") >= seen[-1]
    assert counter(final, "rokfs_pool_used_bytes") > 0
