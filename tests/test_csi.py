"""The CSI driver end to end: a real `rokfs serve` (pool in tmp) and a real
`rokfs-csi` on unix sockets, driven through a gRPC client the way a CO and
its sidecars drive it. Stage/publish go through nbdfuse, a loop device,
mkfs.ext4 and real mounts; every unstage is checked to leave nothing behind."""

import os
import subprocess
import sys

import grpc
import pytest

from csi_helpers import (MiB, NODE, Driver, Mode, block_cap, code_of, force_cleanup,
                         from_snapshot, from_volume, mount_cap, stop, wait_for_socket)
from csi_shim import csi_pb2 as csi
from csi_shim import csi_pb2_grpc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and loop devices need root")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = Driver(str(tmp_path_factory.mktemp("csi")))
    yield d
    d.close()


@pytest.fixture
def paths(tmp_path):
    yield {name: str(tmp_path / name) for name in ("staging", "staging2", "target", "target2")}
    force_cleanup(str(tmp_path))


# -- identity ---------------------------------------------------------------------------
def test_identity(driver):
    info = driver.identity.GetPluginInfo(csi.GetPluginInfoRequest())
    assert info.name == "rokfs.csi.dev" and info.vendor_version
    caps = driver.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
    services = {c.service.type for c in caps.capabilities if c.HasField("service")}
    assert services == {csi.PluginCapability.Service.CONTROLLER_SERVICE,
                        csi.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS,
                        csi.PluginCapability.Service.GROUP_CONTROLLER_SERVICE}
    assert driver.identity.Probe(csi.ProbeRequest()).ready.value is True


# -- controller ---------------------------------------------------------------------------
def test_create_volume_is_idempotent_by_name(driver):
    name = "pvc-Mixed_Case/Name with spaces"
    vol = driver.create(name, size=10 * MiB + 1)
    assert vol.capacity_bytes == 11 * MiB                 # rounded up to a MiB
    assert dict(vol.accessible_topology[0].segments) == {"topology.rokfs.dev/node": NODE}
    assert driver.create(name, size=10 * MiB + 1).volume_id == vol.volume_id
    assert code_of(driver.create, name, 32 * MiB) == grpc.StatusCode.ALREADY_EXISTS
    other = driver.create(name.lower(), size=10 * MiB)    # another CSI name, another volume
    assert other.volume_id != vol.volume_id
    listed = driver.controller.ListVolumes(csi.ListVolumesRequest())
    assert {vol.volume_id, other.volume_id} <= {e.volume.volume_id for e in listed.entries}
    for v in (vol, other):
        driver.delete(v.volume_id)
        driver.delete(v.volume_id)                        # deleting what is gone succeeds
    listed = driver.controller.ListVolumes(csi.ListVolumesRequest())
    assert vol.volume_id not in {e.volume.volume_id for e in listed.entries}


