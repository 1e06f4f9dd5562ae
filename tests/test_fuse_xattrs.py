"""Acceptance 3 (xattrs): every user.rokfs.* attribute of the FUSE view,
good and bad values, on a real mount (os.getxattr/os.setxattr and the
`attr` tools)."""

import errno
import json
import os
import time

import pytest

from fuse_helpers import run, serving

P = "user.rokfs."


@pytest.fixture(scope="module")
def mnt(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("fuse-xattr")) as d:
        yield d.mnt


@pytest.fixture
def vol(mnt, request):
    name = request.node.name.replace("_", "-").lower()[:40]
    path = mnt / "volumes" / name
    with open(path, "wb") as f:
        os.ftruncate(f.fileno(), 1 << 20)
        f.write(b"first")
    return path


def get(path, name):
    return json.loads(os.getxattr(path, P + name))


def fails(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, info.value


def test_listxattr_lists_what_applies(mnt, vol):
    assert sorted(os.listxattr(vol)) == sorted(
        P + n for n in ("snapshot", "clone", "resize", "info", "snapshots", "push",
                        "hydration", "delete", "policy"))
    os.setxattr(vol, P + "snapshot", b"s1")
    snap = mnt / "snapshots" / vol.name / "s1"
    assert sorted(os.listxattr(snap)) == sorted(P + n for n in ("info", "labels", "label",
                                                                 "delete"))
    assert sorted(os.listxattr(mnt)) == [P + "pool", P + "pull"]
    assert os.listxattr(mnt / "volumes") == []


def test_snapshot_with_labels_info_and_snapshots(mnt, vol):
    run(["setfattr", "-n", P + "snapshot", "-v", "before run=42 team=ml", str(vol)])
    snap = mnt / "snapshots" / vol.name / "before"
    assert snap.read_bytes()[:5] == b"first"
    with open(vol, "r+b") as f:
        f.write(b"later")
    assert snap.read_bytes()[:5] == b"first"
    assert get(snap, "labels") == {"run": "42", "team": "ml"}
    info = get(snap, "info")
    assert info["name"] == f"{vol.name}@before" and info["size"] == 1 << 20
    assert [s["snapshot"] for s in get(vol, "snapshots")] == ["before"]
    vinfo = get(vol, "info")
    assert vinfo["snapshots"] == ["before"] and vinfo["size"] == 1 << 20
    out = run(["getfattr", "--only-values", "-n", P + "info", str(vol)]).stdout
    assert json.loads(out)["name"] == vol.name


def test_snapshot_bad_values(mnt, vol):
    fails(errno.EINVAL, os.setxattr, vol, P + "snapshot", b"Bad Name")
    fails(errno.EINVAL, os.setxattr, vol, P + "snapshot", b"")
    fails(errno.EINVAL, os.setxattr, vol, P + "snapshot", b"ok nolabel")
    fails(errno.EINVAL, os.setxattr, vol, P + "snapshot", b"\xff\xfe")
    os.setxattr(vol, P + "snapshot", b"once")
    fails(errno.EEXIST, os.setxattr, vol, P + "snapshot", b"once")
    assert [s["snapshot"] for s in get(vol, "snapshots")] == ["once"]


def test_clone_from_current_state_and_from_snapshot(mnt, vol):
    os.setxattr(vol, P + "snapshot", b"s")
    with open(vol, "r+b") as f:
        f.write(b"second")
    os.setxattr(vol, P + "clone", f"{vol.name}-now".encode())
    os.setxattr(vol, P + "clone", f"{vol.name}-old s".encode())
    assert (mnt / "volumes" / f"{vol.name}-now").read_bytes()[:6] == b"second"
    assert (mnt / "volumes" / f"{vol.name}-old").read_bytes()[:5] == b"first"
    assert get(mnt / "volumes" / f"{vol.name}-old", "info")["origin"] == f"{vol.name}@s"


def test_clone_bad_values(mnt, vol):
    fails(errno.EINVAL, os.setxattr, vol, P + "clone", b"UPPER")
    fails(errno.EINVAL, os.setxattr, vol, P + "clone", b"a b c")
    fails(errno.ENOENT, os.setxattr, vol, P + "clone", b"x-clone nosuchsnap")
    fails(errno.EEXIST, os.setxattr, vol, P + "clone", vol.name.encode())


def test_resize(mnt, vol):
    os.setxattr(vol, P + "resize", b"2M")
    assert vol.stat().st_size == 2 << 20
    fails(errno.EINVAL, os.setxattr, vol, P + "resize", b"lots")
    fails(errno.EINVAL, os.setxattr, vol, P + "resize", b"1000")     # not 512-aligned
    fails(errno.EINVAL, os.setxattr, vol, P + "resize", b"0")        # data would be lost
    assert vol.stat().st_size == 2 << 20
    assert vol.read_bytes()[:5] == b"first"


def test_label(mnt, vol):
    os.setxattr(vol, P + "snapshot", b"l1 a=1")
    snap = mnt / "snapshots" / vol.name / "l1"
    os.setxattr(snap, P + "label", b"b=2 a=3")
    assert get(snap, "labels") == {"a": "3", "b": "2"}
    fails(errno.EINVAL, os.setxattr, snap, P + "label", b"novalue")
    fails(errno.EINVAL, os.setxattr, snap, P + "label", b"bad key=1")
    fails(errno.EINVAL, os.setxattr, snap, P + "label", b"k=" + b"v" * 300)
    assert get(snap, "labels") == {"a": "3", "b": "2"}


def test_policy_set_get_and_remove(mnt, vol):
    assert get(vol, "policy") is None
    run(["setfattr", "-n", P + "policy", "-v", "every 15m keep-last 4 keep-daily 7 label a=b",
         str(vol)])
    policy = get(vol, "policy")
    assert (policy["target"], policy["spec"], policy["keep"], policy["labels"]) == (
        vol.name, "every 15m keep-last 4 keep-daily 7 label a=b", {"last": 4, "daily": 7},
        {"a": "b"})
    assert policy["next_run"] and policy["space"]["snapshots"] == 0
    os.setxattr(vol, P + "policy", b"none")
    assert get(vol, "policy") is None
    fails(errno.ENOENT, os.setxattr, vol, P + "policy", b"none")


def test_policy_bad_values(mnt, vol):
    fails(errno.EINVAL, os.setxattr, vol, P + "policy", b"")
    fails(errno.EINVAL, os.setxattr, vol, P + "policy", b"every 15x")
    fails(errno.EINVAL, os.setxattr, vol, P + "policy", b"hourly keep-daily seven")
    fails(errno.EINVAL, os.setxattr, vol, P + "policy", b"hourly volumes a,b")  # a volume's name
    fails(errno.ENOTSUP, os.setxattr, mnt, P + "policy", b"hourly")
    assert get(vol, "policy") is None


def test_pool_status_on_root(mnt):
    pool = get(mnt, "pool")
    assert pool["chunk_size"] > 0 and pool["capacity_bytes"] >= pool["free_bytes"] > 0
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == pool["capacity_bytes"]


def test_unknown_and_misplaced_names(mnt, vol):
    fails(errno.ENODATA, os.getxattr, vol, P + "nosuch")
    fails(errno.ENODATA, os.getxattr, vol, "user.other")
    fails(errno.ENODATA, os.getxattr, vol, P + "pool")          # root only
    fails(errno.ENOTSUP, os.setxattr, vol, P + "nosuch", b"x")
    fails(errno.ENOTSUP, os.setxattr, vol, P + "info", b"x")     # read-only attribute
    fails(errno.ENOTSUP, os.setxattr, vol, P + "label", b"a=b")  # snapshots only
    fails(errno.ENOTSUP, os.setxattr, mnt, P + "snapshot", b"x")
    fails(errno.ENOTSUP, os.removexattr, vol, P + "snapshot")
    fails(errno.ENODATA, os.removexattr, vol, "user.whatever")
    assert b"SNAP" in os.getxattr(vol, P + "snapshot")           # a command tells its use


def test_push_pull_and_hydration(mnt, vol):
    """push a snapshot to the default remote (a directory next to the pool),
    pull it back as a new volume and watch it hydrate, all through xattrs."""
    with open(vol, "r+b") as f:
        f.seek(300 << 10)
        f.write(b"pushed bytes" * 100)
    want = vol.read_bytes()
    os.setxattr(vol, P + "snapshot", b"up")
    assert get(vol, "hydration")["state"] == "hydrated"       # a local volume
    os.setxattr(vol, P + "push", b"up")
    manifests = list((mnt.parent / "remote").rglob("*"))
    assert manifests, "push wrote nothing to the default remote"
    os.setxattr(mnt, P + "pull", f"{vol.name}@up {vol.name}-back".encode())
    back = mnt / "volumes" / f"{vol.name}-back"
    assert back.read_bytes() == want                           # readable at once
    deadline = time.monotonic() + 30
    while (h := get(back, "hydration"))["state"] != "hydrated":
        assert h["state"] == "hydrating" and time.monotonic() < deadline, h
        time.sleep(0.1)
    assert h["chunks_done"] == h["chunks_total"] > 0
    assert back.read_bytes() == want


def test_push_pull_bad_values(mnt, vol):
    fails(errno.ENOENT, os.setxattr, vol, P + "push", b"no-such-snap")
    fails(errno.EINVAL, os.setxattr, vol, P + "push", b"")
    fails(errno.EINVAL, os.setxattr, vol, P + "push", b"a b c")
    fails(errno.EINVAL, os.setxattr, mnt, P + "pull", b"not-a-snapshot newvol")
    fails(errno.EINVAL, os.setxattr, mnt, P + "pull", b"x@y BAD/NAME")
    fails(errno.ENOENT, os.setxattr, mnt, P + "pull", b"never@pushed newvol")
    fails(errno.ENOTSUP, os.setxattr, vol, P + "pull", b"x@y z")
