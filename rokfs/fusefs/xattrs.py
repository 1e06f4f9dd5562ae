"""Commands and state as extended attributes in the `user.rokfs.` namespace.

ONE table, `XATTRS`: attribute name -> (node kinds it applies to, getter,
setter, one line of help). Every getter/setter calls a Control verb and
nothing else, so the xattr layer never implements a verb twice. To add an
attribute, write a small function and add one line to the table.

Getters return a str or a JSON-able value (sent as JSON, times as ISO-8601
with the number beside them: rokfs.units.json_view); setters receive the
value decoded as UTF-8 and stripped. A setter checks the words of its value,
names first, before its verb changes anything (a remote URL is parsed by the
verb, before it opens anything), so an error names the field that is
wrong; bad values (names, sizes, labels, remote URLs) raise InvalidArgument
(EINVAL, the reason logged once); unknown names are ENODATA on get and
ENOTSUP on set, decided in ops.py.
"""

import json
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import InvalidArgument, NotFound
from ..names import check_name, parse_labels, split_snapshot
from ..units import json_view, parse_size

PREFIX = "user.rokfs."

# node kinds (ops.py builds nodes of these kinds)
ROOT, VOLUMES, SNAPSHOTS, SNAPDIR, VOLUME, SNAPSHOT = (
    "root", "volumes", "snapshots", "snapdir", "volume", "snapshot")


@dataclass(frozen=True)
class Attr:
    kinds: frozenset
    get: Optional[Callable] = None     # async (control, node) -> str | JSON-able
    set: Optional[Callable] = None     # async (control, node, value: str) -> None
    help: str = ""


def _words(value, what, low, high):
    words = value.split()
    if not low <= len(words) <= high:
        raise InvalidArgument(f"{what}: expected {low}-{high} words, got {value!r}")
    return words


# -- volumes/NAME -------------------------------------------------------------------
async def set_snapshot(control, node, value):
    """'SNAP [key=value ...]'"""
    snap, *labels = _words(value, "snapshot", 1, 64)
    check_name(snap, "snapshot")
    await control.create_snapshot(f"{node.name}@{snap}", parse_labels(labels))


async def set_clone(control, node, value):
    """'NEWNAME' (from the current state) or 'NEWNAME SNAP' (from snapshot SNAP)."""
    new, *snap = _words(value, "clone", 1, 2)
    check_name(new, "new volume")
    source = f"{node.name}@{check_name(snap[0], 'snapshot')}" if snap else node.name
    await control.clone(source, new)


async def set_resize(control, node, value):
    await control.resize_volume(node.name, parse_size(value, "size"))


async def get_info(control, node):
    if node.kind == VOLUME:
        return control.volume_info(node.name)
    return control.snapshot_info(node.name)


async def get_snapshots(control, node):
    return await control.list_snapshots(node.name)


async def set_push(control, node, value):
    """'SNAP [REMOTE]': push snapshot SNAP of this volume (blocks until the
    manifest is written)."""
    snap, *remote = _words(value, "push", 1, 2)
    check_name(snap, "snapshot")
    await control.push(f"{node.name}@{snap}", remote=remote[0] if remote else "default")


async def get_hydration(control, node):
    return control.hydration_status(node.name)


# -- snapshots/NAME/SNAP ------------------------------------------------------------
async def get_labels(control, node):
    return control.snapshot_info(node.name)["labels"]


async def set_label(control, node, value):
    """'key=value [key2=value2 ...]' merged into the snapshot's labels."""
    await control.set_labels(node.name, parse_labels(_words(value, "label", 1, 64)))


# -- the mount root -----------------------------------------------------------------
async def set_pull(control, node, value):
    """'VOLUME@SNAP NEWNAME [REMOTE]': restore a remote snapshot as a new
    volume, usable at once (hydrated in the background)."""
    snap, new, *remote = _words(value, "pull", 2, 3)
    split_snapshot(snap, "remote snapshot")
    check_name(new, "new volume")
    await control.pull(snap, new, remote=remote[0] if remote else "default")


async def set_delete(control, node, value):
    """'deferred' (hidden now, freed when the last open handle closes) or
    'now' (refused while open, like rm); volumes also take 'recursive'."""
    words = set(_words(value, "delete", 1, 2))
    allowed = {"now", "deferred"} | ({"recursive"} if node.kind == VOLUME else set())
    if not words <= allowed or len(words & {"now", "deferred"}) != 1:
        raise InvalidArgument(f"user.rokfs.delete takes {' | '.join(sorted(allowed))}, "
                              f"not {value!r}")
    defer = "deferred" in words
    if node.kind == VOLUME:
        await control.delete_volume(node.name, recursive="recursive" in words, defer=defer)
    else:
        await control.delete_snapshot(node.name, defer=defer)


async def get_policy(control, node):
    """The volume's policy as JSON (rokctl policy show), null when it has none."""
    try:
        return control.show_policy(node.name)
    except NotFound:
        return None


async def set_policy(control, node, value):
    """A policy spec, as `rokctl policy set VOL SPEC` takes it; 'none' removes it."""
    if value == "none":
        await control.delete_policy(node.name)
    else:
        await control.set_policy(node.name, value)


async def get_pool(control, node):
    return control.status()


_V, _S, _R = frozenset({VOLUME}), frozenset({SNAPSHOT}), frozenset({ROOT})

XATTRS = {
    "snapshot": Attr(_V, set=set_snapshot, help="SNAP [k=v ...]: snapshot the volume"),
    "clone": Attr(_V, set=set_clone, help="NEW [SNAP]: clone the volume (or SNAP) as NEW"),
    "resize": Attr(_V, set=set_resize, help="SIZE (e.g. 20G): resize the volume"),
    "info": Attr(_V | _S, get=get_info, help="JSON: size, allocated, exclusive, shared, ..."),
    "snapshots": Attr(_V, get=get_snapshots, help="JSON list of the volume's snapshots"),
    "labels": Attr(_S, get=get_labels, help="JSON object of the snapshot's labels"),
    "label": Attr(_S, set=set_label, help="k=v [k2=v2 ...]: add or change labels"),
    "push": Attr(_V, set=set_push, help="SNAP [REMOTE]: push snapshot SNAP to the remote"),
    "hydration": Attr(_V, get=get_hydration, help="JSON: chunks/bytes hydrated, rate, state"),
    "delete": Attr(_V | _S, set=set_delete,
                   help="deferred | now [recursive]: delete (deferred: freed on last close)"),
    "policy": Attr(_V, get=get_policy, set=set_policy,
                   help="SPEC (e.g. 'every 15m keep-last 4 keep-daily 7') | none: the "
                   "volume's snapshot policy; get: JSON"),
    "pool": Attr(_R, get=get_pool, help="JSON: the pool's status and space"),
    "pull": Attr(_R, set=set_pull, help="VOL@SNAP NEW [REMOTE]: restore a remote snapshot"),
}


def lookup(raw_name, kind):
    """The Attr for a raw xattr name on a node kind, or None."""
    name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else raw_name
    if not name.startswith(PREFIX):
        return None
    attr = XATTRS.get(name[len(PREFIX):])
    return attr if attr is not None and kind in attr.kinds else None


def names_for(kind):
    return [(PREFIX + n).encode() for n, a in XATTRS.items() if kind in a.kinds]


def encode(value):
    if isinstance(value, str):
        return value.encode()
    return json.dumps(json_view(value), sort_keys=True).encode()


def decode(raw):
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidArgument("xattr value is not UTF-8") from None
