"""Jobs: the long operations clients start (a push, a pull's or a
hydration's wait), listed with their progress and cancellable while they run.

A verb makes a `Job` and hands it, with the work to do, to `Jobs.run`:
attached (in the caller's task; the result comes back as the verb's) or
detached (in the registry's nursery; the job's description comes back at
once). `list`, `cancel` and `follow` are what the list_jobs, cancel_job and
wait_job verbs offer.

Invariants:
- A job runs in its own cancel scope; `Job.cancel` cancels that scope and
  nothing else. What must not be left half done (a manifest PUT, creating a
  volume) the work shields itself.
- An attached job ends when its caller is cancelled (the RPC layer cancels
  the call of a client that went away); a detached job ends by itself, by
  `cancel`, or when the daemon stops (the registry's nursery is cancelled).
- The outcome is what the work did: "succeeded" if it returned (even when a
  cancel came too late to stop it), "cancelled" if a cancellation ended it,
  "failed" if it raised. `on_cancel` has run and `finished` is set once the
  state is final; no job is left "running" after its work has ended.
- A job is listed from its start to its end, then among the last
  KEEP_FINISHED finished ones, so a detached job's outcome can be read back.
"""

import collections
import copy
import logging
import secrets
import time

import trio

from .errors import Cancelled, NotFound, Unsupported, one_line
from .units import format_size

log = logging.getLogger("rokfs.jobs")
KEEP_FINISHED = 32
FOLLOW_EVERY = 0.2      # seconds between progress reports to a follower
CLIENT_GONE = "its client went away"
DAEMON_STOPPED = "the daemon stopped"
BY_REQUEST = "by request"


class Job:
    """One long operation: what it is, how far it got, how it ended.
    `cancelled_note` says what a cancellation leaves behind; `on_cancel`
    (synchronous) runs when one ends it."""

    def __init__(self, kind, target, *, remote=None, cancelled_note="", on_cancel=None):
        self.id = secrets.token_hex(3)
        self.kind, self.target, self.remote = kind, target, remote
        self.cancelled_note, self.on_cancel = cancelled_note, on_cancel
        self.started, self.ended = time.time(), None
        self.done_bytes = self.total_bytes = 0
        self.state, self.detached = "running", False
        self.reason = self.error = self.exception = self.result = None
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self.progress = None            # the attached caller's callback

    def report(self, done, total):
        """The job's progress callback: (done, total) bytes."""
        self.done_bytes, self.total_bytes = done, total
        if self.progress is not None:
            self.progress(done, total)

    def cancel(self, reason=BY_REQUEST):
        if self.state == "running":
            self.state, self.reason = "cancelling", reason
            self.scope.cancel()

    def info(self):
        return {"id": self.id, "kind": self.kind, "target": self.target,
                "remote": self.remote, "state": self.state, "done_bytes": self.done_bytes,
                "total_bytes": self.total_bytes, "started": self.started, "ended": self.ended,
                "detached": self.detached, "error": self.error, "result": self.result,
                "message": self.message()}

    def message(self):
        what = f"{self.kind} of {self.target}"
        if self.state == "succeeded":
            return f"{what} completed"
        if self.state == "failed":
            return f"{what} failed: {self.error}"
        if self.state == "cancelled":
            note = f": {self.cancelled_note}" if self.cancelled_note else ""
            return f"{what} cancelled at {self.progress_text()} ({self.reason}){note}"
        return f"{what} {self.state} ({self.progress_text()})"

    def progress_text(self):
        if not self.total_bytes:
            return "0%"
        return (f"{self.done_bytes / self.total_bytes:.0%}, {format_size(self.done_bytes)} "
                f"of {format_size(self.total_bytes)}")

    def outcome(self):
        """A finished job's info, or its failure raised again."""
        if self.state == "cancelled":
            raise Cancelled(self.message())
        if self.state == "failed":
            raise copy.copy(self.exception) from self.exception
        return self.info()


