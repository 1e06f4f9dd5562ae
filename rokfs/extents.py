"""Extent store: chunk-sized slots in a few large sparse extent files.

Invariants:
- Slot `s` lives in file `s // slots_per_file` at byte offset
  `(s % slots_per_file) * chunk_size`. A slot is backed by disk blocks
  (posix_fallocate) before it is handed out, so a write into it never fails
  with ENOSPC halfway; a freed slot's blocks go back with PUNCH_HOLE.
- Data allocations stop short of a free-space reserve (`reserve_bytes`, by
  default 1% of the filesystem within METADATA_RESERVE_MIN..MAX), so a
  commit that frees space (a delete, an rm, a gc) can always be written.
  Taken slots count against it from `take` until their one write has
  allocated their blocks (`claim`) or they are given back: the filesystem's
  own free count does not see them before.
- `rc[s]` counts the map leaf entries that point at slot `s`, plus the
  partial-slot records naming `s` as their old slot (partial.py; a record
  goes, with that reference, when its own slot's count reaches zero). A
  slot may be written in place only when rc == 1 and it is not pinned.
- A fetched chunk goes into a slot that is *taken* (out of the free list,
  count still 0, no fallocate: its one whole-chunk write allocates the
  blocks, and an ENOSPC there fails the install) and written off the event
  loop (write_runs, a worker thread), past the page cache (O_DIRECT where
  the filesystem allows) so that a restore neither evicts the user's
  working set nor pays for fresh cache pages. Until `claim` gives it a
  count of one (when it is mapped) the metadata holds it as free: a commit
  meanwhile records nothing of it, and a crash leaves it free.
- A slot whose count dropped since the last commit is *pinned* (another
  owner still references it in the committed metadata) and a slot whose
  count reached zero is *pending*: neither is written or reused until the
  commit that records the change has completed. This is what keeps the pool
  at "the last flush or later" after a crash. (A commit in flight also pins
  the slots whose cached hashes it stores: see commit.py.)
"""

import ctypes
import errno
import heapq
import mmap
import os
import threading
from array import array

from .errors import Corrupt, NoSpace, from_os_error
from .fileio import pread_full, pwrite_full
from .partial import PartialSlots

RC_BLOCK = 4096                    # slot refcounts are persisted in blocks of this many slots
METADATA_RESERVE_MIN = 2 << 20     # disk space data allocations leave for metadata
METADATA_RESERVE_MAX = 64 << 20
BUDGET_RECHECK = 16 << 20          # statvfs again after this much allocation
PREALLOC_SLOTS = 16                # fresh slots backed with disk per fallocate
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def punch_hole(fd, offset, length):
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))


class SlotCommit:
    """What one commit takes from the extent store."""

    def __init__(self, blocks, fds, pinned, freed, partials):
        self.blocks = blocks   # [(block, bytes)]
        self.fds = fds         # extent file descriptors to fdatasync
        self.pinned = pinned   # set of slots pinned in this epoch
        self.freed = freed     # slots whose count reached zero in this epoch
        self.partial_rows, self.partials_gone, self.partial_state = partials


