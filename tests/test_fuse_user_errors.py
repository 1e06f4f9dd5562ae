"""The FUSE view and a user's mistakes, on a real mount (`rokfs serve --mount`):
a bad value is EINVAL (never EIO) with its reason logged once at warning, an
error names the field that is wrong, a failed create leaves nothing behind;
and `du` tells the truth about an image file."""

import errno
import json
import os
import re
import subprocess
import time

import pytest

from fuse_helpers import run, serving

P = "user.rokfs."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuse-user-errors")) as d:
        yield d


@pytest.fixture
def vol(served, request):
    name = re.sub(r"[^a-z0-9.-]+", "-", request.node.name.lower())[-40:].strip("-")
    path = served.mnt / "volumes" / name
    with open(path, "wb") as f:
        os.ftruncate(f.fileno(), 1 << 20)
    return path


def fails(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value


def new_log(served, since):
    """The daemon's log lines written after `since` (a length of the log)."""
    return served.log_text()[since:].splitlines()


@pytest.mark.parametrize("size", [b"nan", b"inf", b"-inf", b"1e999", b"-1", b"1.5"])
def test_resize_to_a_non_size_is_einval(served, vol, size):
    start = len(served.log_text())
    fails(errno.EINVAL, os.setxattr, vol, P + "resize", size)
    logged = new_log(served, start)
    assert len(logged) == 1 and "level=warning" in logged[0] and "invalid size" in logged[0]
    assert vol.stat().st_size == 1 << 20


@pytest.mark.parametrize("url", [b"s3://[bad", b"s3://b/p?endpont_url=http://x",
                                 b"s3://b?deadline=soon", b"s3://b?region=no%20way",
                                 b"s3:/nobucket", b"ftp://x", b"file://host/p"])
def test_a_malformed_remote_url_is_einval(served, vol, url):
    os.setxattr(vol, P + "snapshot", b"s1")
    start = len(served.log_text())
    fails(errno.EINVAL, os.setxattr, vol, P + "push", b"s1 " + url)
    fails(errno.EINVAL, os.setxattr, served.mnt, P + "pull", vol.name.encode() + b"@s1 back "
          + url)
    logged = new_log(served, start)
    assert len(logged) == 2 and all("level=warning" in line for line in logged), logged
    assert "Traceback" not in served.log_text() and "unexpectedly" not in served.log_text()


def test_a_bad_snapshot_name_blames_the_name(served, vol):
    start = len(served.log_text())
    fails(errno.EINVAL, os.setxattr, vol, P + "snapshot", b"Bad Name")
    (line,) = new_log(served, start)
    assert "invalid snapshot name 'Bad'" in line and "label" not in line
    fails(errno.EINVAL, os.setxattr, vol, P + "clone", b"Bad")
    assert "invalid new volume name 'Bad'" in new_log(served, start)[-1]


def test_an_invalid_name_is_logged_once(served):
    start = len(served.log_text())
    res = run(["truncate", "-s", "1M", str(served.mnt / "volumes" / "Not_Valid")], check=False)
    assert res.returncode and "Invalid argument" in res.stderr
    logged = [line for line in new_log(served, start) if "Not_Valid" in line]
    assert len(logged) == 1 and "level=warning" in logged[0], logged
    assert "invalid volume name" in logged[0]
    fails(errno.ENOENT, os.stat, served.mnt / "volumes" / "Not_Valid")   # just missing


def gone_from_the_kernel_cache(path, within):
    """True once stat(path) is ENOENT, polled for `within` seconds. The daemon
    drops the kernel's cached entry (kept up to 1 s, TIMEOUT) with an
    asynchronous invalidation, which only lands after the request that made
    it is answered (a synchronous one would wait for that very request):
    a stat at once can still be answered from the cache, for as long as the
    daemon's notification thread waits for a core."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.stat(path)
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def test_a_create_refused_its_size_leaves_nothing(served):
    volumes = served.mnt / "volumes"
    created = time.monotonic()
    res = run(["truncate", "-s", "1P", str(volumes / "big")], check=False)
    assert res.returncode and "Invalid argument" in res.stderr
    assert "big" not in os.listdir(volumes)
    # well before the cached entry would expire by itself: the daemon invalidated it
    within = max(0.2, created + 0.6 - time.monotonic())
    assert gone_from_the_kernel_cache(volumes / "big", within)
    fails(errno.ENOENT, os.stat, volumes / "big")
    pool = json.loads(os.getxattr(served.mnt, P + "pool"))
    assert pool["deleting"] == 0                          # freed once truncate closed it
    run(["truncate", "-s", "1M", str(volumes / "big")])   # the name is free again
    res = run(["truncate", "-s", "1P", str(volumes / "big")], check=False)
    assert res.returncode and (volumes / "big").stat().st_size == 1 << 20   # kept


def test_du_tells_what_an_image_takes(served):
    image = served.mnt / "volumes" / "sparse"
    with open(image, "wb") as f:
        os.ftruncate(f.fileno(), 64 << 20)
        f.seek(8 << 20)
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    info = json.loads(os.getxattr(image, P + "info"))
    assert info["allocated"] == 1 << 20
    assert image.stat().st_blocks * 512 == info["allocated"]
    du = subprocess.run(["du", "-B1", str(image)], capture_output=True, text=True, check=True)
    assert int(du.stdout.split()[0]) == 1 << 20
    assert image.stat().st_size == 64 << 20


def test_json_attributes_carry_iso_times(served, vol):
    info = json.loads(os.getxattr(vol, P + "info"))
    assert info["created"].endswith("Z") and "T" in info["created"]
    assert abs(info["created_epoch"] - vol.stat().st_mtime) < 1
