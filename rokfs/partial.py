"""Partial slots: copy-on-write without the copy.

A write smaller than a chunk into a chunk whose slot is shared (with a
snapshot or a clone) does not copy the rest of the chunk: it takes a new
slot, writes only its 4 KiB blocks there, and records the new slot as
*partial*: {new slot: (old slot, bitmap of the blocks the new slot holds,
the map chunk it was written for)}.
The chunk reads block by block from the new slot where its bit is set, from
the old slot elsewhere. Later writes fill more blocks; when every block is
held (a whole-chunk write, or the background filler copying the rest) the
record goes and so does the reference to the old slot.

Invariants:
- A record belongs to its new slot: it exists while that slot's count is
  above zero and goes (dropping its reference on the old slot) in the same
  step as the count reaches zero. The old slot's count includes one
  reference per record naming it.
- An old slot is never partial itself; a record's bitmap is never empty
  and never full (full = a plain slot, no record).
- What a slot reads as (its *content*) never changes while the slot is
  shared: filling a hole copies the old slot's block, which is what the
  hole read as. So the filler may fill shared slots, and a cached content
  hash of a partial slot stays right.
- The table is committed with the slot counts (SlotCommit), so a record
  and the counts it implies are always durable together; blocks written
  into a hole since the last commit are invisible after a crash (the hole
  reads from the old slot, as it did at that commit).
- A record read by a worker thread (`read_chunk` for a push) is not
  changed under it: in-place writes only touch exclusive slots, and the
  pool runs the filler only while no push or publish holds an image.
"""

from .fileio import add_piece, pwrite_full

BLOCK_SHIFT = 12
BLOCK = 1 << BLOCK_SHIFT     # the unit a partial slot holds or leaves to its old slot


def block_range(within, length):
    """First block and the block after the last one a byte range touches."""
    return within // BLOCK, -(-(within + length) // BLOCK)


def mask(first, stop):
    return ((1 << (stop - first)) - 1) << first


def aligned_mask(within, length):
    """mask() of a byte range that starts and ends on block boundaries."""
    return ((1 << (length >> BLOCK_SHIFT)) - 1) << (within >> BLOCK_SHIFT)


def runs(bits, first, stop):
    """Yield (start block, count, held) over blocks [first, stop): runs of
    blocks the new slot holds (held) or leaves to the old slot."""
    holes = ~bits & ((1 << stop) - 1)
    while first < stop:
        held = (bits >> first) & 1
        rest = (bits if held else holes) >> first
        count = min((rest ^ (rest + 1)).bit_length() - 1, stop - first)
        yield first, count, bool(held)
        first += count


