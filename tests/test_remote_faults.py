"""Remote failures against a real S3 server over HTTP: the server killed
mid-push, a corrupted object, a flaky network, an unreachable remote."""

import errno
import os
import time

import boto3
import pytest
import trio

from rokfs import errors
from rokfs.remote import open_remote
from s3_helpers import FlakyProxy, S3Server, s3_spec
from test_remote import hydrate_all, make_control, push_new_volume, read_volume, write_volume

MiB = 1 << 20


async def test_server_killed_mid_push_then_resume(tmp_path):
    server = S3Server().start()
    try:
        spec = s3_spec(server, deadline=1)
        remote = open_remote(spec)
        a = make_control(tmp_path / "a", remote)
        data = os.urandom(32 * MiB)
        await a.create_volume("data", len(data))
        await write_volume(a, "data", data)
        await a.create_snapshot("data@s")

        def kill_at_half(done, total):
            if done >= total // 2 and server.server:
                server.stop()
        with pytest.raises(errors.RemoteError):
            await a.push("data@s", progress=kill_at_half)
        server.start()
        assert await a.list_remote() == []              # no manifest without its chunks
        uploaded_before = {o.key for o in remote.objects.list("packs/")}
        assert uploaded_before
        recorded = set(a.remote_state.packs(remote.url))  # saved although the push failed
        assert recorded and recorded <= uploaded_before
        resumed = await a.push("data@s")
        total_chunks = len(data) // a.pool.chunk_size
        assert resumed["uploaded_chunks"] < total_chunks    # the first part was kept
        manifest = remote.chunks.get_manifest("data@s")
        for key in manifest["segments"]:
            for pack in remote.chunks.get_segment(key)["packs"]:
                assert remote.objects.exists(pack)
        b = make_control(tmp_path / "b", remote)
        await b.pull("data@s", "r")
        assert await read_volume(b, "r") == data
    finally:
        server.stop()


async def test_corrupted_object_is_detected_on_pull(tmp_path, s3_server):
    spec = s3_spec(s3_server)
    remote = open_remote(spec)
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    data = os.urandom(128 * cs)
    await push_new_volume(a, "data@s", data)
    # overwrite one chunk's bytes on the server, keeping the object's size
    seg = remote.chunks.get_segment(remote.chunks.get_manifest("data@s")["segments"][0])
    h, pack_no, offset, length = seg["chunks"][3]
    key = seg["packs"][pack_no]
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    body = bytearray(s3.get_object(Bucket=spec["bucket"], Key="rk/" + key)["Body"].read())
    body[offset + 20:offset + 60] = os.urandom(40)
    s3.put_object(Bucket=spec["bucket"], Key="rk/" + key, Body=bytes(body))

    b = make_control(tmp_path / "b", remote)
    await b.pull("data@s", "r")
    dev = b.open_device("r")
    with pytest.raises(errors.RokfsError) as exc:
        await dev.pread(3 * cs, 10)
    assert exc.value.errno == errno.EIO and "hash" in str(exc.value)
    assert await dev.pread(64 * cs, cs) == data[64 * cs:65 * cs]   # other chunks still fine
    dev.close()
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run_background)
            while b.hydration_status("r")["state"] != "failed":
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    status = b.hydration_status("r")
    assert status["state"] == "failed" and "hash" in status["error"]
    assert b.pool.get_volume("r").is_cold(3, b.pool.get_volume("r").entry(3))   # never served


async def test_flaky_network_is_retried(tmp_path, s3_server):
    proxy = FlakyProxy(s3_server.port, drop=0.15, delay=0.3, delay_share=0.1)
    try:
        spec = s3_spec(s3_server, deadline=20)
        spec["endpoint_url"] = proxy.url
        remote = open_remote(spec)
        a = make_control(tmp_path / "a", remote)
        data = os.urandom(8 * MiB)
        await push_new_volume(a, "data@s", data)
        b = make_control(tmp_path / "b", open_remote(spec))
        await b.pull("data@s", "r")
        assert await read_volume(b, "r") == data
        await hydrate_all(b, "r")
        assert proxy.dropped > 0 and proxy.delayed > 0
    finally:
        proxy.close()


async def test_unreachable_remote_gives_eio_not_a_hang(tmp_path, s3_server):
    proxy = FlakyProxy(s3_server.port)
    spec = s3_spec(s3_server, deadline=1)
    spec["endpoint_url"] = proxy.url
    remote = open_remote(spec)
    a = make_control(tmp_path / "a", remote)
    cs = a.pool.chunk_size
    data = os.urandom(64 * cs)
    await push_new_volume(a, "data@s", data)
    b = make_control(tmp_path / "b", open_remote(spec))
    await b.pull("data@s", "r")
    dev = b.open_device("r")
    assert await dev.pread(0, 10) == data[:10]
    proxy.close()
    t0 = time.monotonic()
    with pytest.raises(errors.RemoteError) as exc:
        await dev.pread(40 * cs, 10)
    assert exc.value.errno == errno.EIO and time.monotonic() - t0 < 10
    assert await dev.pread(0, 10) == data[:10]          # what was fetched stays readable
    await dev.pwrite(50 * cs, b"x" * cs)                 # and whole-chunk writes still work
    dev.close()


async def test_one_volumes_hydration_failing_unexpectedly_fails_that_volume_alone(
        tmp_path, monkeypatch):
    """A bug (any exception) in one volume's hydration marks that volume
    failed with the reason; the background task, and every other volume's
    hydration, go on (it used to take the daemon down)."""
    remote = open_remote(f"file://{tmp_path / 'remote'}")
    a = make_control(tmp_path / "a", remote)
    good, bad = os.urandom(2 * MiB), os.urandom(2 * MiB)
    await push_new_volume(a, "good@s", good)
    await push_new_volume(a, "bad@s", bad)
    b = make_control(tmp_path / "b", remote)
    await b.pull("bad@s", "bad")
    await b.pull("good@s", "good")
    real_locate = type(remote).locate

    async def locate(self, manifest, chunks):
        if manifest["name"] == "bad@s":
            raise IndexError("list index out of range")
        return await real_locate(self, manifest, chunks)
    monkeypatch.setattr(type(remote), "locate", locate)
    await hydrate_all(b, "good")
    status = b.hydration_status("bad")
    assert status["state"] == "failed" and "IndexError" in status["error"]
    assert await read_volume(b, "good") == good
