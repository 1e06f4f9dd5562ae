"""Which snapshots a retention policy keeps, and why: the rules of `restic forget`.

    judge([(name, time), ...], Rules(last=4, daily=7), tz) -> [Verdict], newest first

The rules, applied to one policy's snapshots sorted newest first (time
buckets read in time zone `tz`):
- keep-last N: the N newest.
- keep-hourly/daily/weekly/monthly/yearly N: walking from the newest, the
  first snapshot seen in each hour (day, ISO week, month, year) is kept,
  until N such periods have been kept; periods without snapshots do not
  count. So: the newest snapshot of each of the N newest periods that have one.
- `unlimited` (-1) instead of N: every such period.
- If a count is not used up when the walk reaches the oldest snapshot, the
  oldest is kept too (it stretches the history as far as the count allows).
- keep-within DURATION (`1y2m3d4h`: years, months, days, hours): every
  snapshot newer than the newest one minus DURATION (calendar arithmetic
  for years, months and days, as Go's AddDate: Mar 31 - 1m = Mar 3).
- A snapshot any rule keeps is kept; one no rule keeps is deleted. No rule
  at all keeps everything (a policy without retention never deletes).

Invariants:
- Pure: same input, same verdicts; no clock (keep-within counts back from
  the newest snapshot, not from now) and no I/O.
- Every kept snapshot carries at least one reason; a deleted one none.
- Bad rules raise InvalidArgument naming the rule and the bad value.
"""

import collections
import dataclasses
import datetime
import re

from .errors import InvalidArgument

UNLIMITED = -1
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
RULES = ("last", *PERIODS, "within")


class Within(collections.namedtuple("Within", "years months days hours", defaults=(0,) * 4)):
    """A keep-within duration: calendar years, months, days, then hours."""

    def __str__(self):
        return "".join(f"{n}{unit}" for n, unit in zip(self, "ymdh") if n)

    def cutoff(self, newest, tz):
        """`newest` minus this duration (calendar years/months/days, then hours)."""
        local = datetime.datetime.fromtimestamp(newest, tz)
        month0 = local.year * 12 + local.month - 1 - self.years * 12 - self.months
        first = local.replace(year=month0 // 12, month=month0 % 12 + 1, day=1)
        moved = first + datetime.timedelta(days=local.day - 1 - self.days)
        return moved.timestamp() - self.hours * 3600


@dataclasses.dataclass(frozen=True)
class Rules:
    """Counts (0 = rule off, UNLIMITED = every period) and keep-within."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Within = None

    def empty(self):
        return self == Rules()

    def words(self):
        """The rules as spec words: ['keep-last', '4', 'keep-within', '2d']."""
        out = []
        for rule in RULES:
            value = getattr(self, rule)
            if value:
                out += [f"keep-{rule}", "unlimited" if value == UNLIMITED else str(value)]
        return out


@dataclasses.dataclass
class Verdict:
    name: str
    time: float
    keep: bool
    reasons: list
    local: datetime.datetime = dataclasses.field(default=None, repr=False, compare=False)


_PERIOD_KEY = {    # period -> (bucket key of a local time, its text)
    "hourly": (lambda d: (d.year, d.month, d.day, d.hour), "%Y-%m-%dT%H"),
    "daily": (lambda d: (d.year, d.month, d.day), "%Y-%m-%d"),
    "weekly": (lambda d: d.isocalendar()[:2], None),
    "monthly": (lambda d: (d.year, d.month), "%Y-%m"),
    "yearly": (lambda d: d.year, "%Y"),
}


def parse_count(rule, text):
    """'4' or 'unlimited' for keep-RULE."""
    if text == "unlimited":
        return UNLIMITED
    if text is None or not re.fullmatch(r"\d{1,9}", text):
        raise InvalidArgument(f"keep-{rule}: expected a number or 'unlimited', got "
                              f"{'nothing' if text is None else repr(text)}")
    return int(text)


def parse_within(text):
    """'1y2m3d4h' (any of the parts, each once, in this order) -> Within."""
    m = re.fullmatch(r"(?:(\d{1,4})y)?(?:(\d{1,5})m)?(?:(\d{1,6})d)?(?:(\d{1,7})h)?", text or "")
    if not text or m is None or not any(int(g or 0) for g in m.groups()):
        raise InvalidArgument(f"keep-within: expected a duration like 2d, 12h or 1y6m, got "
                              f"{'nothing' if text is None else repr(text)}")
    return Within(*(int(g or 0) for g in m.groups()))


def judge(snapshots, rules, tz=None):
    """[Verdict] for [(name, time)], newest first (ties: by name, descending)."""
    ordered = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)
    verdicts = [Verdict(name, time, False, [], datetime.datetime.fromtimestamp(time, tz))
                for name, time in ordered]
    if rules.empty():
        for v in verdicts:
            v.keep, v.reasons = True, ["no retention rule"]
        return verdicts
    _keep_last(verdicts, rules.last)
    for period in PERIODS:
        _keep_periods(verdicts, period, getattr(rules, period))
    if rules.within and verdicts:
        _keep_within(verdicts, rules.within, tz)
    for v in verdicts:
        v.keep = bool(v.reasons)
    return verdicts


def _keep_last(verdicts, count):
    for nr, v in enumerate(verdicts):
        if count == UNLIMITED or nr < count:
            v.reasons.append("last")


def _keep_periods(verdicts, period, count):
    """Keep the first snapshot seen of each period, newest first, `count` times."""
    key_of, left, seen, kept = _PERIOD_KEY[period][0], count, None, None
    for v in verdicts:
        if left == 0:
            return
        key = key_of(v.local)
        if key != seen:
            seen, kept = key, v
            left -= left != UNLIMITED
            v.reasons.append(f"{period} {_period_text(v.local, period)}")
    if left and verdicts and kept is not verdicts[-1]:
        verdicts[-1].reasons.append(f"oldest, keep-{period} not used up")


def _keep_within(verdicts, within, tz):
    cutoff = within.cutoff(verdicts[0].time, tz)
    for v in verdicts:
        if v.time > cutoff:
            v.reasons.append(f"within {within} of the newest")


def period_of(t, period, tz=None):
    """The period `t` falls in, as text: '2026-03-30T14', '2026-03-30',
    '2026-W13', '2026-03', '2026'."""
    return _period_text(datetime.datetime.fromtimestamp(t, tz), period)


def _period_text(local, period):
    fmt = _PERIOD_KEY[period][1]
    if fmt is None:
        year, week = local.isocalendar()[:2]
        return f"{year}-W{week:02d}"
    return local.strftime(fmt)
