"""When a policy runs: schedules parsed from words, and the next run after a time.

Forms (one per policy):
    every N(m|h|d)   at the multiples of N since 1970-01-01 00:00 UTC
                     (`every 15m` runs at :00, :15, :30 and :45)
    hourly           at minute 0 of every hour (cron `0 * * * *`)
    daily [HH:MM]    every day at HH:MM, 00:00 when not given
    cron M H DOM MON DOW, or the five fields alone (the first one starts
                     with a digit or `*`): Vixie cron syntax, with numbers,
                     `*`, ranges `a-b`, steps `/n`, lists `a,b` and names
                     (jan..dec, sun..sat; 7 is Sunday too). When both DOM
                     and DOW are restricted a day matching either runs.

Invariants:
- Pure: no clock, no I/O. Times are POSIX seconds; wall-clock forms (hourly,
  daily, cron) are read in the time zone given to `next_after`.
- `next_after(t, tz)` is strictly greater than t, and is a time the
  schedule names: it is exact, whatever t is (a missed slot is never
  returned: a caller that was away asks once and gets the next one).
- A schedule that parses has a next run: a cron expression no date can
  meet (`0 0 31 2 *`) is refused when parsed.
- Bad input raises InvalidArgument naming the bad word and what fits.
"""

import dataclasses
import datetime
import re

from .errors import InvalidArgument

FORMS = "every N(m|h|d), hourly, daily [HH:MM] or a 5-field cron expression"
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_SEARCH_DAYS = 366 * 9          # cron dates repeat within 8 years (Feb 29 around 2100)
_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_DAYS = "sun mon tue wed thu fri sat".split()
_CRON_FIELDS = [   # name, low, high, names (index + low)
    ("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS)]


@dataclasses.dataclass(frozen=True)
class Interval:
    """every N seconds, aligned on the epoch."""

    seconds: int
    text: str

    def next_after(self, t, tz=None):
        return (int(t // self.seconds) + 1) * self.seconds


@dataclasses.dataclass(frozen=True)
class Cron:
    """Five cron fields: minutes and hours sorted, the others as sets;
    `dom_star`/`dow_star` say which day fields were `*`."""

    minutes: tuple
    hours: tuple
    days: frozenset
    months: frozenset
    weekdays: frozenset         # 0 = Sunday
    dom_star: bool
    dow_star: bool
    text: str

    def next_after(self, t, tz=None):
        start = datetime.datetime.fromtimestamp(t, tz).replace(second=0, microsecond=0,
                                                                 fold=0)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if self.runs_on(day):
                found = self._first_on(day, start, t, tz)
                if found is not None:
                    return found
            day += datetime.timedelta(days=1)
        raise InvalidArgument(f"schedule {self.text!r} never runs")

    def runs_on(self, day):
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def _first_on(self, day, start, t, tz):
        """The first time on `day` after `t` (at or after `start`'s minute)."""
        for hour in self.hours:
            if day == start.date() and hour < start.hour:
                continue
            for minute in self.minutes:
                when = datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
                stamp = when.timestamp()
                if stamp > t:
                    return stamp
        return None


def schedule_from_text(text):
    """The schedule that is all of `text` ('every 15m', '0 2 * * 1-5', ...)."""
    words = str(text).split()
    schedule, used = parse_schedule(words)
    if used != len(words):
        raise InvalidArgument(f"schedule {text!r}: unexpected {' '.join(words[used:])!r} "
                              f"after {schedule.text!r}")
    return schedule


def parse_schedule(words):
    """Schedule from a list of words (see FORMS); returns (schedule, words used)."""
    if not words:
        raise InvalidArgument(f"no schedule: use {FORMS}")
    head = words[0]
    if head == "every":
        return _every(words[1:2]), 2
    if head == "hourly":
        return _cron("0 * * * *".split(), "hourly"), 1
    if head == "daily":
        if len(words) > 1 and re.fullmatch(r"[\d:]+", words[1]):
            return _daily(words[1]), 2
        return _daily("00:00"), 1
    if head == "cron":
        return _cron(words[1:6], "cron " + " ".join(words[1:6])), 6
    if looks_like_cron(head):
        return _cron(words[:5], "cron " + " ".join(words[:5])), 5
    raise InvalidArgument(f"unknown schedule {head!r}: use {FORMS}")


def looks_like_cron(word):
    """Does `word` start a bare cron expression (a minute field)?"""
    return bool(word) and (word[0].isdigit() or word[0] == "*")


def _every(rest):
    m = re.fullmatch(r"([1-9]\d{0,5})([mhd])", rest[0]) if rest else None
    if m is None:
        got = repr(rest[0]) if rest else "nothing"
        raise InvalidArgument(f"every: expected an interval like 15m, 2h or 1d, got {got}")
    return Interval(int(m.group(1)) * _UNIT_SECONDS[m.group(2)], f"every {rest[0]}")


def _daily(clock):
    m = re.fullmatch(r"(\d{1,2}):(\d\d)", clock)
    hour, minute = (int(m.group(1)), int(m.group(2))) if m else (99, 99)
    if hour > 23 or minute > 59:
        raise InvalidArgument(f"daily: {clock!r} is not a time HH:MM (00:00 to 23:59)")
    return _cron([str(minute), str(hour), "*", "*", "*"], f"daily {hour:02d}:{minute:02d}")


def _cron(fields, text):
    if len(fields) != 5:
        raise InvalidArgument(f"cron: expected 5 fields (minute hour day-of-month month "
                              f"day-of-week), got {len(fields)}: {' '.join(fields)!r}")
    sets = [_cron_field(field, *spec) for field, spec in zip(fields, _CRON_FIELDS)]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(tuple(sorted(sets[0])), tuple(sorted(sets[1])), sets[2], sets[3], weekdays,
                fields[2] == "*", fields[4] == "*", text)
    cron.next_after(0, datetime.timezone.utc)         # refuses a date no year has
    return cron


def _cron_field(field, name, low, high, names):
    values = set()
    for part in field.lower().split(","):
        values |= _cron_part(part, field, name, low, high, names)
    return frozenset(values)


def _cron_part(part, field, name, low, high, names):
    span, _, step = part.partition("/")
    if span == "*":
        first, last = low, high
    else:
        first_text, dash, last_text = span.partition("-")
        first = _cron_value(first_text, field, name, low, high, names)
        last = _cron_value(last_text, field, name, low, high, names) if dash else \
            (high if step else first)
    every = _cron_value(step, field, f"{name} step", 1, high - low + 1, None) if step else 1
    if first > last:
        raise InvalidArgument(f"cron {name} field {field!r}: range {span!r} runs backwards")
    return set(range(first, last + 1, every))


def _cron_value(text, field, name, low, high, names):
    if names and text in names:
        return names.index(text) + (1 if name == "month" else 0)
    if not text.isdigit() or not low <= int(text) <= high:
        named = f" or {names[0]}..{names[-1]}" if names else ""
        raise InvalidArgument(f"cron {name} field {field!r}: {text!r} is not a number from "
                              f"{low} to {high}{named}")
    return int(text)
