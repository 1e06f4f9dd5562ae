"""The rokfs engine: a pool of copy-on-write volumes and frozen snapshots.

Layout of a pool directory: `meta.db` (SQLite, see store.py), `extents/`
(chunk slots, see extents.py), `lock` (held with flock while open).

Invariants:
- The in-memory state is the authority while the pool is open; `commit()`
  makes it durable in one step: extent files are fdatasync'ed, then the
  changed metadata is written in one SQLite transaction. After a crash the
  pool reopens at its last completed commit (FLUSH = commit).
- An image (volume or snapshot) is a root in the map tree (extentmap.py).
  Snapshots and clones share the root: O(1) whatever the volume's size. A
  volume writes a chunk in place only if its whole path and the slot are
  exclusively its own and the slot is not pinned; otherwise the write goes
  to a new slot, copying the untouched part of the chunk.
- Snapshots are never written. A snapshot's content can therefore change
  only if its slots are overwritten, which the invariant above forbids.
- All methods run on one thread (the daemon's event loop). Only
  `write_commit(batch)` may run on a worker thread, one at a time, and the
  writes of fetched chunks into taken slots (`ExtentStore.write_runs`).
"""

import dataclasses
import fcntl
import itertools
import os
import time

from . import names
from .errors import (AlreadyExists, Busy, Corrupt, InvalidArgument, NotEmpty, NotFound,
                     OutOfRange, RokfsError)
from .extentmap import FANOUT, INHERIT, LEAF, MAX_CHUNKS, SLOT_BASE, ZERO, MapNodes
from .extents import ExtentStore
from .fileio import pread_full
from .store import FORMAT_VERSION, MetaStore

DEFAULT_CHUNK_SIZE = 32 * 1024
EXTENT_FILE_BYTES = 1 << 30
SECTOR = 512
HOLE, ZERO_FLAG = 1, 2  # extent flags, as NBD base:allocation


class NeedsChunks(RokfsError):
    """The operation touches cold chunks (content in the base manifest) that
    must be hydrated first; `chunks` lists them. Raised before any change."""

    def __init__(self, image, chunks):
        super().__init__(f"{image.full_name}: {len(chunks)} chunks not hydrated yet")
        self.image = image
        self.chunks = chunks


