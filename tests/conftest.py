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



def _tmpfs(tmp_path, name, size):
    """A tmpfs of `size` under tmp_path, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / name
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 6 MiB tmpfs, to fill."""
    yield from _tmpfs(tmp_path, "tiny", "6m")


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs for a pool that a restore would overfill."""
    yield from _tmpfs(tmp_path, "small", "24m")


from s3_helpers import s3_server  # noqa: E402,F401  (the moto S3 server fixture)
