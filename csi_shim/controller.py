"""CSI Controller service: volumes and snapshots, translated to the daemon's verbs.

Every handler is idempotent as the spec asks: creating what exists (same
name, compatible request) returns it, deleting what is gone succeeds. The
shim keeps no state of its own: the daemon's volumes and snapshots are the
truth (a CSI snapshot's name is kept in its `csi.rokfs.dev/name` label).

Every snapshot id the shim hands out or accepts (`VOLUME@SNAP`, or
`REMOTE:VOLUME@SNAP` for one on a remote store) is looked up the same way
by GetSnapshot and ListSnapshots (`find_snapshot`); a member of a group
snapshot (group_controller.py) is an ordinary snapshot that names its group
in `group_snapshot_id`.

StorageClass parameters (anything under `csi.storage.k8s.io/` is the
sidecars' and ignored):
- `chunkSize`: checked against the pool's chunk size (one per pool).
"""

import grpc
from google.protobuf import timestamp_pb2, wrappers_pb2

from rokfs import names
from rokfs.errors import AlreadyExists, NotFound

from . import capability, naming
from . import csi_pb2 as csi
from . import csi_pb2_grpc
from .errors import CsiError, invalid, not_found, require, rpc
from .locks import KeyLocks

RPC = csi.ControllerServiceCapability.RPC
CAPABILITIES = (RPC.CREATE_DELETE_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY,
                RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT,
                RPC.CLONE_VOLUME, RPC.EXPAND_VOLUME, RPC.SINGLE_NODE_MULTI_WRITER)
