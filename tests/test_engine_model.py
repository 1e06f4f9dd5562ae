"""Property test: random sequences of engine operations against a pure
in-memory model; every volume and snapshot must read exactly as the model,
and the space accounting the engine keeps as it goes must equal fsck's
recount from the maps (writes, trims, snapshots, clones, deletes, pulled
volumes hydrating chunk by chunk, resizes, reopens).

Run twice: with 4 KiB chunks (every write after a snapshot copies whole
chunks) and with 16 KiB chunks, where small writes over shared chunks make
partial slots (rokfs/partial.py) that later writes, zeroing, snapshots,
clones, deletes, hydration, reopens and the filler meet; fsck must stay
clean.

Each run tries ROKFS_MODEL_EXAMPLES histories (200 in the suite: the two
runs were 3.5 of its 13 minutes at the 500 of the "ci" profile; set it
higher for a longer hunt)."""

import hashlib
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from rokfs.fsck import fsck
from rokfs import pool as pool_module
from rokfs.image import NeedsChunks
from rokfs.pool import Pool

CHUNK = 4096
PATTERN = bytes(range(256))
SIZES = st.sampled_from([16 * 1024, 64 * 1024 + 512, 4 * 1024 * 1024 + 3 * 4096 + 512])


class PoolModel(RuleBasedStateMachine):
    chunk = CHUNK

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="rokfs-model-")
        self.pool = Pool.create(self.dir + "/pool", chunk_size=self.chunk)
        self.free_now = pool_module.FREE_NOW_CHUNKS
        pool_module.FREE_NOW_CHUNKS = 64     # bigger images are freed in slices here
        self.model = {}      # image name -> bytearray
        self.counter = 0

    def teardown(self):
        import shutil
        try:
            self.check_all()
            report = fsck(self.pool)
            assert report["clean"], report["problems"]
            for name in [v.name for v in self.pool.list_volumes()]:
                self.pool.delete_volume(name, recursive=True)
            self.pool.free_all()
            assert self.pool.slots.used_slots() == 0
            assert not self.pool.nodes.rc
            assert not self.pool.partial_count()
        finally:
            pool_module.FREE_NOW_CHUNKS = self.free_now
            self.pool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, op, *args):
        """Call engine `op`; install the cold chunks it needs (from the base,
        as a fetch would) and call it again."""
        while True:
            try:
                return op(*args)
            except NeedsChunks as need:
                self.install(need.image, need.chunks)

    def install(self, image, chunks):
        fetched = {c: base_chunk(image.base, c, self.chunk) for c in chunks}
        plan = self.pool.reserve_install(image, fetched)
        self.pool.slots.write_runs(self.pool.slots.plan_runs([(s, d) for _, s, d in plan]))
        if plan:
            self.pool.finish_install(image, plan)

    def fresh(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def volumes(self):
        return sorted(n for n in self.model if "@" not in n)

    def check_all(self):
        for name, data in self.model.items():
            self.check_extents(name)
            image = self.pool.get_image(name)
            assert image.size == len(data)
            assert bytes(self.run(image.pread, 0, len(data))) == bytes(data), name

    def check_accounting(self):
        report = fsck(self.pool)
        assert report["accounting"] == 0, report["problems"]
        assert self.pool.space() == report["space"]
        for image in self.pool.images():
            assert image.usage() == {"size": image.size, **report["images"][image.full_name]}

    @initialize(size=SIZES)
    def first_volume(self, size):
        self.pool.create_volume("v0", size)
        self.model["v0"] = bytearray(size)

    @rule(size=SIZES)
    def create(self, size):
        name = self.fresh("v")
        self.pool.create_volume(name, size)
        self.model[name] = bytearray(size)

    @precondition(lambda self: self.volumes())
    @rule(data=st.data(), length=st.integers(1, 3 * CHUNK + 7), fill=st.integers(1, 255),
          aligned=st.booleans())
    def write(self, data, length, fill, aligned):
        name = data.draw(st.sampled_from(self.volumes()))
        size = len(self.model[name])
        length = min(length, size)
        offset = data.draw(st.integers(0, size - length))
        if aligned:         # whole 4 KiB blocks: the common case of partial slots
            offset -= offset % 4096
            length = min(max(4096, length - length % 4096), size - offset)
        payload = (PATTERN[fill:] + PATTERN * (length // 256 + 1))[:length]
        self.run(self.pool.get_volume(name).pwrite, offset, payload)
        self.model[name][offset:offset + length] = payload

    @precondition(lambda self: self.volumes())
    @rule(data=st.data(), length=st.integers(1, 5 * CHUNK), no_hole=st.booleans(),
          trim=st.booleans())
    def zero(self, data, length, no_hole, trim):
        name = data.draw(st.sampled_from(self.volumes()))
        size = len(self.model[name])
        length = min(length, size)
        offset = data.draw(st.integers(0, size - length))
        vol = self.pool.get_volume(name)
        if trim:
            self.run(vol.trim, offset, length)
        else:
            self.run(vol.write_zeroes, offset, length, no_hole)
        self.model[name][offset:offset + length] = bytes(length)

    @rule(chunks=st.integers(1, 2 * 1024 + 9), written=st.integers(0, 6))
    def pull(self, chunks, written):
        """A volume whose content is a remote base (fetched chunk by chunk)."""
        name, base = self.fresh("p"), self.fresh("base")
        self.pool.create_volume(name, chunks * self.chunk, base=base, base_chunks=chunks)
        self.model[name] = bytearray(b"".join(base_chunk(base, c, self.chunk)
                                               for c in range(chunks)))
        step = max(1, chunks // (written or 1))
        self.install(self.pool.get_volume(name), list(range(0, chunks, step))[:written])

    @precondition(lambda self: any(i.cold for i in self.pool.images()))
    @rule(data=st.data(), count=st.integers(1, 40))
    def hydrate(self, data, count):
        image = data.draw(st.sampled_from(sorted((i for i in self.pool.images() if i.cold),
                                                 key=lambda i: i.full_name)))
        cold = image.cold_chunks()
        first = data.draw(st.integers(0, len(cold) - 1))
        self.install(image, cold[first:first + count])

    @rule(leaves=st.integers(1, 3))
    def free_some(self, leaves):
        """Free a slice of the images queued for freeing (deleted ones with
        more than 64 chunks of their own)."""
        self.pool.free_some(leaves)

    @rule()
    def accounting(self):
        self.check_accounting()

    @rule()
    def flush(self):
        self.pool.commit()

    @rule(limit=st.integers(1, 8))
    def filler(self, limit):
        before = self.pool.partial_count()
        assert self.pool.fill_partials(limit) == min(limit, before)
        assert self.pool.partial_count() == before - min(limit, before)

    @precondition(lambda self: self.volumes())
    @rule(data=st.data())
    def snapshot(self, data):
        name = data.draw(st.sampled_from(self.volumes()))
        snap = f"{name}@{self.fresh('s')}"
        self.pool.create_snapshot(snap, {"n": str(self.counter)})
        self.model[snap] = bytearray(self.model[name])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def clone(self, data):
        source = data.draw(st.sampled_from(sorted(self.model)))
        name = self.fresh("c")
        self.pool.clone(source, name)
        self.model[name] = bytearray(self.model[source])

    @precondition(lambda self: any("@" in n for n in self.model))
    @rule(data=st.data())
    def delete_snapshot(self, data):
        snap = data.draw(st.sampled_from(sorted(n for n in self.model if "@" in n)))
        self.pool.delete_snapshot(snap)
        del self.model[snap]

    @precondition(lambda self: len(self.volumes()) > 1)
    @rule(data=st.data())
    def delete_volume(self, data):
        name = data.draw(st.sampled_from(self.volumes()))
        self.pool.delete_volume(name, recursive=True)
        for key in [k for k in self.model if k == name or k.startswith(name + "@")]:
            del self.model[key]

    @precondition(lambda self: self.volumes())
    @rule(data=st.data(), sectors=st.integers(0, 2 * 1024 * 1024 // 512 + 40))
    def resize(self, data, sectors):
        name = data.draw(st.sampled_from(self.volumes()))
        new = sectors * 512
        self.run(lambda: self.pool.resize_volume(name, new, force=True))
        old = self.model[name]
        self.model[name] = old[:new] + bytearray(max(0, new - len(old)))

    @precondition(lambda self: self.volumes())
    @rule(data=st.data())
    def rename(self, data):
        old = data.draw(st.sampled_from(self.volumes()))
        new = self.fresh("r")
        self.pool.rename_volume(old, new)
        for key in [k for k in self.model if k == old or k.startswith(old + "@")]:
            self.model[new + key[len(old):]] = self.model.pop(key)

    @rule()
    def reopen(self):
        # live images only: close() finishes freeing the deleted ones still in slices
        before = {i.full_name: i.usage() for i in self.pool.images() if i.live}
        self.pool.close()
        self.pool = Pool.open(self.dir + "/pool")
        assert {i.full_name: i.usage() for i in self.pool.images() if i.live} == before
        self.check_accounting()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        size = len(self.model[name])
        if size == 0:
            return
        offset = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(0, min(size - offset, 6 * CHUNK)))
        got = self.run(self.pool.get_image(name).pread, offset, length)
        assert bytes(got) == bytes(self.model[name][offset:offset + length])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def extents_agree(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.check_extents(name)

    def check_extents(self, name):
        data = self.model[name]
        if True:
            image = self.pool.get_image(name)
            for offset, length, flags in image.extents(0, image.size):
                if flags:
                    assert data[offset:offset + length] == bytes(length), (name, offset, length)


    @rule()
    def fsck_clean(self):
        report = fsck(self.pool)
        assert report["clean"], report["problems"]


def base_chunk(base, chunk, size=CHUNK):
    """Chunk `chunk` of remote base `base`: distinct bytes, some all zero."""
    if chunk % 5 == 3:
        return bytes(size)
    return hashlib.blake2b(f"{base}/{chunk}".encode()).digest() * (size // 64)


class PartialPoolModel(PoolModel):
    chunk = 4 * CHUNK

    @precondition(lambda self: self.volumes())
    @rule(data=st.data(), blocks=st.integers(1, 3), fill=st.integers(1, 255))
    def snapshot_then_small_write(self, data, blocks, fill):
        """The pipeline pattern: a snapshot, then a write of a few blocks."""
        self.snapshot(data)
        name = data.draw(st.sampled_from(self.volumes()))
        size = len(self.model[name])
        length = min(blocks * 4096, size - size % 4096)
        if length <= 0:
            return
        offset = data.draw(st.integers(0, (size - length) // 4096)) * 4096
        payload = bytes([fill]) * length
        self.run(self.pool.get_volume(name).pwrite, offset, payload)
        self.model[name][offset:offset + length] = payload


MODEL_SETTINGS = settings(max_examples=int(os.environ.get("ROKFS_MODEL_EXAMPLES", "200")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.data_too_large])
TestPoolModel = PoolModel.TestCase
TestPoolModel.settings = MODEL_SETTINGS
TestPartialPoolModel = PartialPoolModel.TestCase
TestPartialPoolModel.settings = MODEL_SETTINGS
