"""`rokfs push / pull / remote ls|rm|gc` end to end, as subprocesses, on S3."""

import json
import os
import subprocess
import sys

from rokfs.pool import Pool
from s3_helpers import s3_spec


def rokfs(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "rokfs.cli", *args], capture_output=True,
                          text=True, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"rokfs {args} failed: {proc.stderr}")
    return proc


def test_push_pull_ls_rm_gc(tmp_path, s3_server):
    spec = s3_spec(s3_server)
    url = f"s3://{spec['bucket']}/cli?endpoint_url={s3_server.url}&region=us-east-1"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    data = os.urandom(3 << 20)
    with Pool.create(a) as pool:
        pool.create_volume("data", len(data)).pwrite(0, data)
        pool.create_snapshot("data@v1", {"team": "ml"})
    out = rokfs("push", "data@v1", "--pool", a, "--remote", url, "--progress")
    assert "pushed data@v1" in out.stdout and "ETA" in out.stderr
    again = json.loads(rokfs("push", "data@v1", "--pool", a, "--remote", url, "-o", "json").stdout)
    assert again["uploaded_bytes"] == 0
    listed = json.loads(rokfs("remote", "ls", "--pool", a, "--remote", url, "-o", "json").stdout)
    assert [(m["name"], m["labels"]) for m in listed] == [("data@v1", {"team": "ml"})]
    assert "data@v1" in rokfs("remote", "ls", "--pool", a, "--remote", url).stdout

    refused = rokfs("pull", "data@v1", "--as", "copy", "--pool", b, "--remote", url,
                    check=False)
    assert refused.returncode == 3 and "no rokfs pool" in refused.stderr   # a typo, not a pool
    rokfs("init", "--pool", b)
    out = rokfs("pull", "data@v1", "--as", "copy", "--wait", "--progress", "--pool", b,
                "--remote", url)
    assert "hydrate copy" in out.stderr and "0B still on the remote" in out.stdout
    with Pool.open(b) as pool:
        vol = pool.get_volume("copy")
        assert vol.base is None and bytes(vol.pread(0, len(data))) == data

    bad = rokfs("pull", "nope@x", "--as", "c2", "--pool", b, "--remote", url, check=False)
    assert bad.returncode == 3 and "no snapshot" in bad.stderr
    bad = rokfs("push", "data@v1", "--pool", a, "--remote", "ftp://x", check=False)
    assert bad.returncode == 2 and "bad remote URL" in bad.stderr

    rokfs("remote", "rm", "data@v1", "--pool", a, "--remote", url)
    gc = json.loads(rokfs("remote", "gc", "--grace", "0", "--pool", a, "--remote", url,
                          "-o", "json").stdout)
    assert gc["deleted_objects"] >= 1
    assert rokfs("remote", "ls", "--pool", a, "--remote", url).stdout.strip() == \
        "(no snapshots on the remote)"
