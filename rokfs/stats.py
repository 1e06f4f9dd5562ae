"""Plain counters the I/O path bumps without locks; read at scrape time.

Invariants:
- Only the trio loop thread writes these (Device and Control methods); a
  metrics scrape copies them on the loop too (rokfs.metrics), so no lock is
  taken anywhere, least of all per NBD request.
- Histograms are a list of bucket counts (non-cumulative) plus a sum; the
  last bucket is +Inf.
"""

from bisect import bisect_left

LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
                   25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 10.0)
IO_OPS = ("read", "write", "trim", "zero", "flush", "cache")


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds):
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def copy(self):
        h = Histogram()
        h.counts, h.sum = list(self.counts), self.sum
        return h


class Counters:
    """Every counter of one daemon; `control.counters`."""

    TRANSFER = ("push_bytes", "push_chunks", "pull_bytes", "pull_chunks",
                "hydrated_bytes", "hydrated_chunks")
    # Control bumps push_* (bytes and chunks uploaded), pull_* (chunks fetched
    # for reads and hydration, counted uncompressed) and hydrated_* (chunks
    # the hydrators fetched). Requests, failures and retries are counted by
    # each remote's object store, in the worker threads that make them
    # (rokfs.remote.objects.RequestStats; Control.transfer_stats).

    def __init__(self):
        self.io = {}              # image name -> {op: [ops, bytes]}
        self.latency = {}         # (front, op) -> Histogram
        self.snapshots_created = 0
        self.snapshot_latency = Histogram()
        for name in self.TRANSFER:
            setattr(self, name, 0)

    def image_io(self, name):
        io = self.io.get(name)
        if io is None:
            io = self.io[name] = {op: [0, 0] for op in IO_OPS}
        return io

    def front_latency(self, front):
        return {op: self.latency.setdefault((front, op), Histogram()) for op in IO_OPS}

    def copy(self):
        c = Counters.__new__(Counters)
        c.io = {name: {op: list(v) for op, v in io.items()} for name, io in self.io.items()}
        c.latency = {k: h.copy() for k, h in self.latency.items()}
        c.snapshots_created = self.snapshots_created
        c.snapshot_latency = self.snapshot_latency.copy()
        for name in self.TRANSFER:
            setattr(c, name, getattr(self, name))
        return c
