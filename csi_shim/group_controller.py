"""CSI GroupController service: volume group snapshots over rokfs group snapshots.

Invariants:
- A CSI group snapshot is one rokfs group snapshot: the snapshots
  `VOLUME@GROUP` of its source volumes, cut in one step and committed in one
  transaction by the daemon, so across the volumes the cut is write-order
  consistent, as the spec requires. There is no partial group to clean up:
  the daemon makes all the members or none.
- group snapshot id = the rokfs group name = `naming.rokfs_name(CSI name)`.
  Its members are ordinary snapshots (their ids `VOLUME@GROUP` work as a
  volume content source, in GetSnapshot and ListSnapshots), each naming the
  group in `group_snapshot_id`.
- Every handler is idempotent: creating an existing name with the same
  source volumes returns it (other volumes: ALREADY_EXISTS); deleting a group
  that is gone succeeds. The shim keeps no state: the daemon's groups are the
  truth (the CSI name is kept in each member's `csi.rokfs.dev/group-name`
  label, for people reading `rokctl group ls`).
- `snapshot_ids` in Get/Delete, when given, must agree with the group: a live
  member left out, or a live snapshot that is not a member listed, is
  INVALID_ARGUMENT. A listed snapshot that is already gone is no mismatch,
  so a retried delete still succeeds.
- A group whose member is held, or open (e.g. exported over NBD), is not
  deleted: the daemon's refusal (Busy) becomes FAILED_PRECONDITION, and
  nothing of the group is deleted.
- VolumeGroupSnapshotClass parameters: only the sidecars' own
  (`csi.storage.k8s.io/...`); anything else is INVALID_ARGUMENT.
"""

import grpc

from rokfs.errors import AlreadyExists, NotFound

from . import csi_pb2 as csi
from . import csi_pb2_grpc, naming
from .controller import SIDECAR_PARAMETER_PREFIX, find_snapshot, snapshot_message, timestamp
from .errors import CsiError, invalid, not_found, require, rpc
from .locks import KeyLocks

GroupRPC = csi.GroupControllerServiceCapability.RPC
GROUP_NAME_LABEL = "csi.rokfs.dev/group-name"


class GroupControllerServicer(csi_pb2_grpc.GroupControllerServicer):
    def __init__(self, client):
        self.client = client
        self.locks = KeyLocks()

    @rpc
    def GroupControllerGetCapabilities(self, request):
        cap = GroupRPC(type=GroupRPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT)
        return csi.GroupControllerGetCapabilitiesResponse(
            capabilities=[csi.GroupControllerServiceCapability(rpc=cap)])

    @rpc
    def CreateVolumeGroupSnapshot(self, request):
        csi_name = require(request.name, "name")
        volumes = _source_volumes(request.source_volume_ids)
        _check_parameters(request.parameters)
        group = naming.rokfs_name(csi_name)
        with self.locks.hold(group):
            members = self._members(group)
            if members is None:
                members = self._create(group, csi_name, volumes)
            _check_same_sources(csi_name, members, volumes)
        return csi.CreateVolumeGroupSnapshotResponse(group_snapshot=_group_message(group, members))

    def _create(self, group, csi_name, volumes):
        for volume in volumes:
            if not naming.is_volume_id(volume):
                raise not_found(f"source volume {volume!r} does not exist")
        try:
            self.client.create_group_snapshot(group, volumes, labels={GROUP_NAME_LABEL: csi_name})
        except AlreadyExists:
            if self._members(group) is None:     # a lone snapshot VOLUME@GROUP has the name
                raise
        return self._members(group)

    @rpc
    def GetVolumeGroupSnapshot(self, request):
        group = require(request.group_snapshot_id, "group_snapshot_id")
        members = self._members(group)
        if members is None:
            raise not_found(f"group snapshot {group!r} does not exist")
        self._check_snapshot_ids(group, members, request.snapshot_ids)
        return csi.GetVolumeGroupSnapshotResponse(group_snapshot=_group_message(group, members))

    @rpc
    def DeleteVolumeGroupSnapshot(self, request):
        group = require(request.group_snapshot_id, "group_snapshot_id")
        with self.locks.hold(group):
            members = self._members(group)
            if members is not None:
                self._check_snapshot_ids(group, members, request.snapshot_ids)
                self._delete(group)
        return csi.DeleteVolumeGroupSnapshotResponse()

    def _delete(self, group):
        try:
            self.client.delete_group(group)
        except NotFound:
            pass

    # -- helpers ---------------------------------------------------------------------
    def _members(self, group):
        """The live member snapshots of `group` (snapshot_info dicts), or None."""
        if not naming.is_group_snapshot_id(group):
            return None
        return self.client.list_snapshots(group=group) or None

    def _check_snapshot_ids(self, group, members, snapshot_ids):
        if not snapshot_ids:
            return
        member_ids = {naming.snapshot_id(m["name"]) for m in members}
        left_out = sorted(member_ids - set(snapshot_ids))
        strangers = sorted(i for i in set(snapshot_ids) - member_ids
                           if find_snapshot(self.client, i) is not None)
        if left_out or strangers:
            raise invalid(f"snapshot_ids do not match group snapshot {group!r}: "
                          + "; ".join(_mismatch(left_out, strangers)))


def _mismatch(left_out, strangers):
    if left_out:
        yield f"its members {', '.join(left_out)} are not listed"
    if strangers:
        yield f"{', '.join(strangers)} are not its members"


def _source_volumes(source_volume_ids):
    volumes = list(require(source_volume_ids, "source_volume_ids"))
    if len(set(volumes)) != len(volumes):
        raise invalid(f"source_volume_ids lists a volume twice: {volumes}")
    return volumes


def _check_parameters(parameters):
    unknown = sorted(k for k in parameters if not k.startswith(SIDECAR_PARAMETER_PREFIX))
    if unknown:
        raise invalid(f"unknown parameter(s) {', '.join(map(repr, unknown))}: rokfs group "
                      "snapshots take none")


def _check_same_sources(csi_name, members, volumes):
    existing = sorted(m["volume"] for m in members)
    if existing != sorted(volumes):
        raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                       f"group snapshot {csi_name!r} exists of volumes {existing}, "
                       f"not {sorted(volumes)}")


def _group_message(group, members):
    return csi.VolumeGroupSnapshot(
        group_snapshot_id=group, snapshots=[snapshot_message(m) for m in members],
        creation_time=timestamp(min(m["created"] for m in members)), ready_to_use=True)
