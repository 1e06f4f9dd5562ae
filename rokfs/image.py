"""Images: the read side of volumes and snapshots, and a volume's writes.

An image is a root in the map tree (extentmap.py) plus its size, an
optional base (a remote manifest its cold chunks come from) and a lifecycle.

Invariants:
- Snapshots and clones share the root: O(1) whatever the volume's size. A
  volume writes a chunk in place only if its whole path and the slot are
  exclusively its own and the slot is not pinned; otherwise the write goes
  to a new slot (copy-on-write): the whole chunk, or, for a smaller write
  over a stored chunk, only its 4 KiB blocks in a partial slot whose other
  blocks read from the old slot (partial.py). Reads of a partial slot
  assemble the two.
- Snapshots are never written. A snapshot's content can therefore change
  only if its slots are overwritten, which the invariant above forbids.
- Lifecycle: an image is LIVE, then DELETING (hidden from lookups, listings
  and new holders, still readable by its holders, its root and therefore
  its slots still referenced), then FREED (its root's reference dropped; no
  holder is left to read it). `holders` counts who has it open, by kind
  ("NBD connection", "FUSE handle", "push", "hydrator", ...): the pool
  moves an image to FREED only when it is DELETING and `holders` is empty,
  so a reader is served its own image's bytes or an error, never another
  image's bytes.
- Reads that meet a cold chunk raise NeedsChunks before returning anything;
  writes that would partially cover a cold chunk raise it before any change.
- Space accounting is O(1) per image and kept as entries change: allocated
  and exclusive come from the root's summaries (extentmap.py), unhydrated
  from `cold`, the count of INHERIT entries below `cold_limit`, adjusted by
  every entry set and every resize and stored with the image's row.
- Block status (`extents`) costs O(leaves in the range): a leaf whose
  entries are all slots, or that holds no slot where nothing is cold, is
  answered from its summary without visiting its entries.
"""

import collections

from .errors import InvalidArgument, OutOfRange
from .extentmap import FANOUT, INHERIT, LEAF, SLOT_BASE, ZERO, SummaryDeltas
from .fileio import add_piece, pread_full
from .partial import BLOCK as PARTIAL_BLOCK

HOLE, ZERO_FLAG = 1, 2  # extent flags, as NBD base:allocation
LIVE, DELETING, FREED = "live", "deleting", "freed"
BLOCK_MASK = PARTIAL_BLOCK - 1   # a write of whole partial blocks has none of these bits
EXTENT_VISITS = 1 << 15     # chunks `extents` looks at one by one per call, at most
YIELDING_HOLDERS = frozenset({"hydrator"})   # let a delete through; the image waits for them
FROZEN_READERS = frozenset({"push", "publish"})   # read slots from a worker thread (read_frozen)


