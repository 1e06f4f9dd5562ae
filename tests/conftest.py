import os
import subprocess

import pytest
from hypothesis import HealthCheck, settings

from rokfs.pool import Pool

settings.register_profile(
    "ci", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def pool_dir(tmp_path):
    return str(tmp_path / "pool")


@pytest.fixture
def pool(pool_dir):
    p = Pool.create(pool_dir, chunk_size=4096)
    yield p
    if not p.closed:
        p.close()



@pytest.fixture
def tiny_fs(tmp_path):
    """A 6 MiB tmpfs, to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs for a pool that a restore would overfill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


from s3_helpers import s3_server  # noqa: E402,F401  (the moto S3 server fixture)
