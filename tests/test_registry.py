"""The registry between clusters: two daemons with separate pools and one
moto S3 server over HTTP. A publishes a group of two ext4 volumes as a
bucket's versions; B subscribes, reads files before hydration completes,
follows new versions within a poll interval, and refuses tampered,
replayed and untrusted data while serving what it had."""

import json
import os

import boto3
import pytest

from registry_helpers import (MiB, copy_to_export, ext4_image, file_blocks, publisher_key,
                              read_file, start_daemon, wait_for)
from s3_helpers import make_bucket, moto_server  # noqa: F401  (fixture)

POLL = 2
PREFIX = "registry-tests/"


@pytest.fixture(scope="module")
def clusters(tmp_path_factory, moto_server):  # noqa: F811
    tmp = tmp_path_factory.mktemp("clusters")
    make_bucket(moto_server, "rokfs-registry")
    a = start_daemon(tmp / "a", moto_server, "rokfs-registry", POLL)
    b = start_daemon(tmp / "b", moto_server, "rokfs-registry", POLL)
    a.s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    try:
        yield a, b
    finally:
        for d in (a, b):
            rc, _, err = d.stop()
            assert rc == 0, err


def test_publish_subscribe_read_before_hydration_then_follow_v2(clusters, tmp_path):
    a, b = clusters
    files = {"data": {"train.bin": os.urandom(40 * MiB), "notes.txt": b"hello registry\n" * 99},
             "models": {"weights.bin": os.urandom(20 * MiB)}}
    sizes = {"data": 48 * MiB, "models": 32 * MiB}
    images = {}
    for vol, content in files.items():
        a.ok("volume", "create", vol, "--size", str(sizes[vol]))
        images[vol] = ext4_image(tmp_path / f"{vol}.img", sizes[vol], content)
        copy_to_export(images[vol], a, vol)
    a.ok("snapshot", "create", "data", "models", "--group", "g1")
    v1 = a.json("registry", "publish", "g1", "--bucket", "team/exp1", "--remote", "hub",
                "--message", "first")
    assert v1["version"] == 1 and v1["members"] == ["data@g1", "models@g1"]

    rc, _, err = b.rokctl("registry", "subscribe", "team/exp1", "--remote", "hub")
    assert rc == 12 and "not trust" in err           # nothing trusted yet: refused, clearly
    b.ok("registry", "unsubscribe", "team/exp1")
    b.ok("registry", "trust", "team", publisher_key(a))
    sub = b.json("registry", "subscribe", "team/exp1", "--remote", "hub", "--on-demand")
    assert sub["made"] == [1] and sub["local"] == "exp1"
    assert read_file(b, "exp1.data@v1", "notes.txt", tmp_path / "m1") == \
        files["data"]["notes.txt"]
    assert read_file(b, "exp1.models@v1", "weights.bin", tmp_path / "m2")[:MiB] == \
        files["models"]["weights.bin"][:MiB]
    status = b.json("hydration", "exp1.data@v1")
    assert status["chunks_done"] < status["chunks_total"], status   # read before hydrated
    b.ok("hydration", "resume", "exp1.data@v1")
    b.ok("hydration", "resume", "exp1.models@v1")

    # v2: 1% of the data changed, in place in train.bin's blocks
    total = sum(len(d) for content in files.values() for d in content.values())
    change = total // 100
    blocks = file_blocks(images["data"], "train.bin")
    start = -(-blocks[0] * 4096 // (64 << 10)) * (64 << 10)        # a chunk boundary
    assert blocks[-1] * 4096 > start + change and blocks == list(range(blocks[0],
                                                                       blocks[-1] + 1))
    new = os.urandom(change)
    (tmp_path / "new.bin").write_bytes(new)
    a.nbdsh("data", f"h.pwrite(open({str(tmp_path / 'new.bin')!r}, 'rb').read(), {start}); "
                    "h.flush()")
    in_file = start - blocks[0] * 4096
    expect = bytearray(files["data"]["train.bin"])
    expect[in_file:in_file + change] = new
    a.ok("snapshot", "create", "data", "models", "--group", "g2")
    v2 = a.json("registry", "publish", "g2", "--bucket", "team/exp1", "--remote", "hub",
                "--message", "1% changed")
    assert v2["version"] == 2
    assert v2["uploaded_bytes"] <= 0.015 * total, (v2["uploaded_bytes"], total)
    seen = wait_for(lambda: "exp1.data@v2" in {s["name"] for s in b.json("snapshot", "ls")},
                    POLL + 3)
    print(f"v2 uploaded {v2['uploaded_bytes']} bytes = {v2['uploaded_bytes'] / total:.2%} "
          f"of the data; seen by B {seen:.2f}s after publish (poll {POLL}s)")
    assert read_file(b, "exp1.data@v2", "train.bin", tmp_path / "m3") == bytes(expect)
    versions = b.json("registry", "ls", "team/exp1", "--remote", "hub")
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["message"] for v in versions] == ["first", "1% changed"]
    assert "team/exp1" in b.ok("registry", "ls", "--remote", "hub")       # human forms too
    assert "1% changed" in b.ok("registry", "ls", "team/exp1", "--remote", "hub")
    assert "exp1" in b.ok("registry", "subscriptions")
    assert publisher_key(a) in b.ok("registry", "trusted")
    assert "made v" not in b.ok("registry", "sync")                      # up to date
    pulled = b.json("registry", "pull", "team/exp1@v1", "--as", "old", "--remote", "hub")
    assert sorted(v["name"] for v in pulled) == ["old.data", "old.models"]
    assert read_file(b, "old.data", "train.bin", tmp_path / "m4") == files["data"]["train.bin"]


