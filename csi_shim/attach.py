"""Attach a rokfs NBD export to this node as a block device, and detach it.

Two ways, chosen once at start-up:
- `KernelNbd`: the kernel's nbd driver (`nbd-client -unix`), where /dev/nbd*
  exists;
- `NbdFuse`: `nbdfuse` exposes the export as a file in a private FUSE mount,
  and a loop device turns that file into a block device.

Invariants: `attach` is idempotent (an attached volume returns its device);
`detach` leaves nothing behind (no loop device, no FUSE mount or nbdfuse
process, no NBD connection) and is idempotent too. All state lives in the
system (mounts, loop devices) plus a per-volume directory under `state_dir`,
so a restarted rokfs-csi finds what an earlier one attached.
"""

import glob
import os
import shutil
import subprocess

import grpc

from .errors import CsiError
from .system import log, mount_at, run, wait_for


def nbd_uri(socket_path, export):
    return f"nbd+unix:///{export}?socket={socket_path}"


class _Attacher:
    """Attaches exports of the NBD server at `nbd_socket` as block devices,
    keeping what it needs to find them again under `state_dir`."""

    def __init__(self, state_dir, nbd_socket):
        self.state_dir = state_dir
        self.nbd_socket = nbd_socket


class NbdFuse(_Attacher):
    """nbdfuse + loop device."""

    kind = "nbdfuse+loop"

    def _dir(self, volume):
        return os.path.join(self.state_dir, volume)

    def _fuse_dir(self, volume):
        return os.path.join(self._dir(volume), "fuse")

    def image_file(self, volume):
        return os.path.join(self._fuse_dir(volume), "nbd")

    def _pid_file(self, volume):
        return os.path.join(self._dir(volume), "nbdfuse.pid")

    # -- attach --------------------------------------------------------------
    def attach(self, volume, read_only=False):
        """The block device of `volume`, attaching it first if needed."""
        if (device := self.device(volume)) is not None:
            return device
        if mount_at(self._fuse_dir(volume)) is None:
            self._start_nbdfuse(volume, read_only)
        flags = ["-r"] if read_only else []
        device = run("losetup", "--find", "--show", *flags, self.image_file(volume)).strip()
        log.info("event=attached volume=%s device=%s via=%s", volume, device, self.kind)
        return device

    def _start_nbdfuse(self, volume, read_only):
        fuse_dir = self._fuse_dir(volume)
        os.makedirs(fuse_dir, exist_ok=True)
        pid_file = self._pid_file(volume)
        _remove(pid_file)
        argv = ["nbdfuse", "-P", pid_file, *(["-r"] if read_only else []),
                self.image_file(volume), nbd_uri(self.nbd_socket, volume)]
        with open(os.path.join(self._dir(volume), "nbdfuse.log"), "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True)   # outlives a rokfs-csi restart

        def ready():
            if proc.poll() is not None:
                raise CsiError(grpc.StatusCode.UNAVAILABLE,
                               f"nbdfuse for {volume} exited ({proc.returncode}): "
                               f"{self._log_tail(volume)}")
            return os.path.exists(pid_file) and mount_at(fuse_dir) is not None
        try:
            wait_for(ready, f"nbdfuse to expose {volume}")
        except CsiError:
            self._stop_nbdfuse(volume)
            raise

    def _log_tail(self, volume):
        try:
            with open(os.path.join(self._dir(volume), "nbdfuse.log"), errors="replace") as f:
                return f.read()[-500:].strip()
        except OSError:
            return ""

    # -- lookup ----------------------------------------------------------------
    def device(self, volume):
        """The loop device attached to `volume`'s export, or None."""
        if mount_at(self._fuse_dir(volume)) is None:
            return None
        out = run("losetup", "--noheadings", "--output", "NAME,BACK-FILE", "--list")
        image = self.image_file(volume)
        for line in out.splitlines():
            name, _, back = line.strip().partition(" ")
            if back.strip() == image:
                return name
        return None

    def refresh(self, volume):
        """Make the loop device pick up a changed size of the export file."""
        if (device := self.device(volume)) is not None:
            run("losetup", "-c", device)
        return device

    # -- detach ----------------------------------------------------------------
    def detach(self, volume):
        """Detach `volume`; nothing of it stays on the node (idempotent)."""
        if not os.path.exists(self._dir(volume)):
            return
        while (device := self.device(volume)) is not None:
            run("losetup", "-d", device)
            wait_for(lambda: self.device(volume) != device, f"{device} to detach")
        self._stop_nbdfuse(volume)
        shutil.rmtree(self._dir(volume), ignore_errors=True)
        log.info("event=detached volume=%s via=%s", volume, self.kind)

    def _stop_nbdfuse(self, volume):
        fuse_dir = self._fuse_dir(volume)
        pid = _read_pid(self._pid_file(volume))
        if mount_at(fuse_dir) is not None:
            run("fusermount3", "-u", fuse_dir)
        if pid is not None:
            wait_for(lambda: not _alive(pid), f"nbdfuse (pid {pid}) to exit")

    def leftovers(self, volume):
        """What of `volume` is still on the node (empty after a clean detach)."""
        left = []
        if (device := self.device(volume)) is not None:
            left.append(f"loop device {device}")
        if mount_at(self._fuse_dir(volume)) is not None:
            left.append(f"FUSE mount {self._fuse_dir(volume)}")
        pid = _read_pid(self._pid_file(volume))
        if pid is not None and _alive(pid):
            left.append(f"nbdfuse process {pid}")
        return left


class KernelNbd(_Attacher):
    """The kernel nbd driver through nbd-client (nodes with /dev/nbd*)."""

    kind = "kernel-nbd"

    def _record(self, volume):
        return os.path.join(self.state_dir, f"{volume}.nbd")

    def attach(self, volume, read_only=False):
        if (device := self.device(volume)) is not None:
            return device
        for device in sorted(glob.glob("/dev/nbd[0-9]*")):
            if not _nbd_busy(device):
                run("nbd-client", "-unix", self.nbd_socket, "-N", volume, device,
                    *(["-readonly"] if read_only else []))
                os.makedirs(self.state_dir, exist_ok=True)
                with open(self._record(volume), "w") as f:
                    f.write(device)
                return device
        raise CsiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no free /dev/nbd* device")

    def device(self, volume):
        try:
            with open(self._record(volume)) as f:
                device = f.read().strip()
        except FileNotFoundError:
            return None
        return device if _nbd_busy(device) else None

    def refresh(self, volume):
        return self.device(volume)

    def detach(self, volume):
        if (device := self.device(volume)) is not None:
            run("nbd-client", "-d", device)
        _remove(self._record(volume))

    def leftovers(self, volume):
        device = self.device(volume)
        return [f"nbd device {device}"] if device else []


def choose(state_dir, nbd_socket, prefer=None):
    """KernelNbd where the node has /dev/nbd* and nbd-client, else NbdFuse."""
    kernel = bool(glob.glob("/dev/nbd[0-9]*")) and shutil.which("nbd-client")
    cls = KernelNbd if (prefer or ("kernel" if kernel else "nbdfuse")) == "kernel" else NbdFuse
    return cls(state_dir, nbd_socket)


def _nbd_busy(device):
    return os.path.exists(f"/sys/block/{os.path.basename(device)}/pid")


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie child of ours is gone too
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

