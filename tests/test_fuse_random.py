"""Acceptance 2: random pread/pwrite/ftruncate on a volume image file,
checked against a model file, then the same volume read through NBD from the
same process reads identically, and NBD writes show at once through FUSE."""

import errno
import os
import random
import subprocess

from fuse_helpers import run, serving
from nbd_helpers import NBDSH_ENV

OPS = 3000
MAX_SIZE = 4 << 20


def nbdsh(uri, script):
    res = subprocess.run(["nbdsh", "-u", uri, "-c", script], capture_output=True, text=True,
                         timeout=60, env=NBDSH_ENV)
    assert res.returncode == 0, res.stderr
    return res.stdout


def random_ops(fd, model, rng):
    size = 1 << 20
    os.ftruncate(fd, size)
    model[:] = bytes(size)
    counts = {"read": 0, "write": 0, "grow": 0, "shrink": 0, "shrink_refused": 0, "efbig": 0}
    for _ in range(OPS):
        op = rng.random()
        if op < 0.45:
            off = rng.randrange(0, size)
            n = rng.choice([1, 512, 4096, rng.randrange(1, 300_000)])
            data = rng.randbytes(min(n, size - off))
            assert os.pwrite(fd, data, off) == len(data)
            model[off:off + len(data)] = data
            counts["write"] += 1
        elif op < 0.9:
            off = rng.randrange(0, size + 4096)
            n = rng.randrange(0, 300_000)
            assert os.pread(fd, n, off) == bytes(model[off:off + n])
            counts["read"] += 1
        elif op < 0.95:
            new = rng.randrange(size, MAX_SIZE + 1) // 512 * 512
            os.ftruncate(fd, new)
            model.extend(bytes(new - size))
            size = new
            counts["grow"] += 1
        elif op < 0.98:
            new = rng.randrange(0, size + 1) // 512 * 512
            try:
                os.ftruncate(fd, new)
            except OSError as exc:
                assert exc.errno == errno.EINVAL
                counts["shrink_refused"] += 1
            else:  # allowed only when nothing but zeros is dropped
                assert not any(model[new:])
                del model[new:]
                size = new
                counts["shrink"] += 1
        else:
            off = rng.randrange(max(0, size - 100), size + 10)
            try:
                os.pwrite(fd, b"x" * 200, off)
            except OSError as exc:
                assert exc.errno == errno.EFBIG
                counts["efbig"] += 1
            else:
                raise AssertionError("a write past the end succeeded")
        assert os.fstat(fd).st_size == size
    return counts


def test_random_ops_match_model_and_nbd(tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    with serving(tmp_path) as d:
        image = d.mnt / "volumes" / "rnd"
        fd = os.open(image, os.O_RDWR | os.O_CREAT, 0o644)
        model = bytearray()
        try:
            counts = random_ops(fd, model, rng)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert counts["write"] > 1000 and counts["read"] > 1000 and counts["efbig"] > 10
        assert image.read_bytes() == bytes(model)
        copy = tmp_path / "copy.img"
        run(["nbdcopy", d.uri("rnd"), str(copy)])
        assert copy.read_bytes() == bytes(model)

        # coherence both ways while the file is open through FUSE
        fd = os.open(image, os.O_RDWR)
        try:
            assert os.pread(fd, 4096, 8192) == bytes(model[8192:12288])
            nbdsh(d.uri("rnd"), "h.pwrite(b'N' * 4096, 8192); h.flush()")
            assert os.pread(fd, 4096, 8192) == b"N" * 4096
            os.pwrite(fd, b"F" * 4096, 16384)
            out = nbdsh(d.uri("rnd"), "print(h.pread(4096, 16384) == b'F' * 4096)")
            assert out.strip() == "True"
        finally:
            os.close(fd)
