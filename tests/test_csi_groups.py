"""CSI group snapshots and GetSnapshot end to end: a real `rokfs serve` and
`rokfs-csi` on unix sockets, driven through the GroupController and
Controller services as external-snapshotter drives them. Volume contents are
written and read over the daemon's NBD exports (nbdsh)."""

import os
import subprocess
import time

import grpc
import pytest

from csi_helpers import MiB, Driver, code_of, from_snapshot
from nbd_helpers import NBDSH_ENV, nbdsh
from csi_shim import csi_pb2 as csi
from csi_shim.naming import rokfs_name
from rokfs.client import Client
from rokfs.errors import NotFound

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the CSI driver tests run as root")

GroupRPC = csi.GroupControllerServiceCapability.RPC
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = Driver(str(tmp_path_factory.mktemp("csi-groups")))
    yield d
    d.close()


@pytest.fixture(scope="module")
def rok(driver):
    with Client(driver.control) as client:
        yield client


# -- helpers -------------------------------------------------------------------------------
def nbd_uri(driver, export):
    return f"nbd+unix:///{export}?socket={driver.nbd}"


def write(driver, export, data, offset=0):
    nbdsh(nbd_uri(driver, export), f"h.pwrite({data!r}, {offset}); h.flush()")


def read(driver, export, length, offset=0):
    out = nbdsh(nbd_uri(driver, export), f"print(h.pread({length}, {offset}).hex())").stdout
    return bytes.fromhex(out.strip())


def get_group(driver, group_id, snapshot_ids=()):
    return driver.groups.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest(
        group_snapshot_id=group_id, snapshot_ids=snapshot_ids)).group_snapshot


def delete_group(driver, group_id, snapshot_ids=()):
    driver.groups.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(
        group_snapshot_id=group_id, snapshot_ids=snapshot_ids))


def get_snapshot(driver, snapshot_id):
    return driver.controller.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snapshot_id)).snapshot


def ids_of(group):
    return sorted(s.snapshot_id for s in group.snapshots)


def volumes(driver, *names, size=4 * MiB):
    return [driver.create(name, size).volume_id for name in names]


def cleanup(driver, vol_ids):
    for vol in vol_ids:
        driver.delete(vol)


# -- capabilities ---------------------------------------------------------------------------
def test_capabilities(driver):
    caps = driver.groups.GroupControllerGetCapabilities(
        csi.GroupControllerGetCapabilitiesRequest()).capabilities
    assert [c.rpc.type for c in caps] == [GroupRPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]
    controller = driver.controller.ControllerGetCapabilities(
        csi.ControllerGetCapabilitiesRequest()).capabilities
    assert csi.ControllerServiceCapability.RPC.GET_SNAPSHOT in {c.rpc.type for c in controller}


# -- create ---------------------------------------------------------------------------------
def test_group_snapshot_is_idempotent_by_name(driver, rok):
    a, b, c = volumes(driver, "grp-a", "grp-b", "grp-c")
    group = driver.group_snapshot("VolumeGroupSnapshot/One", [a, b])
    assert group.ready_to_use and group.creation_time.seconds > 0
    assert sorted(s.source_volume_id for s in group.snapshots) == sorted([a, b])
    for snap in group.snapshots:
        assert snap.group_snapshot_id == group.group_snapshot_id and snap.ready_to_use
        assert snap.size_bytes == 4 * MiB
        assert snap.snapshot_id == f"{snap.source_volume_id}@{group.group_snapshot_id}"
    again = driver.group_snapshot("VolumeGroupSnapshot/One", [b, a])      # any order
    assert again.group_snapshot_id == group.group_snapshot_id
    assert ids_of(again) == ids_of(group) and again.creation_time == group.creation_time
    for other_sources in ([a], [a, c], [a, b, c]):
        assert code_of(driver.group_snapshot, "VolumeGroupSnapshot/One", other_sources) == \
            grpc.StatusCode.ALREADY_EXISTS
    info = rok.group_info(group.group_snapshot_id)          # one rokfs group, named for CSI
    assert info["labels"] == {"csi.rokfs.dev/group-name": "VolumeGroupSnapshot/One"}
    other = driver.group_snapshot("VolumeGroupSnapshot/one", [a, c])      # another name
    assert other.group_snapshot_id != group.group_snapshot_id
    for g in (group, other):
        delete_group(driver, g.group_snapshot_id, ids_of(g))
    cleanup(driver, [a, b, c])


