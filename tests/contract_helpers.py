"""The block-device contract suite's adapters (tests/test_contract.py).

One small adapter per kind of image, all exposing the same operations, so
that the same test functions run against every kind:

    kind        the image                         how it is driven
    volume      engine Volume                     rokfs.pool in this process
    snapshot    engine Snapshot (read-only)       rokfs.pool in this process
    device      control Device                    Control.open_device in this process
    fuse        volumes/NAME, snapshots/V/S file  a real `rokfs serve --mount`
    nbd         NBD export                        the same daemon, through libnbd
    pulled      a lazily pulled volume            Control.pull from a dir remote,
                                                  no hydrator: reads fetch on demand

A `Handle` is one open image: size, pread, pwrite, trim, zero, flush,
resize, reopen, close. Every refusal surfaces as `Refused(code, message)`
whose code is the kind's own name for it (an error class name, an errno
name, an NBD error name, a rokctl exit code), so that the tests assert the
specific error each kind is expected to give.

A `Kind` makes images, snapshots them, deletes them and reports the pool's
space, through that kind's own front end where it has one (FUSE: files and
xattrs; NBD: the daemon's control socket, rokctl, nbdinfo).

Nothing here mocks storage: every kind stores into a real pool on disk.
"""

import contextlib
import errno
import io
import itertools
import json
import os
import pickle
import random
import struct
import subprocess

import trio

from rokfs import errors
from rokfs.control import Control
from rokfs.pool import Pool

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 32 * KiB                      # the pool's default chunk size, for every kind
SIZE = 2 * MiB + 3 * 512             # 64 whole chunks and a last partial one (1536 bytes)
HOLES = (3, 4, 10, 40)               # chunks the initial content leaves unwritten
SECRET = b"SECRET!!"
HOLDER = "contract test"             # the hold label of the engine kinds


def content(seed, size=SIZE, holes=HOLES):
    """Pseudo-random bytes, all-zero in the chunks `holes`."""
    data = bytearray(random.Random(seed).randbytes(size))
    for c in holes:
        data[c * CHUNK:(c + 1) * CHUNK] = bytes(len(data[c * CHUNK:(c + 1) * CHUNK]))
    return data


CONTENT = bytes(content(1))          # what every kind's image holds when made
_names = itertools.count(1)


def new_name(prefix="v"):
    return f"{prefix}{next(_names)}"


class Refused(Exception):
    """An operation the kind refused; `code` is the kind's name for the error."""

    def __init__(self, code, message=""):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class NotApplicable(Exception):
    """The kind has no such operation; the reason says why (a pytest.skip)."""


@contextlib.contextmanager
def refusals_as_rokfs():
    try:
        yield
    except errors.RokfsError as exc:
        raise Refused(type(exc).__name__, str(exc)) from None


@contextlib.contextmanager
def refusals_as_errno():
    try:
        yield
    except OSError as exc:
        raise Refused(errno.errorcode.get(exc.errno, str(exc.errno)), str(exc)) from None


def data_runs(data, chunk=CHUNK):
    """[(offset, bytes)] of the chunks of `data` that are not all zero."""
    return [(off, data[off:off + chunk]) for off in range(0, len(data), chunk)
            if any(data[off:off + chunk])]


def first_difference(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return min(len(got), len(want))


def assert_same(got, want, what):
    got, want = bytes(got), bytes(want)
    if got != want:
        i = first_difference(got, want)
        raise AssertionError(
            f"{what}: {len(got)} bytes read, {len(want)} expected; first difference at "
            f"byte {i} (chunk {i // CHUNK}): got {got[i:i + 12]!r} expected {want[i:i + 12]!r}"
            + (" -- it holds ANOTHER IMAGE'S SECRET" if SECRET in got else ""))


def copy_pool(src, dest):
    """The pool directory as a crash would leave it (extent files are sparse)."""
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dest)], check=True)
    return str(dest)


