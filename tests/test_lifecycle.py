"""The image lifecycle through a real daemon: an open snapshot cannot be
deleted from under its reader. Each journey makes `v@s` own its slots alone
(the volume overwritten since), holds it open (an NBD connection, a FUSE
file handle, an ext4 loop-mounted from the snapshot file), then:
- a plain delete is refused (EBUSY / rokctl exit 6) naming the holder;
- a deferred delete hides it at once, the open handle keeps reading the
  snapshot's own bytes even after a new volume is filled with a secret,
  and the space is freed when the handle closes;
- kill -9 between the deferred delete and the close: the restarted daemon
  has freed it and fsck is clean.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemon_helpers import running, write_config
from fuse_helpers import fs_mounted, loop_device, run
from nbd_helpers import NBDSH_ENV

MIB = 1 << 20
SNAP_BYTES = b"snapshot" * (MIB // 8)
SECRET = b"SECRET!!" * (MIB // 8)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def start(tmp_path):
    (tmp_path / "mnt").mkdir(exist_ok=True)
    return running(write_config(tmp_path, f'[fuse]\nmountpoint = "{tmp_path / "mnt"}"\n'))


def snapshot_owning_its_slots(d):
    """v (1 MiB) snapshotted as v@s, then overwritten: v@s alone holds its slots."""
    d.ok("volume", "create", "v", "--size", "1M")
    image = d.mnt / "volumes" / "v"
    write_file(image, SNAP_BYTES)
    d.ok("snapshot", "create", "v@s")
    write_file(image, b"overwrit" * (MIB // 8))
    return image


def write_file(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def used_bytes(d):
    return d.json("status")["used_bytes"]


def fill_secret_volume(d):
    d.ok("volume", "create", "w", "--size", "1M")
    write_file(d.mnt / "volumes" / "w", SECRET)


def wait_until(predicate, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class NbdReader:
    """One NBD connection kept open (nbdsh reading commands from stdin):
    `sha(offset, length)` of what the export serves now."""

    SCRIPT = ("import sys, hashlib\n"
              "print('ready', flush=True)\n"
              "for line in sys.stdin:\n"
              "    off, n = map(int, line.split())\n"
              "    try: print(hashlib.sha256(h.pread(n, off)).hexdigest(), flush=True)\n"
              "    except Exception as e: print('error', e, flush=True)\n")

    def __init__(self, socket, export):
        uri = f"nbd+unix:///{export}?socket={socket}"
        self.proc = subprocess.Popen(["nbdsh", "-u", uri, "-c", self.SCRIPT], env=NBDSH_ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def sha(self, offset, length):
        self.proc.stdin.write(f"{offset} {length}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def test_open_nbd_snapshot_is_refused_then_deferred_and_never_leaks(tmp_path):
    with start(tmp_path) as d:
        d.mnt = tmp_path / "mnt"
        snapshot_owning_its_slots(d)
        reader = NbdReader(d.nbd_socket, "v@s")
        try:
            assert reader.sha(0, MIB) == sha(SNAP_BYTES)
            rc, _, err = d.rokctl("snapshot", "rm", "v@s")
            assert rc == 6 and "held by 1 NBD connection" in err, err
            assert "v@s" in d.nbd_exports()
            d.ok("snapshot", "rm", "--defer", "v@s")
            assert "v@s" not in d.nbd_exports()
            assert d.json("snapshot", "ls") == []
            assert not (d.mnt / "snapshots" / "v" / "s").exists()
            fill_secret_volume(d)
            before_close = used_bytes(d)
            assert reader.sha(0, MIB) == sha(SNAP_BYTES)
            assert reader.sha(4096, 8) != sha(b"SECRET!!")
        finally:
            reader.close()
        wait_until(lambda: used_bytes(d) == before_close - MIB, "the snapshot's space")
        d.ok("snapshot", "create", "v@s")            # its name is free again


def test_open_fuse_snapshot_file_is_refused_then_deferred_and_never_leaks(tmp_path):
    with start(tmp_path) as d:
        d.mnt = tmp_path / "mnt"
        snapshot_owning_its_slots(d)
        path = d.mnt / "snapshots" / "v" / "s"
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as exc:
                os.unlink(path)
            assert exc.value.errno == errno.EBUSY
            with pytest.raises(OSError) as exc:
                os.setxattr(path, "user.rokfs.delete", b"sometime")
            assert exc.value.errno == errno.EINVAL
            os.setxattr(path, "user.rokfs.delete", b"deferred")
            assert "s" not in os.listdir(d.mnt / "snapshots" / "v")
            assert os.fstat(fd).st_size == MIB               # the open file still answers
            fill_secret_volume(d)
            before_close = used_bytes(d)
            assert sha(os.pread(fd, MIB, 0)) == sha(SNAP_BYTES)
        finally:
            os.close(fd)
        wait_until(lambda: used_bytes(d) == before_close - MIB, "the snapshot's space")


def test_ext4_loop_mounted_from_a_deferred_deleted_snapshot_keeps_its_files(tmp_path):
    with start(tmp_path) as d:
        d.mnt = tmp_path / "mnt"
        d.ok("volume", "create", "v", "--size", "64M")
        image = d.mnt / "volumes" / "v"
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)])
        with loop_device(image) as dev, fs_mounted(dev, tmp_path / "fs") as fs:
            sums = {}
            for i in range(8):
                data = os.urandom(2 * MIB)
                (fs / f"f{i}").write_bytes(data)
                sums[f"f{i}"] = sha(data)
        d.ok("snapshot", "create", "v@s")
        write_file(image, os.urandom(64 * MIB))         # v@s now owns every slot alone
        exclusive = d.json("snapshot", "info", "v@s")["exclusive"]
        snap = d.mnt / "snapshots" / "v" / "s"
        with loop_device(snap, read_only=True) as dev, \
                fs_mounted(dev, tmp_path / "snapfs", "ro,noload") as fs:
            rc, _, err = d.rokctl("snapshot", "rm", "v@s")
            assert rc == 6 and "FUSE handle" in err, err
            d.ok("snapshot", "rm", "--defer", "v@s")
            d.ok("volume", "create", "w", "--size", "64M")
            write_file(d.mnt / "volumes" / "w", SECRET * 64)
            before_close = used_bytes(d)
            run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"])
            assert {p.name: sha(p.read_bytes()) for p in fs.iterdir() if p.is_file()} == sums
        wait_until(lambda: used_bytes(d) == before_close - exclusive, "the snapshot's space")
        assert "bad checksum" not in d.log() and "missing from the metadata" not in d.log()


def test_kill9_between_deferred_delete_and_close_frees_on_restart(tmp_path):
    config = write_config(tmp_path, f'[fuse]\nmountpoint = "{tmp_path / "mnt"}"\n')
    (tmp_path / "mnt").mkdir()
    with running(config) as d:
        d.mnt = tmp_path / "mnt"
        snapshot_owning_its_slots(d)
        held = used_bytes(d)
        reader = NbdReader(d.nbd_socket, "v@s")
        d.ok("snapshot", "rm", "--defer", "v@s")
        assert reader.sha(0, MIB) == sha(SNAP_BYTES)
        d.stop(signal.SIGKILL)
        reader.proc.kill()
    run(["fusermount3", "-u", "-z", str(tmp_path / "mnt")], check=False)
    with running(config) as d:
        d.mnt = tmp_path / "mnt"
        assert used_bytes(d) == held - MIB
        assert d.json("snapshot", "ls") == [] and d.json("status")["deleting"] == 0
    fsck = subprocess.run([sys.executable, "-m", "rokfs.cli", "fsck", str(tmp_path / "pool"),
                           "-o", "json"], capture_output=True, text=True)
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["clean"], fsck.stdout + fsck.stderr