class Image:
    """Common read side of volumes and snapshots."""

    read_only = True

    def __init__(self, pool, row):
        self.pool = pool
        self.id = row["id"]
        self.name = row["name"]
        self.size = row["size"]
        self.root = row["root"]
        self.created = row["created"]
        self.base = row.get("base")
        self.base_chunks = row.get("base_chunks") or 0
        self._leaves = {}
        self._owned = {}

    @property
    def nchunks(self):
        return -(-self.size // self.pool.chunk_size)

    def _leaf(self, leaf_no):
        leaf = self._leaves.get(leaf_no)
        if leaf is None:
            leaf = self.pool.nodes.leaf(self.root, leaf_no)
            if leaf is not None:
                self._leaves[leaf_no] = leaf
        return leaf

    def entry(self, chunk):
        leaf = self._leaf(chunk // FANOUT)
        return leaf[chunk % FANOUT] if leaf is not None else INHERIT

    def is_cold(self, chunk, entry):
        return entry == INHERIT and chunk < self.base_chunks

    def _check_range(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRange(f"{self.full_name}: range {offset}+{length} is outside "
                             f"the device (size {self.size})")

    def spans(self, offset, length):
        """Yield (chunk, offset within chunk, length) covering the range."""
        cs = self.pool.chunk_size
        end = offset + length
        while offset < end:
            chunk, within = divmod(offset, cs)
            n = min(cs - within, end - offset)
            yield chunk, within, n
            offset += n

    def read_plan(self, offset, length):
        """Where the range's bytes are, in order: [fd, file offset, length]
        for stored data (adjacent slots merged) and an int (a length) for
        what reads as zeros. Valid until the next change to the pool."""
        self._check_range(offset, length)
        slots = self.pool.slots
        plan, cold = [], []
        for chunk, within, n in self.spans(offset, length):
            entry = self.entry(chunk)
            last = plan[-1] if plan else None
            if entry >= SLOT_BASE:
                fd, base = slots.locate(entry - SLOT_BASE)
                if type(last) is list and last[0] == fd and last[1] + last[2] == base + within:
                    last[2] += n
                else:
                    plan.append([fd, base + within, n])
            elif self.is_cold(chunk, entry):
                cold.append(chunk)
            elif type(last) is int:
                plan[-1] += n
            else:
                plan.append(n)
        if cold:
            raise NeedsChunks(self, cold)
        return plan

    def pread(self, offset, length):
        """Read `length` bytes at `offset`; returns a bytearray."""
        out = bytearray(length)
        view = memoryview(out)
        pos = 0
        for piece in self.read_plan(offset, length):
            if type(piece) is int:
                pos += piece
            else:
                fd, file_offset, n = piece
                pread_full(fd, view[pos:pos + n], file_offset)
                pos += n
        return out

    def extents(self, offset, length):
        """[(offset, length, flags)] for the range; flags HOLE|ZERO_FLAG for
        ranges that read as zeros without stored data, 0 for data."""
        self._check_range(offset, length)
        out = []
        for chunk, within, n in self.spans(offset, length):
            entry = self.entry(chunk)
            data = entry >= SLOT_BASE or self.is_cold(chunk, entry)
            flags = 0 if data else HOLE | ZERO_FLAG
            if out and out[-1][2] == flags:
                out[-1][1] += n
            else:
                out.append([chunk * self.pool.chunk_size + within, n, flags])
        return [tuple(e) for e in out]

    def mapped_chunks(self, cold=True):
        """Yield (chunk, entry, exclusive) for every slot (and cold chunk)."""
        nodes = self.pool.nodes
        for leaf_no, leaf_id, path in nodes.walk_leaves(self.root):
            shared_path = any(nodes.rc[n] > 1 for n in path) or nodes.rc[leaf_id] > 1
            leaf = nodes.get(leaf_id)
            first = leaf_no * FANOUT
            for i, entry in enumerate(leaf):
                chunk = first + i
                if chunk >= self.nchunks:
                    break
                if entry >= SLOT_BASE:
                    exclusive = not shared_path and self.pool.slots.rc[entry - SLOT_BASE] == 1
                    yield chunk, entry, exclusive
        if cold:
            for chunk in range(min(self.base_chunks, self.nchunks)):
                if self.is_cold(chunk, self.entry(chunk)):
                    yield chunk, INHERIT, False

    def _shared(self):
        """Our root is now shared: every path must be copied before writing."""
        self._owned.clear()

    def _own_leaf(self, leaf_no):
        """(leaf id, leaf array) for `leaf_no`, exclusively ours."""
        hit = self._owned.get(leaf_no)
        if hit is not None:
            return hit
        nodes = self.pool.nodes
        i0, i1 = divmod(leaf_no, FANOUT)
        root = nodes.owned(self.root, 0)
        if root != self.root:
            self.root = root
            self.pool._changed(self)
        mid = _own_child(nodes, root, i0, 1)
        leaf_id = _own_child(nodes, mid, i1, LEAF)
        hit = (leaf_id, nodes.get(leaf_id))
        self._owned[leaf_no] = hit
        self._leaves[leaf_no] = hit[1]
        return hit

    def _set_entry(self, leaf_id, leaf, chunk, new):
        i = chunk % FANOUT
        old = leaf[i]
        leaf[i] = new
        self.pool.nodes.changed(leaf_id)
        if old >= SLOT_BASE:
            self.pool.slots.decref(old - SLOT_BASE)

    def cold_chunks(self, start=0, stop=None):
        """Chunks in [start, stop) still to be fetched from the base."""
        stop = min(self.base_chunks if stop is None else stop, self.base_chunks)
        return [start + i for i, e in enumerate(self.entries(start, stop)) if e == INHERIT]

    def entries(self, start, stop):
        """The map entries of chunks [start, stop), leaf by leaf."""
        out = []
        for leaf_no in range(start // FANOUT, -(-stop // FANOUT)):
            first = leaf_no * FANOUT
            lo, hi = max(start, first) - first, min(stop, first + FANOUT) - first
            leaf = self._leaf(leaf_no)
            out.extend(leaf[lo:hi] if leaf is not None else [INHERIT] * (hi - lo))
        return out

    def cold_count(self):
        """How many chunks are still cold, without visiting every chunk: the
        base's chunks minus the entries set in existing leaves (O(leaves))."""
        limit = min(self.base_chunks, self.nchunks)
        if not limit:
            return 0
        warm = 0
        for leaf_no, leaf_id, _ in self.pool.nodes.walk_leaves(self.root, 0,
                                                                (limit - 1) // FANOUT):
            leaf = self.pool.nodes.get(leaf_id)
            first = leaf_no * FANOUT
            n = min(FANOUT, limit - first)
            warm += n - leaf[:n].count(INHERIT)
        return limit - warm

    def usage(self):
        cs = self.pool.chunk_size
        allocated = exclusive = 0
        for _, entry, excl in self.mapped_chunks(cold=False):
            allocated += 1
            exclusive += excl
        return {"size": self.size, "allocated": allocated * cs,
                "exclusive": exclusive * cs, "shared": (allocated - exclusive) * cs,
                "unhydrated": self.cold_count() * cs}


class Snapshot(Image):
    def __init__(self, pool, row):
        super().__init__(pool, row)
        self.volume_id = row["volume_id"]
        self.labels = dict(row["labels"])

    @property
    def volume(self):
        return self.pool._volumes_by_id[self.volume_id]

    @property
    def full_name(self):
        return f"{self.volume.name}@{self.name}"

    def row(self):
        return {"id": self.id, "volume_id": self.volume_id, "name": self.name,
                "size": self.size, "root": self.root, "created": self.created,
                "labels": self.labels, "base": self.base, "base_chunks": self.base_chunks}

    def info(self):
        return {"name": self.full_name, "volume": self.volume.name, "snapshot": self.name,
                "created": self.created, "labels": dict(self.labels), **self.usage()}


class Volume(Image):
    read_only = False

    def __init__(self, pool, row):
        super().__init__(pool, row)
        self.origin = row.get("origin")
        self.open_count = 0

    @property
    def full_name(self):
        return self.name

    def row(self):
        return {"id": self.id, "name": self.name, "size": self.size, "root": self.root,
                "created": self.created, "origin": self.origin, "base": self.base,
                "base_chunks": self.base_chunks}

    def pwrite(self, offset, data):
        self._check_range(offset, len(data))
        view = memoryview(data).cast("B")
        self._refuse_cold_partials(offset, len(view))
        cs = self.pool.chunk_size
        slots = self.pool.slots
        run, pos = None, 0
        for chunk, within, n in self.spans(offset, len(view)):
            leaf_id, leaf = self._own_leaf(chunk // FANOUT)
            entry = leaf[chunk % FANOUT]
            if entry >= SLOT_BASE and slots.writable(entry - SLOT_BASE):
                fd, base = slots.locate(entry - SLOT_BASE)
                if _extends(run, fd, base + within, pos):
                    run[3] += n
                else:
                    run = self._write_run(run, view)
                    run = [fd, base + within, pos, n]
            else:
                run = self._write_run(run, view)
                piece = view[pos:pos + n]
                self._write_new_slot(leaf_id, leaf, chunk, entry, within, piece, cs)
            pos += n
        self._write_run(run, view)

    def _write_run(self, run, view):
        if run:
            fd, offset, pos, n = run
            self.pool.slots.write_at(fd, view[pos:pos + n], offset)
        return None

    def _refuse_cold_partials(self, offset, length):
        if not self.base_chunks:      # nothing is cold: skip the scan (hot path)
            return
        cold = [c for c, within, n in self.spans(offset, length)
                if n < self.pool.chunk_size and self.is_cold(c, self.entry(c))]
        if cold:
            raise NeedsChunks(self, cold)

    def _write_new_slot(self, leaf_id, leaf, chunk, entry, within, piece, cs):
        """Write a chunk to a fresh slot, one chunk per pwrite (a bigger write
        into fresh file space gets large page-cache folios, which make later
        small in-place writes ~2.5x slower). A partial write copies the rest
        of the chunk from the old slot, or zero-fills it."""
        slots = self.pool.slots
        slot = slots.allocate()
        if len(piece) < cs:
            piece = slots.merged(entry - SLOT_BASE if entry >= SLOT_BASE else None, within, piece)
        slots.write(slot, 0, piece)
        self._set_entry(leaf_id, leaf, chunk, slot + SLOT_BASE)

    def trim(self, offset, length):
        """Discard the range: it reads as zeros afterwards, and cold chunks
        wholly inside it are never fetched."""
        self._check_range(offset, length)
        cs = self.pool.chunk_size
        for chunk, within, n in self.spans(offset, length):
            entry = self.entry(chunk)
            if entry == ZERO or (entry == INHERIT and not self.is_cold(chunk, entry)):
                continue
            if n == cs or chunk * cs + within + n == self.size and within == 0:
                leaf_id, leaf = self._own_leaf(chunk // FANOUT)
                self._set_entry(leaf_id, leaf, chunk, ZERO)
            else:
                self.pwrite(chunk * cs + within, bytes(n))

    def write_zeroes(self, offset, length, no_hole=False):
        if not no_hole:
            return self.trim(offset, length)
        self._check_range(offset, length)
        zeros = bytes(self.pool.chunk_size)
        for chunk, within, n in self.spans(offset, length):
            self.pwrite(chunk * self.pool.chunk_size + within, zeros[:n])

    def resize(self, new_size, force=False):
        self.pool._check_size(new_size)
        if new_size < self.size:
            if not force:
                self._refuse_shrink_over_data(new_size)
            self._drop_tail(new_size)
        self.size = new_size
        self.pool._changed(self)

    def _refuse_shrink_over_data(self, new_size):
        cs = self.pool.chunk_size
        first_full = -(-new_size // cs)
        for chunk, entry, _ in self.mapped_chunks():
            if chunk >= first_full:
                raise InvalidArgument(
                    f"{self.name}: cannot shrink to {new_size} bytes: data is stored "
                    f"beyond it (at {chunk * cs}); trim it first or force the resize")
        tail = min(first_full * cs, self.size) - new_size
        if tail and self.pread(new_size, tail) != bytes(tail):
            raise InvalidArgument(
                f"{self.name}: cannot shrink to {new_size} bytes: the bytes after it "
                "hold data; trim them first or force the resize")

    def _drop_tail(self, new_size):
        cs = self.pool.chunk_size
        first_full = -(-new_size // cs)
        if new_size % cs:
            self.write_zeroes(new_size, min(first_full * cs, self.size) - new_size)
        nodes = self.pool.nodes
        last_leaf = (self.nchunks - 1) // FANOUT
        for leaf_no, _, _ in list(nodes.walk_leaves(self.root, first_full // FANOUT,
                                                     max(last_leaf, first_full // FANOUT))):
            leaf_id, leaf = self._own_leaf(leaf_no)
            for i in range(max(first_full - leaf_no * FANOUT, 0), FANOUT):
                if leaf[i] != INHERIT:
                    self._set_entry(leaf_id, leaf, leaf_no * FANOUT + i, INHERIT)
        self.base_chunks = min(self.base_chunks, first_full)

    def info(self):
        snaps = self.pool.list_snapshots(self.name)
        return {"name": self.name, "created": self.created, "origin": self.origin,
                "snapshots": [s.name for s in snaps], **self.usage()}


def _own_child(nodes, parent_id, index, level):
    parent = nodes.get(parent_id)
    child = nodes.owned(parent[index], level)
    if child != parent[index]:
        parent[index] = child
        nodes.changed(parent_id)
    return child


def _extends(run, fd, file_offset, pos):
    """Does [fd, file_offset) continue `run` both on disk and in the buffer?"""
    return (run is not None and run[0] == fd and run[1] + run[3] == file_offset
            and run[2] + run[3] == pos)


@dataclasses.dataclass
class CommitBatch:
    """Everything one commit writes, copied out of the in-memory state, and
    what `abort_commit` needs to mark it dirty again."""

    volumes: list            # volume rows to upsert
    snapshots: list          # snapshot rows to upsert
    deleted_volumes: list
    deleted_snapshots: list
    image_state: tuple       # the four dirty/deleted id sets taken from the pool
    nodes: list              # map node rows (id, rc, data) to write whole
    node_rcs: list           # (rc, id) of nodes whose count alone changed
    deleted_nodes: list
    node_state: tuple        # MapNodes' dirty sets, for abort
    slot_state: object       # ExtentStore's commit state (dirty blocks, freed slots)
    freed_slots: list        # slots whose cached content hash goes
    slot_hashes: list        # (slot, hash) pairs newly cached

    @property
    def slot_blocks(self):
        return self.slot_state.blocks


class Pool:
    """A pool directory opened for exclusive use by this process."""

    def __init__(self, path, lock_fd, store):
        self.path = path
        self._lock_fd = lock_fd
        self.store = store
        meta = store.get_meta()
        if int(meta.get("format", FORMAT_VERSION)) != FORMAT_VERSION:
            raise Corrupt(f"pool {path} has metadata format {meta['format']}, "
                          f"this rokfs reads format {FORMAT_VERSION}")
        self.chunk_size = int(meta["chunk_size"])
        self.slots = ExtentStore(os.path.join(path, "extents"), self.chunk_size,
                                 int(meta["slots_per_file"]), store.load_slot_blocks())
        self.nodes = MapNodes(store, self.slots)
        self._volumes = {}
        self._volumes_by_id = {}
        self._snapshots = {}
        for row in store.load_volumes():
            self._add_volume(Volume(self, row))
        for row in store.load_snapshots():
            snap = Snapshot(self, row)
            self._snapshots[(snap.volume_id, snap.name)] = snap
        self._next_id = max([0, *self._volumes_by_id, *(s.id for s in self._snapshots.values())]) + 1
        self._dirty_volumes, self._dirty_snapshots = set(), set()
        self._deleted_volumes, self._deleted_snapshots = set(), set()
        self._new_slot_hashes = {}
        self._forget_slot_hashes = set()
        self.autocommit = True
        self.closed = False

    # -- opening ---------------------------------------------------------------
    @classmethod
    def create(cls, path, chunk_size=DEFAULT_CHUNK_SIZE):
        if chunk_size < 4096 or chunk_size & (chunk_size - 1) or chunk_size > 16 << 20:
            raise InvalidArgument(f"chunk size {chunk_size} must be a power of two "
                                  "between 4 KiB and 16 MiB")
        if os.path.exists(os.path.join(path, "meta.db")):
            raise AlreadyExists(f"a pool already exists at {path}")
        os.makedirs(path, exist_ok=True)
        lock_fd = _lock(path)
        store = MetaStore(os.path.join(path, "meta.db"))
        store.init_meta({"format": FORMAT_VERSION, "chunk_size": chunk_size,
                         "slots_per_file": max(1, EXTENT_FILE_BYTES // chunk_size),
                         "created": time.time()})
        return cls(path, lock_fd, store)

    @classmethod
    def open(cls, path):
        if not os.path.exists(os.path.join(path, "meta.db")):
            raise NotFound(f"no rokfs pool at {path} (create one with `rokfs init {path}`)")
        lock_fd = _lock(path)
        try:
            return cls(path, lock_fd, MetaStore(os.path.join(path, "meta.db")))
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open_or_create(cls, path, chunk_size=DEFAULT_CHUNK_SIZE):
        if os.path.exists(os.path.join(path, "meta.db")):
            return cls.open(path)
        return cls.create(path, chunk_size)

    def close(self):
        if self.closed:
            return
        self.commit()
        self.slots.close()
        self.store.close()
        os.close(self._lock_fd)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- commit (= FLUSH) ----------------------------------------------------------
    def begin_commit(self):
        live_snaps = {s.id: s for s in self._snapshots.values()}
        image_state = (self._dirty_volumes, self._dirty_snapshots,
                       self._deleted_volumes, self._deleted_snapshots)
        self._dirty_volumes, self._dirty_snapshots = set(), set()
        self._deleted_volumes, self._deleted_snapshots = set(), set()
        dirty_volumes, dirty_snapshots, deleted_volumes, deleted_snapshots = image_state
        nodes, node_rcs, deleted_nodes, node_state = self.nodes.begin_commit()
        slot_state = self.slots.begin_commit()
        forget_hashes, self._forget_slot_hashes = self._forget_slot_hashes, set()
        new_hashes, self._new_slot_hashes = self._new_slot_hashes, {}
        return CommitBatch(
            volumes=[self._volumes_by_id[i].row() for i in sorted(dirty_volumes)
                     if i in self._volumes_by_id],
            snapshots=[live_snaps[i].row() for i in sorted(dirty_snapshots) if i in live_snaps],
            deleted_volumes=sorted(deleted_volumes),
            deleted_snapshots=sorted(deleted_snapshots),
            image_state=image_state,
            nodes=nodes, node_rcs=node_rcs, deleted_nodes=deleted_nodes, node_state=node_state,
            slot_state=slot_state,
            freed_slots=list(slot_state.freed) + sorted(forget_hashes),
            slot_hashes=list(new_hashes.items()))

    def write_commit(self, batch):
        """Blocking; may run in a worker thread."""
        self.slots.sync(batch.slot_state)
        self.store.commit(batch)
        try:
            self.slots.punch(batch.slot_state.freed)
        except OSError:
            pass  # space stays reserved; fsck --repair gives it back

    def end_commit(self, batch):
        self.slots.end_commit(batch.slot_state)

    def abort_commit(self, batch):
        dv, ds, xv, xs = batch.image_state
        self._dirty_volumes |= dv
        self._dirty_snapshots |= ds
        self._deleted_volumes |= xv
        self._deleted_snapshots |= xs
        self.nodes.abort_commit(batch.node_state)
        self.slots.abort_commit(batch.slot_state)
        self._new_slot_hashes = {**dict(batch.slot_hashes), **self._new_slot_hashes}

    def commit(self):
        batch = self.begin_commit()
        try:
            self.write_commit(batch)
        except BaseException:
            self.abort_commit(batch)
            raise
        self.end_commit(batch)

    flush = commit

    def _verb_done(self):
        if self.autocommit:
            self.commit()

    def _changed(self, image):
        if isinstance(image, Volume):
            self._dirty_volumes.add(image.id)
        else:
            self._dirty_snapshots.add(image.id)

    def _new_id(self):
        self._next_id += 1
        return self._next_id - 1

    # -- lookups -------------------------------------------------------------------
    def _add_volume(self, vol):
        self._volumes[vol.name] = vol
        self._volumes_by_id[vol.id] = vol

    def get_volume(self, name):
        names.check_name(name)
        vol = self._volumes.get(name)
        if vol is None:
            raise NotFound(f"no volume named {name!r}")
        return vol

    def get_snapshot(self, full_name):
        vol_name, snap_name = names.split_snapshot(full_name)
        snap = self._snapshots.get((self.get_volume(vol_name).id, snap_name))
        if snap is None:
            raise NotFound(f"no snapshot named {full_name!r}")
        return snap

    def get_image(self, name):
        """A volume ('data') or a snapshot ('data@snap')."""
        return self.get_snapshot(name) if "@" in str(name) else self.get_volume(name)

    def list_volumes(self):
        return sorted(self._volumes.values(), key=lambda v: v.name)

    def list_snapshots(self, volume=None):
        snaps = self._snapshots.values()
        if volume is not None:
            vol_id = self.get_volume(volume).id
            snaps = [s for s in snaps if s.volume_id == vol_id]
        return sorted(snaps, key=lambda s: (s.volume.name, s.created, s.name))

    # -- verbs -----------------------------------------------------------------------
    def _check_size(self, size):
        if not isinstance(size, int) or size < 0 or size % SECTOR:
            raise InvalidArgument(f"size {size!r} must be a non-negative multiple of {SECTOR}")
        if -(-size // self.chunk_size) > MAX_CHUNKS:
            raise InvalidArgument(f"size {size} exceeds the maximum volume size "
                                  f"{MAX_CHUNKS * self.chunk_size}")

    def create_volume(self, name, size, *, base=None, base_chunks=0, origin=None):
        names.check_name(name)
        self._check_size(size)
        if name in self._volumes:
            raise AlreadyExists(f"volume {name!r} already exists")
        vol = Volume(self, {"id": self._new_id(), "name": name, "size": size, "root": 0,
                            "created": time.time(), "origin": origin, "base": base,
                            "base_chunks": base_chunks})
        self._add_volume(vol)
        self._changed(vol)
        self._verb_done()
        return vol

    def delete_volume(self, name, *, recursive=False, force=False):
        vol = self.get_volume(name)
        snaps = self.list_snapshots(name)
        if snaps and not recursive:
            raise NotEmpty(f"volume {name!r} has {len(snaps)} snapshots; delete them "
                           "first or delete recursively")
        if vol.open_count and not force:
            raise Busy(f"volume {name!r} is in use ({vol.open_count} open handles)")
        for snap in snaps:
            _refuse_busy(snap)
        for snap in snaps:
            self._drop_snapshot(snap)
        self.nodes.decref(vol.root, 0)
        del self._volumes[vol.name], self._volumes_by_id[vol.id]
        self._dirty_volumes.discard(vol.id)
        self._deleted_volumes.add(vol.id)
        vol.deleted = True
        self._verb_done()

    def rename_volume(self, old, new):
        vol = self.get_volume(old)
        names.check_name(new)
        if new in self._volumes:
            raise AlreadyExists(f"volume {new!r} already exists")
        del self._volumes[old]
        vol.name = new
        self._volumes[new] = vol
        self._changed(vol)
        self._verb_done()
        return vol

    def resize_volume(self, name, size, *, force=False):
        vol = self.get_volume(name)
        vol.resize(size, force=force)
        self._verb_done()
        return vol

    def create_snapshot(self, full_name, labels=None):
        vol_name, snap_name = names.split_snapshot(full_name)
        labels = names.check_labels(labels)
        vol = self.get_volume(vol_name)
        if (vol.id, snap_name) in self._snapshots:
            raise AlreadyExists(f"snapshot {full_name!r} already exists")
        snap = Snapshot(self, {"id": self._new_id(), "volume_id": vol.id, "name": snap_name,
                               "size": vol.size, "root": vol.root, "created": time.time(),
                               "labels": labels, "base": vol.base,
                               "base_chunks": vol.base_chunks})
        self.nodes.incref(vol.root)
        vol._shared()
        self._snapshots[(vol.id, snap_name)] = snap
        self._changed(snap)
        self._verb_done()
        return snap

    def delete_snapshot(self, full_name):
        self._drop_snapshot(_refuse_busy(self.get_snapshot(full_name)))
        self._verb_done()

    def _drop_snapshot(self, snap):
        self.nodes.decref(snap.root, 0)
        del self._snapshots[(snap.volume_id, snap.name)]
        self._dirty_snapshots.discard(snap.id)
        self._deleted_snapshots.add(snap.id)

    def set_labels(self, full_name, labels, *, replace=False):
        snap = self.get_snapshot(full_name)
        labels = names.check_labels(labels)
        snap.labels = labels if replace else {**snap.labels, **labels}
        self._changed(snap)
        self._verb_done()
        return snap

    def clone(self, source, new_name):
        """A new writable volume with the content of a snapshot or volume."""
        src = self.get_image(source)
        names.check_name(new_name)
        if new_name in self._volumes:
            raise AlreadyExists(f"volume {new_name!r} already exists")
        vol = Volume(self, {"id": self._new_id(), "name": new_name, "size": src.size,
                            "root": src.root, "created": time.time(),
                            "origin": src.full_name, "base": src.base,
                            "base_chunks": src.base_chunks})
        self.nodes.incref(src.root)
        src._shared()
        self._add_volume(vol)
        self._changed(vol)
        self._verb_done()
        return vol

    # -- remote support ------------------------------------------------------------
    def reserve_install(self, image, fetched):
        """First step of installing fetched chunks ({chunk: bytes, or None for
        zeros}) into `image`: zero chunks go in at once; for the others still
        cold a slot is taken, and [(chunk, slot, data)] (in chunk order) is
        returned for the caller to write (ExtentStore.plan_runs/write_runs,
        off the event loop) and then hand to finish_install(). Commits may
        run in between: a taken slot counts for nothing until it is mapped."""
        if not self._live(image) or not fetched:
            return []
        for data in fetched.values():
            if data is not None and len(data) != self.chunk_size:
                raise InvalidArgument(f"chunk of {len(data)} bytes, pool chunks are "
                                      f"{self.chunk_size}")
        cold = set(image.cold_chunks(min(fetched), max(fetched) + 1))
        todo = [(c, d) for c, d in sorted(fetched.items()) if c in cold]
        self._install(image, [(c, ZERO) for c, d in todo if d is None])
        plan = []
        try:
            for chunk, data in todo:
                if data is not None:
                    plan.append((chunk, self.slots.take(), data))
        except BaseException:         # e.g. the disk is full: keep nothing half-done
            self.release_install(plan)
            raise
        return plan

    def finish_install(self, image, plan):
        """Map the written slots of `plan` into `image` where the chunk is still
        cold; a write that got there first wins and the slot is given back.
        Durable at the next commit. Returns how many were installed."""
        cold = set(image.cold_chunks(plan[0][0], plan[-1][0] + 1)) \
            if plan and self._live(image) else set()
        won = [(chunk, slot) for chunk, slot, _ in plan if chunk in cold]
        for chunk, slot, _ in plan:
            if chunk not in cold:
                self.slots.give_back(slot)
        self.slots.claim([slot for _, slot in won])
        self._install(image, [(chunk, slot + SLOT_BASE) for chunk, slot in won])
        return len(won)

    def release_install(self, plan):
        """The writes of `plan` failed: give its slots back."""
        for _, slot, _ in plan:
            self.slots.give_back(slot)

    def _install(self, image, entries):
        """Set cold chunks' entries [(chunk, entry)], in chunk order."""
        for leaf_no, group in itertools.groupby(entries, key=lambda e: e[0] // FANOUT):
            leaf_id, leaf = image._own_leaf(leaf_no)
            for chunk, entry in group:
                image._set_entry(leaf_id, leaf, chunk, entry)
        if entries and isinstance(image, Snapshot):
            self._changed(image)

    def _live(self, image):
        if isinstance(image, Volume):
            return self._volumes_by_id.get(image.id) is image
        return self._snapshots.get((image.volume_id, image.name)) is image

    def drop_base(self, image):
        """The image holds every chunk of its base: forget the base."""
        if image.cold_count():
            raise Busy(f"{image.full_name} still has unhydrated chunks")
        image.base, image.base_chunks = None, 0
        self._changed(image)

    def slot_hashes(self, slots):
        """{slot: blake3 hex} of the given frozen slots, where cached."""
        found = {s: self._new_slot_hashes[s] for s in slots if s in self._new_slot_hashes}
        found.update(self.store.load_slot_hashes([s for s in slots if s not in found]))
        return found

    def forget_slot_hashes(self, slots):
        """These slots are free (fsck repair): their cached hashes go at the next commit."""
        for slot in slots:
            self._new_slot_hashes.pop(slot, None)
            self._forget_slot_hashes.add(slot)

    def record_slot_hash(self, slot, digest):
        """Cache the hash of a frozen slot (dropped when the slot is freed)."""
        if self.slots.rc[slot] > 0:
            self._new_slot_hashes[slot] = digest

    def status(self):
        st = os.statvfs(self.path)
        return {"path": self.path, "chunk_size": self.chunk_size,
                "volumes": len(self._volumes), "snapshots": len(self._snapshots),
                "used_bytes": self.slots.used_slots() * self.chunk_size,
                "disk_bytes": self.slots.disk_bytes(),
                "capacity_bytes": st.f_blocks * st.f_frsize,
                "free_bytes": st.f_bavail * st.f_frsize}


def _refuse_busy(snap):
    if getattr(snap, "busy", 0):
        raise Busy(f"snapshot {snap.full_name} is being pushed; try again when it is done")
    return snap


def _lock(path):
    lock_path = os.path.join(path, "lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Busy(f"pool {path} is already open by pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
