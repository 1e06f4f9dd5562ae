"""A rokfs daemon plus rokfs-csi on unix sockets, for the CSI tests."""

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from csi_shim import csi_pb2 as csi
from csi_shim import csi_pb2_grpc

MiB = 1 << 20
Mode = csi.VolumeCapability.AccessMode.Mode
NODE = "test-node"


# -- processes -------------------------------------------------------------------------
def wait_for_socket(proc, path, what):
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what} did not start: {proc.communicate()}")
        time.sleep(0.05)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return err


class Driver:
    """A rokfs daemon plus rokfs-csi, with stubs for its four services."""

    def __init__(self, root):
        self.root = root
        self.control = os.path.join(root, "run", "control.sock")
        self.nbd = os.path.join(root, "run", "nbd.sock")
        self.endpoint = os.path.join(root, "csi", "csi.sock")
        self.state = os.path.join(root, "state")
        os.makedirs(os.path.dirname(self.nbd), exist_ok=True)
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "rokfs.cli", "serve", "--pool", os.path.join(root, "pool"),
             "--nbd-socket", self.nbd, "--control-socket", self.control,
             "--metrics-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_socket(self.daemon, self.control, "rokfs serve")
        self.csi = subprocess.Popen(
            [sys.executable, "-m", "csi_shim", "--endpoint", f"unix://{self.endpoint}",
             "--rokfs", f"unix://{self.control}", "--nbd", f"unix://{self.nbd}",
             "--node-id", NODE, "--state-dir", self.state],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_socket(self.csi, self.endpoint, "rokfs-csi")
        self.channel = grpc.insecure_channel(f"unix://{self.endpoint}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.groups = csi_pb2_grpc.GroupControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def close(self):
        self.channel.close()
        force_cleanup(self.root)          # only does something if a test failed midway
        csi_err = stop(self.csi)
        daemon_err = stop(self.daemon)
        assert "Traceback" not in csi_err, csi_err
        assert "Traceback" not in daemon_err, daemon_err

    # -- helpers used by the tests --------------------------------------------------
    def create(self, name, size=64 * MiB, cap=None, source=None, **kw):
        req = csi.CreateVolumeRequest(
            name=name, capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[cap or mount_cap()], **kw)
        if source is not None:
            req.volume_content_source.CopyFrom(source)
        return self.controller.CreateVolume(req).volume

    def stage(self, vol_id, staging, cap=None):
        self.node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=vol_id, staging_target_path=staging, volume_capability=cap or mount_cap()))

    def publish(self, vol_id, staging, target, cap=None, readonly=False):
        self.node.NodePublishVolume(csi.NodePublishVolumeRequest(
            volume_id=vol_id, staging_target_path=staging, target_path=target,
            volume_capability=cap or mount_cap(), readonly=readonly))

    def unpublish(self, vol_id, target):
        self.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
            volume_id=vol_id, target_path=target))

    def unstage(self, vol_id, staging):
        self.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
            volume_id=vol_id, staging_target_path=staging))

    def delete(self, vol_id):
        self.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol_id))

    def snapshot(self, vol_id, name):
        return self.controller.CreateSnapshot(csi.CreateSnapshotRequest(
            source_volume_id=vol_id, name=name)).snapshot

    def group_snapshot(self, name, vol_ids, **kw):
        return self.groups.CreateVolumeGroupSnapshot(csi.CreateVolumeGroupSnapshotRequest(
            name=name, source_volume_ids=vol_ids, **kw)).group_snapshot

    def leftovers(self, vol_id):
        """Everything of `vol_id`'s attachment still on the node."""
        left = []
        image = os.path.join(self.state, vol_id, "fuse", "nbd")
        loops = subprocess.run(["losetup", "--noheadings", "-O", "NAME,BACK-FILE", "--list"],
                               capture_output=True, text=True, check=True).stdout
        left += [line for line in loops.splitlines() if image in line]
        with open("/proc/self/mountinfo") as f:
            left += [line for line in f if os.path.join(self.state, vol_id) in line]
        procs = subprocess.run(["pgrep", "-af", "nbdfuse"], capture_output=True, text=True).stdout
        left += [line for line in procs.splitlines()      # this daemon's, not another worker's
                 if f"/{vol_id}?socket={self.nbd}" in line]
        left += [f"state dir {p}" for p in [os.path.join(self.state, vol_id)] if os.path.exists(p)]
        return left + self.nbd_connections()

    def nbd_connections(self):
        """Open client connections to the daemon's NBD socket (the tests
        attach one volume at a time, so after an unstage there are none)."""
        sockets = subprocess.run(["ss", "-x", "-a"], capture_output=True, text=True,
                                 check=True).stdout
        return [f"NBD connection {line.split()[4]}" for line in sockets.splitlines()
                if self.nbd in line and " ESTAB " in f" {line} "]


def force_cleanup(root):
    """Unmount and detach whatever a failed test left under `root`."""
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f if line.split()[4].startswith(root)]
    for target in reversed(targets):
        subprocess.run(["umount", "-l", target], capture_output=True)
    loops = subprocess.run(["losetup", "--noheadings", "-O", "NAME,BACK-FILE", "--list"],
                           capture_output=True, text=True).stdout
    for line in loops.splitlines():
        if root in line:
            subprocess.run(["losetup", "-d", line.split()[0]], capture_output=True)


def mount_cap(mode=Mode.SINGLE_NODE_WRITER, fs_type=""):
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type=fs_type),
                                access_mode=csi.VolumeCapability.AccessMode(mode=mode))


def block_cap(mode=Mode.SINGLE_NODE_WRITER):
    return csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(),
                                access_mode=csi.VolumeCapability.AccessMode(mode=mode))


def from_snapshot(snapshot_id):
    return csi.VolumeContentSource(
        snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


def from_volume(volume_id):
    return csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=volume_id))


def code_of(call, *args):
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()
