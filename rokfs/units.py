"""Sizes in human units, both ways: '20G' <-> 21474836480 (binary units)."""

from .errors import InvalidArgument

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text):
    """'64K', '20G', '1.5T', '4096', '20GiB' -> bytes."""
    s = str(text).strip().upper().replace("IB", "").rstrip("B") if text else ""
    number, unit = s, ""
    if s and s[-1] in _UNITS:
        number, unit = s[:-1], s[-1]
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise InvalidArgument(f"invalid size {text!r}: use e.g. 4096, 64K, 20G") from None
    if value < 0 or value != int(value):
        raise InvalidArgument(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n):
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1024 or unit == "P":
            return f"{n:.0f}{unit or 'B'}" if unit == "" or n == int(n) else f"{n:.1f}{unit}"
        n /= 1024
