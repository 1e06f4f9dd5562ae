"""Acceptance 3 (POSIX): what each file operation does on the FUSE view,
and the errno of every one it refuses; plus mount lifecycle: SIGTERM,
fusermount3 -u and a stale mount at start."""

import errno
import os
import signal
import subprocess
import sys

import pytest

from fuse_helpers import is_mounted, run, serving


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuse-posix")) as d:
        yield d.mnt


def fails(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value


def make(mnt, name, size=1 << 20, data=b""):
    path = mnt / "volumes" / name
    with open(path, "wb") as f:
        os.ftruncate(f.fileno(), size)
        f.write(data)
    return path


def test_layout_and_listing(mnt):
    assert sorted(os.listdir(mnt)) == ["snapshots", "volumes"]
    make(mnt, "lay", data=b"x")
    os.setxattr(mnt / "volumes" / "lay", "user.rokfs.snapshot", b"s1")
    assert "lay" in os.listdir(mnt / "volumes")
    assert "lay" in os.listdir(mnt / "snapshots")
    assert os.listdir(mnt / "snapshots" / "lay") == ["s1"]
    st = (mnt / "snapshots" / "lay" / "s1").stat()
    assert st.st_size == 1 << 20 and st.st_mode & 0o777 == 0o444


def test_create_is_a_zero_size_volume_and_truncate_resizes(mnt):
    path = mnt / "volumes" / "fresh"
    path.touch()
    assert path.stat().st_size == 0 and path.read_bytes() == b""
    os.truncate(path, 8192)
    assert path.stat().st_size == 8192
    fails(errno.EINVAL, os.truncate, path, 1000)               # not a multiple of 512
    with open(path, "r+b") as f:
        f.write(b"data")
    fails(errno.EINVAL, os.truncate, path, 0)                  # would drop data
    assert path.read_bytes()[:4] == b"data"
    fails(errno.EINVAL, (mnt / "volumes" / "Bad Name").touch)
    fails(errno.EEXIST, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_write_past_end_is_efbig(mnt):
    path = make(mnt, "tail", size=4096)
    fd = os.open(path, os.O_WRONLY)
    try:
        fails(errno.EFBIG, os.pwrite, fd, b"x" * 10, 4090)
        assert os.pwrite(fd, b"y" * 6, 4090) == 6
    finally:
        os.close(fd)


def test_rename_and_delete(mnt):
    path = make(mnt, "old", data=b"keep")
    path.rename(mnt / "volumes" / "new")
    assert not path.exists() and (mnt / "volumes" / "new").read_bytes()[:4] == b"keep"
    make(mnt, "other")
    fails(errno.EEXIST, os.rename, mnt / "volumes" / "new", mnt / "volumes" / "other")
    fails(errno.EINVAL, os.rename, mnt / "volumes" / "new", mnt / "volumes" / "BAD")
    os.setxattr(mnt / "volumes" / "new", "user.rokfs.snapshot", b"s")
    fails(errno.ENOTEMPTY, os.unlink, mnt / "volumes" / "new")
    fails(errno.EPERM, os.rename, mnt / "snapshots" / "new" / "s", mnt / "snapshots" / "new" / "t")
    fails(errno.EPERM, os.rename, mnt / "volumes" / "new", mnt / "snapshots" / "new" / "t")
    os.unlink(mnt / "snapshots" / "new" / "s")
    assert os.listdir(mnt / "snapshots" / "new") == []
    fd = os.open(mnt / "volumes" / "new", os.O_RDONLY)
    try:
        fails(errno.EBUSY, os.unlink, mnt / "volumes" / "new")
    finally:
        os.close(fd)
    os.unlink(mnt / "volumes" / "new")
    assert "new" not in os.listdir(mnt / "volumes")
    assert "new" not in os.listdir(mnt / "snapshots")
    fails(errno.ENOENT, os.unlink, mnt / "volumes" / "new")


def test_refused_operations(mnt):
    vol = make(mnt, "ref", data=b"v")
    os.setxattr(vol, "user.rokfs.snapshot", b"s")
    snap = mnt / "snapshots" / "ref" / "s"
    fails(errno.EROFS, os.open, snap, os.O_WRONLY)
    fails(errno.EROFS, os.open, snap, os.O_RDWR)
    fails(errno.EROFS, os.truncate, snap, 0)
    fails(errno.EROFS, os.open, mnt / "snapshots" / "ref" / "t", os.O_CREAT | os.O_WRONLY)
    fails(errno.EROFS, os.mkdir, mnt / "snapshots" / "x")
    fails(errno.EPERM, os.mkdir, mnt / "volumes" / "dir")
    fails(errno.EPERM, os.mkdir, mnt / "dir")
    fails(errno.EPERM, os.open, mnt / "file", os.O_CREAT | os.O_WRONLY)
    fails(errno.EPERM, os.symlink, "ref", mnt / "volumes" / "link")
    fails(errno.EPERM, os.link, vol, mnt / "volumes" / "hard")
    fails(errno.EPERM, os.mkfifo, mnt / "volumes" / "fifo")
    fails(errno.EPERM, os.chmod, vol, 0o600)
    fails(errno.EPERM, os.chown, vol, 1000, 1000)
    fails(errno.EPERM, os.rmdir, mnt / "volumes")
    fails(errno.EPERM, os.rmdir, mnt / "snapshots" / "ref")
    fails(errno.EISDIR, os.unlink, mnt / "snapshots" / "ref")  # a directory
    fails(errno.EISDIR, os.open, mnt / "volumes", os.O_RDWR)
    fails(errno.ENOTDIR, os.listdir, vol)
    for mode in (["-p"], ["-z"], []):                # pyfuse3 has no fallocate
        res = run(["fallocate", *mode, "-o", "0", "-l", "4096", str(vol)], check=False)
        assert res.returncode == 1 and "unsupported" in res.stderr.replace("not supported", "unsupported"), res.stderr
    os.utime(vol)                                    # touch on a volume works
    assert vol.read_bytes()[:1] == b"v"


def test_fsync_makes_writes_durable(tmp_path):
    with serving(tmp_path, command="mount") as d:
        path = make(d.mnt, "dur")
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, b"durable" * 100, 4096)
        os.fsync(fd)
        os.close(fd)
        d.proc.kill()                                # no clean shutdown
        d.proc.wait()
    from rokfs.pool import Pool
    with Pool.open(str(tmp_path / "pool")) as pool:
        assert bytes(pool.get_volume("dur").pread(4096, 700)) == b"durable" * 100


@pytest.mark.parametrize("how", ["sigterm", "sigint", "fusermount"])
def test_clean_unmount(tmp_path, how):
    with serving(tmp_path, command="mount") as d:
        make(d.mnt, "v", data=b"x")
        if how == "fusermount":
            run(["fusermount3", "-u", str(d.mnt)])
            assert d.proc.wait(30) == 0
        else:
            assert d.stop(signal.SIGTERM if how == "sigterm" else signal.SIGINT) == 0
        assert not is_mounted(d.mnt), d.log_text()
        assert "Traceback" not in d.log_text()


def test_daemon_unmounts_on_sigterm_and_keeps_serving_after_fusermount(tmp_path):
    with serving(tmp_path) as d:
        run(["fusermount3", "-u", str(d.mnt)])
        assert d.proc.poll() is None                       # NBD goes on
        res = run(["nbdinfo", "--list", f"nbd+unix:///?socket={d.sock}"], check=False)
        assert res.returncode == 0, res.stderr
        assert d.stop() == 0


def test_stale_mount_is_reported(tmp_path):
    with serving(tmp_path, command="mount") as d:
        d.proc.kill()
        d.proc.wait()
        fails(errno.ENOTCONN, os.statvfs, d.mnt)
        for cmd in (["mount", str(d.mnt)],
                    ["serve", "--nbd-socket", str(tmp_path / "s.sock"), "--mount", str(d.mnt)]):
            res = subprocess.run([sys.executable, "-m", "rokfs.cli", *cmd, "--pool",
                                  str(tmp_path / "pool")],
                                 capture_output=True, text=True, timeout=30)
            assert res.returncode == 6, res.stderr
            assert "stale FUSE mount" in res.stderr and "fusermount3 -u" in res.stderr
            assert "Traceback" not in res.stderr


def test_busy_mountpoint_is_reported(tmp_path):
    with serving(tmp_path, command="mount") as d:
        res = subprocess.run([sys.executable, "-m", "rokfs.cli", "mount", "--pool",
                              str(tmp_path / "other"), str(d.mnt)],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 6 and "already a mount point" in res.stderr
        assert not (tmp_path / "other").exists()
