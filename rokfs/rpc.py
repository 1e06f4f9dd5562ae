"""The gRPC control service: every Control verb, by name, on a unix socket.

Invariants:
- VERBS is the one table of what the service exposes: verb name -> the
  keyword arguments a caller may pass. Each RPC calls `getattr(control,
  verb)`; no verb is reimplemented here.
- gRPC runs handlers on its own threads; each handler enters the trio loop
  with trio.from_thread (the token captured when the service started), so
  verbs run on the loop like every other front end's.
- Errors cross the wire in ONE place each way: `status_of(exc)` on the
  server, `error_from(rpc_error)` in the client. The rokfs.errors class name
  rides in trailing metadata so the client raises the very same class.
- Push is server-streaming: the verb's progress callback feeds the stream.
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
    "push": ("full_name", "remote"),
    "pull": ("remote_snapshot", "new_volume", "remote"),
    "list_remote": ("remote",),
    "delete_remote": ("remote_snapshot", "remote"),
    "gc_remote": ("remote", "grace_seconds"),
    "hydration_status": ("volume",),
    "pause_hydration": ("volume",),
    "resume_hydration": ("volume",),
    # policies: schedules and retention
    "set_policy": ("target", "spec"),
    "show_policy": ("target",),
    "list_policies": (),
    "delete_policy": ("target",),
    "plan_policy": ("target",),
    "run_policy": ("target",),
}
STREAMING = {"push"}          # verbs taking progress=callback; their RPC streams Progress

# -- errors: the one mapping each way -------------------------------------------------

_CODES = [   # most specific first
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.NoSpace, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Busy, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotEmpty, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ReadOnly, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
    (errors.RemoteError, grpc.StatusCode.UNAVAILABLE),
]
_CLASSES = {name: cls for name, cls in vars(errors).items()
            if isinstance(cls, type) and issubclass(cls, errors.RokfsError)}


class DaemonUnreachable(errors.RokfsError):
    """No rokfs daemon answers on the control socket."""


def status_of(exc):
    """(grpc status code, message, trailing metadata) for an exception."""
    if not isinstance(exc, errors.RokfsError):
        return grpc.StatusCode.INTERNAL, f"internal error: {exc!r}", ()
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    return code, str(exc), (("rokfs-error", type(exc).__name__), ("rokfs-errno", str(exc.errno)))


def error_from(rpc_error):
    """The rokfs.errors exception a failed call stands for."""
    meta = dict(rpc_error.trailing_metadata() or ())
    cls = _CLASSES.get(meta.get("rokfs-error"))
    if cls is None:
        if rpc_error.code() == grpc.StatusCode.UNAVAILABLE:
            return DaemonUnreachable(f"no rokfs daemon answers: {rpc_error.details()}")
        by_code = {c: k for k, c in reversed(_CODES)}
        cls = by_code.get(rpc_error.code(), errors.RokfsError)
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
        try:
            args = _decode_args(verb, request)
        except Exception as exc:
            self._fail(context, verb, exc)
        events = queue.Queue()
        scope = trio.from_thread.run_sync(self._start_streaming, verb, args, events,
                                          trio_token=self.token)
        while True:
            try:
                kind, *payload = events.get(timeout=0.5)
            except queue.Empty:
                if not context.is_active():
                    trio.from_thread.run_sync(scope.cancel, trio_token=self.token)
                continue
            if kind == "progress":
                yield pb.Progress(done_bytes=payload[0], total_bytes=payload[1])
            elif kind == "done":
                yield pb.Progress(done=True, result_json=json.dumps(payload[0]))
                return
            else:
                self._fail(context, verb, payload[0])

    def _start_streaming(self, verb, args, events):
        """On the loop: run the verb in the daemon's nursery, feeding `events`."""
        scope = trio.CancelScope()

        async def run():
            with scope:
                try:
                    result = await self._call(verb, args, progress=lambda done, total:
                                              events.put(("progress", done, total)))
                except Exception as exc:
                    events.put(("error", exc))
                    return
                events.put(("done", result))
            if scope.cancelled_caught:
                events.put(("error", errors.RokfsError(f"{verb} cancelled")))
        self.nursery.start_soon(run)
        return scope

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