class NeedsChunks(Exception):
    """The operation touches cold chunks (content in the base manifest) that
    must be hydrated first; `chunks` lists them. Raised before any change.
    An engine-to-control signal, not an error: Control fetches the chunks
    and retries, so it never reaches a user."""

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
        self.state = DELETING if row.get("deleting") else LIVE
        self.holders = collections.Counter()    # who has it open now (not persisted)
        self.holds = dict(row.get("holds") or {})   # tag -> reason: kept from deletion
        self.cold = row.get("cold")      # None: an older pool, counted when it opens
        self._leaves = {}
        self._owned = {}
        self._paths = {}                # leaf_no -> (root, mid, leaf) ids, owned

    @property
    def live(self):
        return self.state == LIVE

    def blocking_holders(self):
        """The holders a plain delete must wait for (hydrators yield)."""
        return {h: n for h, n in self.holders.items() if h not in YIELDING_HOLDERS}

    def describe_holders(self):
        """'1 NBD connection, 2 FUSE handles' (sorted, pluralised)."""
        return ", ".join(f"{n} {h}{'s' if n > 1 else ''}"
                         for h, n in sorted(self.holders.items()))

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

    @property
    def cold_limit(self):
        """Chunks below this read from the base while their entry is INHERIT."""
        return min(self.base_chunks, self.nchunks)

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
        partials = slots.partials.table
        plan, cold = [], []
        for chunk, within, n in self.spans(offset, length):
            entry = self.entry(chunk)
            if entry >= SLOT_BASE and entry - SLOT_BASE in partials:
                slots.partials.plan(entry - SLOT_BASE, partials[entry - SLOT_BASE],
                                    within, n, plan)
            elif entry >= SLOT_BASE:
                fd, base = slots.locate(entry - SLOT_BASE)
                add_piece(plan, fd, base + within, n)
            elif self.is_cold(chunk, entry):
                cold.append(chunk)
            elif plan and type(plan[-1]) is int:
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
        ranges that read as zeros without stored data, 0 for data. A leaf
        that is uniform (see the note above) costs one step; past
        EXTENT_VISITS chunks looked at one by one, the answer stops at a leaf
        boundary, describing less than asked (as NBD allows)."""
        self._check_range(offset, length)
        out = []
        cs, end = self.pool.chunk_size, offset + length
        span, visits = FANOUT * cs, 0
        for leaf_no in range(offset // span, -(-end // span)):
            lo, hi = max(offset, leaf_no * span), min(end, (leaf_no + 1) * span)
            flags = self._uniform_flags(leaf_no, lo // cs, -(-hi // cs))
            if flags is not None:
                _add_extent(out, lo, hi - lo, flags)
                continue
            if visits >= EXTENT_VISITS:
                break
            visits += FANOUT
            for chunk, within, n in self.spans(lo, hi - lo):
                entry = self.entry(chunk)
                data = entry >= SLOT_BASE or self.is_cold(chunk, entry)
                _add_extent(out, chunk * cs + within, n, 0 if data else HOLE | ZERO_FLAG)
        return [tuple(e) for e in out]

    def _uniform_flags(self, leaf_no, first, stop):
        """The flags of chunks [first, stop) of leaf `leaf_no` if they are all
        alike, told from the leaf's summary alone; else None."""
        nodes = self.pool.nodes
        leaf_id = nodes.leaf_id(self.root, leaf_no)
        mapped = nodes.mapped[leaf_id] if leaf_id else 0
        if mapped == FANOUT:
            return 0
        if first >= self.cold_limit or (not leaf_id and stop <= self.cold_limit):
            return None if mapped else (HOLE | ZERO_FLAG if first >= self.cold_limit else 0)
        return None

    def _shared(self):
        """Our root is now shared: every path must be copied before writing."""
        self._owned.clear()
        self._paths.clear()

    def _own_leaf(self, leaf_no):
        """(leaf id, leaf array) for `leaf_no`, exclusively ours."""
        hit = self._owned.get(leaf_no)
        if hit is not None:
            return hit
        nodes = self.pool.nodes
        i0, i1 = divmod(leaf_no, FANOUT)
        root = nodes.owned(self.root, 0, (0, 0))
        if root != self.root:
            self.root = root
            self.pool.changed(self)
        mid = _own_child(nodes, root, i0, 1, (1, i0))
        leaf_id = _own_child(nodes, mid, i1, LEAF, (LEAF, leaf_no))
        hit = (leaf_id, nodes.get(leaf_id))
        self._owned[leaf_no] = hit
        self._paths[leaf_no] = (root, mid, leaf_id)
        self._leaves[leaf_no] = hit[1]
        return hit

    def _set_entry(self, leaf_id, leaf, chunk, new, deltas=None):
        """Set an entry of an owned leaf; the path's summaries and `cold`
        follow, now or through `deltas` (extentmap.SummaryDeltas). A new
        slot entry is a fresh slot (count 1)."""
        nodes = self.pool.nodes
        i = chunk % FANOUT
        old = leaf[i]
        leaf[i] = new
        nodes.changed(leaf_id)
        mapped = sole = 0
        if old >= SLOT_BASE:
            mapped -= 1
            sole -= nodes.drop_slot(old - SLOT_BASE, leaf_id, i, deltas)
        if new >= SLOT_BASE:
            mapped += 1
            sole += 1
        if not (mapped or sole):
            pass
        elif deltas is None:
            nodes.add_along(self._paths[chunk // FANOUT], mapped, sole)
        else:
            deltas.along(self._paths[chunk // FANOUT], mapped, sole)
        if self.base_chunks and (old == INHERIT) != (new == INHERIT) \
                and chunk < self.cold_limit:
            self.cold += 1 if new == INHERIT else -1
            self.pool.changed(self)

    def touches_cold(self, offset, length):
        """Does [offset, offset+length) meet a cold chunk? O(1) for an image
        with no base; else O(chunks in the range)."""
        if not self.base_chunks or length <= 0:
            return False
        return any(self.is_cold(c, self.entry(c)) for c, _, _ in
                   self.spans(offset, max(0, min(length, self.size - offset))))

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
        """How many chunks are still cold (O(1): kept as entries change)."""
        return self.cold

    def count_cold(self):
        """Count the cold chunks from the map: the base's chunks minus the
        entries set in existing leaves (O(leaves)). For fsck and older pools."""
        limit = self.cold_limit
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

    # -- freeing in slices (pool.py): only for a DELETING image nobody holds --------
    def forget_base(self):
        """Nobody reads this image again: its base (and cold count) go."""
        self.base, self.base_chunks, self.cold = None, 0, 0
        self.pool.changed(self)

    def detach_leaves(self, limit):
        """Detach up to `limit` subtrees (leaves, or shared mids) from our own
        map, dropping their references; returns how many (0: none left).
        Every state in between is a consistent, smaller map."""
        nodes = self.pool.nodes
        if not self.root or nodes.rc[self.root] != 1:
            return 0
        self._leaves.clear()
        self._shared()
        done, root_node = 0, nodes.get(self.root)
        for i0, mid in enumerate(root_node):
            if done >= limit:
                break
            if not mid:
                continue
            if nodes.rc[mid] == 1:
                mid_node = nodes.get(mid)
                for i1, leaf in enumerate(mid_node):
                    if leaf and done < limit:
                        self._detach((self.root, mid), mid_node, i1, leaf, LEAF)
                        done += 1
                if any(mid_node):
                    break
            self._detach((self.root,), root_node, i0, mid, 1)
            done += 1
        return done

    def _detach(self, path, parent_node, index, child, level):
        """Point `parent_node[index]` (the end of `path`) at nothing, taking
        `child`'s summaries off the path."""
        nodes = self.pool.nodes
        own = nodes.sole[child] if nodes.rc[child] == 1 else 0
        nodes.add_along(path, -nodes.mapped[child], -own)
        parent_node[index] = 0
        nodes.changed(path[-1])
        nodes.decref(child, level, parent=path[-1])

    def lifecycle(self):
        return {"state": self.state, "holders": dict(self.holders)}

    def usage(self):
        """Space in bytes: allocated (chunks it maps to slots), exclusive (what
        deleting it frees), shared (the rest), unhydrated (still on the base).
        O(1): read from the kept counts."""
        cs, nodes = self.pool.chunk_size, self.pool.nodes
        allocated = nodes.allocated_chunks(self.root)
        exclusive = nodes.exclusive_chunks(self.root)
        return {"size": self.size, "allocated": allocated * cs,
                "exclusive": exclusive * cs, "shared": (allocated - exclusive) * cs,
                "unhydrated": self.cold * cs}


class Snapshot(Image):
    def __init__(self, pool, row, volume_name):
        super().__init__(pool, row)
        self.volume_id = row["volume_id"]
        self.volume_name = volume_name      # kept current by Pool.rename_volume
        self.labels = dict(row["labels"])
        self.group = row.get("group_name")  # the group snapshot it was taken in, if any

    @property
    def full_name(self):
        return f"{self.volume_name}@{self.name}"

    def row(self):
        return {"id": self.id, "volume_id": self.volume_id, "name": self.name,
                "size": self.size, "root": self.root, "created": self.created,
                "labels": self.labels, "base": self.base, "base_chunks": self.base_chunks,
                "deleting": int(self.state == DELETING), "group_name": self.group,
                "holds": self.holds, "cold": self.cold}

    def info(self):
        return {"name": self.full_name, "volume": self.volume_name, "snapshot": self.name,
                "created": self.created, "labels": dict(self.labels), "group": self.group,
                "holds": dict(self.holds), **self.usage(), **self.lifecycle()}


class Volume(Image):
    read_only = False

    def __init__(self, pool, row):
        super().__init__(pool, row)
        self.origin = row.get("origin")

    @property
    def full_name(self):
        return self.name

    def row(self):
        return {"id": self.id, "name": self.name, "size": self.size, "root": self.root,
                "created": self.created, "origin": self.origin, "base": self.base,
                "base_chunks": self.base_chunks, "deleting": int(self.state == DELETING),
                "cold": self.cold}

    def pwrite(self, offset, data):
        self._check_range(offset, len(data))
        view = memoryview(data).cast("B")
        self._refuse_cold_partials(offset, len(view))
        cs = self.pool.chunk_size
        slots = self.pool.slots
        partials = slots.partials
        partial = partials.table
        hashed = self.pool.commits.hashed
        # a write over several chunks gathers its summary changes: one walk
        # per leaf instead of one per chunk (extentmap.SummaryDeltas)
        deltas = SummaryDeltas() if len(view) > cs else None
        try:
            run, pos = None, 0
            for chunk, within, n in self.spans(offset, len(view)):
                leaf_id, leaf = self._own_leaf(chunk // FANOUT)
                entry = leaf[chunk % FANOUT]
                old = entry - SLOT_BASE                      # the slot, if entry is one
                if entry >= SLOT_BASE and slots.writable(old):
                    if old in hashed:                        # its cached hash no longer holds
                        self.pool.forget_slot_hashes([old])
                    if old in partial:
                        run = self._write_run(run, view)
                        partials.write_in_place(old, within, view[pos:pos + n])
                        pos += n
                        continue
                    fd, base = slots.locate(old)
                    if _extends(run, fd, base + within, pos):
                        run[3] += n
                    else:
                        run = self._write_run(run, view)
                        run = [fd, base + within, pos, n]
                else:
                    if run:
                        run = self._write_run(run, view)
                    piece = view[pos:pos + n]
                    if n >= cs or entry < SLOT_BASE:
                        self._write_new_slot(leaf_id, leaf, chunk, entry, within, piece, cs,
                                             deltas)
                    elif old not in partial and not (within | n) & BLOCK_MASK:
                        self._write_blocks_over(leaf_id, leaf, chunk, old, within, piece)
                    else:
                        self._write_partial(leaf_id, leaf, chunk, entry, within, piece, cs)
                pos += n
            self._write_run(run, view)
        finally:
            if deltas is not None:
                deltas.apply(self.pool.nodes)

    def _write_partial(self, leaf_id, leaf, chunk, entry, within, piece, cs):
        """A write smaller than a chunk over a slot it may not write: a
        partial slot over it (partial.py), or a copied chunk when that slot
        would end up holding every block."""
        over_partial = entry - SLOT_BASE in self.pool.slots.partials
        slot = self.pool.slots.partials.write_over(entry - SLOT_BASE, within, piece, chunk)
        if slot is None:
            self._write_new_slot(leaf_id, leaf, chunk, entry, within, piece, cs)
        elif over_partial:
            self._set_entry(leaf_id, leaf, chunk, slot + SLOT_BASE)
        else:
            self._take_over_entry(leaf_id, leaf, chunk, entry - SLOT_BASE, slot)

    def _write_blocks_over(self, leaf_id, leaf, chunk, old, within, piece):
        """The hot path of a small write after a snapshot: whole blocks,
        less than a chunk, over plain slot `old` go to a new partial slot."""
        slot = self.pool.slots.partials.write_over_plain(old, within, piece, chunk)
        self._take_over_entry(leaf_id, leaf, chunk, old, slot)

    def _take_over_entry(self, leaf_id, leaf, chunk, old, slot):
        """Point the entry at new partial `slot`, whose record took over the
        entry's reference on plain slot `old` (whose count is unchanged).
        The path's `sole` gains the new slot, less the old one if it was
        the path's alone (count 1). (nodes.changed() and add_along(),
        inlined: this is the hot path of writes after a snapshot.)"""
        nodes = self.pool.nodes
        leaf[chunk % FANOUT] = slot + SLOT_BASE
        nodes.dirty.add(leaf_id)
        if self.pool.slots.rc[old] != 1:
            sole, dirty_rc = nodes.sole, nodes.dirty_rc
            for node_id in self._paths[chunk // FANOUT]:
                sole[node_id] += 1
                dirty_rc.add(node_id)

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

    def _write_new_slot(self, leaf_id, leaf, chunk, entry, within, piece, cs, deltas=None):
        """Write a chunk to a fresh slot, one chunk per pwrite (a bigger write
        into fresh file space gets large page-cache folios, which make later
        small in-place writes ~2.5x slower). A partial write copies the rest
        of the chunk from the old slot, or zero-fills it. (A small write over
        a stored chunk makes a partial slot instead: see pwrite.)"""
        slots = self.pool.slots
        slot, fd, offset = slots.allocate_at()
        if len(piece) < cs:
            piece = slots.merged(entry - SLOT_BASE if entry >= SLOT_BASE else None, within, piece)
        slots.write_at(fd, piece, offset)
        self._set_entry(leaf_id, leaf, chunk, slot + SLOT_BASE, deltas)

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
        self.pool.check_size(new_size)
        old_limit = self.cold_limit
        if new_size < self.size:
            if not force:
                self._refuse_shrink_over_data(new_size)
            self._drop_tail(new_size)
        self.size = new_size
        self.cold += self.cold_limit - old_limit    # entries there are all INHERIT
        self.pool.changed(self)

    def _refuse_shrink_over_data(self, new_size):
        cs = self.pool.chunk_size
        first_full = -(-new_size // cs)
        chunk = self._first_data_from(first_full)
        if chunk is not None:
            raise InvalidArgument(
                f"{self.name}: cannot shrink to {new_size} bytes: data is stored "
                f"beyond it (at {chunk * cs}); trim it first or force the resize")
        tail = min(first_full * cs, self.size) - new_size
        if tail and self.pread(new_size, tail) != bytes(tail):
            raise InvalidArgument(
                f"{self.name}: cannot shrink to {new_size} bytes: the bytes after it "
                "hold data; trim them first or force the resize")

    def _first_data_from(self, first):
        """The first chunk >= `first` holding data (a slot, or cold), or None;
        visits only the leaves from there on."""
        nodes, cold = self.pool.nodes, self.cold_chunks(first, self.cold_limit)[:1]
        for leaf_no, leaf_id, _ in nodes.walk_leaves(self.root, first // FANOUT,
                                                     max(self.nchunks - 1, 0) // FANOUT):
            leaf, base = nodes.get(leaf_id), leaf_no * FANOUT
            for i in range(max(first - base, 0), FANOUT):
                if leaf[i] >= SLOT_BASE:
                    return min([base + i, *cold])
        return cold[0] if cold else None

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
                "snapshots": [s.name for s in snaps], **self.usage(), **self.lifecycle()}


def _add_extent(out, offset, length, flags):
    if out and out[-1][2] == flags:
        out[-1][1] += length
    else:
        out.append([offset, length, flags])


def _own_child(nodes, parent_id, index, level, pos):
    parent = nodes.get(parent_id)
    child = nodes.owned(parent[index], level, pos, parent_id)
    if child != parent[index]:
        parent[index] = child
        nodes.changed(parent_id)
    return child


def _extends(run, fd, file_offset, pos):
    """Does [fd, file_offset) continue `run` both on disk and in the buffer?"""
    return (run is not None and run[0] == fd and run[1] + run[3] == file_offset
            and run[2] + run[3] == pos)