def test_create_volume_bad_requests(driver):
    create = driver.controller.CreateVolume
    caps = [mount_cap()]
    bad = {
        "no name": csi.CreateVolumeRequest(volume_capabilities=caps),
        "no capabilities": csi.CreateVolumeRequest(name="x"),
        "multi-node writer": csi.CreateVolumeRequest(
            name="x", volume_capabilities=[mount_cap(Mode.MULTI_NODE_MULTI_WRITER)]),
        "multi-node reader": csi.CreateVolumeRequest(
            name="x", volume_capabilities=[block_cap(Mode.MULTI_NODE_READER_ONLY)]),
        "unknown filesystem": csi.CreateVolumeRequest(
            name="x", volume_capabilities=[mount_cap(fs_type="zfs-on-mars")]),
        "required above limit": csi.CreateVolumeRequest(
            name="x", volume_capabilities=caps,
            capacity_range=csi.CapacityRange(required_bytes=2 * MiB, limit_bytes=MiB)),
        "unknown parameter": csi.CreateVolumeRequest(
            name="x", volume_capabilities=caps, parameters={"replicas": "3"}),
        "wrong chunk size": csi.CreateVolumeRequest(
            name="x", volume_capabilities=caps, parameters={"chunkSize": "12345"}),
        "name too long": csi.CreateVolumeRequest(name="n" * 129, volume_capabilities=caps),
    }
    for what, req in bad.items():
        assert code_of(create, req) == grpc.StatusCode.INVALID_ARGUMENT, what
    huge = csi.CreateVolumeRequest(name="x", volume_capabilities=caps,
                                   capacity_range=csi.CapacityRange(required_bytes=1 << 62))
    assert code_of(create, huge) == grpc.StatusCode.OUT_OF_RANGE
    elsewhere = csi.CreateVolumeRequest(
        name="x", volume_capabilities=caps, accessibility_requirements=csi.TopologyRequirement(
            requisite=[csi.Topology(segments={"topology.rokfs.dev/node": "other-node"})]))
    assert code_of(create, elsewhere) == grpc.StatusCode.RESOURCE_EXHAUSTED
    missing = {"snapshot": from_snapshot("nope@nothing"), "volume": from_volume("nope"),
               "malformed": from_snapshot("not a snapshot id")}
    for what, source in missing.items():
        assert code_of(driver.create, f"from-{what}", MiB, None, source) == \
            grpc.StatusCode.NOT_FOUND, what
    assert "x" not in {e.volume.volume_id for e in
                       driver.controller.ListVolumes(csi.ListVolumesRequest()).entries}


def test_unknown_ids_and_missing_fields(driver):
    c = driver.controller
    assert code_of(c.DeleteVolume, csi.DeleteVolumeRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    c.DeleteVolume(csi.DeleteVolumeRequest(volume_id="Not A Volume!"))   # absent: success
    c.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id="no@such"))
    assert code_of(c.ValidateVolumeCapabilities, csi.ValidateVolumeCapabilitiesRequest(
        volume_id="nope", volume_capabilities=[mount_cap()])) == grpc.StatusCode.NOT_FOUND
    assert code_of(c.ControllerExpandVolume, csi.ControllerExpandVolumeRequest(
        volume_id="nope", capacity_range=csi.CapacityRange(required_bytes=MiB))) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(c.ControllerExpandVolume, csi.ControllerExpandVolumeRequest(
        volume_id="nope")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.CreateSnapshot, csi.CreateSnapshotRequest(
        source_volume_id="nope", name="s")) == grpc.StatusCode.NOT_FOUND
    assert code_of(c.ListVolumes, csi.ListVolumesRequest(starting_token="bogus")) == \
        grpc.StatusCode.ABORTED
    assert not c.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id="no@such")).entries
    n = driver.node
    assert code_of(n.NodeStageVolume, csi.NodeStageVolumeRequest(
        volume_id="nope", staging_target_path="/tmp/x", volume_capability=mount_cap())) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(n.NodePublishVolume, csi.NodePublishVolumeRequest(
        volume_id="v", staging_target_path="/s", volume_capability=mount_cap())) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(n.NodeGetVolumeStats, csi.NodeGetVolumeStatsRequest(
        volume_id="nope", volume_path="/tmp")) == grpc.StatusCode.NOT_FOUND


def test_validate_capabilities_and_capacity(driver):
    vol = driver.create("validate-me", MiB)
    ok = driver.controller.ValidateVolumeCapabilities(csi.ValidateVolumeCapabilitiesRequest(
        volume_id=vol.volume_id, volume_capabilities=[mount_cap(), block_cap()]))
    assert len(ok.confirmed.volume_capabilities) == 2
    refused = driver.controller.ValidateVolumeCapabilities(csi.ValidateVolumeCapabilitiesRequest(
        volume_id=vol.volume_id, volume_capabilities=[mount_cap(Mode.MULTI_NODE_MULTI_WRITER)]))
    assert not refused.HasField("confirmed") and "one node" in refused.message
    cap = driver.controller.GetCapacity(csi.GetCapacityRequest())
    assert cap.available_capacity > 0 and cap.maximum_volume_size.value >= 1 << 40
    driver.delete(vol.volume_id)


