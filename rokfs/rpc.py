"""The gRPC control service: every Control verb, by name, on a unix socket.

Invariants:
- VERBS is the one table of what the service exposes: verb name -> the
  keyword arguments a caller may pass. Each RPC calls `getattr(control,
  verb)`; no verb is reimplemented here.
- gRPC runs handlers on its own threads; each handler enters the trio loop
  with trio.from_thread (the token captured when the service started), so
  verbs run on the loop like every other front end's.
- Errors cross the wire in ONE place each way: `status_of(exc)` on the
  server, `error_from(rpc_error)` in the client; the status of each error
  class is its row of rokfs.errors.ERRORS. The rokfs.errors class name
  rides in trailing metadata so the client raises the very same class.
- The long verbs (STREAMING: the jobs of jobs.py, and following one) are
  server-streaming: the job's description first (`job_json`), then the
  verb's progress, then its result. Each runs on the loop in a cancel scope
  of its own, cancelled when the call ends before the verb does (the client
  cancelled, was interrupted, died or hit its deadline), so a job attached
  to a client that went away stops. Unary verbs are short and run to their
  end whatever happens to their caller.
"""

import functools
import inspect
import json
import logging
import os
import queue
from concurrent import futures

import grpc
import trio

from . import errors
from .endpoints import claim_unix_socket
from .proto import control_pb2 as pb

log = logging.getLogger("rokfs.rpc")

SERVICE = "rokfs.control.v1.Control"

VERBS = {
    "create_volume": ("name", "size"),
    "delete_volume": ("name", "recursive", "defer", "force"),
    "rename_volume": ("old", "new"),
    "resize_volume": ("name", "size", "force"),
    "clone": ("source", "new_name"),
    "volume_info": ("name",),
    "list_volumes": (),
    "create_snapshot": ("full_name", "labels"),
    "delete_snapshot": ("full_name", "defer", "force"),
    "hold_snapshot": ("full_name", "reason", "tag"),
    "release_snapshot": ("full_name", "tag"),
    "create_group_snapshot": ("group", "volumes", "labels", "freeze"),
    "list_groups": ("labels",),
    "group_info": ("group",),
    "delete_group": ("group", "defer", "force"),
    "clone_group": ("group", "suffix"),
    "lineage": ("name",),
    "set_labels": ("full_name", "labels", "replace"),
    "snapshot_info": ("full_name",),
    "list_snapshots": ("volume", "labels", "group"),
    "status": (),
    "max_volume_size": (),
    "push": ("full_name", "remote", "detach"),
    "pull": ("remote_snapshot", "new_volume", "remote", "wait", "detach"),
    "list_remote": ("remote",),
    "delete_remote": ("remote_snapshot", "remote"),
    "gc_remote": ("remote", "grace_seconds"),
    "hydration_status": ("volume",),
    "pause_hydration": ("volume",),
    "resume_hydration": ("volume",),
    "wait_hydrated": ("volume", "detach"),
    "list_jobs": (),
    "cancel_job": ("job_id",),
    "wait_job": ("job_id",),
    # policies: schedules and retention
    "set_policy": ("target", "spec"),
    "show_policy": ("target",),
    "list_policies": (),
    "delete_policy": ("target",),
    "plan_policy": ("target",),
    "run_policy": ("target",),
    # registry: buckets of signed versions (docs/registry.md)
    "registry_key": (),
    "registry_trust": ("scope", "key"),
    "registry_distrust": ("scope", "key"),
    "registry_trusted": (),
    "registry_publish": ("target", "bucket", "message", "labels", "remote", "private",
                         "detach"),
    "registry_ls": ("bucket", "remote"),
    "registry_subscribe": ("bucket", "remote", "local", "clone", "hydrate"),
    "registry_unsubscribe": ("bucket",),
    "registry_subscriptions": (),
    "registry_sync": ("bucket",),
    "registry_pull": ("version", "new_volume", "remote"),
    "registry_rm": ("version", "remote"),
    "registry_acl_show": ("bucket", "remote"),
    "registry_acl_grant": ("bucket", "key", "writer", "remote"),
    "registry_acl_revoke": ("bucket", "key", "remote"),
    "registry_policy": ("bucket", "remote"),
}
# verbs taking progress=callback (with on_job); their RPC streams Progress
STREAMING = {"push", "pull", "wait_hydrated", "wait_job", "registry_publish"}