async def read_pool_copy(path, name, remote=None):
    """(bytes of image `name`, used_bytes) in the pool copied at `path`, or
    (None, used_bytes) when the image is not there."""
    pool = Pool.open(path)
    try:
        control = Control(pool, {"default": remote} if remote else {})
        used = control.status()["used_bytes"]
        try:
            device = control.open_device(name)
        except errors.NotFound:
            return None, used
        try:
            return bytes(await device.pread(0, device.size)), used
        finally:
            device.close()
    finally:
        pool.close()


async def fill_device(control, name, data):
    device = control.open_device(name)
    try:
        for off, piece in data_runs(data):
            await device.pwrite(off, piece)
        await device.flush()
    finally:
        device.close()


async def wait_for(condition, what, timeout=20):
    """Poll an async condition until it is true (the peer acts asynchronously)."""
    with trio.move_on_after(timeout):
        while True:
            value = await condition()
            if value:
                return value
            await trio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# == handles ========================================================================


class Handle:
    """One open image of some kind."""

    read_only = False

    def __init__(self, kind, name):
        self.kind, self.name = kind, name

    async def read_all(self, size=None):
        """The whole image (`size` bytes when given, else as big as it says it is)."""
        size = await self.size() if size is None else size
        out = bytearray()
        for off in range(0, size, MiB):
            out += await self.pread(off, min(MiB, size - off))
        return bytes(out)

    async def write_many(self, writes, started):
        """Write [(offset, bytes)] in order; set `started` once the first is done."""
        for i, (off, data) in enumerate(writes):
            await self.pwrite(off, data)
            if i == 0:
                started.set()
            await trio.sleep(0)



class EngineHandle(Handle):
    """An engine Volume or Snapshot: no handle of its own; a hold when asked."""

    def __init__(self, kind, name, held=False):
        super().__init__(kind, name)
        with refusals_as_rokfs():
            self.image = kind.pool.get_image(name)
        self.read_only = self.image.read_only
        self.held = held
        if held:
            kind.pool.hold(self.image, HOLDER)

    async def size(self):
        return self.image.size

    async def pread(self, off, length):
        with refusals_as_rokfs():
            return bytes(self.image.pread(off, length))

    def _write_method(self, name):
        method = getattr(self.image, name, None)
        if method is None:        # a Snapshot has no write methods at all
            raise Refused("no write method", f"{type(self.image).__name__} has no {name}")
        return method

    async def pwrite(self, off, data):
        with refusals_as_rokfs():
            self._write_method("pwrite")(off, data)

    async def trim(self, off, length):
        with refusals_as_rokfs():
            self._write_method("trim")(off, length)

    async def zero(self, off, length, no_hole=False):
        with refusals_as_rokfs():
            self._write_method("write_zeroes")(off, length, no_hole)

    async def flush(self):
        self.kind.pool.commit()

    async def resize(self, new_size):
        with refusals_as_rokfs():
            self.kind.pool.resize_volume(self.name, new_size)

    async def reopen(self):
        """No handle to reopen: the engine reopens the whole pool."""
        await self.close()
        self.kind.reopen_pool()
        return EngineHandle(self.kind, self.name)

    async def close(self):
        if self.held:
            self.held = False
            self.kind.pool.release(self.image, HOLDER)


class DeviceHandle(Handle):
    """A control Device (what NBD and FUSE sit on), opened in this process."""

    def __init__(self, kind, name):
        super().__init__(kind, name)
        with refusals_as_rokfs():
            self.device = kind.control.open_device(name)
        self.read_only = self.device.read_only

    async def size(self):
        return self.device.size

    async def pread(self, off, length):
        with refusals_as_rokfs():
            return bytes(await self.device.pread(off, length))

    async def pwrite(self, off, data):
        with refusals_as_rokfs():
            await self.device.pwrite(off, data)

    async def trim(self, off, length):
        with refusals_as_rokfs():
            await self.device.trim(off, length)

    async def zero(self, off, length, no_hole=False):
        with refusals_as_rokfs():
            await self.device.write_zeroes(off, length, no_hole=no_hole)

    async def flush(self):
        with refusals_as_rokfs():
            await self.device.flush()

    async def resize(self, new_size):
        with refusals_as_rokfs():
            await self.kind.control.resize_volume(self.name, new_size)

    async def write_many(self, writes, started):
        # FUA writes await a commit: the snapshot taker runs meanwhile
        for i, (off, data) in enumerate(writes):
            with refusals_as_rokfs():
                await self.device.pwrite(off, data, fua=i % 3 == 0)
            if i == 0:
                started.set()

    async def reopen(self):
        await self.close()
        return await self.kind.reopen_handle(self.name)

    async def close(self):
        self.device.close()


