"""Scale, scaled down to run in seconds: 200 snapshots of a volume with 64k
mapped chunks. Listings, infos, stats and status read the space accounting
the engine keeps (they visit no map node), their figures equal fsck's
recount, and an NBD client is answered while another lists snapshots."""

import json
import subprocess
import threading
import time

import pytest
import trio

from daemon_helpers import running, write_config
from rokfs.client import Client
from rokfs.control import Control
from rokfs.fsck import fsck
from rokfs.pool import Pool

MAPPED = 1 << 16
SNAPSHOTS = 200
SYSTEM_PYTHON = "/usr/bin/python3"     # libnbd's bindings are built for it

# 4 KiB reads at random offsets for a while, each with its start (monotonic).
READER = r"""
import json, random, sys, time
import nbd
h = nbd.NBD()
h.set_export_name("vol")
h.connect_unix(sys.argv[1])
end, out = time.monotonic() + float(sys.argv[2]), []
while time.monotonic() < end:
    t0 = time.monotonic()
    h.pread(4096, random.randrange(1 << 16) * 4096)
    out.append((t0, time.monotonic() - t0))
print(json.dumps(out))
"""


def build(path, chunk_size):
    """The scaled-down pool: each snapshot followed by a write of one chunk
    (the same one), so every snapshot owns one chunk and its own map path."""
    with Pool.create(path, chunk_size=chunk_size) as pool:
        vol = pool.create_volume("vol", 2 * MAPPED * chunk_size)
        pool.map_metadata_only("vol", MAPPED)
        for i in range(SNAPSHOTS):
            pool.create_snapshot(f"vol@s{i:03d}", {"n": str(i)})
            vol.pwrite(7 * chunk_size, b"w" * chunk_size)
        pool.create_group_snapshot("g", ["vol"])


class Visits:
    """Counts the map nodes read while it is on."""

    def __init__(self, nodes, monkeypatch):
        self.count, get = 0, nodes.get

        def counting(node_id):
            self.count += 1
            return get(node_id)
        monkeypatch.setattr(nodes, "get", counting)


def test_listings_infos_and_status_visit_no_map_node(tmp_path, monkeypatch):
    chunk = 4096
    build(tmp_path / "pool", chunk)
    with Pool.open(tmp_path / "pool") as pool:
        control = Control(pool)
        visits = Visits(pool.nodes, monkeypatch)
        listing = trio.run(control.list_snapshots, "vol")
        volume = control.volume_info("vol")
        one = control.snapshot_info("vol@s100")
        stats = [control.stat(s["name"]) for s in listing]
        status = control.status()
        group = control.group_info("g")
        assert visits.count == 0
        monkeypatch.undo()
        report = fsck(pool)
    assert report["clean"], report["problems"]
    assert len(listing) == SNAPSHOTS + 1 and len(stats) == SNAPSHOTS + 1
    recount = report["images"]
    for info in [*listing, volume, one]:
        assert {k: info[k] for k in recount[info["name"]]} == recount[info["name"]]
    assert all(s["exclusive"] == chunk for s in listing[:SNAPSHOTS])
    assert volume["allocated"] == MAPPED * chunk and volume["exclusive"] == 0
    assert status["space"] == report["space"]
    assert status["space"]["allocated"] == (MAPPED + SNAPSHOTS) * chunk
    assert status["space"]["exclusive"] == SNAPSHOTS * chunk
    frees = {k: group["space"].pop(k) for k in ("frees", "frees_exact")}
    assert group["space"] == {k: v for k, v in recount["vol@g"].items()}
    assert frees == {"frees": recount["vol@g"]["exclusive"], "frees_exact": True}


def test_the_cost_of_a_listing_does_not_grow_with_the_volume(tmp_path):
    """Same snapshots, volumes 1 and 64k mapped chunks: listings alike."""
    def listing_time(path, mapped):
        with Pool.create(path, chunk_size=4096) as pool:
            pool.create_volume("vol", 2 * MAPPED * 4096)
            pool.map_metadata_only("vol", mapped)
            for i in range(SNAPSHOTS):
                pool.create_snapshot(f"vol@s{i:03d}")
            control = Control(pool)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                trio.run(control.list_snapshots, "vol")
                times.append(time.perf_counter() - t0)
            return sorted(times)[3]
    small, big = listing_time(tmp_path / "small", 1), listing_time(tmp_path / "big", MAPPED)
    assert big < 5 * small + 0.01, (small, big)   # a walk would cost 64k x 200 visits