# -- errors: the one mapping each way (the codes come from rokfs.errors.ERRORS) ----------

_CLASSES = {name: cls for name, cls in vars(errors).items()
            if isinstance(cls, type) and issubclass(cls, errors.RokfsError)}
DaemonUnreachable = errors.DaemonUnreachable      # also importable from here


def status_code(exc):
    """The grpc.StatusCode of any exception (INTERNAL for a bug)."""
    return getattr(grpc.StatusCode, errors.kind_of(exc).grpc)


def status_of(exc):
    """(grpc status code, message, trailing metadata) for an exception."""
    if not isinstance(exc, errors.RokfsError):
        return grpc.StatusCode.INTERNAL, f"internal error: {exc!r}", ()
    return status_code(exc), str(exc), (("rokfs-error", type(exc).__name__),
                                         ("rokfs-errno", str(exc.errno)))


def _class_of_code(code):
    """The first error class of ERRORS whose gRPC status is `code`."""
    return next((kind.cls for kind in errors.ERRORS if kind.grpc == code.name),
                errors.RokfsError)


def error_from(rpc_error):
    """The rokfs.errors exception a failed call stands for."""
    meta = dict(rpc_error.trailing_metadata() or ())
    cls = _CLASSES.get(meta.get("rokfs-error"))
    if cls is None:
        if rpc_error.code() == grpc.StatusCode.UNAVAILABLE:
            return DaemonUnreachable(f"no rokfs daemon answers: {rpc_error.details()}")
        cls = _class_of_code(rpc_error.code())
    errno = int(meta["rokfs-errno"]) if "rokfs-errno" in meta else None
    return cls(rpc_error.details() or rpc_error.code().name, errno=errno)


# -- naming ----------------------------------------------------------------------------

def method_name(verb):
    return "".join(part.title() for part in verb.split("_"))


def method_path(verb):
    return f"/{SERVICE}/{method_name(verb)}"


def channel_target(address):
    """'unix:/p', '/p' (a socket path) or 'host:port' -> a grpc target."""
    if address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return address
    return f"unix:{address}" if "/" in address else address


# -- server -------------------------------------------------------------------------------

