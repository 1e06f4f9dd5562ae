"""Remote snapshots against one moto S3 server (its own process, over HTTP),
side by side with raw boto3 at the same concurrency:

- push throughput vs raw boto3 PUT of the same bytes in 4 MiB objects (target >= 0.8x)
- background hydration vs raw boto3 GET of the same bytes (target >= 0.8x)
- time from pull to the first successful read, 1 GiB and 16 GiB manifests
  (target <= 1 s, size-independent)
- S3 requests per GiB pushed (target <= 1024)

Data is random (incompressible): the worst case for lz4 and for bytes sent.
Next to the hydration ratio, the CPU seconds per GiB that each side costs this
process and the moto server: on a small machine both share the cores, so the
ratio is bounded by the two sides' CPU cost (hydration also verifies every
chunk's blake3 and writes it to disk; the raw side drops what it read).
Each throughput figure is the median of --rounds runs; a ratio is the median
of the rounds' ratios (range in brackets).
"""

import argparse
import concurrent.futures
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

import boto3
import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, print_table  # noqa: E402

from rokfs.control import Control  # noqa: E402
from rokfs.pool import Pool  # noqa: E402
from rokfs.remote import open_remote  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
MOTO = {}                       # "pid" of the moto server started last


def cpu_seconds():
    """(CPU seconds of this process, of the moto server) so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    with open(f"/proc/{MOTO['pid']}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    moto = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own.ru_utime + own.ru_stime, moto


def start_moto():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    MOTO["pid"] = proc.pid
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto server did not start")


def s3_client(url, concurrency):
    import botocore.config
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        config=botocore.config.Config(max_pool_connections=2 * concurrency))


def raw_put(client, bucket, blobs, concurrency):
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                    blobs.items()))
    return time.perf_counter() - t0


def raw_get(client, bucket, keys, concurrency):
    """Each body is read whole and dropped, as a consumer that stores it would
    (keeping all of them would make the raw side pay for fresh memory)."""
    def get(key):
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        got = sum(ex.map(get, keys))
    seconds = time.perf_counter() - t0
    assert got == len(keys) * 4 * MiB
    return seconds


async def warm_remote(spec, concurrency):
    """A remote as a daemon holds it: client made and connected (the raw
    side's client is too), so that neither side's timing pays for start-up."""
    remote = open_remote(spec, concurrency=concurrency)
    await remote.run(remote.objects.list, "manifests/")
    return remote


async def snapshot_of(control, data):
    """Volume `data` holding `data`, written in 4 MiB pieces, and its
    snapshot `data@s`."""
    await control.create_volume("data", len(data))
    dev = control.open_device("data")
    for off in range(0, len(data), 4 * MiB):
        await dev.pwrite(off, data[off:off + 4 * MiB])
    dev.close()
    await control.create_snapshot("data@s")


async def push_round(tmp, spec, data, concurrency, round_no):
    remote = await warm_remote(spec, concurrency)
    pool = Pool.create(os.path.join(tmp, f"push{round_no}"))
    control = Control(pool, {"default": remote})
    await snapshot_of(control, data)
    before = remote.objects.requests
    t0 = time.perf_counter()
    result = await control.push("data@s")
    seconds = time.perf_counter() - t0
    requests = remote.objects.requests - before
    pool.close()
    return seconds, requests, result


async def hydrate_round(tmp, spec, concurrency, round_no):
    remote = await warm_remote(spec, concurrency)
    pool = Pool.create(os.path.join(tmp, f"pull{round_no}"))
    control = Control(pool, {"default": remote})
    await control.pull("data@s", "copy")
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(control.run_background)
        while control.hydration_status("copy")["state"] != "hydrated":
            await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    seconds = time.perf_counter() - t0
    cpu = [b - a for a, b in zip(cpu0, cpu_seconds())]
    pool.close()
    return seconds, cpu


async def first_read(tmp, spec, size, tag):
    """Push a sparse volume of `size` with data at both ends, pull, read the end."""
    remote = open_remote(spec)
    src = Pool.create(os.path.join(tmp, f"src-{tag}"))
    control = Control(src, {"default": remote})
    await control.create_volume("big", size)
    dev = control.open_device("big")
    await dev.pwrite(0, os.urandom(MiB))
    await dev.pwrite(size - MiB, os.urandom(MiB))
    tail = await dev.pread(size - 4096, 4096)
    dev.close()
    await control.create_snapshot(f"big@{tag}")
    await control.push(f"big@{tag}")
    src.close()
    dst = Pool.create(os.path.join(tmp, f"dst-{tag}"))
    control = Control(dst, {"default": open_remote(spec)})
    t0 = time.perf_counter()
    await control.pull(f"big@{tag}", "copy")
    dev = control.open_device("copy")
    got = await dev.pread(size - 4096, 4096)
    seconds = time.perf_counter() - t0
    assert got == tail
    dev.close()
    dst.close()
    return seconds


def paired_ratio(raw_seconds, our_seconds):
    """Median of the rounds' ratios: each round runs the raw side and ours
    back to back, so a slow spell of the machine hits both of a pair."""
    ratios = sorted(r / o for r, o in zip(raw_seconds, our_seconds))
    return f"{median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


async def run(args, url, tmp):
    client = s3_client(url, args.concurrency)
    client.create_bucket(Bucket="bench")
    spec = {"type": "s3", "bucket": "bench", "prefix": "rokfs", "endpoint_url": url,
            "region": "us-east-1"}
    size = args.size_mib * MiB
    push_s, raw_put_s, hyd_s, raw_get_s, reqs = [], [], [], [], []
    raw_cpu, hyd_cpu = [], []           # [(own, moto)] CPU seconds per round
    for r in range(args.rounds):
        data = os.urandom(size)
        blobs = {f"raw/{r}/{i:06d}": data[i * 4 * MiB:(i + 1) * 4 * MiB]
                 for i in range(size // (4 * MiB))}
        spec_r = {**spec, "prefix": f"rokfs{r}"}
        raw_put_s.append(raw_put(client, "bench", blobs, args.concurrency))
        seconds, requests, _ = await push_round(tmp, spec_r, data, args.concurrency, r)
        push_s.append(seconds)
        reqs.append(requests * GiB / size)
        before = cpu_seconds()
        raw_get_s.append(raw_get(client, "bench", list(blobs), args.concurrency))
        raw_cpu.append([b - a for a, b in zip(before, cpu_seconds())])
        seconds, cpu = await hydrate_round(tmp, spec_r, args.concurrency, r)
        hyd_s.append(seconds)
        hyd_cpu.append(cpu)
        del data, blobs
    mb = size / MiB
    rows = [("push", f"{mb / median(push_s):.0f} MiB/s", f"{mb / median(raw_put_s):.0f} MiB/s",
             paired_ratio(raw_put_s, push_s), ">= 0.8x"),
            ("hydrate", f"{mb / median(hyd_s):.0f} MiB/s", f"{mb / median(raw_get_s):.0f} MiB/s",
             paired_ratio(raw_get_s, hyd_s), ">= 0.8x")]
    print_table(f"throughput, {args.size_mib} MiB random data, concurrency {args.concurrency}, "
                f"median of {args.rounds}", ("what", "rokfs", "raw boto3", "ratio", "target"),
                rows)
    per_gib = GiB / size

    def cpu_row(what, rounds):
        own, moto = (median([r[i] for r in rounds]) * per_gib for i in (0, 1))
        return what, f"{own:.2f}", f"{moto:.2f}", f"{own + moto:.2f}"
    print_table(f"CPU seconds per GiB, median of {args.rounds}",
                ("what", "this process", "moto", "both"),
                [cpu_row("raw boto3 GET", raw_cpu), cpu_row("hydrate", hyd_cpu)])
    print_table("S3 requests per GiB pushed", ("rokfs", "target"),
                [(f"{median(reqs):.0f}", "<= 1024")])
    small = median([await first_read(tmp, {**spec, "prefix": "fr"}, GiB, f"g1-{r}")
                    for r in range(args.rounds)])
    big = median([await first_read(tmp, {**spec, "prefix": "fr"}, 16 * GiB, f"g16-{r}")
                  for r in range(args.rounds)])
    print_table(f"pull -> first successful read (of the last chunk), median of {args.rounds}",
                ("manifest", "seconds", "target"),
                [("1 GiB", f"{small:.3f}", "<= 1 s"), ("16 GiB", f"{big:.3f}", "<= 1 s"),
                 ("16/1 ratio", f"{big / small:.2f}", "~1 (size-independent)")])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dir", default=None, help="where to put the pools")
    run_against_moto(run, parser.parse_args())


def run_against_moto(run, args):
    """trio.run(run, args, moto's URL, a temporary directory under
    args.dir) with a moto server in its own process for the duration."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    proc, url = start_moto()
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            trio.run(run, args, url, tmp)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