def announce(progress, job):
    """Tell a caller's progress callback which job it follows, if it asks
    (an `on_job(info)` method: the RPC layer sends it to the client first)."""
    on_job = getattr(progress, "on_job", None)
    if on_job is not None:
        on_job(job.info())


def _is_cancellation(exc):
    """Is `exc` a trio cancellation, or a group of nothing else?"""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


class Jobs:
    """The registry of one daemon's jobs."""

    def __init__(self):
        self._running = {}
        self._finished = collections.deque(maxlen=KEEP_FINISHED)
        self._nursery = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Host detached jobs until cancelled (which cancels them)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def run(self, job, work, *, progress=None, detach=False):
        """Run `await work(job)` as `job`: attached, returning what it
        returns, or detached, returning the job's info at once."""
        if detach:
            self.check_detach()
        self._start(job, progress, detach)
        if detach:
            self._nursery.start_soon(self._run_detached, job, work)
            return job.info()
        return await self._run(job, work, CLIENT_GONE)

    def check_detach(self):
        if self._nursery is None:
            raise Unsupported("detached jobs run only in a daemon (rokfs serve)")

    def _start(self, job, progress, detach):
        job.detached, job.progress = detach, None if detach else progress
        self._running[job.id] = job
        log.info("event=job_started job=%s kind=%s target=%s detached=%s", job.id, job.kind,
                 job.target, detach)
        if not detach:
            announce(progress, job)

    async def _run_detached(self, job, work):
        try:
            await self._run(job, work, DAEMON_STOPPED)
        except Exception:         # recorded in the job; a detached job has no caller
            pass

    async def _run(self, job, work, cancelled_from_outside):
        try:
            with job.scope:
                result = await work(job)
        except BaseException as exc:
            if _is_cancellation(exc):
                self._end(job, "cancelled", reason=job.reason or cancelled_from_outside)
            else:
                self._end(job, "failed", exception=exc)
            raise
        if job.scope.cancelled_caught:
            self._end(job, "cancelled")
            raise Cancelled(job.message())
        self._end(job, "succeeded", result=result)
        return result

    def _end(self, job, state, *, reason=None, exception=None, result=None):
        job.state, job.ended, job.result = state, time.time(), result
        job.reason = reason or job.reason
        if exception is not None:
            job.exception, job.error = exception, one_line(exception)
        if state == "cancelled" and job.on_cancel is not None:
            _run_on_cancel(job)
        self._running.pop(job.id, None)
        self._finished.append(job)
        job.finished.set()
        log.info("event=job_ended job=%s kind=%s target=%s state=%s done_bytes=%d "
                 "total_bytes=%d reason=%r", job.id, job.kind, job.target, state,
                 job.done_bytes, job.total_bytes, job.reason or job.error or "")

    # -- what the verbs offer ------------------------------------------------------
    def list(self):
        """Running jobs, then the last finished ones, oldest first."""
        return [j.info() for j in [*self._running.values(), *self._finished]]

    def get(self, job_id):
        job = self._running.get(job_id) or next(
            (j for j in self._finished if j.id == job_id), None)
        if job is None:
            raise NotFound(f"no job {job_id!r} (rokctl jobs lists them)")
        return job

    async def cancel(self, job_id):
        """Cancel a job and wait until it has stopped; its info then."""
        job = self.get(job_id)
        job.cancel()
        await job.finished.wait()
        return job.info()

    async def follow(self, job_id, progress=None):
        """Report a job's progress until it ends; then its outcome (Job.outcome)."""
        job = self.get(job_id)
        announce(progress, job)
        while not job.finished.is_set():
            if progress is not None:
                progress(job.done_bytes, job.total_bytes)
            with trio.move_on_after(FOLLOW_EVERY):
                await job.finished.wait()
        if progress is not None:
            progress(job.done_bytes, job.total_bytes)
        return job.outcome()


def _run_on_cancel(job):
    try:
        job.on_cancel()
    except Exception:
        log.exception("event=job_on_cancel_failed job=%s", job.id)
