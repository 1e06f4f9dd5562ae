"""CSI Node service: attach a volume's NBD export, format, mount, publish.

Stage   = attach the export as a block device (attach.py); for mount access,
          make a filesystem if the device is blank and mount it at the
          staging path.
Publish = bind-mount the staging mount (mount access) or the device node
          itself (block access) at the target path; read-only honoured.
Unpublish / Unstage undo exactly that; Unstage detaches the export, leaving
no loop device, FUSE mount, nbdfuse process or NBD connection behind.

Each handler is idempotent: it looks at the mount table and the attached
devices, not at a memory of earlier calls, so a restarted driver carries on.
"""

import os

import grpc

from . import capability
from . import csi_pb2 as csi
from . import csi_pb2_grpc
from .errors import CsiError, invalid, not_found, require, rpc
from .locks import KeyLocks
from .system import (device_size, filesystem_of, is_mount_of_device, mount_at, mounts, run,
                     unmount_all)

NodeRPC = csi.NodeServiceCapability.RPC
CAPABILITIES = (NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS,
                NodeRPC.EXPAND_VOLUME, NodeRPC.SINGLE_NODE_MULTI_WRITER)
Mode = capability.Mode


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, client, attacher, node_id, topology_key, max_volumes=0):
        self.client = client
        self.attacher = attacher
        self.node_id = node_id
        self.topology_key = topology_key
        self.max_volumes = max_volumes
        self.locks = KeyLocks()

    # -- stage ---------------------------------------------------------------------
    @rpc
    def NodeStageVolume(self, request):
        volume = require(request.volume_id, "volume_id")
        staging = require(request.staging_target_path, "staging_target_path")
        cap = self._capability(request)
        self._check_volume(volume)
        with self.locks.hold(volume):
            was_attached = self.attacher.device(volume) is not None
            device = self.attacher.attach(volume, read_only=capability.is_read_only(cap))
            try:
                if not capability.wants_block(cap):
                    self._mount_staging(device, staging, cap)
            except Exception:
                if not was_attached:
                    self.attacher.detach(volume)
                raise
        return csi.NodeStageVolumeResponse()

    def _mount_staging(self, device, staging, cap):
        current = mount_at(staging)
        if current is not None:
            if is_mount_of_device(current, device):
                return
            raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                           f"{staging} already has {current.source} mounted")
        wanted = cap.mount.fs_type or capability.DEFAULT_FS
        found = filesystem_of(device)
        if not found:
            if capability.is_read_only(cap):
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               "a blank volume cannot be staged read-only (nothing to mount)")
            run(f"mkfs.{wanted}", *(["-q"] if wanted.startswith("ext") else []), device,
                timeout=600)
            found = wanted
        elif not capability.is_read_only(cap):
            _grow_unmounted_filesystem(device, found)
        os.makedirs(staging, exist_ok=True)
        options = list(cap.mount.mount_flags) + (["ro"] if capability.is_read_only(cap) else [])
        run("mount", "-t", found, *(["-o", ",".join(options)] if options else []),
            device, staging)

    @rpc
    def NodeUnstageVolume(self, request):
        volume = require(request.volume_id, "volume_id")
        staging = require(request.staging_target_path, "staging_target_path")
        with self.locks.hold(volume):
            device = self.attacher.device(volume)
            if device is not None:
                self._refuse_if_published(volume, device, staging)
            current = mount_at(staging)
            if current is not None and (device is None or is_mount_of_device(current, device)):
                unmount_all(staging)
            self.attacher.detach(volume)
        return csi.NodeUnstageVolumeResponse()

    def _refuse_if_published(self, volume, device, staging):
        targets = self._published_targets(device, exclude=staging)
        if targets:
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"volume {volume} is still published at {', '.join(targets)}")

    # -- publish ---------------------------------------------------------------------
    @rpc
    def NodePublishVolume(self, request):
        volume = require(request.volume_id, "volume_id")
        target = require(request.target_path, "target_path")
        staging = require(request.staging_target_path, "staging_target_path")
        cap = self._capability(request)
        with self.locks.hold(volume):
            device = self.attacher.device(volume)
            if device is None:
                self._check_volume(volume)
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"volume {volume} is not staged on this node")
            if (current := mount_at(target)) is not None:
                if is_mount_of_device(current, device):
                    return csi.NodePublishVolumeResponse()
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"{target} already has {current.source} mounted")
            if cap.access_mode.mode == Mode.SINGLE_NODE_SINGLE_WRITER:
                others = self._published_targets(device, exclude=staging)
                if others:
                    raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"volume {volume} (single writer) is already published "
                                   f"at {', '.join(others)}")
            self._bind(device, staging, target, cap,
                       request.readonly or capability.is_read_only(cap))
        return csi.NodePublishVolumeResponse()

    def _bind(self, device, staging, target, cap, read_only):
        if capability.wants_block(cap):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
            source = device
        else:
            if mount_at(staging) is None:
                raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"staging path {staging} is not mounted: stage the volume first")
            os.makedirs(target, exist_ok=True)
            source = staging
        run("mount", "--bind", source, target)
        if read_only:
            run("mount", "-o", "remount,bind,ro", target)

    def _published_targets(self, device, exclude):
        exclude = os.path.realpath(exclude)
        return [m.target for m in mounts()
                if is_mount_of_device(m, device) and m.target != exclude]

    @rpc
    def NodeUnpublishVolume(self, request):
        volume = require(request.volume_id, "volume_id")
        target = require(request.target_path, "target_path")
        with self.locks.hold(volume):
            unmount_all(target)
            if os.path.isdir(target):
                os.rmdir(target)
            elif os.path.exists(target):
                os.unlink(target)
        return csi.NodeUnpublishVolumeResponse()

    # -- stats and expansion -------------------------------------------------------------
    @rpc
    def NodeGetVolumeStats(self, request):
        volume = require(request.volume_id, "volume_id")
        path = require(request.volume_path, "volume_path")
        self._check_volume(volume)
        device = self.attacher.device(volume)
        current = mount_at(path) if os.path.exists(path) else None
        if device is None or current is None or not is_mount_of_device(current, device):
            raise not_found(f"volume {volume} is not published at {path}")
        if current.fstype == "devtmpfs":               # raw block
            total = device_size(device)
            return csi.NodeGetVolumeStatsResponse(usage=[csi.VolumeUsage(
                total=total, unit=csi.VolumeUsage.BYTES)])
        st = os.statvfs(path)
        return csi.NodeGetVolumeStatsResponse(usage=[
            csi.VolumeUsage(total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize,
                            used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                            unit=csi.VolumeUsage.BYTES),
            csi.VolumeUsage(total=st.f_files, available=st.f_favail,
                            used=st.f_files - st.f_ffree, unit=csi.VolumeUsage.INODES)])

    @rpc
    def NodeExpandVolume(self, request):
        """Grow the volume (if the CO asks for more than it has), then the
        attached device and its filesystem. An export's size is fixed while
        attached, so a bigger volume is re-attached: possible while it is only
        staged (where kubelet expands offline), refused while published."""
        volume = require(request.volume_id, "volume_id")
        path = require(request.volume_path, "volume_path")
        info = self._check_volume(volume)
        if request.HasField("volume_capability"):
            capability.check([request.volume_capability], "volume_capability")
        with self.locks.hold(volume):
            device = self.attacher.device(volume)
            if device is None or not os.path.exists(path):
                raise not_found(f"volume {volume} is not staged or published at {path}")
            wanted = request.capacity_range.required_bytes
            if wanted > info["size"]:
                info = self.client.resize_volume(volume, capability.size_for(
                    request.capacity_range, minimum=info["size"], maximum=1 << 62))
            if device_size(device) < info["size"]:
                device = self._reattach(volume, device, request)
            current = mount_at(path)
            if current is not None and current.fstype != "devtmpfs":
                _grow_filesystem(device, current)
            size = device_size(device)
        return csi.NodeExpandVolumeResponse(capacity_bytes=size)

    def _reattach(self, volume, device, request):
        """Detach and attach again (picking up the new size) a volume that is
        staged but not published; the staging mount comes back grown."""
        staging = request.staging_target_path
        published = self._published_targets(device, exclude=staging or "/nonexistent")
        if published:
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"volume {volume} is published at {', '.join(published)}; rokfs "
                           "expands offline: expand it while no pod uses it")
        staged = mount_at(staging) if staging else None
        mounted = staged is not None and is_mount_of_device(staged, device)
        if mounted:
            options, fstype = staged.options, staged.fstype
            unmount_all(staging)
        read_only = self._attached_read_only(device)
        self.attacher.detach(volume)
        device = self.attacher.attach(volume, read_only=read_only)
        if mounted:
            _grow_unmounted_filesystem(device, fstype)
            run("mount", "-t", fstype, "-o", options, device, staging)
        return device

    @staticmethod
    def _attached_read_only(device):
        try:
            with open(f"/sys/block/{os.path.basename(device)}/ro") as f:
                return f.read().strip() == "1"
        except OSError:
            return False

    # -- info ------------------------------------------------------------------------------
    @rpc
    def NodeGetCapabilities(self, request):
        caps = [csi.NodeServiceCapability(rpc=NodeRPC(type=t)) for t in CAPABILITIES]
        return csi.NodeGetCapabilitiesResponse(capabilities=caps)

    @rpc
    def NodeGetInfo(self, request):
        return csi.NodeGetInfoResponse(
            node_id=self.node_id, max_volumes_per_node=self.max_volumes,
            accessible_topology=csi.Topology(segments={self.topology_key: self.node_id}))

    # -- helpers -----------------------------------------------------------------------------
    def _capability(self, request):
        if not request.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        capability.check([request.volume_capability], "volume_capability")
        return request.volume_capability

    def _check_volume(self, volume):
        from . import naming
        if not naming.is_volume_id(volume):
            raise not_found(f"volume {volume!r} does not exist")
        return self.client.volume_info(volume)


def _ext_filesystem_bytes(device):
    fields = dict(line.split(":", 1) for line in
                  run("dumpe2fs", "-h", device).splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def _grow_unmounted_filesystem(device, fstype):
    """Offline expansion: a volume grown while unstaged gets its filesystem
    grown before it is mounted again (no online-resize privilege needed)."""
    if fstype.startswith("ext") and _ext_filesystem_bytes(device) < device_size(device):
        run("e2fsck", "-f", "-p", device, ok_codes=(0, 1), timeout=600)
        run("resize2fs", device, timeout=600)


def _grow_filesystem(device, mount):
    if mount.fstype.startswith("ext"):
        if _ext_filesystem_bytes(device) < device_size(device):
            run("resize2fs", device, timeout=600)
    elif mount.fstype == "xfs":
        run("xfs_growfs", mount.target, timeout=600)
