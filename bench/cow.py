"""Copy-on-write cost and raw engine throughput.

1. 4 KiB random writes on a fully written 1 GiB volume, before and right
   after a snapshot (N = 16384 writes, so that most land in chunks still
   shared with the snapshot): ratio after/before, target >= 0.5. Two
   identical volumes, one just snapshotted, take alternate writes, each timed,
   so that noise from a shared machine falls on both sides alike.
2. Sequential 1 MiB writes and reads through the engine vs plain
   os.pwrite/os.pread on a file of the same size on the same disk: ratio.

`--chunk-sizes 16K,64K,256K,1M` repeats (1) for several chunk sizes: the
figures behind the default chunk size (see README).

A copy-on-write needs a chunk of fresh page-cache memory, an in-place write
none, so (1) also prints what the machine charges for that, measured in the
same run with plain files: a chunk-sized pwrite into fresh file space vs
over cached data. On a VM whose host reclaims freed guest memory (virtio
balloon free page reporting) the first touch of each page is a host fault
and the fresh write costs several times more than on a warm machine; read
the copy-on-write ratio next to it.
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, print_table  # noqa: E402

from rokfs.pool import DEFAULT_CHUNK_SIZE, Pool  # noqa: E402
from rokfs.units import format_size, parse_size  # noqa: E402

SIZE = 1 << 30
BLOCK = 4096
MIB = 1 << 20


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prefill(vol):
    block = os.urandom(MIB)
    for offset in range(0, SIZE, MIB):
        vol.pwrite(offset, block)


def interleaved_writes(plain, snapped, count, seed):
    """Alternate 4 KiB writes to a volume without and one right after a
    snapshot, timing each, so machine noise hits both sides alike."""
    rng = random.Random(seed)
    data = os.urandom(BLOCK)
    clock = time.perf_counter
    spent = [0.0, 0.0]
    for _ in range(count):
        for side, vol in enumerate((plain, snapped)):
            offset = rng.randrange(SIZE // BLOCK) * BLOCK
            t0 = clock()
            vol.pwrite(offset, data)
            spent[side] += clock() - t0
    return count / spent[0], count / spent[1]


def fresh_memory_cost(tmp, chunk_size, count=4096):
    """(us per chunk-sized pwrite into fresh file space, over cached data)."""
    path = os.path.join(tmp, "fresh")
    data = os.urandom(chunk_size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, count * chunk_size)
        fresh = timed(lambda: [os.pwrite(fd, data, i * chunk_size) for i in range(count)])
        cached = timed(lambda: [os.pwrite(fd, data, i * chunk_size) for i in range(count)])
    finally:
        os.close(fd)
        os.unlink(path)
    return fresh / count * 1e6, cached / count * 1e6


def cow_ratio(tmp, chunk_size, count, rep):
    path = os.path.join(tmp, f"cow-{chunk_size}-{rep}")
    try:
        with Pool.create(path, chunk_size) as pool:
            before, after = pool.create_volume("before", SIZE), pool.create_volume("after", SIZE)
            prefill(before)
            prefill(after)
            pool.commit()
            pool.create_snapshot("after@s")
            return interleaved_writes(before, after, count, seed=rep)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sequential(tmp, rep):
    block = os.urandom(MIB)
    path = os.path.join(tmp, f"plain-{rep}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    plain_w = SIZE / timed(lambda: [os.pwrite(fd, block, o) for o in range(0, SIZE, MIB)])
    os.fdatasync(fd)
    plain_r = SIZE / timed(lambda: [os.pread(fd, MIB, o) for o in range(0, SIZE, MIB)])
    os.close(fd)
    os.unlink(path)
    with Pool.create(os.path.join(tmp, f"seq-{rep}")) as pool:
        vol = pool.create_volume("v", SIZE)
        eng_w = SIZE / timed(lambda: [vol.pwrite(o, block) for o in range(0, SIZE, MIB)])
        pool.commit()
        eng_r = SIZE / timed(lambda: [vol.pread(o, MIB) for o in range(0, SIZE, MIB)])
    shutil.rmtree(os.path.join(tmp, f"seq-{rep}"))
    return plain_w, eng_w, plain_r, eng_r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", default=format_size(DEFAULT_CHUNK_SIZE))
    parser.add_argument("--writes", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to put the pools (a real disk)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for chunk_size in [parse_size(c) for c in args.chunk_sizes.split(",")]:
            runs = [cow_ratio(tmp, chunk_size, args.writes, rep) for rep in range(args.reps)]
            before = median([b for b, _ in runs])
            after = median([a for _, a in runs])
            fresh, cached = fresh_memory_cost(tmp, chunk_size)
            rows.append((format_size(chunk_size), f"{before:.0f}", f"{after:.0f}",
                         f"{after / before:.2f}", f"{SIZE // chunk_size}",
                         f"{fresh:.1f} / {cached:.1f}"))
        print_table(f"4 KiB random writes, {args.writes} before / right after a snapshot "
                    "(ops/s, median)", ("chunk", "before", "after", "ratio", "chunks/GiB",
                                        "chunk pwrite us: fresh / cached"), rows)
        seq = [sequential(tmp, rep) for rep in range(args.reps)]
    pw, ew, pr, er = (median([s[i] for s in seq]) for i in range(4))
    print_table("sequential 1 MiB I/O, 1 GiB (MiB/s, median)",
                ("op", "plain file", "rokfs engine", "ratio"),
                [("write", f"{pw / MIB:.0f}", f"{ew / MIB:.0f}", f"{ew / pw:.2f}"),
                 ("read", f"{pr / MIB:.0f}", f"{er / MIB:.0f}", f"{er / pr:.2f}")])


if __name__ == "__main__":
    main()
