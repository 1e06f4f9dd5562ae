"""The registry's pieces without daemons: signed documents refused byte by
byte, keys on disk, and the publisher lock racing 50 ways on a real S3
server (moto over HTTP) with conditional writes switched off, and on a
directory."""

import json
import os
import stat
import threading

import pytest

from rokfs import errors
from rokfs.registry import documents
from rokfs.registry.bucket import Buckets, head_key, version_key
from rokfs.registry.keys import Identity
from rokfs.remote.chunks import new_manifest
from rokfs.remote.objects import DirStore, open_object_store
from s3_helpers import s3_spec


def member(name="data@s1"):
    return {"volume": name.split("@")[0], "manifest": new_manifest(name, 0, 65536, {}, None,
                                                                   [], 0)}


def trust_all(bucket, key):
    return True


@pytest.fixture
def signer(tmp_path):
    return Identity(str(tmp_path / "pool"))


def test_documents_round_trip_and_every_flipped_byte_is_refused(signer):
    body = {"kind": "head", "bucket": "team/exp1", "version": 3, "digest": "ab" * 32,
            "time": 1.5}
    data = documents.encode(body, signer)
    got = documents.decode(data, "k", "head", "team/exp1", lambda key: True)
    assert got["version"] == 3 and got["signer"] == signer.public_hex
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises((errors.Corrupt, errors.NotAllowed)):
            documents.decode(bytes(bad), "k", "head", "team/exp1", lambda key: True)


def test_documents_refuse_another_kind_bucket_and_untrusted_keys(signer):
    body = {"kind": "head", "bucket": "team/exp1", "version": 3, "digest": "ab" * 32,
            "time": 1.5}
    data = documents.encode(body, signer)
    with pytest.raises(errors.Corrupt, match="signature"):      # a head is not a version
        documents.decode(data, "k", "version", "team/exp1", lambda key: True)
    with pytest.raises(errors.Corrupt, match="copied from another bucket"):
        documents.decode(data, "k", "head", "team/exp2", lambda key: True)
    with pytest.raises(errors.NotAllowed, match="does not trust"):
        documents.decode(data, "k", "head", "team/exp1", lambda key: False)
    line, _, rest = data.partition(b"\n")
    head = json.loads(line)
    other = Identity(os.path.dirname(signer.dir) + "-other")
    head["key"] = other.public_hex                                 # another key's claim
    with pytest.raises(errors.Corrupt, match="signature"):
        documents.decode(json.dumps(head).encode() + b"\n" + rest, "k", "head", "team/exp1",
                         lambda key: True)
    for junk in (b"", b"{}", b"not json\n{}", b'{"format": 2}\n{}'):
        with pytest.raises(errors.Corrupt):
            documents.decode(junk, "k", "head", "team/exp1", lambda key: True)


@pytest.mark.parametrize("name", ["exp1", "team/", "/exp1", "Team/exp1", "a/b/c", "t/e@v1", 7])
def test_bad_bucket_names_are_refused(name):
    with pytest.raises(errors.InvalidArgument):
        documents.check_bucket(name)


@pytest.mark.parametrize("ref", ["team/exp1@3", "team/exp1@v0", "team/exp1@vx", "team/exp1@"])
def test_bad_version_refs_are_refused(ref):
    with pytest.raises(errors.InvalidArgument):
        documents.split_version_ref(ref)


def test_keys_are_made_once_0600_and_loose_ones_refused(tmp_path):
    ident = Identity(str(tmp_path))
    key = ident.public_hex
    path = tmp_path / "registry" / "publisher.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity(str(tmp_path)).public_hex == key                 # the same key again
    path.chmod(0o644)
    with pytest.raises(errors.InvalidArgument, match="chmod 600"):
        Identity(str(tmp_path)).public_hex
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(errors.InvalidArgument, match="not a private key"):
        Identity(str(tmp_path)).public_hex


