"""One contract suite for the object stores and the chunk store, run against
both backends: a local directory and S3 (moto's server over HTTP)."""

import os

import pytest

from rokfs import errors
from rokfs.remote import open_remote
from rokfs.remote.chunks import chunk_hash, compress, open_chunk
from rokfs.remote.formats import encode_pack
from rokfs.remote.objects import retry
from s3_helpers import s3_spec


@pytest.fixture(params=["dir", "s3"])
def remote(request, tmp_path):
    if request.param == "dir":
        return open_remote({"type": "dir", "path": str(tmp_path / "remote")})
    server = request.getfixturevalue("s3_server")
    return open_remote(s3_spec(server))


def test_put_get_exists_list_delete(remote):
    objs = remote.objects
    assert not objs.exists("a/b")
    objs.put("a/b", b"hello")
    objs.put("a/c", b"world!")
    objs.put("z", b"")
    assert objs.exists("a/b")
    assert objs.get("a/b") == b"hello"
    assert objs.get("a/c", 1, 4) == b"orl"
    assert objs.get("z") == b""
    listed = objs.list("a/")
    assert [(o.key, o.size) for o in listed] == [("a/b", 5), ("a/c", 6)]
    assert all(o.mtime > 0 for o in listed)
    objs.put("a/b", b"replaced")
    assert objs.get("a/b") == b"replaced"
    objs.delete("a/b")
    objs.delete("a/b")              # deleting an absent key is fine
    assert not objs.exists("a/b")
    with pytest.raises(errors.NotFound):
        objs.get("a/b")


def test_ranged_gets_past_the_end_are_short_reads(remote):
    """Both backends alike: the bytes the object has in the range (S3
    answers a range starting past the end with 416; that is no error)."""
    remote.objects.put("a", b"world!")
    remote.objects.put("empty", b"")
    assert remote.objects.get("a", 4, 100) == b"d!"
    assert remote.objects.get("a", 6, 10) == b"" and remote.objects.get("a", 50, 60) == b""
    assert remote.objects.get("empty", 0, 16384) == b""


def test_bytearray_and_memoryview_bodies_are_stored_as_given(remote):
    body = bytearray(os.urandom(3 << 20))          # pack bodies are bytearrays
    remote.objects.put("big", body)
    remote.objects.put("view", memoryview(body)[10:20])
    assert remote.objects.get("big") == body and remote.objects.get("view") == body[10:20]
    assert remote.objects.get("big", 1 << 20, (1 << 20) + 5) == body[1 << 20:(1 << 20) + 5]
    assert isinstance(encode_pack([(chunk_hash(b"x"), compress(b"x"))])[1], bytearray)
    assert compress(memoryview(body)[:4096]) == compress(bytes(body[:4096]))


def test_list_pages_through_long_listings(remote):
    remote.objects.page_size = 3            # S3 pages at 1000; the same code path
    requests = remote.objects.requests
    for i in range(10):
        remote.objects.put(f"many/{i:05d}", b"x")
    assert [o.key for o in remote.objects.list("many/")] == [f"many/{i:05d}" for i in range(10)]
    if remote.url.startswith("s3://"):
        assert remote.objects.requests - requests == 10 + 4


def test_pack_round_trip_and_ranged_reads(remote):
    chunks = [os.urandom(4096), bytes(4096), b"ab" * 2048]
    items = [(chunk_hash(c), compress(c)) for c in chunks]
    key, size, entries = remote.chunks.put_pack(items)
    assert remote.chunks.pack_entries(key, size) == entries
    for (h, off, length), data in zip(entries, chunks):
        frame = remote.chunks.read_range(key, off, off + length)
        assert open_chunk(frame, h, 4096) == data



def test_the_header_of_a_full_pack_is_read_with_one_request(remote):
    from rokfs.remote.chunks import PACK_CHUNKS
    items = [(chunk_hash(d), compress(d)) for d in (os.urandom(4096) for _ in range(PACK_CHUNKS))]
    key, size, entries = remote.chunks.put_pack(items)
    before = remote.objects.requests
    assert remote.chunks.pack_entries(key, size) == entries
    assert remote.objects.requests - before == 1