def test_an_nbd_read_answers_while_snapshots_are_listed(tmp_path):
    build(tmp_path / "pool", 64 * 1024)           # the chunk size write_config sets
    with running(write_config(tmp_path)) as daemon:
        reader = subprocess.Popen([SYSTEM_PYTHON, "-c", READER, daemon.nbd_socket, "4"],
                                  stdout=subprocess.PIPE, text=True)
        listings, stop = [], threading.Event()

        def list_until_stopped():
            with Client(daemon.control) as rok:
                while not stop.is_set():
                    t0 = time.monotonic()
                    assert len(rok.list_snapshots(volume="vol")) == SNAPSHOTS + 1
                    listings.append((t0, time.monotonic()))
        lister = threading.Thread(target=list_until_stopped)
        time.sleep(0.5)
        lister.start()
        reads = json.loads(reader.communicate(timeout=60)[0])
        stop.set()
        lister.join(60)
    during = [lat for t, lat in reads if any(a <= t < b for a, b in listings)]
    assert len(listings) >= 5 and len(during) >= 10, (len(listings), len(during))
    assert max(lat for _, lat in reads) < 2.0      # generous: a stalled loop takes seconds


@pytest.mark.parametrize("chunks", [1, 1000, 1024, 1025, 3000])
def test_block_status_from_summaries_matches_the_entries(pool, chunks):
    """Uniform leaves are answered from their summaries: the extents must be
    those the entries give, one chunk at a time, on any range."""
    from rokfs.image import HOLE, ZERO_FLAG
    cs = pool.chunk_size
    vol = pool.create_volume("v", 4096 * cs)
    pool.map_metadata_only("v", chunks)
    vol.trim(5 * cs, cs)
    vol.pwrite(3500 * cs, b"x" * 100)
    pool.create_snapshot("v@s")
    for offset, length in [(0, vol.size), (3 * cs + 5, 2000 * cs), (1023 * cs, 2 * cs + 1),
                           (3500 * cs, cs), (4000 * cs, 96 * cs)]:
        want = []
        for c in range(offset // cs, -(-(offset + length) // cs)):
            lo, hi = max(offset, c * cs), min(offset + length, (c + 1) * cs)
            flags = 0 if vol.entry(c) >= 2 else HOLE | ZERO_FLAG
            if want and want[-1][2] == flags:
                want[-1][1] += hi - lo
            else:
                want.append([lo, hi - lo, flags])
        assert vol.extents(offset, length) == [tuple(e) for e in want]


def test_a_pool_without_the_summaries_counts_them_once_at_open(tmp_path):
    """Pools written before the accounting existed open with it recounted."""
    import sqlite3
    with Pool.create(tmp_path / "pool", chunk_size=4096) as pool:
        vol = pool.create_volume("v", 4 << 20)
        vol.pwrite(0, b"a" * 3 * 4096)
        pool.create_snapshot("v@s")
        vol.pwrite(0, b"b" * 4096)
        expected = {i.full_name: i.usage() for i in pool.images()}
    db = sqlite3.connect(tmp_path / "pool" / "meta.db")
    db.execute("UPDATE nodes SET pos = NULL, mapped = NULL, sole = NULL")
    db.execute("UPDATE volumes SET cold = NULL")
    db.execute("UPDATE snapshots SET cold = NULL")
    db.commit()
    db.close()
    with Pool.open(tmp_path / "pool") as pool:
        assert {i.full_name: i.usage() for i in pool.images()} == expected
        assert fsck(pool)["clean"]
    assert expected["v@s"]["exclusive"] == 4096 and expected["v"]["exclusive"] == 4096


def test_fsck_reports_and_repairs_wrong_accounting(tmp_path):
    with Pool.create(tmp_path / "pool", chunk_size=4096) as pool:
        vol = pool.create_volume("v", 1 << 20)
        vol.pwrite(0, b"a" * 8192)
        pool.nodes.sole[vol.root] += 5          # a wrong count, as a bug would leave it
        pool.nodes.dirty_rc.add(vol.root)
        report = fsck(pool)
        assert not report["clean"] and report["accounting"] >= 1 and report["errors"] == 0
        assert any("accounting: node" in p for p in report["problems"])
        assert fsck(pool, repair=True)["repaired"]
    with Pool.open(tmp_path / "pool") as pool:
        assert fsck(pool)["clean"]
        assert pool.get_volume("v").usage()["exclusive"] == 8192


def test_block_status_of_mixed_leaves_stops_at_its_budget(pool, monkeypatch):
    """Past EXTENT_VISITS chunks looked at one by one, the answer stops at a
    leaf boundary: a true prefix of the full answer (NBD lets a reply
    describe less than asked)."""
    from rokfs import image
    cs = pool.chunk_size
    vol = pool.create_volume("v", 8 * 1024 * cs)
    pool.map_metadata_only("v", 8 * 1024)
    for leaf in range(8):
        vol.trim((leaf * 1024 + 3) * cs, cs)          # every leaf mixed
    full = vol.extents(0, vol.size)
    monkeypatch.setattr(image, "EXTENT_VISITS", 2 * 1024)
    part = vol.extents(0, vol.size)
    end = part[-1][0] + part[-1][1]
    assert end == 2 * 1024 * cs
    assert part == [(o, min(n, end - o), f) for o, n, f in full if o < end]


def test_a_big_image_is_freed_in_slices_each_a_consistent_pool(tmp_path):
    from rokfs import pool as pool_module
    chunks = pool_module.FREE_NOW_CHUNKS + 5000
    path = tmp_path / "pool"
    with Pool.create(path, chunk_size=4096) as pool:
        vol = pool.create_volume("big", 2 * chunks * 4096)
        pool.map_metadata_only("big", chunks)
        pool.create_snapshot("big@s")
        vol.pwrite(0, b"x" * 3 * 4096)               # 3 chunks of the volume's own
        pool.commit()
        pool.delete_snapshot("big@s")                # the volume owns everything now
        pool.commit()
        assert pool.get_volume("big").usage()["exclusive"] == chunks * 4096
        pool.delete_volume("big")
        assert pool.freeing and pool.status()["deleting"] == 1
        with pytest.raises(Exception, match="being freed"):
            pool.create_volume("big", 4096)
        for _ in range(3):
            assert pool.free_some()
            pool.commit()
            report = fsck(pool)
            assert report["clean"], report["problems"][:5]
        used = pool.status()["used_bytes"]
        assert 0 < used < chunks * 4096
    with Pool.open(path) as pool:                    # the next open finishes it
        assert pool.status()["deleting"] == 0 and pool.status()["used_bytes"] == 0
        assert not pool.nodes.rc and fsck(pool)["clean"]
        pool.create_volume("big", 4096)


def test_control_frees_a_big_image_in_the_background(tmp_path):
    from rokfs import pool as pool_module
    chunks = pool_module.FREE_NOW_CHUNKS + 3000

    async def main():
        with Pool.create(tmp_path / "pool", chunk_size=4096) as pool:
            control = Control(pool)
            await control.create_volume("big", 2 * chunks * 4096)
            pool.map_metadata_only("big", chunks)
            await control.flush()
            await control.delete_volume("big")
            assert control.status()["deleting"] == 1      # queued, freed in slices
            with trio.fail_after(60):
                while control.status()["deleting"] or control.status()["used_bytes"]:
                    await trio.sleep(0.05)
            assert fsck(pool)["clean"]
    trio.run(main)


def test_rokctl_status_and_group_info_space_equal_fscks_recount(tmp_path):
    """The figures rokctl shows come from the kept accounting; once the
    daemon stops, fsck recounts them from the maps."""
    with running(write_config(tmp_path)) as daemon:
        for name in ("a", "b"):
            daemon.ok("volume", "create", name, "--size", "8M")
            daemon.nbdsh(name, "h.pwrite(b'x' * (1 << 20), 0); h.flush()")
        daemon.ok("snapshot", "create", "a", "b", "--group", "g")
        daemon.nbdsh("a", "h.pwrite(b'y' * (256 << 10), 0); h.flush()")   # g owns those
        daemon.ok("clone", "b@g", "c")
        status = daemon.json("status")
        group = daemon.json("group", "info", "g")
        shown = daemon.ok("group", "info", "g")
    with Pool.open(tmp_path / "pool") as pool:
        report = fsck(pool)
    assert report["clean"], report["problems"]
    assert status["space"] == report["space"]
    members = [report["images"][m] for m in ("a@g", "b@g")]
    frees = {k: group["space"].pop(k) for k in ("frees", "frees_exact")}
    assert group["space"] == {k: sum(m[k] for m in members) for k in members[0]}
    assert group["space"]["exclusive"] == 256 << 10 and "space: " in shown
    assert frees == {"frees": 256 << 10, "frees_exact": True} and "deleting it frees 256K" in shown