class PartialSlots:
    """The partial-slot table of a pool (see the note at the top)."""

    def __init__(self, slots, rows=()):
        self.slots = slots
        self.chunk_size = slots.chunk_size
        self.nblocks = slots.chunk_size // BLOCK
        self.full = (1 << self.nblocks) - 1
        self.table = {slot: [old, int.from_bytes(bits, "little"), chunk]
                      for slot, old, bits, chunk in rows}
        self.dirty, self.gone = set(), set()
        self.release_old = self._release_old

    def _release_old(self, old, chunk):
        """A record naming `old` for map chunk `chunk` went: drop its
        reference (the pool may hook its accounting in here)."""
        self.slots.decref(old)

    def __len__(self):
        return len(self.table)

    def __contains__(self, slot):
        return slot in self.table

    def get(self, slot):
        return self.table.get(slot)

    # -- changes (on the pool's thread) -------------------------------------------
    def add(self, slot, old, bits, chunk):
        """Record `slot` as partial over `old`, which gains a reference."""
        self._record(slot, old, bits, chunk)
        self.slots.incref(old)

    def _record(self, slot, old, bits, chunk):
        """Record `slot` as partial over `old`, taking a reference the
        caller held on `old`."""
        self.table[slot] = [old, bits, chunk]
        self.dirty.add(slot)
        self.gone.discard(slot)

    def set_bits(self, slot, bits):
        """The slot now also holds `bits`; returns True if that completed it."""
        record = self.table[slot]
        record[1] |= bits
        if record[1] == self.full:
            self.drop(slot)
            return True
        self.dirty.add(slot)
        return False

    def drop(self, slot):
        """Forget the record (the slot is complete or freed) and its reference."""
        old, _, chunk = self.table.pop(slot)
        self.dirty.discard(slot)
        self.gone.add(slot)
        self.release_old(old, chunk)

    def forget(self, slot):
        """Drop the record only (fsck repair recounts the old slot itself)."""
        if self.table.pop(slot, None) is not None:
            self.dirty.discard(slot)
            self.gone.add(slot)

    # -- reading --------------------------------------------------------------------
    def plan(self, slot, record, within, length, plan):
        """Append [fd, file offset, length] pieces of [within, within+length)
        of partial `slot` to `plan`, merging with what is already there."""
        old, bits, _ = record
        first, stop = block_range(within, length)
        end = within + length
        for start, count, held in runs(bits, first, stop):
            lo, hi = max(start * BLOCK, within), min((start + count) * BLOCK, end)
            fd, base = self.slots.locate(slot if held else old)
            add_piece(plan, fd, base + lo, hi - lo)

    def read_chunk(self, slot, view):
        """Thread-safe (see the note): the whole content of `slot` into `view`."""
        self.slots.read_raw(slot, 0, view)
        record = self.table.get(slot)
        if record is not None:
            self._read_holes(record, view, 0, self.nblocks)

    def _read_holes(self, record, view, first, stop):
        """Read the blocks of [first, stop) the old slot holds into `view`
        (laid out from block 0 of the chunk)."""
        old, bits, _ = record
        for start, count, held in runs(bits, first, stop):
            if not held:
                self.slots.read_raw(old, start * BLOCK,
                                    view[start * BLOCK:(start + count) * BLOCK])

    # -- writing ------------------------------------------------------------------
    def write_over(self, old_slot, within, piece, chunk):
        """A new partial slot for map chunk `chunk` holding `piece` at
        `within` over the content of `old_slot` (plain or partial, not to be
        written): only the blocks the piece touches are written, plus, over
        a partial slot, the blocks that slot held. Over a plain slot the new
        record takes over the reference the caller's map entry held on it;
        over a partial slot the record names that one's old slot, and the
        caller drops its reference to `old_slot` itself. Returns the new
        slot, or None, changing nothing, when it would hold the whole chunk
        (the caller copies the chunk instead)."""
        record = self.table.get(old_slot)
        if record is None and not (within | len(piece)) % BLOCK and len(piece) < self.chunk_size:
            return self.write_over_plain(old_slot, within, piece, chunk)
        first, stop = block_range(within, len(piece))
        written = mask(first, stop) | (record[1] if record else 0)
        if written == self.full:
            return None
        slot = self.slots.allocate()
        self._write_blocks(slot, old_slot, within, piece)
        if record is None:
            self._record(slot, old_slot, written, chunk)
            return slot
        for start, count, mine in runs(record[1] & ~mask(first, stop), 0, self.nblocks):
            if mine:
                self._copy_blocks(old_slot, slot, start, count)
        self.add(slot, record[0], written, chunk)
        return slot

    def write_over_plain(self, old_slot, within, piece, chunk):
        """The hot path of a small write after a snapshot: `piece`, whole
        blocks at a block boundary and less than a chunk, over plain slot
        `old_slot`: one allocation, one pwrite, one record. Returns the new
        slot (see write_over for the reference it takes over)."""
        slot, fd, offset = self.slots.allocate_at()
        pwrite_full(fd, piece, offset + within)
        self._record(slot, old_slot, aligned_mask(within, len(piece)), chunk)
        return slot

    def write_in_place(self, slot, within, piece):
        """Write into an exclusive partial slot; returns True if now complete."""
        if not (within | len(piece)) % BLOCK:          # whole blocks: the hot path
            self.slots.write(slot, within, piece)
            return self.set_bits(slot, aligned_mask(within, len(piece)))
        first, stop = block_range(within, len(piece))
        self._write_blocks(slot, slot, within, piece)
        return self.set_bits(slot, mask(first, stop))

    def _write_blocks(self, slot, source, within, piece):
        """Write `piece` at `within` into `slot`, whole blocks: the bytes of
        its first and last block that it does not cover come from the
        current content of `source`."""
        first, stop = block_range(within, len(piece))
        if within % BLOCK == 0 and len(piece) % BLOCK == 0:
            self.slots.write(slot, within, piece)
            return
        buf = bytearray((stop - first) * BLOCK)
        view = memoryview(buf)
        self._read_content(source, first, first + 1, view[:BLOCK])
        self._read_content(source, stop - 1, stop, view[-BLOCK:])
        lo = within - first * BLOCK
        buf[lo:lo + len(piece)] = piece
        self.slots.write(slot, first * BLOCK, buf)

    def _read_content(self, slot, first, stop, view):
        """Blocks [first, stop) of `slot` as it reads (either slot of a partial)."""
        record = self.table.get(slot)
        if record is None:
            self.slots.read_raw(slot, first * BLOCK, view)
            return
        for start, count, held in runs(record[1], first, stop):
            part = view[(start - first) * BLOCK:(start - first + count) * BLOCK]
            self.slots.read_raw(slot if held else record[0], start * BLOCK, part)

    def _copy_blocks(self, source, slot, start, count):
        buf = bytearray(count * BLOCK)
        self.slots.read_raw(source, start * BLOCK, memoryview(buf))
        self.slots.write(slot, start * BLOCK, buf)

    def fill(self, slot):
        """Copy the old slot's blocks into every hole of `slot`, then drop
        the record (and the old slot's reference). The slot's content does
        not change, so it may be shared."""
        old, bits, _ = self.table[slot]
        for start, count, held in runs(bits, 0, self.nblocks):
            if not held:
                self._copy_blocks(old, slot, start, count)
        self.drop(slot)

    # -- commit --------------------------------------------------------------------
    def begin_commit(self):
        """(rows to write, slots whose record went, state for abort)."""
        nbytes = -(-self.nblocks // 8)
        rows = [(s, self.table[s][0], self.table[s][1].to_bytes(nbytes, "little"),
                 self.table[s][2]) for s in sorted(self.dirty)]
        gone = sorted(self.gone)
        state = (self.dirty, self.gone)
        self.dirty, self.gone = set(), set()
        return rows, gone, state

    def abort_commit(self, state):
        dirty, gone = state
        self.dirty |= {s for s in dirty if s in self.table}
        self.gone |= {s for s in gone if s not in self.table}
