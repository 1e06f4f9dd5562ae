"""Acceptance 1: the workstation journey on a real FUSE mount: a volume
created with truncate, ext4 on it through a loop device, a snapshot through
an xattr keeps the old files, and a clone made through an xattr is a
writable copy of them."""

import hashlib
import os
import subprocess

from fuse_helpers import fs_mounted, loop_device, run, serving


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_files(root, tag):
    sums = {}
    for i in range(8):
        path = root / f"file{i}"
        path.write_bytes(os.urandom(64 << 10) + tag.encode())
        sums[path.name] = sha(path)
    return sums


def test_workstation_journey(tmp_path):
    with serving(tmp_path) as d:
        image = d.mnt / "volumes" / "data"
        run(["truncate", "-s", "256M", str(image)])
        assert image.stat().st_size == 256 << 20
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)])
        with loop_device(image) as dev, fs_mounted(dev, tmp_path / "fs") as fs:
            before = write_files(fs, "before")
            subprocess.run(["sync", "-f", str(fs / "file0")], check=True)
            run(["sync"])
            run(["setfattr", "-n", "user.rokfs.snapshot", "-v", "before", str(image)])
            after = write_files(fs, "after")
            (fs / "file0").unlink()
            run(["sync"])
        assert before != after
        snap = d.mnt / "snapshots" / "data" / "before"
        assert snap.stat().st_size == 256 << 20
        with loop_device(snap, read_only=True) as dev, \
                fs_mounted(dev, tmp_path / "snapfs", "ro,noload") as fs:
            assert {p.name: sha(p) for p in fs.iterdir() if p.is_file()} == before
        run(["setfattr", "-n", "user.rokfs.clone", "-v", "restored before", str(image)])
        clone = d.mnt / "volumes" / "restored"
        with loop_device(clone) as dev, fs_mounted(dev, tmp_path / "clonefs") as fs:
            assert {p.name: sha(p) for p in fs.iterdir() if p.is_file()} == before
            (fs / "new").write_bytes(b"written in the clone")
            run(["sync"])
        with loop_device(clone) as dev, fs_mounted(dev, tmp_path / "clonefs") as fs:
            assert (fs / "new").read_bytes() == b"written in the clone"
        with loop_device(image) as dev, fs_mounted(dev, tmp_path / "fs") as fs:
            assert {p.name: sha(p) for p in fs.iterdir() if p.is_file()} == \
                {k: v for k, v in after.items() if k != "file0"}