def _head(a, bucket):
    return a.s3.get_object(Bucket="rokfs-registry",
                           Key=f"{PREFIX}registry/buckets/{bucket}/head")["Body"].read()


def _put(a, key, data):
    a.s3.put_object(Bucket="rokfs-registry", Key=PREFIX + key, Body=data)


def _get(a, key):
    return a.s3.get_object(Bucket="rokfs-registry", Key=PREFIX + key)["Body"].read()


def test_tampered_replayed_and_untrusted_are_refused_while_v2_serves(clusters, tmp_path,
                                                                      moto_server):  # noqa: F811
    a, c = clusters                     # c: a publisher B does not trust
    b = start_daemon(tmp_path / "b2", moto_server, "rokfs-registry", poll=3600)
    try:
        a.ok("volume", "create", "small", "--size", "2M")
        a.nbdsh("small", "h.pwrite(b'one!' * 65536, 0); h.flush()")
        a.ok("snapshot", "create", "small@s1")
        a.ok("registry", "publish", "small@s1", "--bucket", "team/tamper", "--remote", "hub")
        head_v1 = _head(a, "team/tamper")
        a.nbdsh("small", "h.pwrite(b'two!' * 65536, 0); h.flush()")
        a.ok("snapshot", "create", "small@s2")
        a.ok("registry", "publish", "small@s2", "--bucket", "team/tamper", "--remote", "hub")
        b.ok("registry", "trust", "team", publisher_key(a))
        assert b.json("registry", "subscribe", "team/tamper", "--remote", "hub")["made"] == \
            [1, 2]

        def serves_v2():
            return b.nbdsh("tamper@v2", "print(bytes(h.pread(4, 0)))").strip() == "b'two!'"
        assert serves_v2()
        a.nbdsh("small", "h.pwrite(b'new!' * 65536, 0); h.flush()")
        a.ok("snapshot", "create", "small@s3")
        a.ok("registry", "publish", "small@s3", "--bucket", "team/tamper", "--remote", "hub")
        key = "registry/buckets/team/tamper/versions/00000003"
        good, head_v3 = _get(a, key), _head(a, "team/tamper")

        # a flipped byte in the version
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x01
        _put(a, key, bytes(bad))
        rc, _, err = b.rokctl("registry", "sync", "team/tamper")
        assert rc == 10 and "versions/00000003" in err and "tampered" in err, err
        assert "tampered" in b.json("registry", "subscriptions")[0]["error"]
        assert "tamper@v3" not in {s["name"] for s in b.json("snapshot", "ls")}
        assert serves_v2()

        # the head rolled back to v1 (its own good signature: a replay)
        _put(a, key, good)
        _put(a, "registry/buckets/team/tamper/head", head_v1)
        rc, _, err = b.rokctl("registry", "sync", "team/tamper")
        assert rc == 10 and "replayed" in err and "v1" in err, err
        assert "tamper@v3" not in {s["name"] for s in b.json("snapshot", "ls")}
        assert serves_v2()

        # the right head again, then a version signed by a key B does not trust
        c.ok("registry", "trust", "team", publisher_key(a))   # c publishes on top of A's v3
        _put(a, "registry/buckets/team/tamper/head", head_v3)
        c.ok("volume", "create", "other", "--size", "1M")
        c.ok("snapshot", "create", "other@x")
        assert c.json("registry", "publish", "other@x", "--bucket", "team/tamper",
                      "--remote", "hub")["version"] == 4
        rc, _, err = b.rokctl("registry", "sync", "team/tamper")
        assert rc == 12 and "not trust" in err and publisher_key(c)[:16] in err, err
        assert "tamper@v4" not in {s["name"] for s in b.json("snapshot", "ls")}
        assert serves_v2()
    finally:
        b.stop()