SNAPSHOT_NAME_LABEL = "csi.rokfs.dev/name"
SIDECAR_PARAMETER_PREFIX = "csi.storage.k8s.io/"
INT64_MAX = (1 << 63) - 1


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    def __init__(self, client, node_id, topology_key, expand_on_node=False):
        self.client = client
        # Without EXPAND_VOLUME, external-resizer marks PVs resized without
        # calling us and kubelet's NodeExpandVolume grows the volume on its
        # node: the way to expand node-local volumes with one resizer.
        self.capabilities = [c for c in CAPABILITIES
                             if not (expand_on_node and c == RPC.EXPAND_VOLUME)]
        self.node_id = node_id
        self.topology_key = topology_key
        self.locks = KeyLocks()

    # -- volumes -------------------------------------------------------------------
    @rpc
    def CreateVolume(self, request):
        name = naming.rokfs_name(require(request.name, "name"))
        capability.check(request.volume_capabilities)
        self._check_parameters(request.parameters)
        self._check_topology(request.accessibility_requirements)
        with self.locks.hold(name):
            info = self._volume_or_none(name)
            if info is None:
                info = self._create(name, request)
            else:
                info = self._reuse(info, request)
        return csi.CreateVolumeResponse(volume=self._volume(info, request.volume_content_source))

    def _create(self, name, request):
        source = request.volume_content_source
        kind = source.WhichOneof("type")
        if kind is None:
            size = capability.size_for(request.capacity_range, maximum=self._max_size())
            return self.client.create_volume(name, size)
        remote, origin = self._source(source)
        if remote is not None:
            info = self.client.pull(origin, name, remote=remote)
        else:
            src_size = self._source_size(origin, kind)
            capability.size_for(request.capacity_range, minimum=src_size,
                                maximum=self._max_size())
            info = self.client.clone(origin, name)
        return self._grow_to_fit(info, request.capacity_range)

    def _reuse(self, info, request):
        """CreateVolume of an existing name: fine if the request matches it."""
        source = request.volume_content_source
        if source.WhichOneof("type") is not None:
            remote, origin = self._source(source)
            if remote is None and info.get("origin") not in (None, origin):
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"volume {request.name!r} exists with content from "
                               f"{info.get('origin')!r}, not {origin!r}")
            info = self._grow_to_fit(info, request.capacity_range)  # finish a cut-short create
        if not capability.fits(info["size"], request.capacity_range):
            raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                           f"volume {request.name!r} exists with {info['size']} bytes, "
                           "outside the requested capacity range")
        return info

    def _grow_to_fit(self, info, capacity_range):
        size = capability.size_for(capacity_range, minimum=info["size"],
                                   maximum=self._max_size())
        if size > info["size"]:
            info = self.client.resize_volume(info["name"], size)
        return info

    def _source(self, source):
        """(remote or None, rokfs name) of a content source; NOT_FOUND if malformed."""
        if source.WhichOneof("type") == "volume":
            vol = source.volume.volume_id
            if not naming.is_volume_id(vol):
                raise not_found(f"source volume {vol!r} does not exist")
            return None, vol
        parsed = naming.split_snapshot_id(source.snapshot.snapshot_id)
        if parsed is None:
            raise not_found(f"source snapshot {source.snapshot.snapshot_id!r} does not exist")
        return parsed

    def _source_size(self, origin, kind):
        info = (self.client.snapshot_info(origin) if kind == "snapshot"
                else self.client.volume_info(origin))
        return info["size"]

    @rpc
    def DeleteVolume(self, request):
        name = require(request.volume_id, "volume_id")
        if naming.is_volume_id(name):
            with self.locks.hold(name):
                try:
                    self.client.delete_volume(name)
                except NotFound:
                    pass
        return csi.DeleteVolumeResponse()

    @rpc
    def ValidateVolumeCapabilities(self, request):
        name = require(request.volume_id, "volume_id")
        caps = require(request.volume_capabilities, "volume_capabilities")
        self._volume_info(name)
        problems = [why for cap in caps if (why := capability.problem(cap))]
        if problems:
            return csi.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        confirmed = csi.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=caps,
            parameters=request.parameters)
        return csi.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc
    def ListVolumes(self, request):
        volumes = sorted(self.client.list_volumes(), key=lambda v: v["name"])
        page, next_token = _page(volumes, request.max_entries, request.starting_token)
        entries = [csi.ListVolumesResponse.Entry(volume=self._volume(v)) for v in page]
        return csi.ListVolumesResponse(entries=entries, next_token=next_token)

    @rpc
    def GetCapacity(self, request):
        status = self.client.status()
        usable = (all(capability.problem(c) is None for c in request.volume_capabilities)
                  and self._is_our_topology(request.accessible_topology))
        return csi.GetCapacityResponse(
            available_capacity=status["free_bytes"] if usable else 0,
            maximum_volume_size=wrappers_pb2.Int64Value(value=self._max_size()))

    @rpc
    def ControllerGetCapabilities(self, request):
        caps = [csi.ControllerServiceCapability(rpc=RPC(type=t)) for t in self.capabilities]
        return csi.ControllerGetCapabilitiesResponse(capabilities=caps)

    @rpc
    def ControllerExpandVolume(self, request):
        name = require(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise invalid("capacity_range is required")
        if request.HasField("volume_capability"):
            capability.check([request.volume_capability], "volume_capability")
        with self.locks.hold(name):
            info = self._grow_to_fit(self._volume_info(name), request.capacity_range)
        block = (request.HasField("volume_capability")
                 and capability.wants_block(request.volume_capability))
        return csi.ControllerExpandVolumeResponse(capacity_bytes=info["size"],
                                                  node_expansion_required=not block)

    # -- snapshots -------------------------------------------------------------------
    @rpc
    def CreateSnapshot(self, request):
        csi_name = require(request.name, "name")
        volume = require(request.source_volume_id, "source_volume_id")
        snap = naming.rokfs_name(csi_name)
        with self.locks.hold(f"snapshot:{snap}"):
            info = self._snapshot_named(csi_name)
            if info is None:
                if not naming.is_volume_id(volume):
                    raise not_found(f"source volume {volume!r} does not exist")
                try:
                    info = self.client.create_snapshot(f"{volume}@{snap}",
                                                labels={SNAPSHOT_NAME_LABEL: csi_name})
                except AlreadyExists:
                    info = self.client.snapshot_info(f"{volume}@{snap}")
            if info["volume"] != volume:
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"snapshot {csi_name!r} exists for volume {info['volume']!r}, "
                               f"not {volume!r}")
        return csi.CreateSnapshotResponse(snapshot=snapshot_message(info))

    def _snapshot_named(self, csi_name):
        found = self.client.list_snapshots(labels={SNAPSHOT_NAME_LABEL: csi_name})
        return found[0] if found else None

    @rpc
    def DeleteSnapshot(self, request):
        parsed = naming.split_snapshot_id(require(request.snapshot_id, "snapshot_id"))
        if parsed is None:
            return csi.DeleteSnapshotResponse()
        remote, full = parsed
        with self.locks.hold(f"snapshot:{full}"):
            try:
                if remote is None:
                    self.client.delete_snapshot(full)
                else:
                    self.client.delete_remote(full, remote=remote)
            except NotFound:
                pass
        return csi.DeleteSnapshotResponse()

    @rpc
    def ListSnapshots(self, request):
        snaps = self._filtered_snapshots(request.snapshot_id, request.source_volume_id)
        page, next_token = _page(snaps, request.max_entries, request.starting_token)
        entries = [csi.ListSnapshotsResponse.Entry(snapshot=snapshot_message(s)) for s in page]
        return csi.ListSnapshotsResponse(entries=entries, next_token=next_token)

    def _filtered_snapshots(self, snapshot_id, volume):
        if snapshot_id:
            snaps = [s for s in [find_snapshot(self.client, snapshot_id)] if s is not None]
            return [s for s in snaps if not volume or s["volume"] == volume]
        if volume:
            if not naming.is_volume_id(volume):
                return []
            try:
                return self.client.list_snapshots(volume)
            except NotFound:
                return []
        return self.client.list_snapshots()

    @rpc
    def GetSnapshot(self, request):
        snapshot_id = require(request.snapshot_id, "snapshot_id")
        info = find_snapshot(self.client, snapshot_id)
        if info is None:
            raise not_found(f"snapshot {snapshot_id!r} does not exist")
        return csi.GetSnapshotResponse(snapshot=snapshot_message(info))

    # -- helpers ---------------------------------------------------------------------
    def _volume_or_none(self, name):
        try:
            return self.client.volume_info(name)
        except NotFound:
            return None

    def _volume_info(self, name):
        if not naming.is_volume_id(name):
            raise not_found(f"volume {name!r} does not exist")
        return self.client.volume_info(name)

    def _max_size(self):
        return min(self.client.max_volume_size(), INT64_MAX)

    def _check_parameters(self, parameters):
        for key, value in parameters.items():
            if key.startswith(SIDECAR_PARAMETER_PREFIX):
                continue
            if key != "chunkSize":
                raise invalid(f"unknown parameter {key!r} (rokfs knows: chunkSize)")
            chunk = self.client.status()["chunk_size"]
            if value not in (str(chunk), f"{chunk // 1024}K", f"{chunk // 1024}Ki"):
                raise invalid(f"chunkSize {value!r}: this node's pool uses {chunk}-byte "
                              "chunks (one chunk size per pool)")

    def _topology(self):
        return csi.Topology(segments={self.topology_key: self.node_id})

    def _is_our_topology(self, topology):
        value = topology.segments.get(self.topology_key) if topology else None
        return value in (None, self.node_id)

    def _check_topology(self, requirements):
        requisite = list(requirements.requisite) if requirements else []
        if requisite and not any(self._is_our_topology(t) for t in requisite):
            raise CsiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"volumes of this driver can only live on node {self.node_id!r}")

    def _volume(self, info, source=None):
        vol = csi.Volume(volume_id=info["name"], capacity_bytes=info["size"],
                         accessible_topology=[self._topology()])
        if source is not None and source.WhichOneof("type") is not None:
            vol.content_source.CopyFrom(source)
        return vol