def test_create_bad_requests_leave_nothing(driver, rok):
    (a,) = volumes(driver, "grp-bad")
    create = driver.group_snapshot
    assert code_of(create, "", [a]) == INVALID
    assert code_of(create, "no-sources", []) == INVALID
    assert code_of(create, "twice", [a, a]) == INVALID
    assert code_of(create, "n" * 129, [a]) == INVALID
    assert code_of(lambda: create("params", [a], parameters={"replicas": "3"})) == INVALID
    for missing in (["no-such-volume"], [a, "no-such-volume"], [a, "Not A Volume!"]):
        assert code_of(create, "missing", missing) == grpc.StatusCode.NOT_FOUND
    assert rok.list_snapshots(a) == []                                 # all or none
    assert rokfs_name("missing") not in {g["name"] for g in rok.list_groups()}
    sidecars = driver.group_snapshot("params-ok", [a], parameters={
        "csi.storage.k8s.io/group-snapshotter-secret-name": "s"})
    delete_group(driver, sidecars.group_snapshot_id)
    cleanup(driver, [a])


def test_a_name_taken_by_a_lone_snapshot_is_already_exists(driver, rok):
    (a,) = volumes(driver, "grp-clash")
    rok.create_snapshot(f"{a}@{rokfs_name('clash')}")
    assert code_of(driver.group_snapshot, "clash", [a]) == grpc.StatusCode.ALREADY_EXISTS
    rok.delete_snapshot(f"{a}@{rokfs_name('clash')}")
    cleanup(driver, [a])


# -- the members are snapshots of the cut ------------------------------------------------------
def test_members_restore_the_content_at_the_cut(driver):
    a, b = volumes(driver, "grp-data-a", "grp-data-b")
    write(driver, a, b"A before", MiB)
    write(driver, b, b"B before", 2 * MiB)
    group = driver.group_snapshot("cut", [a, b])
    write(driver, a, b"A after!", MiB)
    write(driver, b, b"B after!", 2 * MiB)
    by_volume = {s.source_volume_id: s for s in group.snapshots}
    restored = {vol: driver.create(f"restored-{vol}", 4 * MiB,
                                   source=from_snapshot(by_volume[vol].snapshot_id)).volume_id
                for vol in (a, b)}
    assert read(driver, restored[a], 8, MiB) == b"A before"
    assert read(driver, restored[b], 8, 2 * MiB) == b"B before"
    assert read(driver, a, 8, MiB) == b"A after!"
    delete_group(driver, group.group_snapshot_id, ids_of(group))   # clones stand on their own
    assert read(driver, restored[b], 8, 2 * MiB) == b"B before"
    cleanup(driver, [*restored.values(), a, b])


# -- get ------------------------------------------------------------------------------------------
def test_get_group_snapshot(driver):
    a, b, c = volumes(driver, "grp-get-a", "grp-get-b", "grp-get-c")
    group = driver.group_snapshot("get-me", [a, b])
    assert get_group(driver, group.group_snapshot_id) == group
    assert get_group(driver, group.group_snapshot_id, ids_of(group)) == group
    lone = driver.snapshot(c, "lone")
    for wrong in ([ids_of(group)[0]],                          # a member left out
                  [*ids_of(group), lone.snapshot_id]):          # a stranger listed
        assert code_of(get_group, driver, group.group_snapshot_id, wrong) == INVALID
    gone = f"{c}@{group.group_snapshot_id}"                    # no such snapshot: no mismatch
    assert get_group(driver, group.group_snapshot_id, [*ids_of(group), gone]) == group
    assert code_of(get_group, driver, "") == INVALID
    for unknown in ("fake-vol-id", "Not A Group!", lone.snapshot_id):
        assert code_of(get_group, driver, unknown) == grpc.StatusCode.NOT_FOUND
    delete_group(driver, group.group_snapshot_id)
    assert code_of(get_group, driver, group.group_snapshot_id) == grpc.StatusCode.NOT_FOUND
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=lone.snapshot_id))
    cleanup(driver, [a, b, c])


# -- delete ---------------------------------------------------------------------------------------
def test_delete_group_snapshot(driver, rok):
    a, b = volumes(driver, "grp-del-a", "grp-del-b")
    group = driver.group_snapshot("delete-me", [a, b])
    assert code_of(delete_group, driver, "") == INVALID
    delete_group(driver, "fake-vol-id")                               # absent: success
    delete_group(driver, "Not A Group!")
    assert code_of(delete_group, driver, group.group_snapshot_id, ids_of(group)[:1]) == INVALID
    assert len(get_group(driver, group.group_snapshot_id).snapshots) == 2   # untouched
    # a source volume is not deleted under its group snapshot
    assert code_of(driver.delete, a) == grpc.StatusCode.FAILED_PRECONDITION
    delete_group(driver, group.group_snapshot_id, ids_of(group))
    delete_group(driver, group.group_snapshot_id, ids_of(group))      # gone: success
    assert rok.list_snapshots(a) == [] and rok.list_snapshots(b) == []
    for snap_id in ids_of(group):
        assert code_of(get_snapshot, driver, snap_id) == grpc.StatusCode.NOT_FOUND
    cleanup(driver, [a, b])


