"""The verbs on a remote holding one object that does not read (and on one
mixing manifests of format 1 and 2), on a directory and on S3: ls lists the
good snapshots and names the bad one; gc deletes nothing while any manifest
or segment does not read; pull refuses the bad one and creates nothing;
push leaves a corrupt pack out of its index, says so, and uploads those
chunks again; a hydrator never dies of a manifest no rokfs should accept."""

import json
import os

import pytest

from rokfs import errors
from rokfs.remote.formats import chunk_hash
from rokfs.remote.state import LocalState
from test_remote import (hydrate_all, make_control, push_new_volume, read_volume,  # noqa: F401
                         remote_spec)
from test_remote_cli import rokfs
from rokfs.remote import open_remote


def seal(manifest):
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    head = json.dumps({"format": 2, "hash": chunk_hash(body)}, separators=(",", ":"))
    return head.encode() + b"\n" + body


def all_keys(remote):
    return sorted(o.key for o in remote.objects.list(""))


async def assert_pulls_whole(tmp_path, remote, name, data):
    """A fresh pool pulls `name`, hydrates it and reads `data`."""
    c = make_control(tmp_path / f"pulled-{name}", remote)
    await c.pull(name, "r")
    await hydrate_all(c, "r")
    assert await read_volume(c, "r") == data


async def two_snapshots(tmp_path, remote):
    """A pool that pushed good@s and other@s (4 chunks each): (control, data)."""
    a = make_control(tmp_path / "a", remote)
    data = os.urandom(4 * a.pool.chunk_size)
    await push_new_volume(a, "good@s", data)
    await push_new_volume(a, "other@s", os.urandom(len(data)))
    return a, data


async def test_ls_lists_the_good_snapshots_and_names_the_bad(tmp_path, remote_spec, caplog):
    remote = open_remote(remote_spec)
    a, _ = await two_snapshots(tmp_path, remote)
    remote.objects.put("manifests/bad@s", b'{"chunks": 99}')
    remote.objects.put("manifests/README", b"not a manifest")
    assert [m["name"] for m in await a.list_remote()] == ["good@s", "other@s"]
    named = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "manifests/bad@s" in named and "manifests/README" in named
    good, bad = remote.chunks.survey_manifests()
    assert len(good) == 2 and sorted(bad) == ["manifests/README", "manifests/bad@s"]
    assert all(isinstance(exc, errors.Corrupt) for exc in bad.values())


