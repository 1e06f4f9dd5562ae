"""Snapshot latency: a 1 GiB volume vs a 1 TiB sparse volume with >= 1M mapped
chunks. Each snapshot is durable when it returns (it includes the commit).

The 1 TiB volume's 1,048,576 mapped chunks are metadata-only: its map points
at reserved slots whose data is never written (writing 64 GiB would measure
the disk, not the snapshot). The 1 GiB volume is fully written with data.

Target: p99 <= 5 ms and p50(1 TiB) / p50(1 GiB) <= 1.5.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, percentile, print_table  # noqa: E402

from rokfs.pool import Pool  # noqa: E402


def fill_with_data(vol, size):
    block = os.urandom(1 << 20)
    for offset in range(0, size, 1 << 20):
        vol.pwrite(offset, block)


def snapshot_latencies(pool, name, count, round_no):
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        pool.create_snapshot(f"{name}@r{round_no}-{i}")
        pool.commit()
        out.append(time.perf_counter() - t0)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="snapshots per volume")
    parser.add_argument("--dir", default=None, help="where to put the pool (a real disk)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        with Pool.create(os.path.join(tmp, "pool")) as pool:
            small = pool.create_volume("small", 1 << 30)
            fill_with_data(small, 1 << 30)
            big = pool.create_volume("big", 1 << 40)
            pool.map_metadata_only("big", 1 << 20)
            pool.commit()
            results = {"small": [], "big": []}
            rounds = 4          # interleave rounds so noise hits both alike
            for r in range(rounds):
                for vol in (small, big):
                    results[vol.name] += snapshot_latencies(pool, vol.name, args.count // rounds, r)
            mapped = {v.name: v.usage()["allocated"] // pool.chunk_size for v in (small, big)}
    rows = []
    for name, label in (("small", "1 GiB, fully written"), ("big", "1 TiB sparse, metadata-only")):
        lat = results[name]
        rows.append((label, mapped[name], len(lat), f"{median(lat) * 1e3:.2f}",
                     f"{percentile(lat, 99) * 1e3:.2f}"))
    print_table("snapshot latency (ms, durable on return)",
                ("volume", "mapped chunks", "n", "p50", "p99"), rows)
    ratio = median(results["big"]) / median(results["small"])
    p99 = max(percentile(results[n], 99) for n in results)
    print(f"\nratio p50(1 TiB)/p50(1 GiB) = {ratio:.2f} (target <= 1.5); "
          f"worst p99 = {p99 * 1e3:.2f} ms (target <= 5 ms)")


if __name__ == "__main__":
    main()
