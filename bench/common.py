"""Helpers shared by the benchmarks: medians, percentiles, a table printer."""

import statistics


def median(values):
    return statistics.median(values)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def print_table(title, header, rows):
    print(f"\n== {title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


# -- fio benches (bench/nbd.py, bench/fuse.py) ---------------------------------

def run_fio(cmd, rw):
    """Run fio with JSON output; returns (MiB/s, IOPS) of its one job."""
    import json
    import subprocess
    res = subprocess.run([*cmd, "--output-format=json"], capture_output=True, text=True,
                         check=True)
    job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return side["bw"] / 1024, side["iops"]


def select_workloads(workloads, only):
    """Keep the workloads whose label contains one of the comma-separated words."""
    if not only:
        return workloads
    words = [w.strip().lower() for w in only.split(",")]
    return [w for w in workloads if any(x in w[0].lower() for x in words)]


def write_seed(path, size):
    """A file of `size` random bytes (MiB granularity) both sides start from."""
    import os
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))


def bench_setup(args, name, tools, workloads):
    """What a fio side-by-side bench starts from: exit unless `tools` are
    installed; (the image size, the workloads --only picks)."""
    import shutil
    import sys
    from rokfs.units import parse_size
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"bench/{name}.py needs {tool}")
    return parse_size(args.size), select_workloads(workloads, args.only)


def seed_and_copy(tmp, size):
    """(seed image, nbdkit's copy of it): `size` random bytes both sides
    start from, in `tmp` (a Path)."""
    import shutil
    seed, kit_file = tmp / "seed.img", tmp / "nbdkit.img"
    write_seed(seed, size)
    shutil.copyfile(seed, kit_file)
    return seed, kit_file


def fio_arguments(parser, size, runtime):
    """The options every fio side-by-side bench takes."""
    parser.add_argument("--size", default=size, help="image size (default %(default)s)")
    parser.add_argument("--runtime", type=int, default=runtime, help="seconds per fio run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per workload")
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--only", help="comma-separated words selecting workloads, e.g. seq,4K")
