"""Prometheus metrics of the daemon, read from plain counters at scrape time.

Invariants:
- The I/O path only bumps integers (rokfs.stats); this module's Collector
  copies them on the trio loop (trio.from_thread.run_sync) when Prometheus
  scrapes, then builds the metric families in the HTTP thread.
- Served over HTTP by prometheus_client's server thread at /metrics.
- Everything comes from Control verbs (list_exports, hydration_status,
  status, transfer_stats) and the Control's counters; nothing here touches
  the engine.
"""

import logging

import trio
from prometheus_client import start_http_server
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily, HistogramMetricFamily)

from .endpoints import parse_tcp_address
from .errors import RokfsError
from .stats import LATENCY_BUCKETS

log = logging.getLogger("rokfs.metrics")


def _snapshot(control):
    """On the loop: a consistent copy of everything a scrape reports."""
    exports = control.list_exports()         # cheap: names and sizes, no map walk
    volumes = [name for name, _, read_only, _ in exports if not read_only]
    live = {name for name, *_ in exports}
    counters = control.counters.copy()
    counters.io = {name: io for name, io in counters.io.items() if name in live}
    return {"counters": counters, "pool": control.status(),
            "hydration": list(_hydration(control, volumes)),
            "remotes": control.transfer_stats()}


def _hydration(control, volumes):
    for name in volumes:
        try:
            yield control.hydration_status(name)
        except RokfsError:           # deleted since the listing
            continue


def _histogram(family, labels, hist):
    buckets, running = [], 0
    for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], hist.counts):
        running += count
        buckets.append((bound, running))
    family.add_metric(labels, buckets, hist.sum)


class ControlCollector:
    def __init__(self, control, trio_token):
        self.control = control
        self.token = trio_token

    def collect(self):
        try:
            snap = trio.from_thread.run_sync(_snapshot, self.control, trio_token=self.token)
        except trio.RunFinishedError:
            return
        c, pool = snap["counters"], snap["pool"]
        yield from self._io(c)
        yield from self._pool(pool, c)
        yield from self._transfers(c, snap["hydration"])
        yield from self._requests(snap["remotes"])

    def _io(self, c):
        ops = CounterMetricFamily("rokfs_io_ops", "I/O requests per volume or snapshot",
                                  labels=["image", "op"])
        nbytes = CounterMetricFamily("rokfs_io_bytes", "bytes per volume or snapshot",
                                     labels=["image", "op"])
        for image, io in sorted(c.io.items()):
            for op, (count, size) in io.items():
                ops.add_metric([image, op], count)
                if op != "flush":
                    nbytes.add_metric([image, op], size)
        latency = HistogramMetricFamily("rokfs_request_seconds",
                                        "request latency by front end (nbd, fuse) and op",
                                        labels=["front", "op"])
        for (front, op), hist in sorted(c.latency.items()):
            _histogram(latency, [front, op], hist)
        yield from (ops, nbytes, latency)

    def _pool(self, pool, c):
        for key, help_text in (("capacity_bytes", "size of the pool's filesystem"),
                               ("free_bytes", "free space on the pool's filesystem"),
                               ("used_bytes", "bytes of chunk slots in use"),
                               ("disk_bytes", "bytes the extent files occupy on disk")):
            yield GaugeMetricFamily(f"rokfs_pool_{key}", help_text, value=pool[key])
        yield GaugeMetricFamily("rokfs_partial_chunks", "chunks held in partial slots (a "
                                "small write over a snapshot's chunk) the filler has not "
                                "completed yet", value=pool["partial_chunks"])
        space = GaugeMetricFamily("rokfs_pool_space_bytes", "the pool's space by kind "
                                  "(allocated, exclusive, shared, unhydrated)", labels=["kind"])
        for kind, value in sorted(pool["space"].items()):
            space.add_metric([kind], value)
        yield space
        yield GaugeMetricFamily("rokfs_volumes", "volumes in the pool", value=pool["volumes"])
        yield GaugeMetricFamily("rokfs_snapshots", "snapshots in the pool",
                                value=pool["snapshots"])
        yield CounterMetricFamily("rokfs_snapshots_created", "snapshots taken by this daemon",
                                  value=c.snapshots_created)
        latency = HistogramMetricFamily("rokfs_snapshot_seconds", "snapshot verb latency")
        _histogram(latency, [], c.snapshot_latency)
        yield latency

    def _transfers(self, c, hydration):
        for name in c.TRANSFER:
            what = name.replace("_", " ")
            yield CounterMetricFamily(f"rokfs_{name}", f"{what} (remote store)",
                                      value=getattr(c, name))
        done = GaugeMetricFamily("rokfs_hydration_bytes_done", "hydrated bytes per volume",
                                 labels=["volume"])
        total = GaugeMetricFamily("rokfs_hydration_bytes_total", "bytes to hydrate per volume",
                                  labels=["volume"])
        for st in hydration:
            done.add_metric([st["volume"]], st.get("bytes_done", 0))
            total.add_metric([st["volume"]], st.get("bytes_total", 0))
        yield from (done, total)

    def _requests(self, remotes):
        requests = CounterMetricFamily("rokfs_remote_requests",
                                       "object store request attempts by operation",
                                       labels=["remote", "op"])
        errors = CounterMetricFamily("rokfs_s3_errors", "failed object store requests by kind",
                                     labels=["remote", "kind"])
        retries = CounterMetricFamily("rokfs_s3_retries", "object store requests tried again",
                                      labels=["remote"])
        for url, stats in sorted(remotes.items()):
            for op, count in sorted(stats["requests"].items()):
                requests.add_metric([url, op], count)
            for kind, count in sorted(stats["errors"].items()):
                errors.add_metric([url, kind], count)
            retries.add_metric([url], stats["retries"])
        yield from (requests, errors, retries)


async def serve_metrics(control, address, *, task_status=trio.TASK_STATUS_IGNORED):
    """Serve /metrics on `address` ('HOST:PORT', port 0 = any) until cancelled."""
    host, port = parse_tcp_address(address, "metrics address")
    registry = CollectorRegistry()
    registry.register(ControlCollector(control, trio.lowlevel.current_trio_token()))
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[:2]
    log.info("event=listening service=metrics address=%s:%d", *bound)
    try:
        task_status.started(bound)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.shutdown)
        server.server_close()
