"""Scale: listings, info, block status and NBD reads with thousands of
snapshots and TiB volumes, small pool and big pool side by side.

Two pools are built the way bench/snapshot.py builds its 1 TiB volume (the
map points at reserved slots whose data is never written):

    small: a 64 GiB volume, 65,536 mapped chunks, 20 snapshots
    big:   a 1 TiB volume, 1,048,576 mapped chunks, 2,000 snapshots

with a 4 KiB write into the same chunk after each snapshot (so each
snapshot owns one chunk, 32 KiB exclusive, and its own map path, as hourly
snapshots of a live volume do). Each pool is
then served by `rokfs serve`, and measured through the real front ends:
`snapshot ls` and `volume info` over the control API (the Python client
rokctl uses), a Prometheus scrape over HTTP, the block status of the whole
volume over NBD (libnbd, as `nbdinfo --map` asks it), the daemon's RSS, pool
open time, and the p99 latency of 4 KiB NBD reads issued by a second
client while listings, infos and scrapes run back to back (the idle p99 of
the same client is the anchor).

    python bench/scale.py [--dir DIR] [--reps 9] [--phase 3]

Targets (issue 16): listing and info <= 100 ms at 2,000 snapshots; read p99
<= 20 ms during any of them; block status of the whole 1 TiB volume <= 1 s;
RSS <= 150 MiB; big/small ratios about 1 (size-independent).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import median, percentile, print_table  # noqa: E402
from nbd import running  # noqa: E402

from rokfs.client import Client  # noqa: E402
from rokfs.pool import Pool  # noqa: E402

POOLS = [  # (name, volume size, mapped chunks, snapshots)
    ("small", 64 << 30, 1 << 16, 20),
    ("big", 1 << 40, 1 << 20, 2000),
]
SYSTEM_PYTHON = "/usr/bin/python3"      # libnbd's Python bindings live there

# Run by the system Python (libnbd): block status of a whole export, or 4 KiB
# reads at random offsets for a while, each with its start time.
NBD_CLIENT = r"""
import json, random, sys, time
import nbd
sock, export, mode, arg = sys.argv[1:5]
h = nbd.NBD()
h.set_export_name(export)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_unix(sock)
size = h.get_size()
if mode == "status":
    times = []
    for _ in range(int(arg)):
        t0, offset, extents = time.perf_counter(), 0, 0
        while offset < size:
            seen = []
            h.block_status(min(size - offset, (1 << 32) - 4096), offset,
                           lambda ctx, off, ents, err: seen.extend(ents))
            offset += sum(seen[0::2])
            extents += len(seen) // 2
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "extents": extents}))
else:
    end, out = time.monotonic() + float(arg), []
    span = min(size, 32 << 30) // 4096
    while time.monotonic() < end:
        t0 = time.monotonic()
        h.pread(4096, random.randrange(span) * 4096)
        out.append((t0, time.monotonic() - t0))
    print(json.dumps(out))
"""


def build(path, size, mapped, snapshots):
    """A pool as described above; returns the seconds it took."""
    t0 = time.perf_counter()
    with Pool.create(path) as pool:
        vol = pool.create_volume("vol", size)
        pool.map_metadata_only("vol", mapped)
        for i in range(snapshots):
            pool.create_snapshot(f"vol@s{i:04d}", {"n": str(i)})
            vol.pwrite(7 * pool.chunk_size, b"w" * 4096)
        pool.commit()
    return time.perf_counter() - t0


def open_times(path, reps=3):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        Pool.open(path).close()
        out.append(time.perf_counter() - t0)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp, pool_path):
    port = free_port()
    config = Path(tmp) / "rokfs.toml"
    config.write_text(f"""