def test_list_volumes_pages(driver):
    ids = {driver.create(f"page-{i}", MiB).volume_id for i in range(5)}
    seen, token = [], ""
    while True:
        page = driver.controller.ListVolumes(csi.ListVolumesRequest(max_entries=2,
                                                                    starting_token=token))
        assert len(page.entries) <= 2
        seen += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert ids <= set(seen) and len(seen) == len(set(seen))
    for vol_id in ids:
        driver.delete(vol_id)


def test_snapshots_list_filter_and_idempotency(driver):
    a, b = driver.create("snap-src-a", MiB), driver.create("snap-src-b", MiB)
    snap = driver.snapshot(a.volume_id, "VolumeSnapshot/One")
    assert snap.ready_to_use and snap.source_volume_id == a.volume_id
    assert snap.size_bytes == MiB and snap.creation_time.seconds > 0
    assert driver.snapshot(a.volume_id, "VolumeSnapshot/One").snapshot_id == snap.snapshot_id
    assert code_of(driver.snapshot, b.volume_id, "VolumeSnapshot/One") == \
        grpc.StatusCode.ALREADY_EXISTS
    other = driver.snapshot(b.volume_id, "two")
    by_id = driver.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id))
    assert [e.snapshot.snapshot_id for e in by_id.entries] == [snap.snapshot_id]
    by_vol = driver.controller.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=b.volume_id))
    assert [e.snapshot.snapshot_id for e in by_vol.entries] == [other.snapshot_id]
    first = driver.controller.ListSnapshots(csi.ListSnapshotsRequest(max_entries=1))
    assert len(first.entries) == 1 and first.next_token
    # a volume with snapshots is not deleted under them
    assert code_of(driver.delete, a.volume_id) == grpc.StatusCode.FAILED_PRECONDITION
    for s in (snap, other):
        driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=s.snapshot_id))
        driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=s.snapshot_id))
    driver.delete(a.volume_id)
    driver.delete(b.volume_id)


# -- node: the flows a pod goes through ---------------------------------------------------
def test_stage_publish_write_restage_elsewhere(driver, paths):
    vol = driver.create("pvc-files", 64 * MiB).volume_id
    driver.stage(vol, paths["staging"])
    driver.stage(vol, paths["staging"])                                # idempotent
    driver.publish(vol, paths["staging"], paths["target"])
    driver.publish(vol, paths["staging"], paths["target"])             # idempotent
    with open(os.path.join(paths["target"], "hello.txt"), "w") as f:
        f.write("written through the published path\n")
    os.makedirs(os.path.join(paths["target"], "dir"))
    with open(os.path.join(paths["target"], "dir", "blob"), "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    with open(os.path.join(paths["target"], "dir", "blob"), "rb") as f:
        blob = f.read()
    assert driver.nbd_connections()                  # the check below can see one
    stats = driver.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
        volume_id=vol, volume_path=paths["target"]))
    by_unit = {u.unit: u for u in stats.usage}
    assert 50 * MiB < by_unit[csi.VolumeUsage.BYTES].total <= 64 * MiB
    assert by_unit[csi.VolumeUsage.BYTES].used >= 1 << 20
    # the volume is in use: the daemon refuses to delete it
    assert code_of(driver.delete, vol) == grpc.StatusCode.FAILED_PRECONDITION
    driver.unpublish(vol, paths["target"])
    driver.unpublish(vol, paths["target"])                             # idempotent
    assert not os.path.exists(paths["target"])
    driver.unstage(vol, paths["staging"])
    driver.unstage(vol, paths["staging"])                              # idempotent
    assert driver.leftovers(vol) == []
    driver.stage(vol, paths["staging2"])
    driver.publish(vol, paths["staging2"], paths["target2"])
    with open(os.path.join(paths["target2"], "hello.txt")) as f:
        assert f.read() == "written through the published path\n"
    with open(os.path.join(paths["target2"], "dir", "blob"), "rb") as f:
        assert f.read() == blob
    driver.unpublish(vol, paths["target2"])
    driver.unstage(vol, paths["staging2"])
    assert driver.leftovers(vol) == []
    driver.delete(vol)          # succeeds only if no NBD connection holds the volume


