"""The commit batch: what one commit (= FLUSH) makes durable, in one step.

A commit runs in three parts so that its slow middle can leave the event
loop: `Commits.begin()` copies out everything changed since the last commit
(image rows, map nodes, slot counts, cached slot hashes) into a CommitBatch
and starts a new epoch; `write(batch)` (blocking, may run on a worker
thread) fdatasyncs the extent files, then writes the batch in one SQLite
transaction, then punches the freed slots; `end(batch)` or `abort(batch)`
closes the epoch on the loop.

Invariants:
- A batch is a copy: changes made while it is being written belong to the
  next batch, never to this one.
- Data is durable before the metadata that names it (fdatasync, then the
  transaction); the transaction is all or nothing.
- A failed write leaves nothing lost: `abort` hands everything the batch
  carried back to the next commit.
- Freed slots return to the free list only in `end`, after the transaction
  that records them free has completed.
- A slot's cached content hash (what a push computed) is true of the slot's
  bytes: `hashed` marks every slot that has one, in memory or in the store,
  and a write in place into a marked slot (possible once no snapshot reaches
  it any more) forgets the hash first (Image.pwrite); a freed slot's goes
  with the commit that frees it. A slot whose new hash a batch carries is
  pinned until that batch ends (not written in place: the write goes to a
  new slot), so that a crash after the batch cannot leave a stored hash of
  bytes the slot no longer holds.
"""

import dataclasses


@dataclasses.dataclass
class CommitBatch:
    """Everything one commit writes, copied out of the in-memory state, and
    what `Commits.abort` needs to mark it dirty again."""

    volumes: list            # volume rows to upsert
    snapshots: list          # snapshot rows to upsert
    deleted_volumes: list
    deleted_snapshots: list
    image_state: tuple       # ImageChanges' sets taken for this batch
    nodes: list              # map node rows (id, rc, data) to write whole
    node_rcs: list           # (rc, id) of nodes whose count alone changed
    deleted_nodes: list
    node_state: tuple        # MapNodes' dirty sets, for abort
    slot_state: object       # ExtentStore's commit state (dirty blocks, freed slots)
    freed_slots: list        # slots whose cached content hash goes
    slot_hashes: list        # (slot, hash) pairs newly cached
    policies: list           # (target, record or None = deleted) of changed policies

    @property
    def slot_blocks(self):
        return self.slot_state.blocks


class ImageChanges:
    """Ids of images whose rows changed or went since the last commit."""

    def __init__(self):
        self.volumes, self.snapshots = set(), set()
        self.deleted_volumes, self.deleted_snapshots = set(), set()

    def take(self):
        state = (self.volumes, self.snapshots, self.deleted_volumes, self.deleted_snapshots)
        self.__init__()
        return state

    def give_back(self, state):
        volumes, snapshots, deleted_volumes, deleted_snapshots = state
        self.volumes |= volumes
        self.snapshots |= snapshots
        self.deleted_volumes |= deleted_volumes
        self.deleted_snapshots |= deleted_snapshots


class Commits:
    """The pool's one commit path, in the three parts described above."""

    def __init__(self, pool):
        self.pool = pool
        self.images = ImageChanges()
        self.new_slot_hashes = {}       # slot -> blake3 hex, cached since the last commit
        self.forgotten_slot_hashes = set()
        self.hashed = SlotMarks(pool.store.hashed_slots())   # slots with a cached hash
        self.policies = set()           # targets whose policy record changed or went

    def begin(self):
        pool = self.pool
        image_state = self.images.take()
        volumes, snapshots, deleted_volumes, deleted_snapshots = image_state
        nodes, node_rcs, deleted_nodes, node_state = pool.nodes.begin_commit()
        slot_state = pool.slots.begin_commit()
        forget, self.forgotten_slot_hashes = self.forgotten_slot_hashes, set()
        new_hashes, self.new_slot_hashes = self.new_slot_hashes, {}
        pool.slots.pin_inflight(new_hashes)
        return CommitBatch(
            volumes=_rows(pool, volumes), snapshots=_rows(pool, snapshots),
            deleted_volumes=sorted(deleted_volumes), deleted_snapshots=sorted(deleted_snapshots),
            image_state=image_state,
            nodes=nodes, node_rcs=node_rcs, deleted_nodes=deleted_nodes, node_state=node_state,
            slot_state=slot_state,
            freed_slots=list(slot_state.freed) + sorted(forget),
            slot_hashes=list(new_hashes.items()), policies=self._take_policies())

    def write(self, batch):
        """Blocking; may run in a worker thread, one batch at a time."""
        pool = self.pool
        pool.slots.sync(batch.slot_state)
        pool.store.commit(batch)
        try:
            pool.slots.punch(batch.slot_state.freed)
        except OSError:
            pass  # space stays reserved; fsck --repair gives it back

    def end(self, batch):
        self.pool.slots.end_commit(batch.slot_state)
        for slot in batch.slot_state.freed:
            self.hashed.discard(slot)

    def abort(self, batch):
        self.images.give_back(batch.image_state)
        self.pool.nodes.abort_commit(batch.node_state)
        self.pool.slots.abort_commit(batch.slot_state)
        forgotten = self.forgotten_slot_hashes          # since begin: written in place
        self.new_slot_hashes = {**{s: h for s, h in batch.slot_hashes if s not in forgotten},
                                **self.new_slot_hashes}
        self.forgotten_slot_hashes |= {s for s in batch.freed_slots
                                       if s not in self.new_slot_hashes}
        self.policies |= {target for target, _ in batch.policies}

    def _take_policies(self):
        changed, self.policies = self.policies, set()
        return [(target, self.pool.policy_record(target)) for target in sorted(changed)]


def _rows(pool, ids):
    return [pool.image_by_id(i).row() for i in sorted(ids) if pool.image_by_id(i) is not None]


class SlotMarks:
    """A set of slot numbers as a bitmap: a byte per 8 slots, so that a
    pool with millions of cached hashes marks them in a few hundred KiB."""

    def __init__(self, slots=()):
        self.bits = bytearray()
        for slot in slots:
            self.add(slot)

    def add(self, slot):
        i = slot >> 3
        if i >= len(self.bits):
            self.bits.extend(bytes(i + 1 - len(self.bits)))
        self.bits[i] |= 1 << (slot & 7)

    def discard(self, slot):
        i = slot >> 3
        if i < len(self.bits):
            self.bits[i] &= 0xFF ^ (1 << (slot & 7))

    def __contains__(self, slot):
        i = slot >> 3
        return i < len(self.bits) and bool(self.bits[i] >> (slot & 7) & 1)
