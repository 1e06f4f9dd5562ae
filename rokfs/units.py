"""Sizes and times for people and for scripts.

Invariants:
- Sizes are binary units both ways: '20G' <-> 21474836480. `parse_size`
  accepts digits with an optional fraction and unit (B, K, M, G, T, P,
  optionally followed by iB or B) and nothing else: no sign, exponent, nan
  or inf; a result that is not a whole number of bytes is refused.
  Every refusal is InvalidArgument naming the field.
- Times are seconds since the epoch inside rokfs. Human output shows them
  in local time (`format_time`); JSON output as ISO-8601 in UTC
  (`iso_time`), next to the number itself (`json_view`).
"""

import datetime
import decimal
import re

from .errors import InvalidArgument

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) *(?:([KMGTP])(?:I?B)?|B?)", re.IGNORECASE | re.ASCII)
TIME_FIELDS = ("created",)


def parse_size(text, what="size"):
    """'64K', '20G', '1.5T', '4096', '20GiB' -> bytes."""
    match = _SIZE.fullmatch(str(text).strip()) if isinstance(text, (str, int)) else None
    if match is None or isinstance(text, bool):
        raise InvalidArgument(f"invalid {what} {text!r}: use e.g. 4096, 64K, 20G, 1.5T")
    number, unit = match.groups()
    value = decimal.Decimal(number) * _UNITS[(unit or "").upper()]
    if value != value.to_integral_value():
        raise InvalidArgument(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n):
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1024 or unit == "P":
            return f"{n:.0f}{unit or 'B'}" if unit == "" or n == int(n) else f"{n:.1f}{unit}"
        n /= 1024


def format_time(epoch):
    """Local time for people: '2026-01-01 10:00:00'; '' for none."""
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(epoch):
    """ISO-8601 in UTC with milliseconds: '2026-01-01T09:00:00.000Z'."""
    utc = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_view(value):
    """`value` for JSON output: every time field (TIME_FIELDS) as ISO-8601,
    its number kept as FIELD_epoch (jq's date functions, for one, take no
    fractional seconds)."""
    if isinstance(value, list):
        return [json_view(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if key in TIME_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key], out[f"{key}_epoch"] = iso_time(v), v
        else:
            out[key] = json_view(v)
    return out
