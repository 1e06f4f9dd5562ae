"""Name rules (DESIGN.md): volumes `[a-z0-9][a-z0-9._-]{0,62}`, snapshots
`VOLUME@SNAP` with the same rule for SNAP, labels free key=value pairs."""

import re

from .errors import InvalidArgument

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_LABEL_VALUE = 256


def check_name(name, what="volume"):
    """Return `name` if it is a valid volume or snapshot name, else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid {what} name {name!r}: use 1-63 characters of a-z 0-9 . _ -, "
            "starting with a letter or digit")
    return name


def split_snapshot(full):
    """'vol@snap' -> ('vol', 'snap'), both validated."""
    if not isinstance(full, str) or full.count("@") != 1:
        raise InvalidArgument(f"invalid snapshot name {full!r}: expected VOLUME@SNAP")
    volume, snap = full.split("@")
    return check_name(volume), check_name(snap, "snapshot")


def check_labels(labels):
    """Validate a dict of labels; returns a plain dict of str -> str."""
    out = {}
    for key, value in dict(labels or {}).items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"invalid label key {key!r}")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or "\n" in value:
            raise InvalidArgument(f"invalid value for label {key!r}")
        out[key] = value
    return out


def parse_labels(items):
    """['k=v', ...] -> {'k': 'v'}; each item must contain '='."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return check_labels(labels)
