"""Devices: an open volume or snapshot, the callback table protocol adapters
(NBD, FUSE) use: pread / pwrite / trim / write_zeroes / flush / cache /
extents.

Invariants:
- A Device holds its image (image.py's lifecycle) from open to close: a
  DELETING image stays readable, with its own bytes, until its last Device
  closes, and whatever `close` frees is committed right after.
- Every call that can meet a cold chunk goes through the control's
  hydration (fetch, then retry); nothing here touches the engine's maps.
"""

import time

from .errors import NotFound, ReadOnly

HOLDER_OF_FRONT = {"nbd": "NBD connection", "fuse": "FUSE handle"}


def stat_of(image):
    return {"id": image.id, "name": image.full_name, "size": image.size,
            "allocated": image.usage()["allocated"], "read_only": image.read_only,
            "created": image.created}


class Device:
    """An open volume or snapshot: the callback table protocol adapters use.
    Holds its image (as `holder`) from open to close: a DELETING image stays
    readable, with its own bytes, until its last Device closes."""

    def __init__(self, control, image, holder, front):
        control.hold(image, holder)
        self.control = control
        self.holder = holder
        self.io = control.counters.image_io(image.full_name)
        self.latency = control.counters.front_latency(front)
        self.image = image
        self.name = image.full_name
        self.read_only = image.read_only
        self.chunk_size = control.pool.chunk_size
        self.closed = False

    @property
    def size(self):
        return self.image.size

    def may_block(self, offset, length):
        """Would a request on this range wait for the remote (cold chunks)?
        Adapters run such requests apart, so one slow remote read holds no
        other request; False at once for an image with no remote base."""
        return self.image.touches_cold(offset, length)

    def stat(self):
        """Control.stat of the open image, also once it is deleted (deferred)."""
        return stat_of(self.image)

    def close(self):
        if not self.closed:
            self.closed = True
            self.control.release(self.image, self.holder)

    def _open(self):
        if self.closed:
            raise NotFound(f"{self.name} has been closed")
        return self.image

    def _writable(self):
        image = self._open()
        if self.read_only:
            raise ReadOnly(f"{self.name} is a read-only snapshot")
        return image

    async def _with_hydration(self, op, *args):
        return await self.control._hydrating(op, *args)
    def _count(self, op, nbytes, start, ops=1):
        """Plain integer bumps: no lock, no prometheus call on the I/O path."""
        self.control.last_io = start
        counts = self.io[op]
        counts[0] += ops
        counts[1] += nbytes
        self.latency[op].observe(time.perf_counter() - start)

    async def pread(self, offset, length):
        start = time.perf_counter()
        data = await self._with_hydration(self._open().pread, offset, length)
        self._count("read", length, start)
        return data

    async def read_plan(self, offset, length):
        """Like pread, but where the bytes are (Image.read_plan) instead of
        the bytes: for adapters that send file data without copying it. The
        plan holds only until the caller's next checkpoint."""
        start = time.perf_counter()
        plan = await self._with_hydration(self._open().read_plan, offset, length)
        self._count("read", length, start)
        return plan

    async def pwrite(self, offset, data, fua=False, ops=1):
        """Write `data` at `offset`; `ops=0` for all but the last piece of a
        request written in pieces (the metrics count requests)."""
        start = time.perf_counter()
        await self._with_hydration(self._writable().pwrite, offset, data)
        if fua:
            await self.control.flush()
        self._count("write", len(data), start, ops)

    async def trim(self, offset, length, fua=False):
        start = time.perf_counter()
        await self._with_hydration(self._writable().trim, offset, length)
        if fua:
            await self.control.flush()
        self._count("trim", length, start)

    async def write_zeroes(self, offset, length, fua=False, no_hole=False):
        start = time.perf_counter()
        await self._with_hydration(self._writable().write_zeroes, offset, length, no_hole)
        if fua:
            await self.control.flush()
        self._count("zero", length, start)

    async def flush(self):
        start = time.perf_counter()
        self._open()
        await self.control.flush()
        self._count("flush", 0, start)

    async def cache(self, offset, length):
        self._count("cache", length, time.perf_counter())
        image = self._open()
        image._check_range(offset, length)
        cold = [c for c, _, _ in image.spans(offset, length)
                if image.is_cold(c, image.entry(c))]
        if cold:
            await self.control.fetch_chunks(image, cold)

    async def extents(self, offset, length):
        return self._open().extents(offset, length)
