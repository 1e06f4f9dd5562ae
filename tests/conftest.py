import os

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


from s3_helpers import s3_server  # noqa: E402,F401  (the moto S3 server fixture)
