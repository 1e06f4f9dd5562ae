"""A remote that accepts requests and never answers holds only the reads
that need it: a cold read fails with EIO at the remote's deadline (plus a
few seconds), while the FUSE view lists, answers xattrs and serves local
chunks, and the same NBD connection answers reads of local chunks.

The S3 server is real (moto over HTTP) behind a TCP proxy that swallows
every request for a pack (the chunk data) once told to stall.
"""

import errno
import os
import subprocess
import threading
import time

from daemon_helpers import running, write_config
from nbd_helpers import NBDSH_ENV
from s3_helpers import FlakyProxy, new_bucket

MiB = 1 << 20
CHUNK = 64 << 10          # daemon_helpers' pools
DEADLINE = 8
PROMPT = 2.0              # "within 1 s", asserted with room for a loaded machine


def config(tmp_path, s3_server, proxy):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return write_config(tmp_path, f"""
[fuse]
mountpoint = "{mnt}"
[remotes.default]
type = "s3"
bucket = "{new_bucket(s3_server.url)}"
endpoint_url = "{proxy.url}"
region = "us-east-1"
deadline = {DEADLINE}
""")


def timed(fn, *args):
    start = time.monotonic()
    result = fn(*args)
    return time.monotonic() - start, result


def write_at(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def cold_read_in_background(path, offset):
    """Start reading `offset` of `path`; the returned dict gets the outcome."""
    outcome = {}

    def read():
        start = time.monotonic()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.pread(fd, 4096, offset)
            outcome["error"] = None
        except OSError as exc:
            outcome["error"] = exc.errno
        finally:
            os.close(fd)
            outcome["seconds"] = time.monotonic() - start
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, outcome


NBD_SCRIPT = f"""
import time
cold_buf = nbd.Buffer(4096)
start = time.monotonic()
cookie = h.aio_pread(cold_buf, {2 * MiB})
time.sleep(0.5)
t = time.monotonic(); h.pread(4096, 0); hot = time.monotonic() - t
try:
    while not h.aio_command_completed(cookie):
        h.poll(-1)
    cold = "ok"
except nbd.Error as exc:
    cold = "errno=%s" % exc.errno
print(hot, cold, time.monotonic() - start)
"""


def test_a_stalled_remote_holds_only_the_reads_that_need_it(tmp_path, s3_server):
    proxy = FlakyProxy(s3_server.port)
    with running(config(tmp_path, s3_server, proxy)) as d:
        mnt = tmp_path / "mnt"
        d.ok("volume", "create", "src", "--size", "4M")
        write_at(mnt / "volumes" / "src", 0, os.urandom(4 * MiB))
        d.ok("snapshot", "create", "src@s")
        d.ok("push", "src@s")
        proxy.stall = ("/packs/",)           # from now on chunk data never comes
        d.ok("pull", "src@s", "--as", "r")
        image = mnt / "volumes" / "r"
        write_at(image, 0, b"local!" * (CHUNK // 6) + bytes(CHUNK % 6))   # a whole chunk: no fetch

        thread, outcome = cold_read_in_background(image, 1 * MiB)
        time.sleep(0.5)
        assert thread.is_alive()                                   # it waits on the remote
        seconds, names = timed(os.listdir, mnt / "volumes")
        assert names and seconds < PROMPT, seconds
        seconds, _ = timed(os.getxattr, image, "user.rokfs.info")
        assert seconds < PROMPT, seconds
        fd = os.open(image, os.O_RDONLY)
        seconds, data = timed(os.pread, fd, 6, 0)
        os.close(fd)
        assert data == b"local!" and seconds < PROMPT, seconds
        seconds, out = timed(d.ok, "status")
        assert seconds < PROMPT, seconds

        nbd = subprocess.run(["nbdsh", "-u", f"nbd+unix:///r?socket={d.nbd_socket}",
                              "-c", NBD_SCRIPT], capture_output=True, text=True, timeout=60,
                             env=NBDSH_ENV)
        hot, cold, cold_seconds = nbd.stdout.split()
        assert float(hot) < PROMPT, nbd.stdout                     # same connection, local chunk
        assert cold in ("errno=EIO", f"errno={errno.EIO}"), nbd.stdout
        assert float(cold_seconds) < DEADLINE + 5, nbd.stdout

        thread.join(DEADLINE + 10)
        assert outcome["error"] == errno.EIO, outcome
        assert outcome["seconds"] < DEADLINE + 5, outcome