def test_a_group_in_use_is_not_deleted(driver, rok):
    """A held member, or one open over NBD, keeps the whole group:
    FAILED_PRECONDITION, and every member is still there afterwards."""
    a, b = volumes(driver, "grp-use-a", "grp-use-b")
    group = driver.group_snapshot("in-use", [a, b])
    held, opened = sorted(ids_of(group))
    rok.hold_snapshot(held, "backup running")
    assert code_of(delete_group, driver, group.group_snapshot_id) == \
        grpc.StatusCode.FAILED_PRECONDITION
    rok.release_snapshot(held)
    reader = subprocess.Popen(["nbdsh", "-u", nbd_uri(driver, opened), "-c",
                               "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                              env=NBDSH_ENV)
    try:
        _wait_until_open(rok, opened)
        assert code_of(delete_group, driver, group.group_snapshot_id) == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert ids_of(get_group(driver, group.group_snapshot_id)) == ids_of(group)
    finally:
        reader.communicate(b"", timeout=30)
    delete_group(driver, group.group_snapshot_id)
    cleanup(driver, [a, b])


def _wait_until_open(rok, snapshot, tries=200):
    for _ in range(tries):
        if rok.snapshot_info(snapshot).get("holders"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{snapshot} never opened: {rok.snapshot_info(snapshot)}")


def test_a_member_deleted_alone_leaves_the_rest_of_the_group(driver, rok):
    a, b = volumes(driver, "grp-one-a", "grp-one-b")
    group = driver.group_snapshot("one-goes", [a, b])
    first, second = sorted(ids_of(group))
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=first))
    assert ids_of(get_group(driver, group.group_snapshot_id, ids_of(group))) == [second]
    delete_group(driver, group.group_snapshot_id, ids_of(group))      # the CO's list: fine
    with pytest.raises(NotFound):
        rok.group_info(group.group_snapshot_id)
    cleanup(driver, [a, b])


# -- GetSnapshot ------------------------------------------------------------------------------------
def test_get_snapshot(driver, rok):
    a, b = volumes(driver, "getsnap-a", "getsnap-b")
    lone = driver.snapshot(a, "lone-snapshot")
    assert get_snapshot(driver, lone.snapshot_id) == lone and not lone.group_snapshot_id
    group = driver.group_snapshot("getsnap-group", [a, b])
    for member in group.snapshots:
        assert get_snapshot(driver, member.snapshot_id) == member
        listed = driver.controller.ListSnapshots(csi.ListSnapshotsRequest(
            snapshot_id=member.snapshot_id)).entries
        assert [e.snapshot for e in listed] == [member]
    assert code_of(driver.controller.GetSnapshot, csi.GetSnapshotRequest()) == INVALID
    for unknown in ("none-exist-id", f"{a}@never", "default:getsnap-a@never", "nowhere:a@b"):
        assert code_of(get_snapshot, driver, unknown) == grpc.StatusCode.NOT_FOUND, unknown
    delete_group(driver, group.group_snapshot_id)
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=lone.snapshot_id))
    cleanup(driver, [a, b])


def test_get_and_list_a_pushed_snapshot_by_its_remote_id(driver, rok):
    """`REMOTE:VOLUME@SNAP` (the handle of a pre-provisioned VolumeSnapshotContent):
    external-snapshotter asks ListSnapshots for it before marking it ready."""
    (a,) = volumes(driver, "pushed-src")
    write(driver, a, b"pushed", 0)
    snap = driver.snapshot(a, "to-push")
    rok.push(snap.snapshot_id)
    remote_id = f"default:{snap.snapshot_id}"
    found = get_snapshot(driver, remote_id)
    assert found.snapshot_id == remote_id and found.source_volume_id == a
    assert found.size_bytes == 4 * MiB and found.ready_to_use
    assert found.creation_time.seconds >= snap.creation_time.seconds    # the push's time
    listed = driver.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=remote_id))
    assert [e.snapshot for e in listed.entries] == [found]
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=remote_id))
    assert code_of(get_snapshot, driver, remote_id) == grpc.StatusCode.NOT_FOUND
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    cleanup(driver, [a])
