"""Metrics: curl of /metrics shows the counters moving during an fio run over
NBD; the transfer counters move by exactly what a push, a pull and injected
S3 failures (moto over HTTP behind a proxy that fails chosen requests) did."""

import re
import subprocess
import time

from daemon_helpers import running, write_config
from s3_helpers import FlakyProxy, new_bucket


def curl(url):
    return subprocess.run(["curl", "-sf", url], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def counter(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
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


# -- transfers: a push, a pull and injected S3 failures, against moto over HTTP ------------------

def transfer_counters(text, remote):
    got = {name: counter(text, f"rokfs_{name}_total") for name in
           ("push_bytes", "push_chunks", "pull_bytes", "pull_chunks", "hydrated_bytes",
            "hydrated_chunks")}
    got["retries"] = counter(text, "rokfs_s3_retries_total", remote=remote)
    for kind in ("throttled", "connection", "timeout", "server", "denied", "not_found",
                 "client", "credentials", "other"):
        got[f"errors {kind}"] = counter(text, "rokfs_s3_errors_total", remote=remote, kind=kind)
    return got


def moved(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def requests_by_op(text, remote):
    return {op: counter(text, "rokfs_remote_requests_total", remote=remote, op=op)
            for op in ("put", "get", "list", "head", "delete")}


def test_transfer_counters_count_pushes_pulls_failures_and_retries(tmp_path, s3_server):
    proxy = FlakyProxy(s3_server.port)
    bucket = new_bucket(s3_server.url)
    remote = f"s3://{bucket}/rk"
    config = write_config(tmp_path, f"""
[remotes.default]
type = "s3"
bucket = "{bucket}"
prefix = "rk"
endpoint_url = "{proxy.url}"
region = "us-east-1"
""")
    size, chunk = 4 << 20, 64 << 10
    try:
        with running(config) as daemon:
            daemon.ok("volume", "create", "src", "--size", "4M")
            daemon.nbdsh("src", "import os\nh.pwrite(os.urandom(4 << 20), 0)\nh.flush()")
            daemon.ok("snapshot", "create", "src@s")
            start = transfer_counters(curl(daemon.metrics_url), remote)

            pushed = daemon.json("push", "src@s")
            after_push = transfer_counters(curl(daemon.metrics_url), remote)
            assert pushed["uploaded_chunks"] == size // chunk
            assert moved(start, after_push) == {"push_chunks": size // chunk,
                                                "push_bytes": pushed["uploaded_bytes"]}

            proxy.fail("/rk/packs/", 1, how="503")           # S3 says: slow down
            proxy.fail("/rk/packs/", 1, how="close")         # the connection drops
            daemon.ok("pull", "src@s", "--as", "dst", "--wait")
            final = curl(daemon.metrics_url)
            after_pull = transfer_counters(final, remote)
            assert moved(after_push, after_pull) == {
                "pull_chunks": size // chunk, "pull_bytes": size,
                "hydrated_chunks": size // chunk, "hydrated_bytes": size,
                "errors throttled": 1, "errors connection": 1, "retries": 2}
            assert volume_digest(daemon, "dst") == volume_digest(daemon, "src@s")
        # every request attempt the daemon made, as the proxy in front of S3 saw them
        assert requests_by_op(final, remote) == {op: float(proxy.seen[op]) for op in
                                                 ("put", "get", "list", "head", "delete")}
        assert proxy.seen["put"] > size // (4 << 20) and proxy.seen["get"] > 2
    finally:
        proxy.close()


def volume_digest(daemon, image):
    return daemon.nbdsh(image, "import hashlib\nprint(hashlib.sha256(h.pread(4 << 20, 0))"
                               ".hexdigest())")
