"""One operation at a time per volume or snapshot (CSI "operation pending")."""

import contextlib
import threading

import grpc

from .errors import CsiError


class KeyLocks:
    def __init__(self):
        self._guard = threading.Lock()
        self._busy = set()

    @contextlib.contextmanager
    def hold(self, key):
        """Run the block as the only operation on `key`; ABORTED if one is running."""
        with self._guard:
            if key in self._busy:
                raise CsiError(grpc.StatusCode.ABORTED,
                               f"an operation on {key!r} is already in progress")
            self._busy.add(key)
        try:
            yield
        finally:
            with self._guard:
                self._busy.discard(key)