def test_read_only_publish_and_single_writer(driver, paths):
    cap = mount_cap(Mode.SINGLE_NODE_SINGLE_WRITER)
    vol = driver.create("pvc-rwop", 32 * MiB, cap=cap).volume_id
    driver.stage(vol, paths["staging"], cap)
    driver.publish(vol, paths["staging"], paths["target"], cap, readonly=True)
    with pytest.raises(OSError) as info:
        open(os.path.join(paths["target"], "nope"), "w")
    assert info.value.errno == 30                                      # EROFS
    assert code_of(driver.publish, vol, paths["staging"], paths["target2"], cap) == \
        grpc.StatusCode.FAILED_PRECONDITION                            # one writer only
    driver.unpublish(vol, paths["target"])
    driver.unstage(vol, paths["staging"])
    assert driver.leftovers(vol) == []
    driver.delete(vol)


def test_publish_needs_a_staged_volume(driver, paths):
    vol = driver.create("pvc-unstaged", MiB).volume_id
    assert code_of(driver.publish, vol, paths["staging"], paths["target"]) == \
        grpc.StatusCode.FAILED_PRECONDITION
    driver.delete(vol)


def test_block_mode(driver, paths):
    cap = block_cap()
    vol = driver.create("pvc-block", 8 * MiB, cap=cap).volume_id
    driver.stage(vol, paths["staging"], cap)
    driver.publish(vol, paths["staging"], paths["target"], cap)
    driver.publish(vol, paths["staging"], paths["target"], cap)        # idempotent
    data = os.urandom(MiB)
    fd = os.open(paths["target"], os.O_RDWR)
    try:
        os.pwrite(fd, data, 3 * MiB)
        os.fsync(fd)
        assert os.lseek(fd, 0, os.SEEK_END) == 8 * MiB
    finally:
        os.close(fd)
    stats = driver.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
        volume_id=vol, volume_path=paths["target"]))
    assert stats.usage[0].total == 8 * MiB
    driver.unpublish(vol, paths["target"])
    driver.unstage(vol, paths["staging"])
    assert driver.leftovers(vol) == []
    # the bytes went to the rokfs volume: read them back through its NBD export
    out = subprocess.run(["nbdcopy", f"nbd+unix:///{vol}?socket={driver.nbd}", "-"],
                         capture_output=True, check=True, timeout=60).stdout
    assert out[3 * MiB:4 * MiB] == data
    driver.delete(vol)


def _write_file(driver, vol, paths, name, content):
    driver.stage(vol, paths["staging"])
    driver.publish(vol, paths["staging"], paths["target"])
    with open(os.path.join(paths["target"], name), "w") as f:
        f.write(content)
    driver.unpublish(vol, paths["target"])
    driver.unstage(vol, paths["staging"])


def _read_file(driver, vol, paths, name):
    driver.stage(vol, paths["staging2"])
    driver.publish(vol, paths["staging2"], paths["target2"])
    try:
        with open(os.path.join(paths["target2"], name)) as f:
            return f.read()
    finally:
        driver.unpublish(vol, paths["target2"])
        driver.unstage(vol, paths["staging2"])


