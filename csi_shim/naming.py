"""CSI names and ids <-> rokfs names.

CSI names are any string of up to 128 characters; rokfs names are
`[a-z0-9][a-z0-9._-]{0,62}`. `rokfs_name` maps a CSI name to a rokfs name
deterministically (a readable lowercase prefix plus a hash of the exact
name), so a repeated CreateVolume/CreateSnapshot/CreateVolumeGroupSnapshot
finds what the first one made, and two CSI names never share a rokfs name.

Ids handed back to the CO:
- volume id   = the rokfs volume name;
- snapshot id = `VOLUME@SNAP` for a local snapshot, or `REMOTE:VOLUME@SNAP`
  for a snapshot on a remote store (restored with a lazy pull);
- group snapshot id = the rokfs group name GROUP (same rule as a volume
  name); its members are the snapshots `VOLUME@GROUP`.
"""

import hashlib
import re

from rokfs import names

from .errors import invalid

MAX_CSI_NAME = 128
HASH_CHARS = 16
PREFIX_CHARS = 63 - HASH_CHARS - 1
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_REMOTE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def rokfs_name(csi_name):
    """The rokfs volume/snapshot/group name for a CSI name (deterministic)."""
    if not csi_name:
        raise invalid("name is required")
    if len(csi_name) > MAX_CSI_NAME:
        raise invalid(f"name is {len(csi_name)} characters; CSI allows {MAX_CSI_NAME}")
    digest = hashlib.sha256(csi_name.encode()).hexdigest()[:HASH_CHARS]
    prefix = _UNSAFE.sub("-", csi_name.lower()).lstrip("._-")[:PREFIX_CHARS].rstrip("._-")
    return f"{prefix}-{digest}" if prefix else digest


def is_volume_id(volume_id):
    try:
        names.check_name(volume_id)
        return True
    except Exception:  # noqa: BLE001 - any refusal means "not one of ours"
        return False


def is_group_snapshot_id(group_snapshot_id):
    return is_volume_id(group_snapshot_id)          # group names follow the volume rule


def split_snapshot_id(snapshot_id):
    """'[REMOTE:]VOL@SNAP' -> (remote or None, 'VOL@SNAP'); None if malformed."""
    remote, sep, full = snapshot_id.rpartition(":")
    if sep and not _REMOTE.fullmatch(remote):
        return None
    try:
        names.split_snapshot(full)
    except Exception:  # noqa: BLE001
        return None
    return (remote or None), full


def snapshot_id(full_name, remote=None):
    return f"{remote}:{full_name}" if remote else full_name
