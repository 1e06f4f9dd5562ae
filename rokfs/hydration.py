"""Hydration verbs (part of Control, the one door): fetch cold chunks for
reads, fill restored images in the background, pause, resume, wait.

Invariants:
- Fetched chunks are installed concurrently with each other and with
  commits: their slots are taken, counting for nothing in the metadata
  until they are mapped (ExtentStore.take/claim), so a commit or a crash in
  between leaves them free.
- One image's hydration failure stays its own (state "failed: ..."); a
  full disk pauses it ("paused: disk full") until data may take the
  reserve again; a person's pause is not kept across a restart.
- A hydrator holds its image while a pass runs, and yields: a delete does
  not wait for it, the pass stops at its next window.
"""

import functools
import logging
import time

import trio

from .errors import NoSpace, NotFound, RemoteError, RokfsError, one_line, single_errors
from .jobs import Job

log = logging.getLogger("rokfs.control")
HYDRATE_WINDOW = 128           # chunks per background fetch: one pack (PACK_CHUNKS)
HYDRATE_FLUSH_BYTES = 64 << 20  # commit installed chunks at least this often
HYDRATION_POLL = 0.2            # seconds between checks of a hydration job


class HydrationVerbs:
    """Control's hydration verbs (mixed into Control)."""

    async def fetch_chunks(self, image, chunks, *, readahead=True):
        """Fetch cold chunks of `image` from its base and install them."""
        if not image.base:
            return
        base = self.remote_state.base(image.base)
        store = self._remote_for_spec(base["remote"])
        wanted = set(chunks)
        if readahead:
            from .remote import READAHEAD
            for c in chunks:
                wanted.update(n for n in range(c + 1, min(c + 1 + READAHEAD, image.base_chunks))
                              if image.is_cold(n, image.entry(n)))
        try:
            got = await store.fetch(base["manifest"], wanted, self.pool.chunk_size,
                                    on_demand=readahead, required=set(chunks))
        except RokfsError as exc:
            log.warning("event=fetch_failed image=%s error=%s", image.full_name, exc)
            raise
        stored = sum(data is not None for data in got.values())
        self.counters.pull_chunks += stored
        self.counters.pull_bytes += stored * self.pool.chunk_size
        await self._install(image, got)
        return got

    async def _install(self, image, fetched):
        """Write fetched chunks into taken slots on a worker thread, then map
        them. Commits go on meanwhile: a taken slot counts for nothing in
        the metadata until it is mapped (ExtentStore.take/claim)."""
        plan = self.pool.reserve_install(image, fetched)
        if not plan:
            return
        try:
            runs = self.pool.slots.plan_runs([(slot, data) for _, slot, data in plan])
            await trio.to_thread.run_sync(self.pool.slots.write_runs, runs)
        except BaseException:
            self.pool.release_install(plan)
            raise
        self.pool.finish_install(image, plan)

    def hydration_status(self, volume):
        return self._hydration_of(self.pool.get_image(volume))

    def _hydration_of(self, vol):
        h = self._hydration_now(vol)
        cs = self.pool.chunk_size
        return {"volume": vol.full_name, **h, "bytes_done": h["chunks_done"] * cs,
                "bytes_total": h["chunks_total"] * cs}

    def _hydration_now(self, vol):
        """The hydrator's status of `vol`, or one made from the volume's map."""
        h = self._hydration.get(vol.id)
        if h is None:
            total = vol.base_chunks
            done = total - vol.cold_count() if total else 0
            h = {"state": self._unhydrated_state(vol) if vol.base else "hydrated",
                 "chunks_done": done,
                 "chunks_total": total, "rate_bytes_per_s": 0.0, "error": None}
        return h

    def _unhydrated_state(self, vol):
        return "paused: by request" if vol.id in self._paused else "hydrating"

    async def wait_hydrated(self, volume, *, progress=None, detach=False):
        """Follow a volume's hydration as a "hydration" job until it is done
        (returns its hydration status); `detach` starts the job and returns it."""
        vol = self.pool.get_image(volume)
        job = self._hydration_job("hydration", vol)
        return await self.jobs.run(job, functools.partial(self._until_hydrated, vol),
                                   progress=progress, detach=detach)

    def _hydration_job(self, kind, vol):
        """A job following `vol`'s hydration; cancelling it pauses the hydration."""
        note = (f"volume {vol.name} stays usable (reads fetch what they need); its "
                f"hydration is paused: rokctl hydration resume {vol.name}")
        return Job(kind, vol.name, cancelled_note=note, on_cancel=lambda: self._pause(vol))

    async def _until_hydrated(self, vol, job):
        while True:
            status = self._hydration_of(vol)
            job.report(status["bytes_done"], status["bytes_total"])
            if status["state"] == "hydrated":
                return status
            if status["state"].startswith("failed"):
                raise RemoteError(f"hydration of {vol.name} failed: {status['error']}")
            if not vol.live:
                raise NotFound(f"volume {vol.name} was deleted")
            await trio.sleep(HYDRATION_POLL)


    async def _hydrate_volume(self, vol, running):
        try:
            while vol.base and vol.live:
                try:
                    await self._hydrate_held(vol)
                except NoSpace as exc:          # pause; go on once space is back
                    self._hydration[vol.id] = {**self._hydration_now(vol), "error": str(exc),
                                               "state": "paused: disk full"}
                    log.warning("event=hydrate_paused volume=%s reason=disk_full", vol.name)
                    await self._until_space_returns()
                except Exception as exc:        # one volume's failure stays its own
                    self._hydration[vol.id] = {**self._hydration_now(vol), "state": "failed",
                                               "error": one_line(exc)}
                    log.warning("event=hydrate_failed volume=%s error=%s", vol.name,
                                one_line(exc), exc_info=not isinstance(exc, RokfsError))
                    await trio.sleep(5)
        finally:
            running.discard(vol.id)

    async def _until_space_returns(self):
        """Wait (polling the filesystem every second) until data may take as
        much as the reserve again: room enough not to pause again at once."""
        while self.pool.data_space() < self.pool.data_reserve():
            await trio.sleep(1)

    def pause_hydration(self, volume):
        """Stop fetching `volume`'s chunks in the background (reads still
        fetch what they need) until resume_hydration; not kept across a restart."""
        vol = self.pool.get_image(volume)
        self._pause(vol)
        return self._hydration_of(vol)

    def _pause(self, vol):
        self._paused.add(vol.id)
        if vol.id in self._hydration and vol.base:
            self._hydration[vol.id]["state"] = "paused: by request"

    def resume_hydration(self, volume):
        vol = self.pool.get_image(volume)
        self._paused.discard(vol.id)
        if self._hydration.get(vol.id, {}).get("state") == "paused: by request":
            self._hydration[vol.id]["state"] = "hydrating"
        return self.hydration_status(volume)

    async def _hydrate_held(self, vol):
        """One pass, holding the volume ("hydrator": a delete does not wait
        for it; the pass stops at its next window and lets go)."""
        self.hold(vol, "hydrator")
        try:
            await self._hydrate_pass(vol)
        finally:
            self.release(vol, "hydrator")

    async def _hydrate_pass(self, vol):
        base = self.remote_state.base(vol.base)
        store = self._remote_for_spec(base["remote"])
        total = vol.base_chunks
        status = {"state": self._unhydrated_state(vol), "chunks_done": total - vol.cold_count(),
                  "chunks_total": total, "rate_bytes_per_s": 0.0, "error": None}
        self._hydration[vol.id] = status
        started, start_done = time.monotonic(), status["chunks_done"]
        # twice the remote's request limit in windows, so that while some
        # windows install their chunks the remote still has every slot busy
        limit = trio.Semaphore(2 * store.concurrency)
        since_flush = [0]

        async def window(first):
            try:
                while store.on_demand:          # user reads go first
                    await trio.sleep(0.005)
                while vol.id in self._paused:
                    await trio.sleep(0.2)
                if not vol.live or vol.base is None:
                    return
                cold = vol.cold_chunks(first, first + HYDRATE_WINDOW)
                if cold:
                    got = await self.fetch_chunks(vol, cold, readahead=False)
                    since_flush[0] += len(got) * self.pool.chunk_size
                    self.counters.hydrated_chunks += len(got)
                    self.counters.hydrated_bytes += len(got) * self.pool.chunk_size
                status["chunks_done"] = total - vol.cold_count() if \
                    first % (HYDRATE_WINDOW * 64) == 0 else status["chunks_done"] + len(cold)
                elapsed = time.monotonic() - started
                status["rate_bytes_per_s"] = ((status["chunks_done"] - start_done)
                                              * self.pool.chunk_size / max(elapsed, 1e-6))
                if since_flush[0] >= HYDRATE_FLUSH_BYTES:
                    since_flush[0] = 0
                    await self.flush()
            finally:
                limit.release()

        async with single_errors():
            async with trio.open_nursery() as nursery:
                for first in range(0, total, HYDRATE_WINDOW):
                    await limit.acquire()
                    nursery.start_soon(window, first)
        if not vol.live:
            return
        if not vol.cold_count():
            self.pool.drop_base(vol)
            await self.flush()
            status.update(state="hydrated", chunks_done=total, error=None)
            log.info("event=hydrated volume=%s chunks=%d", vol.name, total)