def test_create_from_snapshot_and_from_volume(driver, paths):
    src = driver.create("pvc-origin", 32 * MiB).volume_id
    _write_file(driver, src, paths, "state.txt", "before the snapshot")
    snap = driver.snapshot(src, "snapshot-of-origin")
    _write_file(driver, src, paths, "state.txt", "after the snapshot")
    restored = driver.create("pvc-restored", 48 * MiB, source=from_snapshot(snap.snapshot_id))
    assert restored.capacity_bytes == 48 * MiB                          # bigger than its source
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    again = driver.create("pvc-restored", 48 * MiB, source=from_snapshot(snap.snapshot_id))
    assert again.volume_id == restored.volume_id
    assert code_of(driver.create, "pvc-restored", 48 * MiB, None, from_volume(src)) == \
        grpc.StatusCode.ALREADY_EXISTS                                  # same name, other source
    too_small = csi.CreateVolumeRequest(
        name="pvc-too-small", volume_capabilities=[mount_cap()],
        capacity_range=csi.CapacityRange(required_bytes=8 * MiB, limit_bytes=16 * MiB),
        volume_content_source=from_snapshot(snap.snapshot_id))
    assert code_of(driver.controller.CreateVolume, too_small) == grpc.StatusCode.OUT_OF_RANGE
    cloned = driver.create("pvc-cloned", 32 * MiB, source=from_volume(src))
    assert _read_file(driver, restored.volume_id, paths, "state.txt") == "before the snapshot"
    assert _read_file(driver, cloned.volume_id, paths, "state.txt") == "after the snapshot"
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    for vol in (restored.volume_id, cloned.volume_id, src):
        driver.delete(vol)


def test_expand_offline_then_grow_the_filesystem(driver, paths):
    vol = driver.create("pvc-grow", 32 * MiB).volume_id
    driver.stage(vol, paths["staging"])
    before = os.statvfs(paths["staging"])
    with open(os.path.join(paths["staging"], "keep.txt"), "w") as f:
        f.write("kept across expansion")
    driver.unstage(vol, paths["staging"])
    grown = driver.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=vol, capacity_range=csi.CapacityRange(required_bytes=96 * MiB),
        volume_capability=mount_cap()))
    assert grown.capacity_bytes == 96 * MiB and grown.node_expansion_required
    again = driver.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=vol, capacity_range=csi.CapacityRange(required_bytes=64 * MiB)))
    assert again.capacity_bytes == 96 * MiB                             # never shrinks
    driver.stage(vol, paths["staging"])
    driver.publish(vol, paths["staging"], paths["target"])
    node = driver.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
        volume_id=vol, volume_path=paths["target"],
        capacity_range=csi.CapacityRange(required_bytes=96 * MiB)))
    assert node.capacity_bytes == 96 * MiB
    after = os.statvfs(paths["target"])
    assert after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize + 50 * MiB
    with open(os.path.join(paths["target"], "keep.txt")) as f:
        assert f.read() == "kept across expansion"
    driver.unpublish(vol, paths["target"])
    driver.unstage(vol, paths["staging"])
    assert driver.leftovers(vol) == []
    driver.delete(vol)


def test_node_expand_grows_a_staged_volume(driver, paths):
    """The expand-on-node path: kubelet's NodeExpandVolume after NodeStage
    grows the rokfs volume, re-attaches it and grows the filesystem."""
    vol = driver.create("pvc-node-grow", 32 * MiB).volume_id
    driver.stage(vol, paths["staging"])
    with open(os.path.join(paths["staging"], "keep.txt"), "w") as f:
        f.write("kept across a node expansion")
    small = os.statvfs(paths["staging"])
    grown = driver.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
        volume_id=vol, volume_path=paths["staging"], staging_target_path=paths["staging"],
        capacity_range=csi.CapacityRange(required_bytes=80 * MiB), volume_capability=mount_cap()))
    assert grown.capacity_bytes == 80 * MiB
    big = os.statvfs(paths["staging"])
    assert big.f_blocks * big.f_frsize > small.f_blocks * small.f_frsize + 40 * MiB
    with open(os.path.join(paths["staging"], "keep.txt")) as f:
        assert f.read() == "kept across a node expansion"
    driver.publish(vol, paths["staging"], paths["target"])
    assert code_of(driver.node.NodeExpandVolume, csi.NodeExpandVolumeRequest(
        volume_id=vol, volume_path=paths["target"], staging_target_path=paths["staging"],
        capacity_range=csi.CapacityRange(required_bytes=128 * MiB))) == \
        grpc.StatusCode.FAILED_PRECONDITION                      # published: offline only
    driver.unpublish(vol, paths["target"])
    driver.unstage(vol, paths["staging"])
    assert driver.leftovers(vol) == []
    driver.delete(vol)