def find_snapshot(client, snapshot_id):
    """The snapshot a CSI snapshot id names (a snapshot_info dict, plus
    "remote" for one on a remote store), or None if there is none."""
    parsed = naming.split_snapshot_id(snapshot_id)
    if parsed is None:
        return None
    remote, full_name = parsed
    try:
        if remote is None:
            return client.snapshot_info(full_name)
        return _remote_snapshot(client, remote, full_name)
    except NotFound:
        return None


def _remote_snapshot(client, remote, full_name):
    found = [m for m in client.list_remote(remote=remote) if m["name"] == full_name]
    if not found:
        return None
    volume, _ = names.split_snapshot(full_name)
    return {**found[0], "volume": volume, "remote": remote}


def snapshot_message(info):
    """The CSI Snapshot for a snapshot_info dict (from find_snapshot or a list)."""
    return csi.Snapshot(snapshot_id=naming.snapshot_id(info["name"], info.get("remote")),
                        source_volume_id=info["volume"], size_bytes=info["size"],
                        creation_time=timestamp(info["created"]), ready_to_use=True,
                        group_snapshot_id=info.get("group") or "")


def timestamp(seconds):
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _page(items, max_entries, token):
    """(items of this page, next token): tokens are offsets; a bad one is ABORTED."""
    if max_entries < 0:
        raise invalid("max_entries cannot be negative")
    start = 0
    if token:
        if not token.isdigit() or int(token) > len(items):
            raise CsiError(grpc.StatusCode.ABORTED, f"invalid starting_token {token!r}")
        start = int(token)
    end = len(items) if not max_entries else min(len(items), start + max_entries)
    return items[start:end], (str(end) if end < len(items) else "")
