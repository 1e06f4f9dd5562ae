"""Property test: random sequences of engine operations against a pure
in-memory model; every volume and snapshot must read exactly as the model.

Run twice: with 4 KiB chunks (every write after a snapshot copies whole
chunks) and with 16 KiB chunks, where small writes over shared chunks make
partial slots (rokfs/partial.py) that later writes, zeroing, snapshots,
clones, deletes, reopens and the filler meet; fsck must stay clean."""

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from rokfs.fsck import fsck
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
            assert self.pool.slots.used_slots() == 0
            assert not self.pool.nodes.rc
            assert not self.pool.partial_count()
        finally:
            self.pool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

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
            assert bytes(image.pread(0, len(data))) == bytes(data), name

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
        self.pool.get_volume(name).pwrite(offset, payload)
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
            vol.trim(offset, length)
        else:
            vol.write_zeroes(offset, length, no_hole=no_hole)
        self.model[name][offset:offset + length] = bytes(length)

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
        self.pool.resize_volume(name, new, force=True)
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
        self.pool.close()
        self.pool = Pool.open(self.dir + "/pool")

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        size = len(self.model[name])
        if size == 0:
            return
        offset = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(0, min(size - offset, 6 * CHUNK)))
        got = self.pool.get_image(name).pread(offset, length)
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


class PartialPoolModel(PoolModel):
    chunk = 4 * CHUNK


TestPoolModel = PoolModel.TestCase
TestPartialPoolModel = PartialPoolModel.TestCase