class FuseHandle(Handle):
    """An image file of the FUSE view: pread/pwrite/fsync/ftruncate on an fd."""

    def __init__(self, kind, name):
        super().__init__(kind, name)
        self.path = kind.path_of(name)
        self.read_only = "@" in name
        with refusals_as_errno():
            self.fd = os.open(self.path, os.O_RDONLY if self.read_only else os.O_RDWR)

    async def size(self):
        return os.fstat(self.fd).st_size

    async def pread(self, off, length):
        out = bytearray()
        with refusals_as_errno():
            while len(out) < length:
                piece = os.pread(self.fd, length - len(out), off + len(out))
                if not piece:
                    break              # end of file: a short read, as read(2) has it
                out += piece
        return bytes(out)

    async def pwrite(self, off, data):
        with refusals_as_errno():
            if self.read_only:         # the refusal of a snapshot file is at open
                os.close(os.open(self.path, os.O_WRONLY))
            view, done = memoryview(data), 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], off + done)

    async def trim(self, off, length):
        raise NotApplicable(FuseKind.lacks["trim"])

    async def zero(self, off, length, no_hole=False):
        raise NotApplicable(FuseKind.lacks["trim"])

    async def flush(self):
        with refusals_as_errno():
            os.fsync(self.fd)

    async def resize(self, new_size):
        with refusals_as_errno():
            os.ftruncate(self.fd, new_size)

    async def write_many(self, writes, started):
        def write_all():
            for i, (off, data) in enumerate(writes):
                assert os.pwrite(self.fd, data, off) == len(data)
                if i == 0:
                    trio.from_thread.run_sync(started.set)
        await trio.to_thread.run_sync(write_all)

    async def reopen(self):
        await self.close()
        return FuseHandle(self.kind, self.name)

    async def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class NbdHandle(Handle):
    """An NBD connection (libnbd, strict mode off so the server must refuse)."""

    def __init__(self, kind, name):
        super().__init__(kind, name)
        self.agent = kind.agent
        self.hid = self.agent.call("connect", kind.daemon.uri(name))
        self.read_only = self.agent.call("is_read_only", self.hid)

    async def size(self):
        return self.agent.call("size", self.hid)

    async def pread(self, off, length):
        return self.agent.call("pread", self.hid, length, off)

    async def pwrite(self, off, data):
        self.agent.call("pwrite", self.hid, bytes(data), off)

    async def trim(self, off, length):
        self.agent.call("trim", self.hid, length, off)

    async def zero(self, off, length, no_hole=False):
        self.agent.call("zero", self.hid, length, off, no_hole)

    async def flush(self):
        self.agent.call("flush", self.hid)

    async def resize(self, new_size):
        """NBD has no resize request (an export's size is fixed at the handshake):
        resize through the control API, then reconnect to see the new size."""
        with refusals_as_rokfs():
            self.kind.client.resize_volume(self.name, new_size)
        self.agent.call("close", self.hid)
        self.hid = self.agent.call("connect", self.kind.daemon.uri(self.name))

    async def write_many(self, writes, started):
        def run():
            self.agent.call("write_many", self.hid, [(o, bytes(d)) for o, d in writes],
                            on_started=lambda: trio.from_thread.run_sync(started.set))
        await trio.to_thread.run_sync(run)

    async def reopen(self):
        await self.close()
        return NbdHandle(self.kind, self.name)

    async def close(self):
        if self.hid is not None:
            self.agent.call("close", self.hid)
            self.hid = None