class ExtentStore:
    def __init__(self, directory, chunk_size, slots_per_file, rc_blocks=(), *,
                 reserve_bytes=None, partial_rows=()):
        self.directory = directory
        self.reserve_bytes = reserve_bytes      # None: the default (see the note above)
        self._unwritten = 0                     # taken slots whose blocks are not allocated
        self.chunk_size = chunk_size
        self.slots_per_file = slots_per_file
        self.rc = array("i")
        for block, data in rc_blocks:
            self._grow_rc((block + 1) * RC_BLOCK)
            values = array("i")
            values.frombytes(data)
            if len(values) != RC_BLOCK:
                raise Corrupt(f"slot refcount block {block} has a bad length")
            self.rc[block * RC_BLOCK:(block + 1) * RC_BLOCK] = values
        self.high_water = self._last_used() + 1
        self.free = [s for s in range(self.high_water) if self.rc[s] == 0]
        heapq.heapify(self.free)
        self.fds = {}
        self._open_lock = threading.Lock()
        self.direct_fds = {}          # file index -> O_DIRECT fd, or None if refused
        self.dirty_blocks = set()
        self.dirty_fds = set()
        self.pinned = set()
        self.pinned_inflight = set()
        self.freed = []
        self._budget = 0
        self.preallocated = self.high_water
        self._scratch = memoryview(bytearray(chunk_size))
        self.partials = PartialSlots(self, partial_rows)
        os.makedirs(directory, exist_ok=True)
        self._trim_files_beyond_high_water()

    def close(self):
        for fd in [*self.fds.values(), *self.direct_fds.values()]:
            if fd is not None:
                os.close(fd)
        self.fds.clear()
        self.direct_fds.clear()

    # -- geometry -----------------------------------------------------------
    def locate(self, slot):
        """(fd, byte offset) of a slot."""
        index, within = divmod(slot, self.slots_per_file)
        fd = self.fds.get(index)
        if fd is None:
            fd = self._open_file(index)
        return fd, within * self.chunk_size

    def _file_path(self, index):
        return os.path.join(self.directory, f"ext-{index:05d}.dat")

    def _open_file(self, index):
        with self._open_lock:           # read_frozen may open files from a worker thread
            fd = self.fds.get(index)
            return fd if fd is not None else self._open_new_file(index)

    def _open_new_file(self, index):
        path = self._file_path(index)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.fstat(fd).st_size < self.slots_per_file * self.chunk_size:
                os.ftruncate(fd, self.slots_per_file * self.chunk_size)
        except OSError as exc:
            raise from_os_error(exc, f"extent file {path}") from exc
        self.fds[index] = fd
        return fd

    def _trim_files_beyond_high_water(self):
        """Give back the space of slots allocated after the last commit."""
        last_file = (self.high_water - 1) // self.slots_per_file if self.high_water else -1
        for name in os.listdir(self.directory):
            if name.startswith("ext-") and name.endswith(".dat"):
                index = int(name[4:9])
                if index > last_file:
                    os.unlink(os.path.join(self.directory, name))
        if self.high_water % self.slots_per_file:
            fd, offset = self.locate(self.high_water)
            punch_hole(fd, offset, (self.slots_per_file * self.chunk_size) - offset)

    # -- reference counts ---------------------------------------------------
    def _grow_rc(self, n):
        if len(self.rc) < n:
            blocks = -(-n // RC_BLOCK)
            self.rc.extend(array("i", bytes(4 * (blocks * RC_BLOCK - len(self.rc)))))

    def _last_used(self):
        for s in range(len(self.rc) - 1, -1, -1):
            if self.rc[s]:
                return s
        return -1

    def set_count(self, slot, count):
        """Set a slot's count outright (fsck repair)."""
        self._grow_rc(slot + 1)
        self.rc[slot] = count
        self.dirty_blocks.add(slot // RC_BLOCK)

    def incref(self, slot):
        self.rc[slot] += 1
        self.dirty_blocks.add(slot // RC_BLOCK)

    def incref_all(self, slots):
        """incref() each of `slots` (a copied map leaf's entries)."""
        if not slots:
            return
        rc = self.rc
        for slot in slots:
            rc[slot] += 1
        first, last = min(slots) // RC_BLOCK, max(slots) // RC_BLOCK
        if last - first < 4:            # the usual leaf: a few blocks, no per-slot set
            self.dirty_blocks.update(range(first, last + 1))
        else:
            self.dirty_blocks.update({slot // RC_BLOCK for slot in slots})

    def decref(self, slot):
        count = self.rc[slot] - 1
        if count < 0:
            raise Corrupt(f"slot {slot} reference count went negative")
        self.rc[slot] = count
        self.dirty_blocks.add(slot // RC_BLOCK)
        if count == 0:
            self.freed.append(slot)
            if slot in self.partials:
                self.partials.drop(slot)
        else:
            self.pinned.add(slot)

    def writable(self, slot):
        return (self.rc[slot] == 1 and slot not in self.pinned
                and slot not in self.pinned_inflight)

    def space(self):
        """(bytes data may still take, the reserve kept back, bytes available
        on the filesystem less what taken slots will still write)."""
        st = os.statvfs(self.directory)
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize - self._unwritten * self.chunk_size
        reserve = self.reserve_bytes
        if reserve is None:
            reserve = min(METADATA_RESERVE_MAX, max(METADATA_RESERVE_MIN, total // 100))
        return avail - reserve, reserve, avail

    def _reserve_space(self):
        """Refuse data allocations that would eat into the reserve."""
        self._budget -= self.chunk_size
        if self._budget >= 0:
            return
        usable, reserve, avail = self.space()
        self._budget = min(usable, BUDGET_RECHECK) - self.chunk_size
        if self._budget < 0:
            self._budget = 0
            raise NoSpace(f"pool disk is full ({max(avail, 0)} bytes left, {reserve} kept "
                          "in reserve): free space by deleting snapshots or volumes")

    def allocate(self):
        """A free slot with disk space reserved, backed by disk blocks, and a
        count of one: a taken slot, backed and counted at once."""
        return self.allocate_at()[0]

    def allocate_at(self):
        """allocate(), and where the slot is: (slot, fd, byte offset)."""
        slot = self.high_water
        if self.free or slot >= self.preallocated or self._budget < 2 * self.chunk_size:
            return self._allocate_at()
        # the hot path of copy-on-write: a fresh slot already backed by disk
        self._budget -= self.chunk_size
        self.high_water = slot + 1
        if len(self.rc) <= slot:
            self._grow_rc(slot + 1)
        self.rc[slot] = 1
        self.dirty_blocks.add(slot // RC_BLOCK)
        index, within = divmod(slot, self.slots_per_file)
        fd = self.fds.get(index)
        if fd is None:
            fd = self._open_file(index)
        self.dirty_fds.add(fd)
        return slot, fd, within * self.chunk_size

    def _allocate_at(self):
        fresh = not self.free             # take() goes past the high-water mark only then
        slot = self.take()
        try:
            fd, offset = self._back_with_disk(slot, fresh)
        except OSError as exc:
            self.give_back(slot)
            raise from_os_error(exc, "allocating a chunk slot") from exc
        self._unwritten -= 1              # its blocks are allocated now
        self.rc[slot] = 1
        self.dirty_blocks.add(slot // RC_BLOCK)
        self.dirty_fds.add(fd)
        return slot, fd, offset

    def take(self):
        """A free slot for a fetched chunk, still counted 0 (see the note at
        the top): claim() it once mapped, or give_back() it."""
        self._reserve_space()
        self._unwritten += 1
        slot = heapq.heappop(self.free) if self.free else self.high_water
        if slot >= self.high_water:
            self.high_water = slot + 1
            self._grow_rc(self.high_water)
        return slot

    def claim(self, slots):
        """Taken slots, now written and mapped, count one; their data is
        made durable by the next commit, before the map that names them."""
        for slot in slots:
            self.rc[slot] = 1
        self._unwritten -= len(slots)
        self.dirty_blocks.update({slot // RC_BLOCK for slot in slots})
        self.dirty_fds.update({self.locate(slot)[0]
                               for slot in {s - s % self.slots_per_file for s in slots}})

    def add_counted(self, count):
        """`count` fresh slots past the high-water mark, counted one each and
        never written (metadata-only maps); returns the first."""
        first = self.high_water
        self.high_water += count
        self._grow_rc(self.high_water)
        self.rc[first:self.high_water] = array("i", [1]) * count
        self.dirty_blocks.update(range(first // RC_BLOCK, (self.high_water - 1) // RC_BLOCK + 1))
        return first

    def reset_free(self, free):
        """The free list is exactly `free` (fsck repair, after a commit)."""
        self.free = sorted(free)

    def give_back(self, slot):
        """A taken slot that was never claimed is free again at once: the
        metadata never counted it."""
        self._unwritten -= 1
        heapq.heappush(self.free, slot)

    def _back_with_disk(self, slot, fresh):
        """fallocate the slot; `fresh` slots (from past the high-water mark)
        are backed PREALLOC_SLOTS at a time (what a crash leaves unused is
        punched at open)."""
        fd, offset = self.locate(slot)
        if not fresh:
            os.posix_fallocate(fd, offset, self.chunk_size)
        elif slot >= self.preallocated:
            count = min(PREALLOC_SLOTS, self.slots_per_file - slot % self.slots_per_file)
            os.posix_fallocate(fd, offset, count * self.chunk_size)
            self.preallocated = slot + count
        return fd, offset

    # -- data -----------------------------------------------------------------
    def read_raw(self, slot, offset, view):
        """What the slot's own blocks hold (see partial.py for what it reads as)."""
        fd, base = self.locate(slot)
        pread_full(fd, view, base + offset)

    def merged(self, src, offset, piece):
        """A whole chunk: slot `src`'s content (zeros if None) with `piece`
        laid over it at `offset`, in a buffer the next call reuses. (One
        pread and one pwrite beat copy_file_range plus a pwrite for a chunk.)"""
        buf = self._scratch
        if src is None:
            buf[:] = bytes(self.chunk_size)
        else:
            self.partials.read_chunk(src, buf)
        buf[offset:offset + len(piece)] = piece
        return buf

    def write(self, slot, offset, data):
        fd, base = self.locate(slot)
        self.write_at(fd, data, base + offset)

    def write_at(self, fd, data, file_offset):
        pwrite_full(fd, data, file_offset)
        self.dirty_fds.add(fd)

    def plan_runs(self, items):
        """Group [(slot, data)] of whole chunks into runs of adjacent slots,
        [(direct fd or None, fd, offset, [data, ...])], for write_runs()."""
        items = sorted(items, key=lambda item: item[0])
        runs, first = [], 0
        for fd, offset, length in self._runs([slot for slot, _ in items]):
            count = length // self.chunk_size
            direct_fd = self._direct_fd(items[first][0] // self.slots_per_file)
            runs.append((direct_fd, fd, offset, [data for _, data in items[first:first + count]]))
            first += count
            self.dirty_fds.add(fd)
        return runs

    def _direct_fd(self, index):
        if index not in self.direct_fds:
            try:
                self.direct_fds[index] = os.open(self._file_path(index),
                                                 os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:           # e.g. tmpfs: no direct I/O, use the page cache
                self.direct_fds[index] = None
        return self.direct_fds[index]

    @staticmethod
    def write_runs(runs):
        """Thread-safe: write planned runs, one pwrite each, past the page cache
        where possible. The slots must be allocated and in no map yet."""
        for direct_fd, fd, offset, pieces in runs:
            if direct_fd is None or not _write_direct(direct_fd, pieces, offset):
                pwrite_full(fd, b"".join(pieces), offset)

    # -- commit protocol ------------------------------------------------------
    def begin_commit(self):
        state = SlotCommit(
            blocks=[(b, self.rc[b * RC_BLOCK:(b + 1) * RC_BLOCK].tobytes())
                    for b in sorted(self.dirty_blocks)],
            fds=list(self.dirty_fds), pinned=self.pinned, freed=self.freed,
            partials=self.partials.begin_commit())
        self.dirty_blocks = set()
        self.dirty_fds = set()
        self.pinned_inflight = self.pinned
        self.pinned = set()
        self.freed = []
        return state

    def pin_inflight(self, slots):
        """Keep `slots` from in-place writes until the commit begun last
        ends, like the slots pinned in its epoch (a new set: the batch's
        own `pinned` stays what it was)."""
        if slots:
            self.pinned_inflight = self.pinned_inflight | set(slots)

    @staticmethod
    def sync(state):
        """Thread-safe: make written data durable before metadata commits."""
        for fd in state.fds:
            os.fdatasync(fd)

    def punch(self, slots):
        """Thread-safe for slots nobody references: return their disk blocks."""
        for fd, offset, length in self._runs(sorted(slots)):
            punch_hole(fd, offset, length)

    def end_commit(self, state):
        for slot in state.freed:
            heapq.heappush(self.free, slot)
        self.pinned_inflight = set()

    def abort_commit(self, state):
        """The commit failed: everything it carried belongs to the next one."""
        self.dirty_blocks.update(b for b, _ in state.blocks)
        self.dirty_fds.update(state.fds)
        self.pinned |= state.pinned
        self.freed.extend(state.freed)
        self.partials.abort_commit(state.partial_state)
        self.pinned_inflight = set()

    def _runs(self, slots):
        run = None
        for slot in slots:
            fd, offset = self.locate(slot)
            if run and run[0] == fd and run[1] + run[2] == offset:
                run[2] += self.chunk_size
            else:
                if run:
                    yield tuple(run)
                run = [fd, offset, self.chunk_size]
        if run:
            yield tuple(run)

    # -- accounting -------------------------------------------------------------
    def used_slots(self):
        return self.high_water - len(self.free) - len(self.freed)

    def disk_bytes(self):
        total = 0
        for name in os.listdir(self.directory):
            total += os.stat(os.path.join(self.directory, name)).st_blocks * 512
        return total


_direct_buffers = threading.local()


def _write_direct(fd, pieces, offset):
    """Write `pieces` at `offset` with O_DIRECT from a page-aligned per-thread
    buffer; False if the filesystem refused (the caller writes buffered)."""
    total = sum(len(p) for p in pieces)
    buf = getattr(_direct_buffers, "buf", None)
    if buf is None or len(buf) < total:
        buf = _direct_buffers.buf = mmap.mmap(-1, max(total, 4 << 20))
    pos = 0
    for piece in pieces:
        buf[pos:pos + len(piece)] = piece
        pos += len(piece)
    view = memoryview(buf)[:total]
    try:
        done = 0
        while done < total:
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError as exc:
        if exc.errno == errno.EINVAL and done == 0:
            return False
        raise from_os_error(exc, "writing chunk data") from exc
    finally:
        view.release()
    return True
