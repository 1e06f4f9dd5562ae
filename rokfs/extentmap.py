"""Extent maps: a fixed-depth radix tree of reference-counted nodes.

A volume or snapshot has a *root*; the tree under it maps a chunk index to
an entry: INHERIT (never written: reads come from the base manifest if the
image has one and the chunk lies in it, else zeros), ZERO (explicitly
zero; a trimmed cold chunk is never fetched), or a slot number + SLOT_BASE.

Invariants:
- Every node is FANOUT signed 64-bit entries; the tree has DEPTH levels
  (root = level 0, leaves = level DEPTH - 1). A child pointer of 0 means a
  subtree of INHERIT entries.
- `rc[node]` counts the parents (image roots or interior entries) pointing
  at it; a node with rc > 1 is shared and is never modified: a writer first
  copies it (path copying), which adds one reference to each child.
- A snapshot or clone therefore costs one reference on a root, whatever
  the size of the volume.
- A leaf entry holds one reference on its slot (see extents.py).
- Every node has a fixed *position* `pos[node] = (level, index)`: the leaf
  number of a leaf, the root index of a mid, 0 for a root. Copies keep
  their original's position, so nodes (and slots) are only ever shared
  among nodes of one position: the parents of a node are found among the
  nodes at the position above it (`at`), the other holders of a slot among
  the leaves at its leaf's position.
- Space summaries, kept exact as entries, counts and links change, and
  persisted with the nodes: `mapped[n]` = slot entries in n's subtree;
  `sole[n]` = slot entries under n reached only through nodes of count 1
  below n and whose slot count is 1 (a leaf: its entries with a slot of
  count 1; an interior node: the sum of `sole` over its children of count
  1). An image with root r has `mapped[r]` chunks allocated and frees
  `sole[r]` chunks when deleted if rc[r] == 1 (0 if its root is shared).
  Each change costs O(depth), plus, when a count drops to 1, finding the
  one holder left: first where a hint says (the parent a node was created
  under, the node a leaf was copied from: right in a volume's usual
  lineage, always checked), else a scan of the nodes at that position.
"""

import collections
from array import array

from .errors import Corrupt

FANOUT = 1024
DEPTH = 3
LEAF = DEPTH - 1
MAX_CHUNKS = FANOUT ** DEPTH
INHERIT = 0
ZERO = 1
SLOT_BASE = 2
POS_LEVEL = 1 << 40     # stored position = level * POS_LEVEL + index
FREES_LEAF_BUDGET = 64  # leaves a dry-run delete reads before it settles for a lower bound


def empty_node():
    return array("q", bytes(8 * FANOUT))


def _children(node, level):
    """What a node's entries point at: slots (a leaf) or child node ids."""
    if level == LEAF:
        return [e - SLOT_BASE for e in node if e >= SLOT_BASE]
    return [c for c in node if c]


def split(leaf_no):
    """leaf number -> (root index, mid index)."""
    return divmod(leaf_no, FANOUT)


class SummaryDeltas:
    """Summary changes gathered over one engine call and applied at its end:
    one walk per leaf instead of one per chunk (a 1 MiB write over a
    snapshot's chunks changes 32 entries of one leaf). Valid only within a
    call that reads no summary and changes no count on a gathered path or
    holder chain between a change and the apply (Volume.pwrite: a path is
    owned before its leaf's entries change, and copying a later leaf
    changes only that leaf's original, whose entries have not changed);
    additions commute, so applying them later gives the same summaries."""

    def __init__(self):
        self.paths = {}                         # owned path -> [mapped, sole]
        self.holders = collections.Counter()    # other holders' leaf -> sole gained

    def along(self, path, mapped, sole):
        delta = self.paths.get(path)
        if delta is None:
            self.paths[path] = [mapped, sole]
        else:
            delta[0] += mapped
            delta[1] += sole

    def apply(self, nodes):
        for path, (mapped, sole) in self.paths.items():
            if mapped or sole:
                nodes.add_along(path, mapped, sole)
        for holder, sole in self.holders.items():
            nodes.add_sole(holder, sole)
        self.paths.clear()
        self.holders.clear()


