"""Name rules (DESIGN.md): volumes `[a-z0-9][a-z0-9._-]{0,62}`, snapshots
`VOLUME@SNAP` with the same rule for SNAP, labels free key=value pairs.

Invariants:
- Every refusal is InvalidArgument naming the field that is wrong (`what`:
  "volume", "new volume", "snapshot", a label's key or value), and, for a
  part of VOLUME@SNAP, the whole name it is part of.
"""

import re

from .errors import InvalidArgument

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_LABEL_VALUE = 256


def check_name(name, what="volume", within=None):
    """Return `name` if it is a valid volume or snapshot name, else raise
    naming the field (`what`) and the VOLUME@SNAP it is part of (`within`)."""
    if not is_name(name):
        where = f" in {within!r}" if within else ""
        raise InvalidArgument(
            f"invalid {what} name {name!r}{where}: use 1-63 characters of a-z 0-9 . _ -, "
            "starting with a letter or digit")
    return name


def is_name(text):
    """Does `text` follow the volume name rule (also that of remote names)?"""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def split_snapshot(full, what="snapshot"):
    """'vol@snap' -> ('vol', 'snap'), both validated."""
    if not isinstance(full, str) or full.count("@") != 1:
        raise InvalidArgument(f"invalid {what} name {full!r}: expected VOLUME@SNAP")
    volume, snap = full.split("@")
    return check_name(volume, "volume", full), check_name(snap, "snapshot", full)


def check_labels(labels):
    """Validate a dict of labels; returns a plain dict of str -> str."""
    out = {}
    for key, value in dict(labels or {}).items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"invalid label key {key!r}: use 1-63 characters of "
                                  "A-Z a-z 0-9 . _ / -, starting with a letter or digit")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or "\n" in value:
            raise InvalidArgument(f"invalid value for label {key!r}: a string of at most "
                                  f"{MAX_LABEL_VALUE} characters on one line")
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


def check_bucket(name, what="bucket"):
    """`TEAM/NAME`, each part a volume-style name; InvalidArgument otherwise."""
    if not isinstance(name, str) or name.count("/") != 1:
        raise InvalidArgument(f"{what} {name!r} must be TEAM/NAME (such as team/exp1)")
    team, rest = name.split("/")
    check_name(team, f"{what} team")
    check_name(rest, f"{what} name")
    return name
