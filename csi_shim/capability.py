"""Volume capabilities rokfs accepts, and capacity ranges -> sizes.

rokfs volumes live on one node's disk, so only the single-node access modes
are offered; MULTI_NODE_* is refused with a message that says why.
"""

import shutil

from . import csi_pb2 as csi
from .errors import CsiError, invalid

import grpc

Mode = csi.VolumeCapability.AccessMode.Mode
SINGLE_NODE_MODES = {Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY,
                     Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER}
READ_ONLY_MODES = {Mode.SINGLE_NODE_READER_ONLY}
DEFAULT_FS = "ext4"
FILESYSTEMS = ("ext4", "ext3", "ext2", "xfs")

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_SIZE = 1 * GiB
SECTOR = 512


def problem(cap):
    """Why rokfs cannot serve capability `cap`, or None if it can."""
    mode = cap.access_mode.mode
    if mode not in SINGLE_NODE_MODES:
        name = Mode.Name(mode) if mode in Mode.values() else str(mode)
        return (f"access mode {name} is not supported: rokfs volumes live on one "
                "node's disk (use a SINGLE_NODE_* mode, i.e. ReadWriteOnce/ReadWriteOncePod)")
    kind = cap.WhichOneof("access_type")
    if kind is None:
        return "volume capability needs an access type (block or mount)"
    if kind == "mount":
        fs = cap.mount.fs_type or DEFAULT_FS
        if fs not in FILESYSTEMS:
            return f"filesystem {fs!r} is not supported (use one of {', '.join(FILESYSTEMS)})"
        if shutil.which(f"mkfs.{fs}") is None:
            return f"filesystem {fs!r} is not available on this node (no mkfs.{fs})"
    return None


def check(caps, field="volume_capabilities"):
    """Raise INVALID_ARGUMENT unless every capability in `caps` is supported."""
    if not caps:
        raise invalid(f"{field} is required")
    for cap in caps:
        if (why := problem(cap)) is not None:
            raise invalid(why)


def wants_block(cap):
    return cap.WhichOneof("access_type") == "block"


def is_read_only(cap):
    return cap.access_mode.mode in READ_ONLY_MODES


def size_for(capacity_range, *, minimum=0, maximum):
    """The volume size for a CSI capacity range: at least `minimum`, 1 GiB if
    nothing is asked, rounded up to a MiB (or to a sector if the limit needs it)."""
    required = capacity_range.required_bytes
    limit = capacity_range.limit_bytes
    if required < 0 or limit < 0:
        raise invalid("capacity_range bytes cannot be negative")
    if limit and required > limit:
        raise invalid(f"required_bytes {required} is above limit_bytes {limit}")
    want = max(required, minimum) or min(DEFAULT_SIZE, limit or DEFAULT_SIZE)
    size = _round_up(want, MiB)
    if limit and size > limit:
        size = _round_up(want, SECTOR)
    if limit and size > limit:
        raise out_of_range(f"the volume needs {size} bytes, above limit_bytes {limit}")
    if size > maximum:
        raise out_of_range(f"{size} bytes is larger than the largest rokfs volume "
                           f"({maximum} bytes)")
    return size


def fits(size, capacity_range):
    required, limit = capacity_range.required_bytes, capacity_range.limit_bytes
    return size >= required and (not limit or size <= limit)


def out_of_range(message):
    return CsiError(grpc.StatusCode.OUT_OF_RANGE, message)


def _round_up(value, unit):
    return -(-value // unit) * unit
