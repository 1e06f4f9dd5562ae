"""Copy-on-write cost: writes right after a snapshot vs without one.

1. 4 KiB random writes on a fully written 1 GiB volume, before and right
   after a snapshot (N = 16384 writes, so that most land in chunks still
   shared with the snapshot): ratio after/before, target >= 1.0 (issue 19:
   a small write over a shared chunk writes only its 4 KiB blocks, into a
   partial slot). Two identical volumes, one just snapshotted, take
   alternate writes, each timed, so that noise from a shared machine falls
   on both sides alike.
2. Sequential 1 MiB writes over the whole volume, before and right after a
   snapshot, alternating the same way: ratio after/before, target >= 0.9.
   After a snapshot every chunk goes to new space, before it overwrites
   cached data in place; the anchor printed next to it is the same pair
   with a plain file (1 MiB pwrites over cached data vs into fallocated
   space), i.e. what new space costs this machine at all. A third volume,
   new and never written, takes the same writes in the same alternation:
   new space without a snapshot, so after/new is what the snapshot itself
   costs the streaming path.
3. The same as (1) over NBD with fio (4 KiB random writes QD16, 16384 of
   them), side by side with qemu-nbd serving qcow2 images with 128 KiB
   clusters and 4 KiB subclusters (extended_l2=on): the fully written
   image itself (before) and a fresh overlay on it (after). Target: ours
   after >= theirs after. Skipped (with a note) without fio or qemu-nbd.
4. Sequential 1 MiB writes and reads through the engine vs plain
   os.pwrite/os.pread on a file of the same size on the same disk: ratio.

`--chunk-sizes 16K,64K,256K,1M` repeats (1) for several chunk sizes: the
figures behind the default chunk size (see README).

A copy-on-write needs fresh page-cache memory, an in-place write none, so
(1) also prints what the machine charges for that, measured in the same
run with plain files: a chunk-sized pwrite into fresh file space vs over
cached data. On a VM whose host reclaims freed guest memory (virtio
balloon free page reporting) the first touch of each page is a host fault
and the fresh write costs several times more than on a warm machine; read
the copy-on-write ratio next to it.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, print_table, run_fio  # noqa: E402

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


def interleaved_sequential(*volumes):
    """Alternate 1 MiB writes over the whole of each volume, timing each;
    B/s per volume."""
    block = os.urandom(MIB)
    clock = time.perf_counter
    spent = [0.0] * len(volumes)
    for offset in range(0, SIZE, MIB):
        for side, vol in enumerate(volumes):
            t0 = clock()
            vol.pwrite(offset, block)
            spent[side] += clock() - t0
    return tuple(SIZE / s for s in spent)


def plain_sequential(tmp):
    """The anchor of (2): plain os.pwrite of 1 MiB blocks over cached data
    vs into fresh (fallocated) file space, alternating; (B/s, B/s)."""
    block = os.urandom(MIB)
    paths = [os.path.join(tmp, "plain-cached"), os.path.join(tmp, "plain-fresh")]
    fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) for p in paths]
    try:
        for offset in range(0, SIZE, MIB):
            os.pwrite(fds[0], block, offset)
        os.fdatasync(fds[0])
        os.posix_fallocate(fds[1], 0, SIZE)
        spent = [0.0, 0.0]
        for offset in range(0, SIZE, MIB):
            for side, fd in enumerate(fds):
                t0 = time.perf_counter()
                os.pwrite(fd, block, offset)
                spent[side] += time.perf_counter() - t0
    finally:
        for fd, path in zip(fds, paths):
            os.close(fd)
            os.unlink(path)
    return SIZE / spent[0], SIZE / spent[1]


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


def cow_ratio(tmp, chunk_size, count, rep, sequential_too=False):
    """(4 KiB ops/s before, after) and, if asked, 1 MiB B/s (before, after
    a fresh snapshot again, into a new volume: new space, no snapshot)."""
    path = os.path.join(tmp, f"cow-{chunk_size}-{rep}")
    try:
        with Pool.create(path, chunk_size) as pool:
            before, after = pool.create_volume("before", SIZE), pool.create_volume("after", SIZE)
            prefill(before)
            prefill(after)
            pool.commit()
            pool.create_snapshot("after@s")
            small = interleaved_writes(before, after, count, seed=rep)
            if not sequential_too:
                return small, None
            pool.commit()
            pool.fill_partials(pool.partial_count())
            pool.create_snapshot("after@t")
            new = pool.create_volume("new", SIZE)
            pool.commit()
            return small, interleaved_sequential(before, after, new)
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- over NBD with fio, side by side with qemu-nbd on qcow2 with subclusters ------------

def fio_randwrite(uri, count):
    cmd = ["fio", "--name=cow", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
           "--bs=4k", "--iodepth=16", f"--size={SIZE}", f"--io_size={count * BLOCK}"]
    return run_fio(cmd, "randwrite")[1]


def seed_file(tmp):
    path = os.path.join(tmp, "seed.raw")
    with open(path, "wb") as f:
        for _ in range(SIZE // MIB):
            f.write(os.urandom(MIB))
    return path


def ours_over_nbd(tmp, seed, count, rep):
    """fio IOPS (before, after) on a pool served by `rokfs nbd`."""
    from nbd import running
    path = os.path.join(tmp, f"nbd-pool-{rep}")
    with Pool.create(path) as pool:
        for name in ("before", "after"):
            vol = pool.create_volume(name, SIZE)
            with open(seed, "rb") as f:
                for offset in range(0, SIZE, MIB):
                    vol.pwrite(offset, f.read(MIB))
        pool.commit()
        pool.create_snapshot("after@s")
    sock = os.path.join(tmp, f"rokfs-{rep}.sock")
    cmd = [sys.executable, "-m", "rokfs.cli", "nbd", "--pool", path, "--socket", sock]
    try:
        os.sync()
        with running(cmd, sock, os.path.join(tmp, "rokfs.log")):
            return tuple(fio_randwrite(f"nbd+unix:///{name}?socket={sock}", count)
                         for name in ("before", "after"))
    finally:
        shutil.rmtree(path, ignore_errors=True)


def qemu_over_nbd(tmp, seed, count, rep):
    """fio IOPS (before, after) on qcow2 (128 KiB clusters, 4 KiB
    subclusters) served by qemu-nbd: the written image, then an overlay."""
    from nbd import running
    opts = "cluster_size=128k,extended_l2=on"
    base, overlay = os.path.join(tmp, f"base-{rep}.qcow2"), os.path.join(tmp, f"top-{rep}.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", opts, seed, base],
                   check=True)
    os.sync()
    out = []
    try:
        for image in (base, overlay):
            if image == overlay:
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts,
                                "-b", base, "-F", "qcow2", overlay], check=True)
            sock = os.path.join(tmp, f"qemu-{rep}.sock")
            cmd = ["qemu-nbd", "-t", "-f", "qcow2", "-k", sock, image]
            with running(cmd, sock, os.path.join(tmp, "qemu.log")):
                out.append(fio_randwrite(f"nbd+unix:///?socket={sock}", count))
    finally:
        for image in (base, overlay):
            if os.path.exists(image):
                os.unlink(image)
    return tuple(out)


def nbd_side_by_side(tmp, count, reps):
    missing = [t for t in ("fio", "qemu-nbd", "qemu-img") if not shutil.which(t)]
    if missing:
        print(f"\n(NBD side by side skipped: {', '.join(missing)} not installed)")
        return
    seed = seed_file(tmp)
    ours, theirs = [], []
    for rep in range(reps):
        ours.append(ours_over_nbd(tmp, seed, count, rep))
        theirs.append(qemu_over_nbd(tmp, seed, count, rep))
    os.unlink(seed)
    rows = []
    for label, runs in (("rokfs (NBD)", ours), ("qemu-nbd qcow2 128K/4K sub", theirs)):
        before, after = median([b for b, _ in runs]), median([a for _, a in runs])
        rows.append((label, f"{before:.0f}", f"{after:.0f}", f"{after / before:.2f}"))
    ours_after, theirs_after = median([a for _, a in ours]), median([a for _, a in theirs])
    rows.append(("ours/theirs after", "", f"{ours_after / theirs_after:.2f}", ""))
    print_table(f"fio 4 KiB random writes QD16 over NBD, {count} before / right after a "
                "snapshot (IOPS, median)", ("server", "before", "after", "ratio"), rows)


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
    parser.add_argument("--no-nbd", action="store_true", help="skip the fio/qemu-nbd comparison")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        streaming = []
        for chunk_size in [parse_size(c) for c in args.chunk_sizes.split(",")]:
            runs = [cow_ratio(tmp, chunk_size, args.writes, rep,
                              sequential_too=chunk_size == DEFAULT_CHUNK_SIZE)
                    for rep in range(args.reps)]
            before = median([b for (b, _), _ in runs])
            after = median([a for (_, a), _ in runs])
            fresh, cached = fresh_memory_cost(tmp, chunk_size)
            rows.append((format_size(chunk_size), f"{before:.0f}", f"{after:.0f}",
                         f"{after / before:.2f}", f"{SIZE // chunk_size}",
                         f"{fresh:.1f} / {cached:.1f}"))
            if any(seq for _, seq in runs):
                streaming = [seq for _, seq in runs]
                plain = [plain_sequential(tmp) for _ in range(args.reps)]
        print_table(f"4 KiB random writes, {args.writes} before / right after a snapshot "
                    "(ops/s, median; target ratio >= 1.0)",
                    ("chunk", "before", "after", "ratio", "chunks/GiB",
                     "chunk pwrite us: fresh / cached"), rows)
        if streaming:
            before, after, new = (median([s[i] for s in streaming]) for i in range(3))
            cached = median([c for c, _ in plain])
            fresh = median([f for _, f in plain])
            print_table("sequential 1 MiB writes, 1 GiB (MiB/s, median; target ratio >= 0.9)",
                        ("writes", "without a snapshot", "right after one", "ratio"),
                        [("rokfs: overwriting a written volume (in place)", f"{before / MIB:.0f}",
                          f"{after / MIB:.0f}", f"{after / before:.2f}"),
                         ("rokfs: writing a new volume (new space, like after)",
                          f"{new / MIB:.0f}", f"{after / MIB:.0f}", f"{after / new:.2f}"),
                         ("anchor: plain file over cached data / into fallocated space",
                          f"{cached / MIB:.0f}", f"{fresh / MIB:.0f}", f"{fresh / cached:.2f}")])
        if not args.no_nbd:
            nbd_side_by_side(tmp, args.writes, args.reps)
        seq = [sequential(tmp, rep) for rep in range(args.reps)]
    pw, ew, pr, er = (median([s[i] for s in seq]) for i in range(4))
    print_table("sequential 1 MiB I/O, 1 GiB (MiB/s, median)",
                ("op", "plain file", "rokfs engine", "ratio"),
                [("write", f"{pw / MIB:.0f}", f"{ew / MIB:.0f}", f"{ew / pw:.2f}"),
                 ("read", f"{pr / MIB:.0f}", f"{er / MIB:.0f}", f"{er / pr:.2f}")])


if __name__ == "__main__":
    main()