# == the libnbd agent ================================================================
# python3-libnbd exists only for the system python: a small python3 process
# (found on nbd_helpers.NBDSH_ENV's PATH, as nbdsh is) holds the libnbd
# handles and runs one call at a time, sent as length-prefixed pickles over
# its stdin/stdout.

AGENT = r'''
import nbd, pickle, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
handles, ids = {}, iter(range(1, 1 << 30))

def send(obj):
    data = pickle.dumps(obj, 4)
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()

def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    hid = next(ids)
    handles[hid] = h
    return hid

def close(hid):
    h = handles.pop(hid)
    h.shutdown()

def write_many(hid, writes):
    for i, (off, data) in enumerate(writes):
        handles[hid].pwrite(data, off)
        if i == 0:
            send(("started", None))

OPS = {
    "connect": connect, "close": close, "write_many": write_many,
    "size": lambda hid: handles[hid].get_size(),
    "is_read_only": lambda hid: bool(handles[hid].is_read_only()),
    "pread": lambda hid, n, off: bytes(handles[hid].pread(n, off)),
    "pwrite": lambda hid, data, off: handles[hid].pwrite(data, off),
    "trim": lambda hid, n, off: handles[hid].trim(n, off),
    "zero": lambda hid, n, off, no_hole: handles[hid].zero(
        n, off, nbd.CMD_FLAG_NO_HOLE if no_hole else 0),
    "flush": lambda hid: handles[hid].flush(),
}

while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    op, args = pickle.loads(inp.read(struct.unpack(">I", head)[0]))
    try:
        send(("ok", OPS[op](*args)))
    except nbd.Error as e:
        send(("nbd", e.errno or str(e.errnum), e.string))
    except Exception as e:
        send(("crash", repr(e), ""))
'''


class NbdAgent:
    def __init__(self):
        from nbd_helpers import NBDSH_ENV
        self.proc = subprocess.Popen(["python3", "-c", AGENT], env=NBDSH_ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _receive(self):
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            raise RuntimeError(f"the libnbd agent died (exit {self.proc.wait()})")
        return pickle.loads(self.proc.stdout.read(struct.unpack(">I", head)[0]))

    def call(self, op, *args, on_started=None):
        data = pickle.dumps((op, args), 4)
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        while True:
            status, *rest = self._receive()
            if status == "started":
                on_started()
                continue
            if status == "ok":
                return rest[0]
            if status == "nbd":
                raise Refused(*rest)
            raise RuntimeError(f"libnbd agent: {op}{args!r:.80} failed: {rest[0]}")

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(10)


# == kinds ==========================================================================


class Kind:
    """Makes, snapshots, opens and deletes images of one kind."""

    id = None
    handle_class = None
    holder_text = None          # how a refused delete names the holder of a handle
    # what the kind answers: reads/writes/trims/zeroes past the end, a write to
    # a read-only image ("short" = a short read, as read(2) past EOF)
    refusals = {}
    lacks = {}                  # feature -> why this kind has no such thing
    remote = None               # the remote store its pool reads cold chunks from

    async def make(self, name, data=CONTENT):
        """A new writable volume holding `data`; returns its name."""
        raise NotImplementedError

    async def image(self):
        """The name of a fresh image of this kind holding CONTENT."""
        name = new_name()
        await self.make(name)
        return name

    async def open(self, name):
        return self.handle_class(self, name)

    async def open_held(self, name):
        """Open `name` so that it counts as a holder of the image."""
        return await self.open(name)

    async def snapshot_volume(self, volume, snap):
        """Take snapshot VOLUME@SNAP; returns its full name."""
        raise NotImplementedError


class EngineKind(Kind):
    id = "volume"
    lacks = {"read-only": "an engine Volume is writable by design: the engine's read-only "
                          "image is the Snapshot (kind 'snapshot')"}
    handle_class = EngineHandle
    holder_text = HOLDER
    refusals = {"read_past_end": "OutOfRange", "write_past_end": "OutOfRange",
                "trim_past_end": "OutOfRange", "zero_past_end": "OutOfRange",
                "read_only": "no write method", "shrink_over_data": "InvalidArgument",
                "busy": "Busy", "gone": "NotFound"}

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "pool")
        self.pool = Pool.create(self.path, chunk_size=CHUNK)

    def reopen_pool(self):
        self.pool.close()
        self.pool = Pool.open(self.path)

    def shutdown(self):
        if not self.pool.closed:
            self.pool.close()

    async def make(self, name, data=CONTENT):
        vol = self.pool.create_volume(name, len(data))
        for off, piece in data_runs(data):
            vol.pwrite(off, piece)
        self.pool.commit()
        return name

    async def open_held(self, name):
        return EngineHandle(self, name, held=True)

    async def snapshot_volume(self, volume, snap):
        return self.pool.create_snapshot(f"{volume}@{snap}").full_name

    async def delete(self, name, defer=False):
        with refusals_as_rokfs():
            if "@" in name:
                self.pool.delete_snapshot(name, defer=defer)
            else:
                self.pool.delete_volume(name, defer=defer)
        self.pool.commit()                        # as the verbs do: durable on return

    async def listed(self, name):
        return name in {v.name for v in self.pool.list_volumes()} | \
            {s.full_name for s in self.pool.list_snapshots()}

    async def lookup(self, name):
        with refusals_as_rokfs():
            self.pool.get_image(name)

    async def used_bytes(self):
        self.pool.commit()
        return self.pool.status()["used_bytes"]

    async def exclusive_bytes(self, name):
        return self.pool.get_image(name).usage()["exclusive"]

    def crash_copy(self, dest):
        return copy_pool(self.path, dest)


