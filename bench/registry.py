"""The registry between two pools and one moto S3 server (its own process,
over HTTP), each figure next to its anchor in the same run:

- publish (A) -> first successful read on B of the new version, B's poller
  running: 1 GiB and 16 GiB versions (sparse: data at both ends, a manifest
  of the full size). Target: <= 2 s plus one poll interval, size-independent.
- a subscription's background hydration vs raw boto3 GET of the same bytes
  (the packs the publish wrote) at the same concurrency. Target: >= 0.8x.

Medians of --rounds runs; a ratio is the median of the rounds' paired
ratios (range in brackets).
"""

import argparse
import concurrent.futures
import os
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, print_table  # noqa: E402
from remote import paired_ratio, run_against_moto, s3_client, snapshot_of, warm_remote  # noqa: E402

from rokfs.control import Control  # noqa: E402
from rokfs.pool import Pool  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


async def pools(tmp, spec, concurrency, tag, poll):
    """Publisher A and subscriber B (trusting A), each with its own pool."""
    a = Control(Pool.create(os.path.join(tmp, f"a-{tag}")),
                {"default": await warm_remote(spec, concurrency)})
    b = Control(Pool.create(os.path.join(tmp, f"b-{tag}")),
                {"default": await warm_remote(spec, concurrency)})
    b.registry_poll = poll
    b.registry_trust("team", a.registry_key()["publisher_key"])
    return a, b


async def publish_to_first_read(tmp, spec, size, tag, poll):
    """Seconds from A's publish returning to B's first good read of the
    version's last 4 KiB, with B subscribed and its poller running."""
    a, b = await pools(tmp, spec, 8, tag, poll)
    await a.create_volume("big", size)
    dev = a.open_device("big")
    await dev.pwrite(0, os.urandom(MiB))
    await dev.pwrite(size - MiB, os.urandom(MiB))
    tail = bytes(await dev.pread(size - 4096, 4096))
    dev.close()
    await a.create_snapshot("big@s")
    await b.registry_subscribe(f"team/{tag}")
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run_background)
        await trio.sleep(poll / 2)             # the poll is somewhere in its interval
        await a.registry_publish("big@s", f"team/{tag}")
        t0 = time.perf_counter()
        while f"{tag}@v1" not in {s["name"] for s in await b.list_snapshots()}:
            await trio.sleep(0.005)
        dev = b.open_device(f"{tag}@v1")
        got = bytes(await dev.pread(size - 4096, 4096))
        seconds = time.perf_counter() - t0
        dev.close()
        nursery.cancel_scope.cancel()
    assert got == tail
    a.pool.close()
    b.pool.close()
    return seconds


def raw_get_all(client, bucket, keys, concurrency):
    def get(key):
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        total = sum(ex.map(get, keys))
    return time.perf_counter() - t0, total


async def hydration_round(tmp, spec, client, data, concurrency, r):
    """(raw GET seconds, our hydration seconds) of the same packs."""
    a, b = await pools(tmp, spec, concurrency, f"h{r}", 3600)
    await snapshot_of(a, data)
    await a.registry_publish("data@s", f"team/h{r}")
    packs = [o.key for o in await a.remote().run(a.remote().objects.list, "packs/")]
    raw, total = raw_get_all(client, spec["bucket"], [f"{spec['prefix']}/{k}" for k in packs],
                             concurrency)
    assert total >= len(data)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run_background)
        await b.registry_subscribe(f"team/h{r}")
        while b.hydration_status(f"h{r}@v1")["state"] != "hydrated":
            await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    ours = time.perf_counter() - t0
    a.pool.close()
    b.pool.close()
    return raw, ours


async def run(args, url, tmp):
    client = s3_client(url, args.concurrency)
    client.create_bucket(Bucket="bench")
    spec = {"type": "s3", "bucket": "bench", "prefix": "registry", "endpoint_url": url,
            "region": "us-east-1"}
    first = {}
    for size, label in ((GiB, "1 GiB"), (16 * GiB, "16 GiB")):
        first[label] = median([await publish_to_first_read(
            tmp, {**spec, "prefix": f"fr{r}"}, size, f"g{size // GiB}r{r}", args.poll)
            for r in range(args.rounds)])
    target = 2 + args.poll
    print_table(f"publish (A) -> first read on B, poll every {args.poll} s, median of "
                f"{args.rounds}", ("version", "seconds", "target", "of target"),
                [(label, f"{s:.2f}", f"<= {target} s", f"{s / target:.2f}x")
                 for label, s in first.items()]
                + [("16/1 ratio", f"{first['16 GiB'] / first['1 GiB']:.2f}", "~1", "")])
    raw_s, ours_s = [], []
    for r in range(args.rounds):
        data = os.urandom(args.size_mib * MiB)
        raw, ours = await hydration_round(tmp, {**spec, "prefix": f"hy{r}"}, client, data,
                                          args.concurrency, r)
        raw_s.append(raw)
        ours_s.append(ours)
    mb = args.size_mib
    print_table(f"subscription hydration, {mb} MiB random, concurrency {args.concurrency}, "
                f"median of {args.rounds}", ("what", "rokfs", "raw boto3 GET", "ratio",
                                             "target"),
                [("hydrate", f"{mb / median(ours_s):.0f} MiB/s",
                  f"{mb / median(raw_s):.0f} MiB/s", paired_ratio(raw_s, ours_s), ">= 0.8x")])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="B's poll interval, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dir", default=None, help="where to put the pools")
    run_against_moto(run, parser.parse_args())


if __name__ == "__main__":
    main()
