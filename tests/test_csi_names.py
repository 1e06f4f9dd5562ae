"""CSI names -> rokfs names: deterministic, always valid, never colliding."""

import pytest

from csi_shim import naming
from csi_shim.errors import CsiError
from rokfs import names


@pytest.mark.parametrize("csi_name", [
    "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "Sanity-Volume-With-CAPS", "a b/c:d@e",
    "...leading-dots", "x" * 128, "ünïcödé", "-", "snapshot-5f1c@v1"])
def test_names_are_valid_and_deterministic(csi_name):
    name = naming.rokfs_name(csi_name)
    assert names.check_name(name) == name
    assert naming.rokfs_name(csi_name) == name


def test_names_keep_a_readable_prefix_and_differ_by_case():
    assert naming.rokfs_name("pvc-abc").startswith("pvc-abc-")
    assert naming.rokfs_name("Data") != naming.rokfs_name("data")


def test_bad_names():
    for bad in ("", "n" * 129):
        with pytest.raises(CsiError):
            naming.rokfs_name(bad)


def test_snapshot_ids():
    assert naming.split_snapshot_id("vol@snap") == (None, "vol@snap")
    assert naming.split_snapshot_id("default:vol@snap") == ("default", "vol@snap")
    assert naming.snapshot_id("vol@snap", "s3-eu") == "s3-eu:vol@snap"
    for bad in ("vol", "Vol@snap", "a@b@c", ":vol@snap", "bad remote:vol@snap", ""):
        assert naming.split_snapshot_id(bad) is None, bad


def test_group_snapshot_ids_follow_the_volume_rule():
    group = naming.rokfs_name("VolumeGroupSnapshot/Nightly")
    assert naming.is_group_snapshot_id(group)
    assert naming.split_snapshot_id(f"data@{group}") == (None, f"data@{group}")   # a member
    for bad in ("", "Not A Group!", "a@b", "x" * 64):
        assert not naming.is_group_snapshot_id(bad), bad