def test_node_info_and_capabilities(driver):
    info = driver.node.NodeGetInfo(csi.NodeGetInfoRequest())
    assert info.node_id == NODE
    assert dict(info.accessible_topology.segments) == {"topology.rokfs.dev/node": NODE}
    caps = {c.rpc.type for c in driver.node.NodeGetCapabilities(
        csi.NodeGetCapabilitiesRequest()).capabilities}
    R = csi.NodeServiceCapability.RPC
    assert {R.STAGE_UNSTAGE_VOLUME, R.EXPAND_VOLUME, R.GET_VOLUME_STATS} <= caps


def test_expand_on_node_leaves_controller_expansion_out(driver, tmp_path):
    endpoint = str(tmp_path / "csi2.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "csi_shim", "--endpoint", f"unix://{endpoint}",
         "--rokfs", f"unix://{driver.control}", "--nbd", f"unix://{driver.nbd}",
         "--node-id", NODE, "--state-dir", driver.state, "--expand-on-node"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(proc, endpoint, "rokfs-csi --expand-on-node")
        with grpc.insecure_channel(f"unix://{endpoint}") as channel:
            caps = csi_pb2_grpc.ControllerStub(channel).ControllerGetCapabilities(
                csi.ControllerGetCapabilitiesRequest()).capabilities
    finally:
        stop(proc)
    R = csi.ControllerServiceCapability.RPC
    types = {c.rpc.type for c in caps}
    assert R.EXPAND_VOLUME not in types and R.CREATE_DELETE_SNAPSHOT in types


def test_probe_without_a_daemon_is_unavailable(tmp_path):
    endpoint = str(tmp_path / "csi.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "csi_shim", "--endpoint", f"unix://{endpoint}",
         "--rokfs", f"unix://{tmp_path}/no-daemon.sock", "--nbd", f"unix://{tmp_path}/nbd.sock",
         "--node-id", NODE, "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(proc, endpoint, "rokfs-csi")
        with grpc.insecure_channel(f"unix://{endpoint}") as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            assert identity.GetPluginInfo(csi.GetPluginInfoRequest()).name == "rokfs.csi.dev"
            assert code_of(identity.Probe, csi.ProbeRequest()) == grpc.StatusCode.UNAVAILABLE
            controller = csi_pb2_grpc.ControllerStub(channel)
            assert code_of(controller.ListVolumes, csi.ListVolumesRequest()) == \
                grpc.StatusCode.UNAVAILABLE
    finally:
        err = stop(proc)
    assert "Traceback" not in err, err


def test_create_from_a_remote_snapshot_pulls_it_lazily(driver, paths):
    """A content source `REMOTE:VOLUME@SNAP` (a snapshot pushed from any
    node) becomes a volume restored by a lazy pull, with the files intact."""
    from rokfs.client import Client
    src = driver.create("pvc-pushed", 32 * MiB).volume_id
    _write_file(driver, src, paths, "model.txt", "weights v1")
    snap = driver.snapshot(src, "snapshot-to-push")
    rok = Client(driver.control)
    rok.push(snap.snapshot_id)                        # to the daemon's default remote
    remote_id = f"default:{snap.snapshot_id}"
    pulled = driver.create("pvc-pulled", 32 * MiB, source=from_snapshot(remote_id))
    assert pulled.content_source.snapshot.snapshot_id == remote_id
    assert driver.create("pvc-pulled", 32 * MiB,
                         source=from_snapshot(remote_id)).volume_id == pulled.volume_id
    assert rok.volume_info(pulled.volume_id)["unhydrated"] > 0 or \
        rok.hydration_status(pulled.volume_id)["chunks_total"] > 0   # restored from the remote
    assert _read_file(driver, pulled.volume_id, paths, "model.txt") == "weights v1"
    assert code_of(driver.create, "pvc-nowhere", 32 * MiB, None,
                   from_snapshot("default:pvc-x@never-pushed")) == grpc.StatusCode.NOT_FOUND
    driver.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    for vol in (pulled.volume_id, src):
        driver.delete(vol)
