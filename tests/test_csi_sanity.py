"""kubernetes-csi's csi-sanity against rokfs-csi + rokfs serve, in mount and
block mode. csi-sanity is a Go program the repository does not build: the
test runs only when it is found (ROKFS_CSI_SANITY=/path/to/csi-sanity, or
`csi-sanity` on PATH)."""

import os
import re
import shutil
import subprocess

import pytest

from csi_helpers import Driver, force_cleanup

SANITY = os.environ.get("ROKFS_CSI_SANITY") or shutil.which("csi-sanity")

pytestmark = [
    pytest.mark.skipif(not SANITY, reason="csi-sanity not found (set ROKFS_CSI_SANITY)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts and loop devices need root"),
]


@pytest.mark.parametrize("access", ["mount", "block"])
def test_csi_sanity(tmp_path, access):
    driver = Driver(str(tmp_path / "driver"))
    try:
        argv = [SANITY, "--csi.endpoint", driver.endpoint,
                "--csi.stagingdir", str(tmp_path / "staging"),
                "--csi.mountdir", str(tmp_path / "mount"),
                "--csi.testvolumesize", str(64 << 20),
                "--csi.testvolumeexpandsize", str(128 << 20),
                "--csi.testvolumeaccesstype", access, "-ginkgo.no-color"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                cwd=tmp_path)
    finally:
        driver.close()
        force_cleanup(str(tmp_path))
    summary = re.search(r"(\d+) Passed \| (\d+) Failed", result.stdout)
    print(f"csi-sanity ({access}):", *re.findall(r"Ran \d+ of \d+ Specs.*|.*\d+ Passed \|.*",
                                                  result.stdout), sep="\n  ")
    assert result.returncode == 0 and summary and summary.group(2) == "0", \
        result.stdout[-3000:]
    assert int(summary.group(1)) >= 60