def test_corrupt_chunk_is_rejected(remote):
    data = os.urandom(4096)
    key, _, [(h, off, length)] = remote.chunks.put_pack([(chunk_hash(data), compress(data))])
    body = bytearray(remote.objects.get(key))
    body[off + length // 2] ^= 0xFF
    remote.objects.put(key, bytes(body))
    with pytest.raises(errors.Corrupt):
        open_chunk(remote.chunks.read_range(key, off, off + length), h, 4096)
    other = compress(os.urandom(4096))    # a valid frame, the wrong content
    with pytest.raises(errors.Corrupt):
        open_chunk(other, h, 4096)



def test_broken_frames_are_corrupt_and_the_next_chunk_still_opens():
    """Decompression contexts are reused per thread: a frame that is cut
    short, garbage or damaged inside must not poison the next chunk."""
    data = os.urandom(32768)
    h, frame = chunk_hash(data), compress(data)
    broken = [frame[:-7], b"\x00" * 64, frame[:20] + b"\xff" * 100, b""]
    for bad in broken:
        with pytest.raises(errors.Corrupt):
            open_chunk(bad, h, 32768)
        assert open_chunk(frame, h, 32768) == data
    assert open_chunk(memoryview(frame + b"tail"), h, 32768) == data


def test_incompressible_chunks_open_without_a_copy_and_are_still_verified():
    from rokfs.remote.chunks import stored_content
    data = os.urandom(32768)
    h, frame = chunk_hash(data), compress(data)
    view = stored_content(frame, 32768)
    assert view is not None and view.obj is frame and view == data   # lz4 stored it as is
    assert open_chunk(frame, h, 32768) == data
    assert stored_content(compress(b"ab" * 16384), 32768) is None           # compressed: decoded
    flipped = bytearray(frame)
    flipped[-100] ^= 1                                               # inside the stored bytes
    with pytest.raises(errors.Corrupt, match="does not match"):
        open_chunk(bytes(flipped), h, 32768)
    with pytest.raises(errors.Corrupt):                              # block runs past the end
        open_chunk(frame[:-5] + frame[-4:], h, 32768)
    with pytest.raises(errors.Corrupt):                              # a second block follows
        open_chunk(frame[:-4] + frame[-4 - 32772 - 4:-4] + frame[-4:], h, 32768)

def test_manifests_and_segments(remote):
    seg_key, _ = remote.chunks.put_segment({"packs": [], "chunks": [None]})
    assert remote.chunks.get_segment(seg_key) == {"packs": [], "chunks": [None]}
    from rokfs.remote.chunks import new_manifest
    remote.chunks.put_manifest(new_manifest("data@one", 4096, 4096, {"k": "v"}, None,
                                            [seg_key], 1))
    assert remote.chunks.manifest_names() == ["data@one"]
    assert remote.chunks.get_manifest("data@one")["labels"] == {"k": "v"}
    remote.chunks.delete_manifest("data@one")
    with pytest.raises(errors.NotFound):
        remote.chunks.delete_manifest("data@one")
    with pytest.raises(errors.InvalidArgument):
        remote.chunks.get_manifest("../../etc")


def test_locks_exclude_gc_while_a_push_runs(remote):
    push = remote.chunks.take_lock("push", grace=60)
    with pytest.raises(errors.Busy):
        remote.chunks.gc(grace=60)
    remote.chunks.drop_lock(push)
    assert remote.chunks.gc(grace=60)["deleted_objects"] == 0


def test_bad_specs_are_refused(tmp_path):
    for spec in ("ftp://x", {"type": "nfs"}, {"type": "s3"}):
        with pytest.raises(errors.InvalidArgument):
            open_remote(spec)
    assert open_remote(f"file://{tmp_path}/r").url == f"file://{tmp_path}/r"


def test_retry_gives_up_after_the_deadline(s3_server):
    from s3_helpers import refused_port
    spec = s3_spec(s3_server)
    with refused_port() as port:
        spec["endpoint_url"] = f"http://127.0.0.1:{port}"   # nobody listens
        spec["deadline"] = 1
        remote = open_remote(spec)
        import time
        t0 = time.monotonic()
        with pytest.raises(errors.RemoteError):
            remote.objects.get("x")
        # the backoff (0.05, 0.1, 0.2, 0.4 s, each times 0.5-1.5) retries at
        # least 3 times within a 1 s deadline and sleeps 0.375 s or more
        # before the try that would end past it: 0.5 failed ~1 run in 60
        assert 0.3 < time.monotonic() - t0 < 5
        assert remote.objects.stats.copy()["retries"] >= 3


def test_retry_does_not_retry_permanent_errors():
    calls = []

    def fails():
        calls.append(1)
        raise ValueError("no")
    with pytest.raises(ValueError):
        retry(fails, deadline=5)
    assert len(calls) == 1


async def test_a_long_push_keeps_its_lock_fresh(remote, tmp_path):
    """A push running longer than the grace period rewrites its lock, so GC
    still sees it; a lock left by a crashed push goes stale after the grace."""
    import trio
    from rokfs.control import Control
    from rokfs.pool import Pool
    control = Control(Pool.create(str(tmp_path / "pool")), {"default": remote})
    cs = control.pool.chunk_size
    await control.create_volume("data", 256 * cs)
    dev = control.open_device("data")
    await dev.pwrite(0, os.urandom(256 * cs))
    dev.close()
    await control.create_snapshot("data@s")
    put = remote.objects.put

    def slow_put(key, data):
        if key.startswith("packs/"):
            import time
            time.sleep(2.5)         # stretch the push well past the grace period
        put(key, data)
    remote.objects.put = slow_put
    grace = 0.4
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: control.push("data@s", grace_seconds=grace))
        await trio.sleep(1.8)
        with pytest.raises(errors.Busy):
            await control.gc_remote(grace_seconds=grace)
    remote.objects.put = put
    assert remote.objects.list("locks/") == []
    stale = remote.chunks.take_lock("push", grace)      # a push that crashed
    await trio.sleep(grace + 1.2)
    await control.gc_remote(grace_seconds=grace)         # not blocked by it
    assert not remote.objects.exists(stale)
