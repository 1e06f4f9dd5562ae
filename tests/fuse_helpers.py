"""Helpers for the FUSE tests: a real `rokfs serve --mount` (FUSE + NBD in
one process) started as a subprocess on a temporary pool, loop devices and
filesystem mounts, all torn down even when a test fails."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def is_mounted(path):
    path = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == path for line in f)


def run(cmd, check=True, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if check and res.returncode:
        raise AssertionError(f"{cmd} failed ({res.returncode}): {res.stderr}")
    return res


def force_unmount(path):
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Daemon:
    def __init__(self, proc, mnt, sock, log):
        self.proc, self.mnt, self.sock, self.log = proc, Path(mnt), sock, log

    def uri(self, export):
        return f"nbd+unix:///{export}?socket={self.sock}"

    def log_text(self):
        return Path(self.log).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def wait_mounted(proc, mnt, log, timeout=30):
    deadline = time.monotonic() + timeout
    while not is_mounted(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mount did not appear: {Path(log).read_text()}")
        time.sleep(0.05)
    # the mount table entry precedes the session loop: wait for an answer
    while True:
        try:
            os.stat(os.path.join(mnt, "volumes"))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def serving(tmp_path, *, command="serve", extra=()):
    """`rokfs serve --mount` (or `rokfs mount`) on a fresh pool in tmp_path."""
    pool, mnt = tmp_path / "pool", tmp_path / "mnt"
    sock, log = tmp_path / "nbd.sock", tmp_path / "daemon.log"
    mnt.mkdir(exist_ok=True)
    if command == "serve":
        cmd = ["serve", "--pool", str(pool), "--nbd-socket", str(sock), "--mount", str(mnt),
               "--control-socket", str(tmp_path / "control.sock"), "--metrics-listen", ""]
    else:
        cmd = ["mount", "--pool", str(pool), str(mnt)]
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rokfs.cli", *cmd, *extra],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    daemon = Daemon(proc, mnt, sock, log)
    try:
        wait_mounted(proc, mnt, log)
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        force_unmount(mnt)


@contextlib.contextmanager
def loop_device(image, read_only=False):
    args = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []), str(image)]
    dev = run(args).stdout.strip()
    try:
        yield dev
    finally:
        for _ in range(50):
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


@contextlib.contextmanager
def fs_mounted(dev, where, options="rw"):
    Path(where).mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", options, dev, str(where)])
    try:
        yield Path(where)
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