class EngineSnapshotKind(EngineKind):
    """The image is v@s; v was then overwritten, so s owns its slots alone."""

    id = "snapshot"
    lacks = {"writes": "an engine Snapshot takes no writes: it has no write methods at all "
                       "(test_read_only_refusal checks that)",
             "trim": "an engine Snapshot has no trim or write-zeroes (read-only)",
             "resize": "an engine Snapshot is frozen: it has no resize (a resize would change "
                       "a snapshot's content)"}

    async def image(self):
        volume = new_name()
        await self.make(volume)
        snap = await self.snapshot_volume(volume, "s")
        vol = self.pool.get_volume(volume)
        vol.pwrite(0, content(2))
        self.pool.commit()
        return snap


class ControlKind(Kind):
    """Control + Device in this process, on a pool of its own."""

    id = "device"
    handle_class = DeviceHandle
    holder_text = "NBD connection"    # Control.open_device's default front is "nbd"
    refusals = {"read_past_end": "OutOfRange", "write_past_end": "OutOfRange",
                "trim_past_end": "OutOfRange", "zero_past_end": "OutOfRange",
                "read_only": "ReadOnly", "shrink_over_data": "InvalidArgument",
                "busy": "Busy", "gone": "NotFound"}

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "pool")
        self.control = Control(Pool.create(self.path, chunk_size=CHUNK), self._remotes())

    def _remotes(self):
        return {}

    def shutdown(self):
        if not self.control.pool.closed:
            self.control.pool.close()

    async def reopen_handle(self, name):
        return DeviceHandle(self, name)

    async def make(self, name, data=CONTENT):
        with refusals_as_rokfs():
            await self.control.create_volume(name, len(data))
        await fill_device(self.control, name, data)
        return name

    async def snapshot_volume(self, volume, snap):
        return (await self.control.create_snapshot(f"{volume}@{snap}"))["name"]

    async def delete(self, name, defer=False):
        with refusals_as_rokfs():
            if "@" in name:
                await self.control.delete_snapshot(name, defer=defer)
            else:
                await self.control.delete_volume(name, defer=defer)

    async def listed(self, name):
        return name in {e[0] for e in self.control.list_exports()}

    async def lookup(self, name):
        with refusals_as_rokfs():
            self.control.open_device(name).close()

    async def used_bytes(self):
        await self.control.flush()
        return self.control.status()["used_bytes"]

    async def exclusive_bytes(self, name):
        return self.control.pool.get_image(name).usage()["exclusive"]

    def crash_copy(self, dest):
        return copy_pool(self.path, dest)


