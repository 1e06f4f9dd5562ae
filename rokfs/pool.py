"""The rokfs engine's pool: images, their lifecycle, and the one commit path.

Layout of a pool directory: `meta.db` (SQLite, see store.py), `extents/`
(chunk slots, see extents.py), `lock` (held with flock while open).

Invariants:
- The in-memory state is the authority while the pool is open; a commit
  (commit.py) makes it durable in one step. After a crash the pool reopens
  at its last completed commit (FLUSH = commit). Verbs here change memory
  only; the caller commits (Control.flush, or `commit()` for tools and
  tests that own the pool).
- Image lifecycle (image.py): `delete_*` refuses an image with blocking
  holders (Busy, naming them) unless deferred; a deferred or held image is
  DELETING until `release` drops its last holder, then FREED: only then is
  its root's reference (and so its slots') dropped. DELETING images are
  persisted as such and freed when the pool next opens (nothing holds an
  image across a restart). Names of DELETING images stay reserved.
- Freeing an image with more than FREE_NOW_CHUNKS chunks of its own
  (exclusive) is work proportional to them: it is queued (`freeing`) and done by
  `free_some` a few leaves at a time (Control runs it in slices between
  other work; `close` and the next open finish it). Each slice detaches
  whole leaves from the unheld DELETING image's own map, so every state
  between slices is a consistent pool (that image just maps less), safe to
  commit, to crash in and to check; the root goes last.
- `_images` holds every image not FREED; `_volumes` and `_snapshots` index
  the same objects by name. Lookups and listings show LIVE images only.
- Policies (rokfs/policy.py) are stored here as opaque records {spec text,
  anchor time}, committed with everything else; the engine never reads them.
- All methods run on one thread (the daemon's event loop). Thread-safe, for
  worker threads: `commits.write(batch)` (one at a time), the writes of
  fetched chunks into taken slots (`ExtentStore.write_runs`), and
  `read_frozen(slot, view)` for a slot of a held snapshot.
"""

import fcntl
import itertools
import os
import time

from . import names
from .commit import Commits
from .errors import AlreadyExists, Busy, Corrupt, InvalidArgument, NotEmpty, NotFound
from .extentmap import FANOUT, MAX_CHUNKS, SLOT_BASE, ZERO, MapNodes
from .extents import METADATA_RESERVE_MIN as MIN_RESERVE, ExtentStore  # noqa: F401 (re-exported)
from .image import DELETING, FREED, FROZEN_READERS, Snapshot, Volume
from .store import FORMAT_VERSION, MetaStore

