"""A Python client of the rokfs daemon, for notebooks and pipelines.

    from rokfs.client import Client
    rok = Client()                       # ROKFS_CONTROL or the default socket (rokfs.paths)
    rok.create_volume("data", 20 << 30)
    with rok.step_snapshots(["data", "models"], run="42", step="train"):
        train()

Methods have the names and arguments of the rokfs.control.Control verbs and
return plain JSON values (dicts, lists); a failed call raises the same
rokfs.errors class the daemon raised (rokfs.rpc.error_from, the one place).

The long verbs (push, pull with wait, wait_hydrated) run as jobs in the
daemon, attached to the call: interrupting the call (KeyboardInterrupt, an
exception raised by the progress callback) or the client going away cancels
the job, unless it was started with `detach=True` (then the call returns the
job at once: follow it with wait_job, cancel it with cancel_job).
"""

import contextlib
import json
import re

import grpc

from . import paths, rpc
from .proto import control_pb2 as pb


class Client:
    def __init__(self, address=None, *, timeout=None):
        self.address = address or paths.control_socket()
        self.timeout = timeout
        self._channel = grpc.insecure_channel(rpc.channel_target(self.address))

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, verb, **kwargs):
        """Run one verb by name; returns its JSON result."""
        if verb not in rpc.VERBS:
            raise rpc.errors.InvalidArgument(f"unknown verb {verb!r}")
        if verb in rpc.STREAMING:
            return self.call_streaming(verb, **kwargs)
        stub = self._channel.unary_unary(rpc.method_path(verb),
                                         request_serializer=pb.Call.SerializeToString,
                                         response_deserializer=pb.Result.FromString)
        try:
            reply = stub(_request(kwargs), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise rpc.error_from(exc) from None
        return json.loads(reply.json)

    def call_streaming(self, verb, progress=None, **kwargs):
        """Run a streaming verb; `progress(done, total)` sees each update and,
        if it has an `on_job` method, the job's description first. Anything
        raised meanwhile (KeyboardInterrupt too) cancels the call."""
        stub = self._channel.unary_stream(rpc.method_path(verb),
                                          request_serializer=pb.Call.SerializeToString,
                                          response_deserializer=pb.Progress.FromString)
        call = stub(_request(kwargs), timeout=self.timeout)
        try:
            return _follow(verb, call, progress)
        except grpc.RpcError as exc:
            raise rpc.error_from(exc) from None
        except BaseException:
            call.cancel()
            raise

    @contextlib.contextmanager
    def step_snapshots(self, volumes, *, run, step, labels=None):
        """Snapshot `volumes` before (phase=pre) and after (phase=post) the block,
        each time as one group snapshot (the same instant for every volume).

        Snapshots are named STEP-RUN-pre / STEP-RUN-post (made name-safe,
        with a numeric suffix when taken) and labelled run, step and phase
        plus `labels`. The post snapshots are taken even if the block
        raises (labelled outcome=failed), so a failed step can be inspected.
        """
        base = {**(labels or {}), "run": str(run), "step": str(step)}
        self._step_snapshot(volumes, base, "pre")
        try:
            yield
        except BaseException:
            self._step_snapshot(volumes, {**base, "outcome": "failed"}, "post")
            raise
        self._step_snapshot(volumes, {**base, "outcome": "succeeded"}, "post")

    def _step_snapshot(self, volumes, labels, phase):
        """One group snapshot of `volumes` (a consistent cut across them)."""
        stem = _safe_name(f"{labels['step']}-{labels['run']}-{phase}")
        taken = {g["name"] for g in self.list_groups()}
        for volume in volumes:
            taken.update(self.volume_info(volume)["snapshots"])
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem[:58]}-{n}"
        self.create_group_snapshot(name, list(volumes), {**labels, "phase": phase})


def _safe_name(text):
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "step"
    return name[:63]


def _request(kwargs):
    return pb.Call(args_json=json.dumps({k: v for k, v in kwargs.items() if v is not None}))


def _follow(verb, call, progress):
    """The result of a streaming call, its progress and job passed on."""
    for msg in call:
        if msg.done:
            return json.loads(msg.result_json)
        if msg.job_json:
            on_job = getattr(progress, "on_job", None)
            if on_job is not None:
                on_job(json.loads(msg.job_json))
        elif progress is not None:
            progress(msg.done_bytes, msg.total_bytes)
    raise rpc.errors.RokfsError(f"{verb}: the daemon ended the call without a result")


def _verb_method(verb, params):
    def method(self, *args, **kwargs):
        if len(args) > len(params):
            raise TypeError(f"{verb}() takes at most {len(params)} positional arguments")
        kwargs.update(zip(params, args))
        return self.call(verb, **kwargs)
    method.__name__ = verb
    method.__doc__ = f"Control.{verb}({', '.join(params)}) over the control API."
    return method


for _verb, _params in rpc.VERBS.items():
    setattr(Client, _verb, _verb_method(_verb, _params))
