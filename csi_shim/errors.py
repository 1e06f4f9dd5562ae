"""The one place where failures become CSI gRPC status codes.

Handlers raise `CsiError(code, message)` for what the CSI spec names
(missing fields, unsupported capabilities, ...) and let the daemon's
`rokfs.errors` exceptions (raised by `rokfs.client.Client`) pass through;
`rpc` turns both into the status the spec asks for: a rokfs error gets the
CSI column of its row in rokfs.errors.ERRORS (no table here). A bug becomes
INTERNAL with its traceback logged, never a hung call.
"""

import functools
import logging

import grpc

from rokfs import errors as rokfs_errors

log = logging.getLogger("csi_shim")


def rokfs_status(exc):
    """The CSI status of a rokfs error: its row of rokfs.errors.ERRORS."""
    return getattr(grpc.StatusCode, rokfs_errors.kind_of(exc).csi)


class CsiError(Exception):
    """A failure the CSI spec gives a status code for."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message):
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message):
    return CsiError(grpc.StatusCode.NOT_FOUND, message)


def require(value, field):
    """Return `value`, or raise INVALID_ARGUMENT naming the missing `field`."""
    if not value:
        raise invalid(f"{field} is required")
    return value


def status_of(exc):
    """(grpc.StatusCode, message) for any exception a handler let escape."""
    if isinstance(exc, CsiError):
        return exc.code, exc.message
    if isinstance(exc, rokfs_errors.RokfsError):
        return rokfs_status(exc), str(exc)
    if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
        return grpc.StatusCode.UNAVAILABLE, f"rokfs daemon unreachable: {exc.details()}"
    log.exception("unexpected error in a CSI handler")
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def rpc(method):
    """Decorate a servicer method `f(self, request)` into a gRPC handler."""
    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request)
        except Exception as exc:  # noqa: BLE001 - translated right below
            code, message = status_of(exc)
        log.info("event=csi_error rpc=%s code=%s message=%s", method.__name__, code.name, message)
        context.abort(code, message)
    return handler