def test_two_publishers_racing_50_times_keep_every_version_in_a_linear_history(clusters):
    from concurrent.futures import ThreadPoolExecutor

    from rokfs.client import Client
    from rokfs.registry import documents
    a, b = clusters
    for me, other in ((a, b), (b, a)):
        me.ok("registry", "trust", "team/race", publisher_key(other))
        me.ok("volume", "create", "racer", "--size", "1M")
        me.nbdsh("racer", f"h.pwrite(b'{me.tmp.name}' * 4096, 0); h.flush()")
        me.ok("snapshot", "create", "racer@r")

    def publish_50(daemon):
        with Client(daemon.control) as client:
            return [client.registry_publish("racer@r", "team/race", remote="hub",
                                            message=f"{daemon.tmp.name} {i}")["version"]
                    for i in range(50)]

    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(publish_50, (a, b)))
    assert sorted(got[0] + got[1]) == list(range(1, 101))      # no number given twice
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])
    print("A got", got[0], "\nB got", got[1])
    assert min(got[0]) < max(got[1]) and min(got[1]) < max(got[0])   # they did interleave
    prefix = "registry/buckets/team/race/"
    parent = None
    for n in range(1, 101):
        data = _get(a, f"{prefix}versions/{n:08d}")
        v = documents.decode(data, f"v{n}", "version", "team/race", lambda key: True)
        assert v["version"] == n and v["parent"] == parent, n   # linear: each on the one before
        parent = {"version": n, "digest": v["digest"]}
    head = documents.decode(_head(a, "team/race"), "head", "head", "team/race", lambda k: True)
    assert (head["version"], head["digest"]) == (100, parent["digest"])
    messages = {documents.decode(_get(a, f"{prefix}versions/{n:08d}"), "v", "version",
                                 "team/race", lambda k: True)["message"] for n in range(1, 101)}
    assert len(messages) == 100                                 # every publish kept


def test_private_bucket_reader_grant_and_revoke(clusters, tmp_path):
    a, c = clusters                     # c: not a reader until granted
    secret = b"PRIVATE-PAYLOAD!" * 65536                       # 1 MiB, compressible
    a.ok("volume", "create", "sec", "--size", "2M")
    (tmp_path / "secret").write_bytes(secret)
    a.nbdsh("sec", f"h.pwrite(open({str(tmp_path / 'secret')!r}, 'rb').read(), 0); h.flush()")
    a.ok("snapshot", "create", "sec@s1")
    a.ok("registry", "publish", "sec@s1", "--bucket", "team/secret", "--remote", "hub",
         "--private")
    everything = [o["Key"] for o in a.s3.list_objects_v2(Bucket="rokfs-registry",
                                                          Prefix=PREFIX)["Contents"]]
    private = [k for k in everything if k.startswith(PREFIX + "registry/private/team/secret/")]
    assert private                                            # its chunks are there...
    for key in everything:                                    # ...and no byte of it in clear
        body = a.s3.get_object(Bucket="rokfs-registry", Key=key)["Body"].read()
        assert b"PRIVATE-PAYLOAD!" not in body, key
    assert all(len(k.rsplit("/", 1)[1]) > 64 for k in private)   # names encrypted, no hashes

    c.ok("registry", "trust", "team/secret", publisher_key(a))
    rc, _, err = c.rokctl("registry", "subscribe", "team/secret", "--remote", "hub")
    assert rc == 12 and "not a reader" in err, err
    rc, _, err = c.rokctl("registry", "pull", "team/secret@v1", "--as", "stolen",
                          "--remote", "hub")
    assert rc == 12 and "not a reader" in err, err
    names = {s["name"] for s in c.json("snapshot", "ls")} | \
        {v["name"] for v in c.json("volume", "ls")}
    assert not {"secret@v1", "stolen"} & names

    reader = c.json("registry", "key")["reader_key"]
    acl = a.json("registry", "acl", "grant", "team/secret", reader, "--remote", "hub")
    assert reader in acl["readers"] and acl["generation"] == 1
    assert c.json("registry", "sync", "team/secret") == {"team/secret": [1]}
    assert c.nbdsh("secret@v1", "print(bytes(h.pread(16, 0)))").strip() == \
        "b'PRIVATE-PAYLOAD!'"

    acl_key = "registry/buckets/team/secret/acl"
    granted = _get(a, acl_key)
    acl = a.json("registry", "acl", "revoke", "team/secret", reader, "--remote", "hub")
    assert reader not in acl["readers"] and acl["generation"] == 2
    revoked = _get(a, acl_key)
    _put(a, acl_key, granted)              # the ACL rolled back: would reopen later versions
    a.ok("snapshot", "create", "sec@replay")
    rc, _, err = a.rokctl("registry", "publish", "sec@replay", "--bucket", "team/secret",
                          "--remote", "hub")
    assert rc == 10 and "replayed (rolled back) ACL" in err, err
    _put(a, acl_key, revoked)
    a.nbdsh("sec", "h.pwrite(b'LATER-PAYLOAD!!!' * 4096, 0); h.flush()")
    a.ok("snapshot", "create", "sec@s2")
    assert a.json("registry", "publish", "sec@s2", "--bucket", "team/secret",
                  "--remote", "hub")["version"] == 2
    rc, _, err = c.rokctl("registry", "sync", "team/secret")
    assert rc == 12 and "not a reader of its generation 2" in err, err
    assert "secret@v2" not in {s["name"] for s in c.json("snapshot", "ls")}
    policy = json.loads(a.ok("registry", "policy", "team/secret", "--remote", "hub"))
    assert any("registry/private/team/secret/*" in r for s in policy["Statement"]
               for r in s.get("Resource", []) if isinstance(s.get("Resource"), list))
    shown = a.ok("registry", "acl", "show", "team/secret", "--remote", "hub")
    assert "generation 2" in shown and "writer  " + publisher_key(a) in shown