def _decode_args(verb, request):
    try:
        args = json.loads(request.args_json or "{}")
    except ValueError as exc:
        raise errors.InvalidArgument(f"{verb}: arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise errors.InvalidArgument(f"{verb}: arguments must be a JSON object")
    unknown = set(args) - set(VERBS[verb])
    if unknown:
        raise errors.InvalidArgument(f"{verb}: unknown argument(s) {', '.join(sorted(unknown))}")
    return args


class ControlService:
    """Handlers for every verb; `control` is the daemon's one Control."""

    def __init__(self, control, trio_token):
        self.control = control
        self.token = trio_token

    async def _call(self, verb, args, progress=None):
        func = getattr(self.control, verb, None)
        if func is None:
            raise errors.Unsupported(f"this daemon has no {verb} verb")
        if progress is not None:
            args = {**args, "progress": progress}
        try:
            inspect.signature(func).bind(**args)
        except TypeError as exc:
            raise errors.InvalidArgument(f"{verb}: {exc}") from None
        result = func(**args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _fail(self, context, verb, exc):
        code, message, meta = status_of(exc)
        log_fn = log.error if code == grpc.StatusCode.INTERNAL else log.info
        log_fn("event=rpc_error verb=%s code=%s error=%r", verb, code.name, message,
               exc_info=code == grpc.StatusCode.INTERNAL)
        context.set_trailing_metadata(meta)
        context.abort(code, message)

    def unary(self, verb, request, context):
        try:
            args = _decode_args(verb, request)
            result = trio.from_thread.run(self._call, verb, args, trio_token=self.token)
            return pb.Result(json=json.dumps(result))
        except trio.RunFinishedError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down")
        except Exception as exc:
            self._fail(context, verb, exc)

    def streaming(self, verb, request, context):
        call = _StreamingCall(self, verb)
        try:
            args = _decode_args(verb, request)
            trio.from_thread.run_sync(self.nursery.start_soon, call.run, args,
                                      trio_token=self.token)
        except trio.RunFinishedError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down")
        except Exception as exc:
            self._fail(context, verb, exc)
        if not context.add_callback(call.ended_by_grpc):
            call.ended_by_grpc()
        yield from call.relay(context)

    def handlers(self):
        methods = {}
        for verb in VERBS:
            if verb in STREAMING:
                methods[method_name(verb)] = grpc.unary_stream_rpc_method_handler(
                    functools.partial(self.streaming, verb),
                    request_deserializer=pb.Call.FromString,
                    response_serializer=pb.Progress.SerializeToString)
            else:
                methods[method_name(verb)] = grpc.unary_unary_rpc_method_handler(
                    functools.partial(self.unary, verb),
                    request_deserializer=pb.Call.FromString,
                    response_serializer=pb.Result.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, methods)


class _Feed:
    """The progress callback a streaming verb gets: its (done, total)
    updates and the job it runs (`on_job`) go to the handler's thread."""

    def __init__(self, events):
        self.events = events

    def __call__(self, done, total):
        self.events.put(("progress", (done, total)))

    def on_job(self, info):
        self.events.put(("job", info))


class _StreamingCall:
    """One call of a streaming verb: the verb runs on the loop in a cancel
    scope of its own; its events cross to the gRPC thread through a queue;
    the call ending first (the client went away) cancels the scope."""

    def __init__(self, service, verb):
        self.service, self.verb = service, verb
        self.events = queue.Queue()
        self.scope = trio.CancelScope()
        self.verb_ended = False          # read and written on the loop only

    async def run(self, args):
        try:
            with self.scope:
                result = await self.service._call(self.verb, args, progress=_Feed(self.events))
                self.events.put(("done", result))
        except Exception as exc:
            self.events.put(("error", exc))
        except BaseException:            # the service is stopping
            self.events.put(("error", errors.Cancelled(f"{self.verb}: the daemon is stopping")))
            raise
        finally:
            self.verb_ended = True
        if self.scope.cancelled_caught:
            self.events.put(("error", errors.Cancelled(f"{self.verb} cancelled")))

    def ended_by_grpc(self):
        """gRPC's callback when the call ends, for whatever reason: if the
        verb still runs, its client went away: cancel it."""
        try:
            trio.from_thread.run_sync(self._cancel_if_running, trio_token=self.service.token)
        except trio.RunFinishedError:
            pass

    def _cancel_if_running(self):
        if not self.verb_ended:
            log.info("event=rpc_client_gone verb=%s action=cancel", self.verb)
            self.scope.cancel()

    def relay(self, context):
        """The verb's events as Progress messages, until its result or error."""
        while True:
            try:
                kind, payload = self.events.get(timeout=0.5)
            except queue.Empty:
                if not context.is_active():
                    self.ended_by_grpc()
                    return
                continue
            if kind == "job":
                yield pb.Progress(job_json=json.dumps(payload))
            elif kind == "progress":
                yield pb.Progress(done_bytes=payload[0], total_bytes=payload[1])
            elif kind == "done":
                yield pb.Progress(done=True, result_json=json.dumps(payload))
                return
            else:
                self.service._fail(context, self.verb, payload)


def _secure_socket(path, mode, group):
    os.chmod(path, mode)
    if group:
        import grp
        try:
            gid = grp.getgrnam(group).gr_gid if isinstance(group, str) else int(group)
        except KeyError:
            raise errors.InvalidArgument(f"control.group: no group named {group!r}") from None
        os.chown(path, -1, gid)


async def serve_control(control, socket_path, *, mode=0o600, group=None, workers=8,
                        task_status=trio.TASK_STATUS_IGNORED):
    """Serve the control API on `socket_path` until cancelled; reports the path."""
    claim_unix_socket(socket_path, "control")
    service = ControlService(control, trio.lowlevel.current_trio_token())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                    thread_name_prefix="rokfs-rpc"))
    server.add_generic_rpc_handlers((service.handlers(),))
    if not server.add_insecure_port(f"unix:{socket_path}"):
        raise errors.RokfsError(f"cannot listen on control socket {socket_path}")
    try:
        _secure_socket(socket_path, mode, group)
        async with trio.open_nursery() as nursery:
            service.nursery = nursery
            server.start()
            log.info("event=listening service=control socket=%s", socket_path)
            task_status.started(socket_path)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            stopped = server.stop(grace=5)     # no new calls; in-flight ones finish
            await trio.to_thread.run_sync(stopped.wait)
        try:
            os.unlink(socket_path)
        except OSError:
            pass
