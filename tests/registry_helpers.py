"""Clusters for registry tests: daemons with separate pools sharing one
moto S3 server over HTTP (a remote named `hub`), ext4 images, and reading
files out of an NBD export without reading all of it (nbdfuse + debugfs)."""

import contextlib
import os
import subprocess
import time

from daemon_helpers import Daemon, write_config

MiB = 1 << 20


def hub_config(tmp, endpoint, bucket, poll):
    extra = f"""
[remotes.hub]
type = "s3"
bucket = "{bucket}"
prefix = "registry-tests"
endpoint_url = "{endpoint}"
region = "us-east-1"
[registry]
poll = {poll}
"""
    return write_config(tmp, extra)


def start_daemon(tmp, endpoint, bucket, poll=2):
    tmp.mkdir(parents=True, exist_ok=True)
    d = Daemon(hub_config(tmp, endpoint, bucket, poll)).start()
    d.tmp = tmp
    return d


def publisher_key(daemon):
    return daemon.json("registry", "key")["publisher_key"]


def ext4_image(path, size, files):
    """An ext4 image of `size` bytes at `path` holding `files` {name: bytes}."""
    src = path.parent / (path.name + ".d")
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard",
                    "-d", str(src), str(path), f"{size // 1024}K"], check=True,
                   capture_output=True)
    return path


def file_blocks(image, name):
    """The 4 KiB blocks of file /name in ext4 image `image`, in file order."""
    out = subprocess.run(["debugfs", "-R", f"blocks /{name}", str(image)], check=True,
                         capture_output=True, text=True).stdout
    return [int(b) for b in out.split()]


def copy_to_export(image, daemon, export):
    subprocess.run(["nbdcopy", str(image), f"nbd+unix:///{export}?socket={daemon.nbd_socket}"],
                   check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def export_as_file(daemon, export, where):
    """The export as a file (nbdfuse): only the blocks read are fetched."""
    where.mkdir(parents=True, exist_ok=True)
    pidfile = where.parent / (where.name + ".pid")
    proc = subprocess.Popen(["nbdfuse", "--readonly", "-P", str(pidfile), str(where),
                             f"nbd+unix:///{export}?socket={daemon.nbd_socket}"])
    try:
        wait_for(lambda: os.path.exists(pidfile) or proc.poll() is not None, 30)
        assert proc.poll() is None, "nbdfuse did not start"
        yield where / "nbd"
    finally:
        subprocess.run(["fusermount3", "-u", str(where)], capture_output=True)
        proc.wait(timeout=30)


def read_file(daemon, export, name, where):
    """Bytes of /name in the ext4 filesystem on `export` (debugfs reads only
    the blocks it needs)."""
    with export_as_file(daemon, export, where) as device:
        return subprocess.run(["debugfs", "-R", f"cat /{name}", str(device)], check=True,
                              capture_output=True, timeout=120).stdout


def wait_for(predicate, timeout, every=0.1):
    """Seconds until predicate() is true; AssertionError after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(every)
    return time.monotonic() - start