def race(objects, signers, rounds):
    """len(signers) publishers, `rounds` publishes each, all at once."""
    got, errors_seen = [], []
    start = threading.Barrier(len(signers))

    def publisher(signer, i):
        buckets = Buckets(objects, trust_all)
        start.wait()
        for r in range(rounds):
            try:
                v = buckets.publish("team/race", signer, [member()], message=f"{i}-{r}")
                got.append(v["version"])
            except Exception as exc:           # noqa: BLE001  (reported below)
                errors_seen.append(exc)

    threads = [threading.Thread(target=publisher, args=(s, i)) for i, s in enumerate(signers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors_seen, errors_seen[:3]
    return got


def check_linear(objects, count):
    parent, messages = None, set()
    for n in range(1, count + 1):
        v = documents.decode(objects.get(version_key("team/race", n)), "v", "version",
                             "team/race", lambda key: True)
        assert v["version"] == n and v["parent"] == parent
        parent = {"version": n, "digest": v["digest"]}
        messages.add(v["message"])
    head = documents.decode(objects.get(head_key("team/race")), "h", "head", "team/race",
                            lambda key: True)
    assert (head["version"], head["digest"]) == (count, parent["digest"])
    assert len(messages) == count
    assert not objects.list("registry/buckets/team/race/locks/")      # every lock let go


def test_50_publishers_race_on_s3_without_conditional_writes(tmp_path, s3_server):
    objects = open_object_store(s3_spec(s3_server, deadline=30))
    objects.conditional_puts = False            # only the lock keeps them apart
    signers = [Identity(str(tmp_path / f"p{i}")) for i in range(50)]
    got = race(objects, signers, 1)
    assert sorted(got) == list(range(1, 51))
    check_linear(objects, 50)


def test_publishers_race_on_a_directory(tmp_path):
    objects = DirStore(str(tmp_path / "remote"))
    signers = [Identity(str(tmp_path / f"p{i}")) for i in range(10)]
    got = race(objects, signers, 5)
    assert sorted(got) == list(range(1, 51))
    check_linear(objects, 50)


def test_put_new_never_overwrites(tmp_path, s3_server):
    for objects in (DirStore(str(tmp_path / "d")), open_object_store(s3_spec(s3_server))):
        assert objects.put_new("k", b"one") is True
        assert objects.put_new("k", b"two") is False
        assert objects.get("k") == b"one"
        data, tag = objects.get_tagged("k")
        assert data == b"one" and objects.get_tagged("k", tag) == (None, tag)
        objects.put("k", b"three")
        assert objects.get_tagged("k", tag)[0] == b"three"


def test_a_policy_publishes_each_scheduled_snapshot(tmp_path):
    import trio

    from rokfs.control import Control
    from rokfs.pool import Pool
    from rokfs.remote import open_remote
    control = Control(Pool.create(str(tmp_path / "pool")),
                      {"default": open_remote(str(tmp_path / "remote"))})

    async def main():
        await control.create_volume("a", 1 << 20)
        await control.create_volume("b", 1 << 20)
        await control.set_policy("nightly", "volumes a,b every 1h keep-last 2 publish team/ml")
        first = await control.run_policy("nightly")
        second = await control.run_policy("nightly")
        assert (first["published"], second["published"]) == ("team/ml@v1", "team/ml@v2")
        assert not first["errors"]
        versions = await control.registry_ls("team/ml")
        assert [[m["volume"] for m in v["members"]] for v in versions] == [["a", "b"]] * 2
        with pytest.raises(errors.InvalidArgument, match="publish"):
            await control.set_policy("a", "every 1h publish nobucket")

    trio.run(main)


def test_sync_is_idempotent_across_a_crash_and_clone_subscriptions_clone(tmp_path):
    """A crash after a version's snapshots are committed but before the
    subscription records it: the next sync finds them made and goes on.
    A --clone subscription makes writable volumes LOCAL-vN instead."""
    import trio

    from rokfs.control import Control
    from rokfs.pool import Pool
    from rokfs.remote import open_remote
    remote = str(tmp_path / "remote")
    a = Control(Pool.create(str(tmp_path / "a")), {"default": open_remote(remote)})

    def subscriber(path):
        return Control(Pool.open_or_create(str(path)), {"default": open_remote(remote)})

    async def main():
        await a.create_volume("data", 1 << 20)
        dev = a.open_device("data")
        await dev.pwrite(0, b"v1" * 32768)
        dev.close()
        await a.create_snapshot("data@s1")
        await a.registry_publish("data@s1", "team/idem")
        key = a.registry_key()["publisher_key"]

        b = subscriber(tmp_path / "b")
        b.registry_trust("team", key)
        b.registry.subscribe("team/idem", b.remote(), "idem", False, True)
        real_advance = b.registry.state.advance
        b.registry.state.advance = lambda *args: None          # the crash: never recorded
        assert await b.registry_sync("team/idem") == {"team/idem": [1]}
        b.registry.state.advance = real_advance
        b.pool.close()
        b = subscriber(tmp_path / "b")                         # restart
        assert b.registry.state.subscription("team/idem")["version"] == 0
        assert await b.registry_sync("team/idem") == {"team/idem": [1]}   # made: found there
        assert [s["name"] for s in await b.list_snapshots()] == ["idem@v1"]
        assert b.registry.state.subscription("team/idem")["version"] == 1
        assert await b.registry_sync("team/idem") == {"team/idem": []}
        dev = b.open_device("idem@v1")
        assert bytes(await dev.pread(0, 4)) == b"v1v1"
        dev.close()
        report = await b.fsck()                                 # its accounting holds
        assert report["clean"], report["problems"]

        c = subscriber(tmp_path / "c")
        c.registry_trust("team/idem", key)
        result = await c.registry_subscribe("team/idem", local="work", clone=True)
        assert result["made"] == [1]
        dev = c.open_device("work-v1")                          # writable
        await dev.pwrite(0, b"mine")
        assert bytes(await dev.pread(0, 6)) == b"minev1"
        dev.close()
        with pytest.raises(errors.InvalidArgument, match="already subscribed"):
            await c.registry_subscribe("team/idem")
        with pytest.raises(errors.InvalidArgument):
            await c.registry_subscribe("team/idem2", local="Bad Name")

    trio.run(main)
