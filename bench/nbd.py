"""NBD server throughput against `nbdkit file`, side by side, with fio.

Runs fio (ioengine=nbd) against our server (`python -m rokfs.cli nbd`)
serving a pool volume and against `nbdkit file` serving a plain file of the
same size, both prefilled with the same random data, on the same
filesystem, over unix sockets. Each workload alternates between the two
servers for --reps repetitions; the medians and their ratio are printed.

    python bench/nbd.py [--size 512M] [--runtime 5] [--reps 3] [--json]

Targets (issue 3): seq read/write 1M QD8 >= 1.2x nbdkit, rand read 4K
QD16 >= 0.5x nbdkit.

Prefill is flushed and synced before the runs: writeback of the prefill
would otherwise compete for the CPUs and swing the figures by 2x. On a
shared 2-CPU machine expect +-15% between runs; the ratio is the figure.
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import bench_setup, fio_arguments, run_fio, seed_and_copy  # noqa: E402


EXTRA_ENV = {}
WORKLOADS = [  # (label, fio rw, block size, queue depth, target ratio)
    ("seq read 1M QD8", "read", "1M", 8, 1.2),
    ("seq write 1M QD8", "write", "1M", 8, 1.2),
    ("rand read 4K QD16", "randread", "4k", 16, 0.5),
    ("rand write 4K QD16", "randwrite", "4k", 16, None),
]


def wait_for_socket(path, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as s:
            with contextlib.suppress(OSError):
                s.connect(str(path))
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {path}")


def make_pool(path, size):
    import trio
    from rokfs.control import Control
    from rokfs.pool import Pool

    async def build():
        pool = Pool.create(str(path))
        try:
            await Control(pool).create_volume("bench", size)
        finally:
            pool.close()

    trio.run(build)


@contextlib.contextmanager
def running(cmd, sock, log):
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **EXTRA_ENV})
    try:
        wait_for_socket(sock, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fio(uri, rw, bs, depth, size, runtime):
    """One fio run; returns (MiB/s, IOPS)."""
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
           f"--bs={bs}", f"--iodepth={depth}", f"--size={size}", "--time_based",
           f"--runtime={runtime}", "--ramp_time=1"]
    return run_fio(cmd, rw)


def measure(ours, kit, size, runtime, reps):
    rows = []
    for label, rw, bs, depth, target in WORKLOADS:
        ours_bw, kit_bw, ours_iops, kit_iops = [], [], [], []
        for _ in range(reps):
            bw, iops = fio(ours, rw, bs, depth, size, runtime)
            ours_bw.append(bw)
            ours_iops.append(iops)
            bw, iops = fio(kit, rw, bs, depth, size, runtime)
            kit_bw.append(bw)
            kit_iops.append(iops)
        o, k = statistics.median(ours_bw), statistics.median(kit_bw)
        rows.append(dict(workload=label, rokfs_mib_s=round(o, 1), nbdkit_mib_s=round(k, 1),
                         rokfs_iops=round(statistics.median(ours_iops)),
                         nbdkit_iops=round(statistics.median(kit_iops)),
                         ratio=round(o / k, 2), target=target))
    return rows


def print_table(rows, args):
    print(f"NBD server vs nbdkit file ({os.cpu_count()} CPUs, {args.size}, "
          f"{args.runtime}s x {args.reps}, medians)")
    print(f"{'workload':<20} {'rokfs':>18} {'nbdkit':>18} {'ratio':>6}  target")
    for r in rows:
        target = f">= {r['target']}x" if r["target"] else "-"
        ok = "" if not r["target"] else ("ok" if r["ratio"] >= r["target"] else "MISSED")
        print(f"{r['workload']:<20} {r['rokfs_mib_s']:>8.0f} MiB/s {r['rokfs_iops']:>6}/s "
              f"{r['nbdkit_mib_s']:>5.0f} MiB/s {r['nbdkit_iops']:>6}/s "
              f"{r['ratio']:>5.2f}x  {target} {ok}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fio_arguments(parser, size="512M", runtime=5)
    args = parser.parse_args()
    size, WORKLOADS[:] = bench_setup(args, "nbd", ("fio", "nbdkit", "nbdcopy"), WORKLOADS)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="nbd-bench-") as tmp:
        tmp = Path(tmp)
        seed, kit_file = seed_and_copy(tmp, size)
        make_pool(tmp / "pool", size)
        ours_sock, kit_sock = tmp / "rokfs.sock", tmp / "nbdkit.sock"
        ours_cmd = [sys.executable, "-m", "rokfs.cli", "nbd", "--pool", str(tmp / "pool"),
                    "--socket", str(ours_sock)]
        kit_cmd = ["nbdkit", "-f", "-U", str(kit_sock), "file", str(kit_file)]
        with running(ours_cmd, ours_sock, tmp / "rokfs.log"), \
                running(kit_cmd, kit_sock, tmp / "nbdkit.log"):
            ours = f"nbd+unix:///bench?socket={ours_sock}"
            kit = f"nbd+unix:///?socket={kit_sock}"
            subprocess.run(["nbdcopy", "--flush", str(seed), ours], check=True)
            seed.unlink()
            os.sync()  # no writeback of the prefill competing with the runs
            rows = measure(ours, kit, size, args.runtime, args.reps)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, args)


if __name__ == "__main__":
    main()