async def test_gc_deletes_nothing_while_a_manifest_does_not_read(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a, data = await two_snapshots(tmp_path, remote)
    await a.delete_remote("other@s")                   # its pack is garbage now
    remote.objects.put("manifests/bad@s", b"[]")
    before = all_keys(remote)
    with pytest.raises(errors.Corrupt, match="deletes nothing.*manifests/bad@s"):
        await a.gc_remote(grace_seconds=0)
    assert all_keys(remote) == before
    await a.delete_remote("bad@s")
    assert (await a.gc_remote(grace_seconds=0))["deleted_objects"] > 0
    await assert_pulls_whole(tmp_path, remote, "good@s", data)


async def test_gc_deletes_nothing_while_a_segment_does_not_read(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a, _ = await two_snapshots(tmp_path, remote)
    await a.delete_remote("other@s")
    segment = remote.chunks.get_manifest("good@s")["segments"][0]
    remote.objects.put(segment, b'{"packs": [], "chunks": []}')
    before = all_keys(remote)
    with pytest.raises(errors.Corrupt, match=f"segment of good@s.*{segment}"):
        await a.gc_remote(grace_seconds=0)
    remote.objects.delete(segment)
    with pytest.raises(errors.Corrupt, match="no object"):
        await a.gc_remote(grace_seconds=0)
    assert all_keys(remote) == [k for k in before if k != segment]


async def test_pull_refuses_a_manifest_that_does_not_read_and_creates_nothing(
        tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a, data = await two_snapshots(tmp_path, remote)
    manifest = remote.chunks.get_manifest("good@s")
    b = make_control(tmp_path / "b", remote)
    for label, body in [("chunks 99", seal({**manifest, "name": "bad@s", "chunks": 99})),
                        ('chunks "4"', seal({**manifest, "name": "bad@s", "chunks": "4"})),
                        ("not an object", b'"bad@s"'),
                        ("no segments", seal({k: v for k, v in manifest.items()
                                              if k != "segments"} | {"name": "bad@s"}))]:
        remote.objects.put("manifests/bad@s", body)
        with pytest.raises(errors.Corrupt, match="manifests/bad@s"):
            await b.pull("bad@s", "r")
        assert b.pool.list_volumes() == [], label
    await assert_pulls_whole(tmp_path, remote, "good@s", data)


async def test_push_leaves_a_corrupt_pack_out_and_uploads_its_chunks_again(
        tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a, data = await two_snapshots(tmp_path, remote)
    segment = remote.chunks.get_segment(remote.chunks.get_manifest("good@s")["segments"][0])
    pack = segment["packs"][0]
    remote.objects.put(pack, remote.objects.get(pack)[:8])          # cut to 8 bytes
    c = make_control(tmp_path / "c", remote)                         # knows no pack yet
    pushed = await push_new_volume(c, "copy@s", data)
    assert [pack in text for text in pushed["corrupt_objects"]] == [True]
    assert pushed["uploaded_chunks"] == len(segment["chunks"])       # up again, elsewhere
    await assert_pulls_whole(tmp_path, remote, "copy@s", data)


async def test_push_never_overwrites_a_manifest_that_does_not_read(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a, _ = await two_snapshots(tmp_path, remote)
    remote.objects.put("manifests/good@s", b"{}")
    with pytest.raises(errors.Corrupt, match="remote rm good@s"):
        await a.push("good@s")
    assert remote.objects.get("manifests/good@s") == b"{}"
    await a.delete_remote("good@s")
    assert (await a.push("good@s"))["manifest_written"]


async def test_a_base_recorded_from_a_bad_manifest_is_corrupt_not_a_crash(
        tmp_path, remote_spec):
    """A volume pulled by an older rokfs from a manifest saying 99 chunks
    where its size holds 4 (the hydrator's IndexError): reading it, as the
    hydrator does, is Corrupt naming the base."""
    remote = open_remote(remote_spec)
    await two_snapshots(tmp_path, remote)
    bad = {**remote.chunks.get_manifest("good@s"), "chunks": 99}
    b = make_control(tmp_path / "b", remote)
    base = b.remote_state.add_base(remote.spec, "good@s", bad)
    b.pool.create_volume("r", bad["size"], base=base, base_chunks=99)
    dev = b.open_device("r")
    with pytest.raises(errors.Corrupt, match=f"base {base} in remote.db: chunks must be 4"):
        await dev.pread(0, 4096)
    dev.close()


async def test_format_1_manifests_are_read_and_sealed_by_the_next_push(tmp_path, remote_spec):
    remote = open_remote(remote_spec)
    a, data = await two_snapshots(tmp_path, remote)
    old = {**remote.chunks.get_manifest("good@s"), "format": 1}
    remote.objects.put("manifests/good@s", json.dumps(old, indent=1, sort_keys=True).encode())
    assert [m["name"] for m in await a.list_remote()] == ["good@s", "other@s"]
    await assert_pulls_whole(tmp_path, remote, "good@s", data)
    assert (await a.gc_remote(grace_seconds=0))["deleted_objects"] == 0
    assert (await a.push("good@s"))["manifest_written"]              # sealed now
    assert remote.objects.get("manifests/good@s").startswith(b'{"format":2,"hash":')
    assert not (await a.push("good@s"))["manifest_written"]


def test_pack_rows_cached_before_headers_were_checked_are_dropped(tmp_path):
    state = LocalState(str(tmp_path))
    state.add_packs("file:///r", {"packs/x": "not entries"})
    state.db.execute("PRAGMA user_version = 0")           # as an older rokfs left it
    state.close()
    state = LocalState(str(tmp_path))
    assert state.packs("file:///r") == {}
    state.add_packs("file:///r", {"packs/y": [["h", 10, 1]]})
    state.close()
    assert LocalState(str(tmp_path)).packs("file:///r") == {"packs/y": [["h", 10, 1]]}


def test_cli_remote_ls_names_the_manifest_that_does_not_read(tmp_path, s3_server):
    from rokfs.pool import Pool
    from s3_helpers import s3_spec
    spec = s3_spec(s3_server)
    url = f"s3://{spec['bucket']}/rk?endpoint_url={s3_server.url}&region=us-east-1"
    pool = str(tmp_path / "a")
    with Pool.create(pool) as p:
        p.create_volume("data", 1 << 20).pwrite(0, os.urandom(1 << 20))
        p.create_snapshot("data@v1")
    rokfs("push", "data@v1", "--pool", pool, "--remote", url)
    open_remote(url).objects.put("manifests/bad@s", b"\xff not UTF-8")
    out = rokfs("remote", "ls", "--pool", pool, "--remote", url)
    assert "data@v1" in out.stdout and "bad@s" not in out.stdout
    assert "manifests/bad@s" in out.stderr and "not UTF-8" in out.stderr