class MapNodes:
    """All map nodes of a pool: counts, positions and summaries in memory,
    contents loaded lazily."""

    def __init__(self, store, slots):
        self.store = store
        self.slots = slots
        self.rc = store.load_node_refcounts()
        self.pos, self.mapped, self.sole = {}, {}, {}
        self.at = collections.defaultdict(set)     # position -> node ids
        self.parent_hint = {}     # node -> the node likely to point at it
        self.copy_hint = {}       # leaf -> the leaf it was copied from (shares its slots)
        self.stale = self._load_summaries(store.load_node_summaries())
        self.data = {}
        self.next_id = max(self.rc, default=0) + 1
        self.dirty = set()      # rows to write whole (content changed or new)
        self.dirty_rc = set()   # rows whose counts or summaries alone changed
        self.deleted = set()

    def _load_summaries(self, rows):
        """Returns True if a summary is missing (a pool older than them)."""
        stale = False
        for node_id, pos, mapped, sole in rows:
            if pos is None or mapped is None or sole is None:
                stale = True
                continue
            self._place(node_id, _decode(pos))
            self.mapped[node_id], self.sole[node_id] = mapped, sole
        return stale

    def _place(self, node_id, pos):
        self.pos[node_id] = pos
        self.at[pos].add(node_id)

    def get(self, node_id):
        node = self.data.get(node_id)
        if node is None:
            node = array("q")
            node.frombytes(self.store.load_node(node_id))
            if len(node) != FANOUT:
                raise Corrupt(f"map node {node_id} has a bad length")
            self.data[node_id] = node
        return node

    def new(self, node, pos, mapped=0, sole=0):
        node_id = self.next_id
        self.next_id += 1
        self.rc[node_id] = 1
        self.data[node_id] = node
        self._place(node_id, pos)
        self.mapped[node_id], self.sole[node_id] = mapped, sole
        self.dirty.add(node_id)
        return node_id

    def incref(self, node_id):
        if node_id:
            self.set_count(node_id, self.rc[node_id] + 1)

    def set_count(self, node_id, count):
        self.rc[node_id] = count
        self.dirty_rc.add(node_id)

    def forget(self, node_id):
        """Drop a node (its children untouched); the next commit deletes its row."""
        del self.rc[node_id]
        self.at[self.pos.get(node_id)].discard(node_id)
        for table in (self.pos, self.mapped, self.sole, self.data, self.parent_hint,
                      self.copy_hint):
            table.pop(node_id, None)
        self.dirty.discard(node_id)
        self.dirty_rc.discard(node_id)
        self.deleted.add(node_id)

    def decref(self, node_id, level, parent=None):
        """Drop one reference (`parent`'s, if a node: it is being freed);
        free the node and its subtree at zero. A node left with one
        reference now counts in its remaining parent's `sole`."""
        if not node_id:
            return
        count = self.rc[node_id] - 1
        if count > 0:
            self.set_count(node_id, count)
            if count == 1 and parent is not None and self.sole[node_id]:
                self.add_sole(self.parent_of(node_id, exclude=parent), self.sole[node_id])
            return
        self._release_children(node_id, self.get(node_id), level)
        self.forget(node_id)

    def owned(self, node_id, level, pos, parent=None):
        """Return a node id the caller may modify: `node_id` itself if not
        shared, a private copy if shared, a new empty node (at `pos`) if absent
        (`parent`: the node that will point at it, a hint). A copy shares
        every child, so neither it nor its original has a child or slot of
        count 1 left: both `sole` are 0 afterwards."""
        if not node_id:
            return self._hinted(self.new(empty_node(), pos), parent)
        if self.rc[node_id] == 1:
            return node_id
        node = array("q", self.get(node_id))
        self._share_children(node, level)
        self.sole[node_id] = 0
        self.decref(node_id, level)
        copy = self._hinted(self.new(node, self.pos[node_id], self.mapped[node_id]), parent)
        if level == LEAF:
            self.copy_hint[copy] = node_id
        return copy

    def _hinted(self, node_id, parent):
        if parent is not None:
            self.parent_hint[node_id] = parent
        return node_id

    def _share_children(self, node, level):
        """A copy of `node` now also points at each of its children."""
        if level == LEAF:
            self.slots.incref_all(_children(node, level))
            return
        for child in _children(node, level):
            self.incref(child)

    def _release_children(self, node_id, node, level):
        """`node` is gone: drop the reference it held on each child."""
        if level != LEAF:
            for child in _children(node, level):
                self.decref(child, level + 1, parent=node_id)
            return
        for i, entry in enumerate(node):
            if entry >= SLOT_BASE:
                self.drop_slot(entry - SLOT_BASE, node_id, i)

    def drop_slot(self, slot, leaf_id, index, deltas=None):
        """Leaf `leaf_id` no longer points at `slot` (from its entry `index`).
        Returns True if the slot was the leaf's alone (it counted in `sole`).
        The slot's other holder, if one is left, gains it in `sole`: now, or
        through `deltas` (SummaryDeltas) when the caller applies them."""
        before = self.slots.rc[slot]
        self.slots.decref(slot)
        if before == 2:
            holder = self.slot_holder(slot, leaf_id, index)
            if holder is None:
                pass
            elif deltas is None:
                self.add_sole(holder, 1)
            else:
                deltas.holders[holder] += 1
        return before == 1

    def drop_record_ref(self, slot, chunk):
        """A partial-slot record (partial.py) for map chunk `chunk` no longer
        references `slot`; if one holder is left and it is a leaf (at the
        chunk's position), the slot now counts in its `sole`."""
        before = self.slots.rc[slot]
        self.slots.decref(slot)
        if before == 2:
            leaf_no, index = divmod(chunk, FANOUT)
            holder = self._leaf_holding((LEAF, leaf_no), index, slot)
            if holder is not None:
                self.add_sole(holder, 1)

    def slot_holder(self, slot, leaf_id, index):
        """The other leaf at `leaf_id`'s position whose entry `index` is `slot`."""
        hint = self.copy_hint.get(leaf_id)
        if hint in self.rc and self.pos.get(hint) == self.pos[leaf_id] \
                and self.get(hint)[index] == slot + SLOT_BASE:
            return hint
        return self._leaf_holding(self.pos[leaf_id], index, slot, other_than=leaf_id)

    def _leaf_holding(self, pos, index, slot, other_than=None):
        """A leaf at `pos` (other than `other_than`) whose entry `index` is
        `slot`, or None."""
        entry = slot + SLOT_BASE
        for leaf_id in self.at[pos]:
            if leaf_id != other_than and self.get(leaf_id)[index] == entry:
                return leaf_id
        return None

    def parent_of(self, node_id, exclude=None):
        """The node pointing at `node_id` (count 1), other than `exclude`;
        None for a root."""
        level, index = self.pos[node_id]
        if level == 0:
            return None
        slot_in_parent, where = index % FANOUT, (level - 1, index // FANOUT)
        hint = self.parent_hint.get(node_id)
        if hint != exclude and hint in self.rc and self.pos.get(hint) == where \
                and self.get(hint)[slot_in_parent] == node_id:
            return hint
        for parent in self.at[where]:
            if parent != exclude and self.get(parent)[slot_in_parent] == node_id:
                self.parent_hint[node_id] = parent
                return parent
        return None

    def add_sole(self, node_id, delta):
        """`sole[node_id]` changes by `delta`, and so does each ancestor's
        while the node below it has count 1."""
        while node_id is not None:
            self.sole[node_id] += delta
            self.dirty_rc.add(node_id)
            if self.rc[node_id] != 1:
                return
            node_id = self.parent_of(node_id)

    def add_along(self, path, mapped, sole):
        """Change the summaries of an owned path (every count 1) at once."""
        for node_id in path:
            self.mapped[node_id] += mapped
            self.sole[node_id] += sole
            self.dirty_rc.add(node_id)

    def changed(self, node_id):
        self.dirty.add(node_id)

    def allocated_chunks(self, root):
        return self.mapped[root] if root else 0

    def exclusive_chunks(self, root):
        return self.sole[root] if root and self.rc[root] == 1 else 0

    def frees_together(self, roots, budget=FREES_LEAF_BUDGET):
        """(chunks, exact): what dropping one reference from each of `roots`
        would free, i.e. deleting those images together, counting chunks
        they share only among themselves. A dry run over what would be
        freed: a subtree whose entries are all its own (sole == mapped)
        counts without being read; at most `budget` other leaves are read,
        past which the count is a lower bound (`exact` False)."""
        node_drops, slot_drops = collections.Counter(), collections.Counter()
        pending = [(root, 0) for root in roots if root]
        freed, exact = 0, True
        while pending:
            node_id, level = pending.pop()
            node_drops[node_id] += 1
            if node_drops[node_id] < self.rc[node_id]:
                continue
            if self.sole[node_id] == self.mapped[node_id]:
                freed += self.mapped[node_id]
            elif level != LEAF:
                pending.extend((child, level + 1) for child in _children(self.get(node_id), level))
            elif budget > 0:
                budget -= 1
                freed += self._freed_in_leaf(self.get(node_id), slot_drops)
            else:
                freed, exact = freed + self.sole[node_id], False
        return freed, exact

    def _freed_in_leaf(self, leaf, slot_drops):
        """Slots of a freed leaf whose last reference this dry run drops."""
        freed = 0
        for slot in _children(leaf, LEAF):
            slot_drops[slot] += 1
            freed += slot_drops[slot] == self.slots.rc[slot]
        return freed

    def leaf_id(self, root, leaf_no):
        """The id of the leaf for `leaf_no` under `root`, or 0 (all INHERIT)."""
        if not root:
            return 0
        i0, i1 = split(leaf_no)
        mid = self.get(root)[i0]
        return self.get(mid)[i1] if mid else 0

    def leaf(self, root, leaf_no):
        """The leaf array for `leaf_no` under `root`, or None (all INHERIT)."""
        leaf_id = self.leaf_id(root, leaf_no)
        return self.get(leaf_id) if leaf_id else None

    def walk_leaves(self, root, first_leaf=0, last_leaf=MAX_CHUNKS // FANOUT - 1):
        """Yield (leaf_no, leaf_id, path_ids) for existing leaves in range."""
        if not root:
            return
        root_node = self.get(root)
        for i0 in range(first_leaf // FANOUT, last_leaf // FANOUT + 1):
            mid = root_node[i0]
            if not mid:
                continue
            mid_node = self.get(mid)
            lo = first_leaf - i0 * FANOUT if i0 == first_leaf // FANOUT else 0
            hi = last_leaf - i0 * FANOUT if i0 == last_leaf // FANOUT else FANOUT - 1
            for i1 in range(lo, hi + 1):
                if mid_node[i1]:
                    yield i0 * FANOUT + i1, mid_node[i1], (root, mid)

    # -- summaries from scratch (pools older than them, fsck --repair) ------------
    def recount(self, roots, node_rc=None, slot_rc=None):
        """(pos, mapped, sole) of every node reachable from `roots`, computed
        from the nodes' contents and the given counts (default: the stored ones)."""
        node_rc = self.rc if node_rc is None else node_rc
        slot_rc = self.slots.rc if slot_rc is None else slot_rc
        out = {}
        for root in set(roots):
            if root:
                self._recount(root, (0, 0), node_rc, slot_rc, out)
        return out

    def _recount(self, node_id, pos, node_rc, slot_rc, out):
        if node_id in out:
            return out[node_id]
        node = self.get(node_id)
        level, index = pos
        if level == LEAF:
            slots = [e - SLOT_BASE for e in node if e >= SLOT_BASE]
            summary = (pos, len(slots), sum(1 for s in slots if slot_rc[s] == 1))
        else:
            mapped = sole = 0
            for i, child in enumerate(node):
                if child:
                    _, m, s = self._recount(child, (level + 1, index * FANOUT + i),
                                            node_rc, slot_rc, out)
                    mapped += m
                    sole += s if node_rc.get(child) == 1 else 0
            summary = (pos, mapped, sole)
        out[node_id] = summary
        return summary

    def reset_summaries(self, summaries):
        """Take `recount`'s summaries as the truth (stored at the next commit)."""
        self.pos, self.mapped, self.sole = {}, {}, {}
        self.at = collections.defaultdict(set)
        for node_id, (pos, mapped, sole) in summaries.items():
            self._place(node_id, pos)
            self.mapped[node_id], self.sole[node_id] = mapped, sole
            if node_id in self.rc:
                self.dirty_rc.add(node_id)
        self.stale = False

    def begin_commit(self):
        rows = [(i, self.rc[i], self.data[i].tobytes(), *self._summary_row(i))
                for i in sorted(self.dirty)]
        rcs = [(self.rc[i], *self._summary_row(i), i) for i in sorted(self.dirty_rc - self.dirty)]
        deleted = sorted(self.deleted)
        state = (set(self.dirty), set(self.dirty_rc), set(self.deleted))
        self.dirty, self.dirty_rc, self.deleted = set(), set(), set()
        return rows, rcs, deleted, state

    def _summary_row(self, node_id):
        """(pos, mapped, sole) as stored; NULLs for a node no image reaches."""
        if node_id not in self.pos:
            return None, None, None
        return _encode(self.pos[node_id]), self.mapped[node_id], self.sole[node_id]

    def abort_commit(self, state):
        dirty, dirty_rc, deleted = state
        self.dirty |= {i for i in dirty if i in self.rc}
        self.dirty_rc |= {i for i in dirty_rc if i in self.rc}
        self.deleted |= deleted


def _encode(pos):
    level, index = pos
    return level * POS_LEVEL + index


def _decode(value):
    level, index = divmod(value, POS_LEVEL)
    return level, index
