"""GC stays correct under the registry: a property test over interleavings
of publish (A), subscribe/sync (B), removing a version and gc with no grace
at all, run concurrently in batches against a real S3 server (moto over
HTTP). After every batch, every chunk that anyone needs is still there and
checks out: those of every version left in the bucket, and the cold chunks
of every image B made (the version may be gone: B's lease keeps them)."""

import os

import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, example, given, settings

from rokfs import errors
from rokfs.control import Control
from rokfs.pool import Pool
from rokfs.remote import open_remote
from s3_helpers import s3_spec

CHUNK = 65536
BUCKET = "team/gc"
OPS = st.sampled_from(["write", "publish", "publish", "sync", "sync", "remove", "gc", "gc",
                       "read"])
BATCHES = st.lists(st.lists(OPS, min_size=1, max_size=3), min_size=3, max_size=8)
# an interleaving that needs B's lease: B has v1, v1 is removed, gc runs
NEEDS_LEASE = [["publish"], ["sync"], ["write"], ["publish"], ["remove", "sync"], ["gc"]]


class World:
    def __init__(self, tmp, spec, seed):
        self.a = Control(Pool.create(str(tmp / "a"), chunk_size=CHUNK),
                         {"default": open_remote(spec)})
        self.b = Control(Pool.create(str(tmp / "b"), chunk_size=CHUNK),
                         {"default": open_remote(spec)})
        self.store = self.a.remote()
        self.spec = spec
        self.random = __import__("random").Random(seed)
        self.snaps = 0
        self.removed = set()

    async def setup(self):
        await self.a.create_volume("data", 16 * CHUNK)
        await self.write()
        self.b.registry_trust("team", self.a.registry_key()["publisher_key"])
        await self.b.registry_subscribe(BUCKET, hydrate=False)

    async def write(self):
        dev = self.a.open_device("data")
        for c in self.random.sample(range(16), 8):      # half the chunks: new content
            await dev.pwrite(c * CHUNK, os.urandom(CHUNK))
        await dev.flush()
        dev.close()
        self.snaps += 1
        await self.a.create_snapshot(f"data@s{self.snaps}")

    async def op(self, name):
        try:
            if name == "write":
                await self.write()
            elif name == "publish":
                await self.a.registry_publish(f"data@s{self.snaps}", BUCKET)
            elif name == "sync":
                await self.b.registry_sync(BUCKET)
            elif name == "remove":
                versions = [v["version"] for v in await self.a.registry_ls(BUCKET)]
                if len(versions) > 1:            # the oldest: what B most likely still reads
                    await self.a.registry_rm(f"{BUCKET}@v{versions[0]}")
            elif name == "gc":
                await self.a.gc_remote(grace_seconds=0)
            elif name == "read":                # B hydrates one image by reading it
                await self.read_one_image()
        except errors.Busy:                     # gc and a publish exclude each other
            pass
        except errors.NotFound:                 # nothing published yet, or removed meanwhile
            pass

    async def read_one_image(self):
        snaps = [s for s in self.b.pool.list_snapshots() if s.base]
        if snaps:
            dev = self.b.open_device(self.random.choice(snaps).full_name)
            await dev.pread(0, dev.size)
            dev.close()

    async def check(self):
        """Every chunk of every version left, and every cold chunk of B's
        images, fetched and verified (store.fetch checks each hash) by a
        store that caches nothing from before."""
        store = open_remote(self.spec)
        for v in await store.run(self._versions):
            for m in v["members"]:
                manifest = m["manifest"]
                await store.fetch(manifest, range(manifest["chunks"]), CHUNK)
        for image in self.b.pool.list_snapshots():
            if image.base:
                base = self.b.remote_state.base(image.base)
                cold = image.cold_chunks()
                got = await store.fetch(base["manifest"], cold, CHUNK)
                assert set(got) == set(cold)

    def _versions(self):
        buckets = self.a.registry.buckets(self.store)
        return [buckets.version(BUCKET, n) for n in buckets.version_numbers(BUCKET)]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=BATCHES, seed=st.integers(0, 2**16))
@example(batches=NEEDS_LEASE, seed=3)
def test_gc_never_removes_a_chunk_anyone_needs(tmp_path_factory, s3_server, batches, seed):
    world = World(tmp_path_factory.mktemp("gc"), s3_spec(s3_server, deadline=30), seed)

    async def main():
        await world.setup()
        for batch in batches:
            async with trio.open_nursery() as nursery:   # the batch's ops interleave
                for name in batch:
                    nursery.start_soon(world.op, name)
            await world.check()
        await world.op("gc")
        await world.check()
        for control in (world.a, world.b):
            report = await control.fsck()
            assert report["clean"], report["problems"]

    trio.run(main)


def test_a_removed_version_b_still_reads_keeps_its_chunks(tmp_path, s3_server):
    """The plain case of the property: B subscribed to v1 (on demand), A
    rewrites everything as v2 and removes v1, gc with no grace: B's lease
    keeps v1's chunks, and B reads v1 whole."""
    world = World(tmp_path, s3_spec(s3_server, deadline=30), 1)

    async def main():
        await world.setup()
        await world.op("publish")
        assert await world.b.registry_sync(BUCKET) == {BUCKET: [1]}
        dev = world.a.open_device("data")
        await dev.pwrite(0, os.urandom(16 * CHUNK))
        dev.close()
        await world.a.create_snapshot("data@new")
        await world.a.registry_publish("data@new", BUCKET)
        await world.a.registry_rm(f"{BUCKET}@v1")
        result = await world.a.gc_remote(grace_seconds=0)
        assert result["deleted_objects"] == 0, result       # v1's chunks are B's lease's
        await world.check()
        dev = world.b.open_device("gc@v1")
        assert len(await dev.pread(0, dev.size)) == 16 * CHUNK
        dev.close()
        await world.b.registry_unsubscribe(BUCKET)
        for image in world.b.pool.list_snapshots():
            await world.b.delete_snapshot(image.full_name)
        await world.b.registry.write_lease(world.store)   # B needs nothing now
        assert (await world.a.gc_remote(grace_seconds=0))["deleted_objects"] > 0

    trio.run(main)
