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
"""

from array import array

from .errors import Corrupt

FANOUT = 1024
DEPTH = 3
LEAF = DEPTH - 1
MAX_CHUNKS = FANOUT ** DEPTH
INHERIT = 0
ZERO = 1
SLOT_BASE = 2


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


class MapNodes:
    """All map nodes of a pool: refcounts in memory, contents loaded lazily."""

    def __init__(self, store, slots):
        self.store = store
        self.slots = slots
        self.rc = store.load_node_refcounts()
        self.data = {}
        self.next_id = max(self.rc, default=0) + 1
        self.dirty = set()      # rows to write whole (content changed or new)
        self.dirty_rc = set()   # rows whose count alone changed
        self.deleted = set()

    def get(self, node_id):
        node = self.data.get(node_id)
        if node is None:
            node = array("q")
            node.frombytes(self.store.load_node(node_id))
            if len(node) != FANOUT:
                raise Corrupt(f"map node {node_id} has a bad length")
            self.data[node_id] = node
        return node

    def new(self, node):
        node_id = self.next_id
        self.next_id += 1
        self.rc[node_id] = 1
        self.data[node_id] = node
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
        self.data.pop(node_id, None)
        self.dirty.discard(node_id)
        self.dirty_rc.discard(node_id)
        self.deleted.add(node_id)

    def decref(self, node_id, level):
        """Drop one reference; free the node and its subtree at zero."""
        if not node_id:
            return
        count = self.rc[node_id] - 1
        if count > 0:
            self.set_count(node_id, count)
            return
        self._release_children(self.get(node_id), level)
        self.forget(node_id)

    def owned(self, node_id, level):
        """Return a node id the caller may modify: `node_id` itself if not
        shared, a private copy if shared, a new empty node if absent."""
        if not node_id:
            return self.new(empty_node())
        if self.rc[node_id] == 1:
            return node_id
        node = array("q", self.get(node_id))
        self._share_children(node, level)
        self.decref(node_id, level)
        return self.new(node)

    def _share_children(self, node, level):
        """A copy of `node` now also points at each of its children."""
        if level == LEAF:
            self.slots.incref_all(_children(node, level))
            return
        for child in _children(node, level):
            self.incref(child)

    def _release_children(self, node, level):
        """`node` is gone: drop the reference it held on each child."""
        for child in _children(node, level):
            if level == LEAF:
                self.slots.decref(child)
            else:
                self.decref(child, level + 1)

    def changed(self, node_id):
        self.dirty.add(node_id)

    def leaf(self, root, leaf_no):
        """The leaf array for `leaf_no` under `root`, or None (all INHERIT)."""
        i0, i1 = split(leaf_no)
        if not root:
            return None
        mid = self.get(root)[i0]
        if not mid:
            return None
        leaf_id = self.get(mid)[i1]
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

    def begin_commit(self):
        rows = [(i, self.rc[i], self.data[i].tobytes()) for i in sorted(self.dirty)]
        rcs = [(self.rc[i], i) for i in sorted(self.dirty_rc - self.dirty)]
        deleted = sorted(self.deleted)
        state = (set(self.dirty), set(self.dirty_rc), set(self.deleted))
        self.dirty, self.dirty_rc, self.deleted = set(), set(), set()
        return rows, rcs, deleted, state

    def abort_commit(self, state):
        dirty, dirty_rc, deleted = state
        self.dirty |= {i for i in dirty if i in self.rc}
        self.dirty_rc |= {i for i in dirty_rc if i in self.rc}
        self.deleted |= deleted
