"""Child of the crash test: writes a deterministic random workload to a pool,
printing an acknowledgement line after each completed flush and snapshot,
until it is killed.

    FLUSH <n>      every write numbered < n is durable
    SNAP <name> <n> snapshot <name> holds exactly writes numbered < n

Writes of a few 4 KiB blocks after a snapshot make partial slots; 'fill'
steps run the filler over some of them (content unchanged).
"""

import random
import sys

BLOCK = 4096
VOLUME_BLOCKS = 512          # a 2 MiB volume
CHUNK = 16384                # 4 blocks per chunk: partial-chunk writes make partial slots


def workload(seed):
    """Yield (n, action, arg): ('write', (block, nblocks, version)),
    ('flush', None), ('snap', name) or ('fill', how many partial slots)."""
    rng = random.Random(seed)
    n, last_snap = 0, None
    while True:
        roll = rng.random()
        if roll < 0.08:
            yield n, "flush", None
        elif roll < 0.11 and last_snap != n:    # one snapshot per write count: names differ
            last_snap = n
            yield n, "snap", f"s{n}"
        elif roll < 0.13:
            yield n, "fill", rng.choice((1, 4, 64))
        else:
            block = rng.randrange(VOLUME_BLOCKS)
            nblocks = min(rng.choice((1, 1, 2, 4, 9)), VOLUME_BLOCKS - block)
            yield n, "write", (block, nblocks, rng.randrange(1 << 30))
            n += 1


def block_content(block, version):
    head = f"{block}:{version}:".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def main(pool_dir, seed):
    from rokfs.pool import Pool
    pool = Pool.create(pool_dir, chunk_size=CHUNK)
    vol = pool.create_volume("v", VOLUME_BLOCKS * BLOCK)
    pool.commit()
    print("READY", flush=True)
    for n, action, arg in workload(seed):
        if action == "write":
            block, nblocks, version = arg
            data = b"".join(block_content(b, version) for b in range(block, block + nblocks))
            vol.pwrite(block * BLOCK, data)
        elif action == "fill":
            pool.fill_partials(arg)
        elif action == "flush":
            pool.commit()
            print(f"FLUSH {n}", flush=True)
        else:
            pool.create_snapshot(f"v@{arg}")
            pool.commit()
            print(f"SNAP {arg} {n}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