[pool]
path = "{pool_path}"
[nbd]
socket = "{tmp}/nbd.sock"
[control]
socket = "{tmp}/control.sock"
[metrics]
listen = "127.0.0.1:{port}"
[log]
level = "warning"
""")
    return config, f"http://127.0.0.1:{port}/metrics"


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def scrape(url):
    with urllib.request.urlopen(url, timeout=60) as reply:
        return reply.read()


def nbd_client(sock, export, mode, arg):
    return subprocess.Popen([SYSTEM_PYTHON, "-c", NBD_CLIENT, sock, export, mode, str(arg)],
                            stdout=subprocess.PIPE, text=True)


def reads_during_load(tmp, rok, url, phase):
    """p99 of a second client's 4 KiB reads: idle, then during back-to-back
    listings, infos and scrapes (`phase` seconds each)."""
    loads = {"idle": lambda: time.sleep(0.01),
             "snapshot ls": lambda: rok.list_snapshots(volume="vol"),
             "volume info": lambda: rok.volume_info("vol"),
             "metrics scrape": lambda: scrape(url)}
    reader = nbd_client(f"{tmp}/nbd.sock", "vol", "read", phase * len(loads) + 1.5)
    time.sleep(0.7)
    windows = {}
    for name, load in loads.items():
        start = time.monotonic()
        while time.monotonic() < start + phase:
            load()
        windows[name] = (start, time.monotonic())
    reads = json.loads(reader.communicate()[0])
    return {name: percentile([lat for t, lat in reads if lo <= t < hi], 99)
            for name, (lo, hi) in windows.items()}


def rss_mib(pid):
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(tmp, name, size, mapped, snapshots, args):
    pool_path = os.path.join(tmp, "pool")
    built = build(pool_path, size, mapped, snapshots)
    opened = open_times(pool_path)
    config, url = write_config(tmp, pool_path)
    cmd = [sys.executable, "-m", "rokfs.cli", "serve", "--config", str(config)]
    with running(cmd, f"{tmp}/control.sock", f"{tmp}/daemon.log") as proc:
        rok = Client(f"{tmp}/control.sock")
        listing = rok.list_snapshots(volume="vol")
        assert len(listing) == snapshots, len(listing)
        result = {
            "build s": built, "open": median(opened), "snapshots": snapshots, "size": size,
            "snapshot ls": median(timed(lambda: rok.list_snapshots(volume="vol"), args.reps)),
            "volume info": median(timed(lambda: rok.volume_info("vol"), args.reps)),
            "metrics scrape": median(timed(lambda: scrape(url), args.reps)),
        }
        status = json.loads(nbd_client(f"{tmp}/nbd.sock", "vol", "status", 3).communicate()[0])
        result["block status"] = median(status["times"])
        result["extents"] = status["extents"]
        result["read p99"] = reads_during_load(tmp, rok, url, args.phase)
        result["rss"], result["rss peak"] = rss_mib(proc.pid)
        result["exclusive"] = listing[0]["exclusive"]
        rok.close()
    return result


def ms(seconds):
    return f"{seconds * 1e3:.1f}"


def report(results):
    small, big = results["small"], results["big"]

    def row(label, key, fmt, target):
        a, b = small[key], big[key]
        return (label, fmt(a), fmt(b), f"{b / a:.2f}" if a else "-", target)

    for r in results.values():
        r["ls per snapshot"] = r["snapshot ls"] / r["snapshots"]
        r["status per GiB"] = r["block status"] / (r["size"] >> 30)
    rows = [row("snapshot ls (ms)", "snapshot ls", ms, "<= 100 ms"),
            row("  per snapshot listed (us)", "ls per snapshot", lambda v: f"{v * 1e6:.1f}",
                "ratio ~1"),
            row("volume info (ms)", "volume info", ms, "<= 100 ms"),
            row("metrics scrape (ms)", "metrics scrape", ms, ""),
            row("block status, whole volume (ms)", "block status", ms, "<= 1000 ms"),
            row("  per GiB of volume (ms)", "status per GiB", lambda v: f"{v * 1e3:.2f}",
                "ratio ~1"),
            row("pool open (ms)", "open", ms, ""),
            row("daemon RSS (MiB)", "rss", lambda v: f"{v:.0f}", "<= 150 MiB"),
            row("daemon RSS peak (MiB)", "rss peak", lambda v: f"{v:.0f}", "<= 150 MiB")]
    for load in small["read p99"]:
        a, b = small["read p99"][load], big["read p99"][load]
        rows.append((f"4K read p99 during {load} (ms)", ms(a), ms(b), f"{b / a:.2f}",
                     "anchor" if load == "idle" else "<= 20 ms"))
    print_table("scale: small = 64 GiB, 64k chunks, 20 snapshots; big = 1 TiB, 1M chunks, "
                "2,000 snapshots (medians)", ("", "small", "big", "big/small", "target"), rows)
    print(f"\n(extents in the whole-volume block status: small {small['extents']}, "
          f"big {big['extents']}; build: small {small['build s']:.1f} s, "
          f"big {big['build s']:.1f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to put the pools (a real disk)")
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions per figure")
    parser.add_argument("--phase", type=float, default=3.0,
                        help="seconds of each load while the second client reads")
    args = parser.parse_args()
    results = {}
    for name, size, mapped, snapshots in POOLS:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            results[name] = measure(tmp, name, size, mapped, snapshots, args)
    report(results)


if __name__ == "__main__":
    main()