DEFAULT_CHUNK_SIZE = 32 * 1024
EXTENT_FILE_BYTES = 1 << 30
FREE_NOW_CHUNKS = 1 << 16       # an image with more exclusive chunks is freed in slices
FREE_SLICE_LEAVES = 4           # leaves detached per slice (~1k slots each)
SECTOR = 512


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
                                 int(meta["slots_per_file"]), store.load_slot_blocks(),
                                 partial_rows=store.load_partial_slots())
        self.nodes = MapNodes(store, self.slots)
        self.slots.partials.release_old = self.nodes.drop_record_ref   # keeps `sole` right
        self.commits = Commits(self)
        self._images, self._volumes, self._snapshots = {}, {}, {}
        self.freeing = []       # DELETING images, unheld, freed in slices
        self._load_images()
        self._count_what_older_pools_lack()
        self._policies = store.load_policies()
        self._next_id = max([0, *self._images]) + 1
        self.closed = False
        self._free_leftovers()

    def _load_images(self):
        for row in self.store.load_volumes():
            vol = Volume(self, row)
            self._images[vol.id] = self._volumes[vol.name] = vol
        for row in self.store.load_snapshots():
            vol = self._images.get(row["volume_id"])
            snap = Snapshot(self, row, vol.name if vol else f"#{row['volume_id']}")
            self._images[snap.id] = self._snapshots[(snap.volume_id, snap.name)] = snap

    def _count_what_older_pools_lack(self):
        """A pool written before the space summaries: count them once (a
        walk of every map); the next commit stores them."""
        if self.nodes.stale:
            self.nodes.reset_summaries(self.nodes.recount(i.root for i in self._images.values()))
        for image in self._images.values():
            if image.cold is None:
                image.cold = image.count_cold()
                self.changed(image)

    def _free_leftovers(self):
        """Images left DELETING by the last run: nothing holds them now."""
        leftovers = [i for i in self._images.values() if i.state == DELETING]
        for image in leftovers:
            self._free(image)
        self.free_all()
        if leftovers:
            self.commit()

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
            raise NotFound(f"no rokfs pool at {path} (create one with `rokfs init --pool {path}`)")
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
        self.free_all()
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
    def commit(self):
        """Commit on this thread (tools and tests that own the pool; the
        daemon commits through Control.flush, which writes off the loop)."""
        batch = self.commits.begin()
        try:
            self.commits.write(batch)
        except BaseException:
            self.commits.abort(batch)
            raise
        self.commits.end(batch)

    def changed(self, image):
        """`image`'s row (size, root, labels, state, ...) changed."""
        if image.state == FREED:
            return
        ids = self.commits.images.volumes if isinstance(image, Volume) \
            else self.commits.images.snapshots
        ids.add(image.id)

    def _new_id(self):
        self._next_id += 1
        return self._next_id - 1

    # -- lookups (LIVE images only) ----------------------------------------------------
    def get_volume(self, name):
        names.check_name(name)
        vol = self._volumes.get(name)
        if vol is None or not vol.live:
            raise NotFound(f"no volume named {name!r}" if vol is None
                           else f"volume {name!r} is being deleted")
        return vol

    def get_snapshot(self, full_name):
        vol_name, snap_name = names.split_snapshot(full_name)
        snap = self._snapshots.get((self.get_volume(vol_name).id, snap_name))
        if snap is None or not snap.live:
            raise NotFound(f"no snapshot named {full_name!r}" if snap is None
                           else f"snapshot {full_name!r} is being deleted")
        return snap

    def get_image(self, name):
        """A volume ('data') or a snapshot ('data@snap')."""
        return self.get_snapshot(name) if "@" in str(name) else self.get_volume(name)

    def image_by_id(self, image_id):
        """Any image not yet freed (LIVE or DELETING), or None."""
        return self._images.get(image_id)

    def images(self):
        """Every image not yet freed, LIVE or DELETING (their roots hold references)."""
        return list(self._images.values())

    def list_volumes(self):
        return sorted((v for v in self._volumes.values() if v.live), key=lambda v: v.name)

    def list_snapshots(self, volume=None):
        snaps = (s for s in self._snapshots.values() if s.live)
        if volume is not None:
            vol_id = self.get_volume(volume).id
            snaps = (s for s in snaps if s.volume_id == vol_id)
        return sorted(snaps, key=lambda s: (s.volume_name, s.created, s.name))

    # -- holders -------------------------------------------------------------------------
    def hold(self, image, holder):
        """Declare that `holder` (a kind: "NBD connection", "push", ...) uses
        `image`; a DELETING or FREED image takes no new holders."""
        if not image.live:
            raise NotFound(f"{image.full_name} has been deleted")
        image.holders[holder] += 1

    def release(self, image, holder):
        """`holder` is done with `image`. Returns True if that freed it (its
        space returns to the pool at the next commit)."""
        if image.holders[holder] <= 0:
            raise InvalidArgument(f"{image.full_name} is not held by a {holder}")
        image.holders[holder] -= 1
        if not image.holders[holder]:
            del image.holders[holder]
        if image.state == DELETING and not image.holders:
            self._free(image)
            return True
        return False

    # -- verbs (in memory; the caller commits) -------------------------------------
    def check_size(self, size):
        if not isinstance(size, int) or size < 0 or size % SECTOR:
            raise InvalidArgument(f"size {size!r} must be a non-negative multiple of {SECTOR}")
        if size > self.max_volume_size():
            raise InvalidArgument(f"size {size} exceeds the maximum volume size "
                                  f"{self.max_volume_size()}")

    def _refuse_taken_name(self, name):
        vol = self._volumes.get(name)
        if vol is not None:
            raise AlreadyExists(f"volume {name!r} already exists" if vol.live else
                                f"volume {name!r} is being deleted {_deleting(vol)}")

    def create_volume(self, name, size, *, base=None, base_chunks=0, origin=None):
        names.check_name(name)
        self.check_size(size)
        self._refuse_taken_name(name)
        vol = Volume(self, {"id": self._new_id(), "name": name, "size": size, "root": 0,
                            "created": time.time(), "origin": origin, "base": base,
                            "base_chunks": base_chunks, "cold": 0})
        vol.cold = vol.cold_limit       # nothing mapped yet: every base chunk is cold
        self._images[vol.id] = self._volumes[name] = vol
        self.changed(vol)
        return vol

    def delete_volume(self, name, *, recursive=False, defer=False, force=False):
        """Delete a volume (with its snapshots if `recursive`). Open images
        are refused unless `defer`: then they go DELETING and are freed when
        their last holder lets go. Snapshots under holds need `force`."""
        vol = self.get_volume(name)
        snaps = self.list_snapshots(name)
        if snaps and not recursive:
            raise NotEmpty(f"volume {name!r} has {len(snaps)} snapshots; delete them "
                           "first or delete recursively")
        self._delete_all([*snaps, vol], defer, force)

    def delete_snapshot(self, full_name, *, defer=False, force=False):
        self._delete_all([self.get_snapshot(full_name)], defer, force)

    def _delete_all(self, images, defer, force):
        """Delete `images` together, or none of them (checks first)."""
        if not force:
            _refuse_kept(images)
        if not defer:
            _refuse_held(images)
        for image in images:
            self._delete(image)

    def _delete(self, image):
        image.state = DELETING
        self.changed(image)
        if not image.holders:
            self._free(image)

    def _free(self, image):
        """Drop the image's references: its exclusive slots become reusable
        after the next commit. Only for a DELETING image nobody holds. A big
        one is queued for `free_some` (see the note above)."""
        assert image.state == DELETING and not image.holders, image.full_name
        nodes = self.nodes
        if nodes.exclusive_chunks(image.root) > FREE_NOW_CHUNKS:
            image.forget_base()         # nobody reads it again
            self.freeing.append(image)
            return
        self._drop(image)

    def free_some(self, leaves=FREE_SLICE_LEAVES):
        """Free about `leaves` leaves of the queued images; True while some
        remain queued. Durable at the next commit."""
        while self.freeing and leaves > 0:
            image = self.freeing[0]
            done = image.detach_leaves(leaves)
            leaves -= done
            if not done:
                self.freeing.pop(0)
                self._drop(image)
                leaves -= 1
        return bool(self.freeing)

    def free_all(self):
        while self.free_some(1 << 30):
            pass

    def _drop(self, image):
        self.nodes.decref(image.root, 0)
        del self._images[image.id]
        image.state = FREED
        changes = self.commits.images
        if isinstance(image, Volume):
            del self._volumes[image.name]
            changes.volumes.discard(image.id)
            changes.deleted_volumes.add(image.id)
        else:
            del self._snapshots[(image.volume_id, image.name)]
            changes.snapshots.discard(image.id)
            changes.deleted_snapshots.add(image.id)

    def rename_volume(self, old, new):
        vol = self.get_volume(old)
        names.check_name(new)
        self._refuse_taken_name(new)
        del self._volumes[old]
        vol.name = new
        self._volumes[new] = vol
        for snap in self._snapshots.values():
            if snap.volume_id == vol.id:
                snap.volume_name = new
        self.changed(vol)
        return vol

    def resize_volume(self, name, size, *, force=False):
        vol = self.get_volume(name)
        vol.resize(size, force=force)
        return vol

    def create_snapshot(self, full_name, labels=None, *, group=None):
        vol_name, snap_name = names.split_snapshot(full_name)
        labels = names.check_labels(labels)
        vol = self.get_volume(vol_name)
        self._refuse_taken_snapshot(vol, snap_name)
        snap = Snapshot(self, {"id": self._new_id(), "volume_id": vol.id, "name": snap_name,
                               "size": vol.size, "root": vol.root, "created": time.time(),
                               "labels": labels, "base": vol.base,
                               "base_chunks": vol.base_chunks, "group_name": group,
                               "cold": vol.cold}, vol.name)
        self.nodes.incref(vol.root)
        vol._shared()
        self._images[snap.id] = self._snapshots[(vol.id, snap_name)] = snap
        self.changed(snap)
        return snap

    def create_remote_snapshot(self, full_name, size, base, base_chunks, labels=None):
        """A read-only snapshot VOLUME@SNAP of a remote manifest (`base`, in
        remote.db): nothing local yet, every chunk cold. The volume must
        exist; the snapshot need not have its size (a registry version)."""
        vol_name, snap_name = names.split_snapshot(full_name)
        labels = names.check_labels(labels)
        self.check_size(size)
        vol = self.get_volume(vol_name)
        self._refuse_taken_snapshot(vol, snap_name)
        snap = Snapshot(self, {"id": self._new_id(), "volume_id": vol.id, "name": snap_name,
                               "size": size, "root": 0, "created": time.time(),
                               "labels": labels, "base": base, "base_chunks": base_chunks,
                               "group_name": None, "cold": 0}, vol.name)
        snap.cold = snap.cold_limit     # nothing mapped yet: every base chunk is cold
        self._images[snap.id] = self._snapshots[(vol.id, snap_name)] = snap
        self.changed(snap)
        return snap

    def _refuse_taken_snapshot(self, vol, snap_name):
        taken = self._snapshots.get((vol.id, snap_name))
        if taken is not None:
            full_name = f"{vol.name}@{snap_name}"
            raise AlreadyExists(f"snapshot {full_name!r} already exists" if taken.live else
                                f"snapshot {full_name!r} is being deleted {_deleting(taken)}")

    # -- group snapshots: VOLUME@GROUP for several volumes, in one step ----------------
    def create_group_snapshot(self, group, volumes, labels=None):
        """Snapshot every volume of `volumes` as VOLUME@GROUP, all or none.
        Nothing runs between the members (one synchronous step), so the
        group is one consistent cut; the caller commits it in one go."""
        names.check_name(group, "group")
        labels = names.check_labels(labels)
        if not volumes or len(set(volumes)) != len(volumes):
            raise InvalidArgument(f"group {group!r} needs distinct volumes, got {volumes!r}")
        if self.group_members(group):
            raise AlreadyExists(f"group snapshot {group!r} already exists")
        vols = [self.get_volume(name) for name in volumes]
        for vol in vols:
            self._refuse_taken_snapshot(vol, group)
        return [self.create_snapshot(f"{vol.name}@{group}", labels, group=group)
                for vol in vols]

    def group_members(self, group):
        """The live snapshots of group snapshot `group` (O(snapshots))."""
        return [s for s in self.list_snapshots() if s.group == group]

    def groups(self):
        """{group name: [member snapshots]} of every group snapshot."""
        out = {}
        for snap in self.list_snapshots():
            if snap.group is not None:
                out.setdefault(snap.group, []).append(snap)
        return out

    def delete_group(self, group, *, defer=False, force=False):
        self._delete_all(self.get_group(group), defer, force)

    def clone_group(self, group, suffix):
        """A volume VOLUME+suffix cloned from each member; all or none."""
        members = self.get_group(group)
        new_names = [f"{s.volume_name}{suffix}" for s in members]
        for name in new_names:
            names.check_name(name)
            self._refuse_taken_name(name)
        return [self.clone(s.full_name, name) for s, name in zip(members, new_names)]

    def get_group(self, group):
        members = self.group_members(group)
        if not members:
            raise NotFound(f"no group snapshot named {group!r}")
        return members

    # -- holds: kept from deletion until released -----------------------------------------
    def add_hold(self, full_name, tag, reason=""):
        snap = self.get_snapshot(full_name)
        names.check_name(tag, "hold tag")
        snap.holds[tag] = str(reason)
        self.changed(snap)
        return snap

    def remove_hold(self, full_name, tag):
        snap = self.get_snapshot(full_name)
        if tag not in snap.holds:
            raise NotFound(f"snapshot {full_name} has no hold {tag!r}")
        del snap.holds[tag]
        self.changed(snap)
        return snap

    def set_labels(self, full_name, labels, *, replace=False):
        snap = self.get_snapshot(full_name)
        labels = names.check_labels(labels)
        snap.labels = labels if replace else {**snap.labels, **labels}
        self.changed(snap)
        return snap

    def clone(self, source, new_name):
        """A new writable volume with the content of a snapshot or volume."""
        src = self.get_image(source)
        names.check_name(new_name)
        self._refuse_taken_name(new_name)
        vol = Volume(self, {"id": self._new_id(), "name": new_name, "size": src.size,
                            "root": src.root, "created": time.time(),
                            "origin": src.full_name, "base": src.base,
                            "base_chunks": src.base_chunks, "cold": src.cold})
        self.nodes.incref(src.root)
        src._shared()
        self._images[vol.id] = self._volumes[new_name] = vol
        self.changed(vol)
        return vol

    def map_metadata_only(self, volume, nchunks):
        """Point chunks [0, nchunks) of an empty volume at fresh slots whose
        data is never written (reads return whatever the extent files hold:
        zeros). For benchmarks and scale tests of the metadata alone."""
        vol = self.get_volume(volume)
        if vol.root or nchunks > vol.nchunks:
            raise InvalidArgument(f"{volume}: metadata-only maps need an empty volume of at "
                                  f"least {nchunks} chunks")
        first = self.slots.add_counted(nchunks)
        for leaf_no in range(-(-nchunks // FANOUT)):
            leaf_id, leaf = vol._own_leaf(leaf_no)
            count = min(FANOUT, nchunks - leaf_no * FANOUT)
            start = first + leaf_no * FANOUT + SLOT_BASE
            leaf[:count] = type(leaf)("q", range(start, start + count))
            self.nodes.changed(leaf_id)
            self.nodes.add_along(vol._paths[leaf_no], count, count)   # fresh slots
        return vol

    # -- remote support ------------------------------------------------------------
    def frozen_chunks(self, snap, start, stop):
        """({chunk: slot}, [cold chunks]) for chunks [start, stop) of a
        snapshot; the slots stay as they are while the snapshot is held."""
        slots, cold = {}, []
        for chunk, entry in zip(range(start, stop), snap.entries(start, stop)):
            if entry >= SLOT_BASE:
                slots[chunk] = entry - SLOT_BASE
            elif snap.is_cold(chunk, entry):
                cold.append(chunk)
        return slots, cold

    def read_frozen(self, slot, view):
        """Thread-safe: read the content of a whole slot that a held snapshot maps."""
        self.slots.partials.read_chunk(slot, view)

    # -- partial slots (partial.py): the filler ---------------------------------------
    def partial_count(self):
        return len(self.slots.partials)

    def fill_partials(self, limit):
        """Complete up to `limit` partial slots, oldest first: copy the rest
        of each chunk from its old slot, then drop that slot's reference
        (its space returns at the next commit). O(limit). Does nothing while
        a push reads slots from a worker thread. Returns how many."""
        if any(h in image.holders for image in self._images.values() for h in FROZEN_READERS):
            return 0
        partials = self.slots.partials
        todo = list(itertools.islice(partials.table, limit))
        for slot in todo:
            partials.fill(slot)
        return len(todo)

    def reserve_install(self, image, fetched):
        """First step of installing fetched chunks ({chunk: bytes, or None for
        zeros}) into `image`: zero chunks go in at once; for the others still
        cold a slot is taken, and [(chunk, slot, data)] (in chunk order) is
        returned for the caller to write (ExtentStore.plan_runs/write_runs,
        off the event loop) and then hand to finish_install(). Commits may
        run in between: a taken slot counts for nothing until it is mapped."""
        if image.state == FREED or not fetched:
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
            if plan and image.state != FREED else set()
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
            self.changed(image)

    def drop_base(self, image):
        """The image holds every chunk of its base: forget the base."""
        if image.cold_count():
            raise Busy(f"{image.full_name} still has unhydrated chunks")
        image.base, image.base_chunks = None, 0
        self.changed(image)

    def slot_hashes(self, slots):
        """{slot: blake3 hex} of the given frozen slots, where cached."""
        commits = self.commits
        cached = commits.new_slot_hashes
        found = {s: cached[s] for s in slots if s in cached}
        found.update(self.store.load_slot_hashes(
            [s for s in slots if s not in found and s in commits.hashed]))
        return found

    def forget_slot_hashes(self, slots):
        """These slots' bytes change (a write in place) or they are free
        (fsck repair): their cached hashes go now, and from the store at
        the next commit."""
        commits = self.commits
        for slot in slots:
            commits.new_slot_hashes.pop(slot, None)
            commits.forgotten_slot_hashes.add(slot)
            commits.hashed.discard(slot)

    def record_slot_hash(self, slot, digest):
        """Cache the hash of a frozen slot (dropped when the slot is freed
        or written in place)."""
        if self.slots.rc[slot] > 0:
            self.commits.new_slot_hashes[slot] = digest
            self.commits.forgotten_slot_hashes.discard(slot)
            self.commits.hashed.add(slot)

    def max_volume_size(self):
        return MAX_CHUNKS * self.chunk_size

    def data_space(self):
        """Bytes data may still take before the free-space reserve."""
        return self.slots.space()[0]

    def data_reserve(self):
        """The free-space reserve data writes leave for metadata, in bytes."""
        return self.slots.space()[1]

    def set_reserve(self, nbytes):
        """Keep `nbytes` of the filesystem free of data (None: the default, 1%
        of the filesystem within MIN_RESERVE..64 MiB). Every data writer stops
        short of it (user writes, copy-on-write, hydration and pull installs:
        NoSpace, a restore pauses); metadata commits may use it."""
        self.slots.reserve_bytes = nbytes

    def space(self):
        """Pool totals in bytes (O(images)): allocated = slots in use,
        exclusive = the sum of what deleting each image alone frees, shared
        = the rest of allocated, unhydrated = chunks images still read from
        their bases."""
        cs, nodes, images = self.chunk_size, self.nodes, self._images.values()
        allocated = self.slots.used_slots() * cs
        exclusive = sum(nodes.exclusive_chunks(i.root) for i in images) * cs
        return {"allocated": allocated, "exclusive": exclusive,
                "shared": allocated - exclusive,
                "unhydrated": sum(i.cold for i in images) * cs}

    def frees_together(self, images):
        """{"bytes", "exact"}: what deleting `images` together frees, chunks
        they share only among themselves included (a dry run over what
        would be freed; a lower bound past a few leaves: extentmap)."""
        chunks, exact = self.nodes.frees_together([i.root for i in images])
        return {"bytes": chunks * self.chunk_size, "exact": exact}

    def status(self):
        st = os.statvfs(self.path)
        deleting = [i for i in self._images.values() if i.state == DELETING]
        return {"path": self.path, "chunk_size": self.chunk_size,
                "volumes": len(self.list_volumes()), "snapshots": len(self.list_snapshots()),
                "deleting": len(deleting), "space": self.space(),
                "used_bytes": self.slots.used_slots() * self.chunk_size,
                "partial_chunks": self.partial_count(),
                "disk_bytes": self.slots.disk_bytes(),
                "capacity_bytes": st.f_blocks * st.f_frsize,
                "free_bytes": st.f_bavail * st.f_frsize}

    # -- policies: records {"spec": text, "anchor": time or None}, committed like images --
    def policy_records(self):
        """{target: record} of every policy (copies)."""
        return {target: dict(record) for target, record in self._policies.items()}

    def policy_record(self, target):
        record = self._policies.get(target)
        return dict(record) if record is not None else None

    def put_policy(self, target, spec, anchor):
        """Store (or replace) `target`'s policy; durable at the next commit."""
        self._policies[target] = {"spec": str(spec), "anchor": anchor}
        self.commits.policies.add(target)

    def drop_policy(self, target):
        if self._policies.pop(target, None) is None:
            raise NotFound(f"no policy for {target!r}")
        self.commits.policies.add(target)


def _deleting(image):
    """Why a DELETING image's name is still taken, and until when."""
    if image.holders:
        return f"(held by {image.describe_holders()}); its name is free once they close"
    return "(its space is being freed); its name is free in a moment"


def _refuse_kept(images):
    kept = [s for s in images if s.holds]
    if kept:
        what = "; ".join(f"snapshot {s.full_name} has holds " + ", ".join(
            f"{tag} ({reason})" if reason else tag for tag, reason in sorted(s.holds.items()))
            for s in kept)
        raise Busy(f"{what}: release them first, or delete with --force")


def _refuse_held(images):
    held = [i for i in images if i.blocking_holders()]
    if held:
        what = "; ".join(f"{'snapshot' if i.read_only else 'volume'} {i.full_name} is held "
                         f"by {i.describe_holders()}" for i in held)
        raise Busy(f"{what}: close them first, or delete deferred (--defer) to free it "
                   "when the last one closes")


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