class PulledKind(ControlKind):
    """A volume pulled from a directory remote holding `src@base` (CONTENT);
    no hydrator runs, so every cold chunk is fetched when a request needs it."""

    id = "pulled"

    def __init__(self, tmp_path, remote_dir):
        from rokfs.remote import open_remote
        self.remote = open_remote({"type": "dir", "path": str(remote_dir)})
        self.remote_dir = remote_dir
        super().__init__(tmp_path)

    def _remotes(self):
        return {"default": self.remote}

    async def make(self, name, data=CONTENT):
        if data is not CONTENT:
            return await super().make(name, data)
        await self.control.pull("src@base", name)
        assert self.control.pool.get_volume(name).cold_count() == -(-SIZE // CHUNK)  # all cold
        return name

    async def reopen_handle(self, name):
        """Reopen the whole pool (a new Control, still no hydrator): cold chunks
        keep coming from the remote."""
        self.shutdown()
        from rokfs.remote import open_remote
        self.remote = open_remote({"type": "dir", "path": str(self.remote_dir)})
        self.control = Control(Pool.open(self.path), self._remotes())
        return DeviceHandle(self, name)


async def push_content(pool_dir, remote_dir):
    """Push CONTENT as `src@base` to a directory remote (the pulled kind's source)."""
    from rokfs.remote import open_remote
    control = Control(Pool.create(str(pool_dir), chunk_size=CHUNK),
                      {"default": open_remote({"type": "dir", "path": str(remote_dir)})})
    try:
        await control.create_volume("src", SIZE)
        await fill_device(control, "src", CONTENT)
        await control.create_snapshot("src@base")
        await control.push("src@base")
    finally:
        control.pool.close()


class DaemonKind(Kind):
    """Images of the module's `rokfs serve --mount` daemon (FUSE + NBD + control)."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.client = daemon.client
        self.agent = daemon.agent

    def shutdown(self):
        pass

    async def snapshot_volume(self, volume, snap):
        def take():
            with refusals_as_rokfs():
                return self.client.create_snapshot(f"{volume}@{snap}")["name"]
        return await trio.to_thread.run_sync(take)

    async def listed(self, name):
        volume = name.split("@")[0]
        names = {v["name"] for v in self.client.list_volumes()}
        if "@" in name and volume in names:
            names |= {s["name"] for s in self.client.list_snapshots(volume)}
        return name in names

    async def used_bytes(self):
        return self.client.status()["used_bytes"]

    async def exclusive_bytes(self, name):
        info = self.client.snapshot_info(name) if "@" in name else self.client.volume_info(name)
        return info["exclusive"]

    def crash_copy(self, dest):
        return copy_pool(self.daemon.pool_path, dest)


class FuseKind(DaemonKind):
    id = "fuse"
    handle_class = FuseHandle
    holder_text = "FUSE handle"
    refusals = {"read_past_end": "short", "write_past_end": "EFBIG",
                "read_only": "EROFS", "shrink_over_data": "EINVAL",
                "busy": "EBUSY", "gone": "ENOENT"}
    lacks = {"trim": "the FUSE view has no fallocate (pyfuse3 offers none): an image file "
                     "cannot punch holes or zero ranges (fallocate -p/-z is EOPNOTSUPP, "
                     "see test_fuse_posix)"}

    def path_of(self, name):
        if "@" in name:
            volume, snap = name.split("@")
            return self.daemon.mnt / "snapshots" / volume / snap
        return self.daemon.mnt / "volumes" / name

    async def make(self, name, data=CONTENT):
        fd = os.open(self.path_of(name), os.O_CREAT | os.O_EXCL | os.O_RDWR)
        try:
            os.ftruncate(fd, len(data))
            for off, piece in data_runs(data):
                os.pwrite(fd, piece, off)
            os.fsync(fd)
        finally:
            os.close(fd)
        return name

    async def snapshot_volume(self, volume, snap):
        await trio.to_thread.run_sync(os.setxattr, self.path_of(volume),
                                      "user.rokfs.snapshot", snap.encode())
        return f"{volume}@{snap}"

    async def delete(self, name, defer=False):
        """rm of the image file, or the deferred-delete xattr on it."""
        with refusals_as_errno():
            if defer:
                os.setxattr(self.path_of(name), "user.rokfs.delete", b"deferred")
            else:
                os.unlink(self.path_of(name))

    async def delete_through_control(self, name):
        """The same refusal through the control API, for the holder's name."""
        with refusals_as_rokfs():
            if "@" in name:
                self.client.delete_snapshot(name)
            else:
                self.client.delete_volume(name)

    async def listed(self, name):
        path = self.path_of(name)
        return path.parent.is_dir() and path.name in os.listdir(path.parent)

    async def lookup(self, name):
        with refusals_as_errno():
            os.close(os.open(self.path_of(name), os.O_RDONLY))

    async def used_bytes(self):
        return json.loads(os.getxattr(self.daemon.mnt, "user.rokfs.pool"))["used_bytes"]


class NbdKind(DaemonKind):
    id = "nbd"
    handle_class = NbdHandle
    holder_text = "1 NBD connection"
    refusals = {"read_past_end": "EINVAL", "write_past_end": "ENOSPC",
                "trim_past_end": "EINVAL", "zero_past_end": "ENOSPC",
                "read_only": "EPERM", "shrink_over_data": "InvalidArgument",
                "busy": "exit 6", "gone": "ENOENT"}

    async def make(self, name, data=CONTENT):
        with refusals_as_rokfs():
            self.client.create_volume(name, len(data))
        hid = self.agent.call("connect", self.daemon.uri(name))
        try:
            for off, piece in data_runs(data):
                self.agent.call("pwrite", hid, bytes(piece), off)
            self.agent.call("flush", hid)
        finally:
            self.agent.call("close", hid)
        return name

    async def delete(self, name, defer=False):
        """rokctl, as an operator would: Busy is exit code 6."""
        args = ["snapshot" if "@" in name else "volume", "rm", *(["--defer"] if defer else []),
                name]
        rc, out, err = self.daemon.rokctl(*args)
        if rc:
            raise Refused(f"exit {rc}", err)

    async def listed(self, name):
        listing = subprocess.run(["nbdinfo", "--list", "--json",
                                  f"nbd+unix:///?socket={self.daemon.sock}"],
                                 capture_output=True, text=True, check=True, timeout=30)
        return name in {e["export-name"] for e in json.loads(listing.stdout)["exports"]}

    async def lookup(self, name):
        self.agent.call("close", self.agent.call("connect", self.daemon.uri(name)))


class DaemonServices:
    """What the daemon kinds share for a module: the daemon, a control client,
    a libnbd agent."""

    def __init__(self, daemon):
        from rokfs.client import Client
        self.daemon = daemon
        self.mnt, self.sock = daemon.mnt, daemon.sock
        self.pool_path = daemon.mnt.parent / "pool"
        self.control_socket = str(daemon.mnt.parent / "control.sock")
        self.client = Client(self.control_socket)
        self.agent = NbdAgent()

    def uri(self, name):
        return self.daemon.uri(name)

    def rokctl(self, *args):
        from rokfs import rokctl
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = rokctl.main(["--socket", self.control_socket, *args])
            except SystemExit as exc:
                rc = exc.code
        return rc, out.getvalue(), err.getvalue()

    def close(self):
        self.agent.stop()
        self.client.close()
