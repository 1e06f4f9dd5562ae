"""Retention (rokfs/retention.py): the rules of `restic forget`, one by one,
with the reason given for every snapshot kept."""

import datetime
import zoneinfo

import pytest

from rokfs import errors
from rokfs.retention import UNLIMITED, Rules, Within, judge, parse_count, parse_within

UTC = datetime.timezone.utc


def at(text, tz=UTC):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def snaps(*texts):
    """Snapshots named by their time: ('2026-01-01 10:00', t)."""
    return [(text, at(text)) for text in texts]


def kept(snapshots, rules, tz=UTC):
    return [v.name for v in judge(snapshots, rules, tz) if v.keep]


def reasons(snapshots, rules, tz=UTC):
    return {v.name: v.reasons for v in judge(snapshots, rules, tz)}


def test_no_rule_keeps_everything():
    s = snaps("2026-01-01 10:00", "2026-01-01 11:00")
    assert kept(s, Rules()) == ["2026-01-01 11:00", "2026-01-01 10:00"]
    assert reasons(s, Rules())["2026-01-01 10:00"] == ["no retention rule"]


def test_keep_last_keeps_the_newest_n_whatever_the_input_order():
    s = snaps("2026-01-01 12:00", "2026-01-01 10:00", "2026-01-01 13:00", "2026-01-01 11:00")
    assert kept(s, Rules(last=2)) == ["2026-01-01 13:00", "2026-01-01 12:00"]
    assert kept(s, Rules(last=10)) == sorted((n for n, _ in s), reverse=True)
    assert kept(s, Rules(last=UNLIMITED)) == sorted((n for n, _ in s), reverse=True)


def test_keep_hourly_keeps_the_newest_of_each_hour_and_skips_empty_hours():
    s = snaps("2026-01-01 10:05", "2026-01-01 10:50", "2026-01-01 11:10",
              "2026-01-01 14:00", "2026-01-01 14:30")
    assert kept(s, Rules(hourly=2)) == ["2026-01-01 14:30", "2026-01-01 11:10"]
    assert reasons(s, Rules(hourly=2))["2026-01-01 11:10"] == ["hourly 2026-01-01T11"]


def test_a_count_not_used_up_keeps_the_oldest_snapshot_too():
    s = snaps("2026-01-01 10:05", "2026-01-01 10:50", "2026-01-02 09:00")
    assert kept(s, Rules(daily=7)) == ["2026-01-02 09:00", "2026-01-01 10:50",
                                       "2026-01-01 10:05"]
    assert reasons(s, Rules(daily=7))["2026-01-01 10:05"] == ["oldest, keep-daily not used up"]
    assert kept(s, Rules(daily=2)) == ["2026-01-02 09:00", "2026-01-01 10:50"]   # used up
    assert kept(s, Rules(daily=UNLIMITED))[-1] == "2026-01-01 10:05"


def test_keep_weekly_uses_iso_weeks_monday_to_sunday():
    s = snaps("2026-01-03 10:00", "2026-01-04 10:00", "2026-01-05 10:00", "2026-01-06 10:00")
    assert kept(s, Rules(weekly=2)) == ["2026-01-06 10:00", "2026-01-04 10:00"]
    assert reasons(s, Rules(weekly=2))["2026-01-04 10:00"] == ["weekly 2026-W01"]


def test_keep_monthly_and_yearly():
    s = snaps("2025-11-30 10:00", "2025-12-01 10:00", "2025-12-31 10:00", "2026-01-15 10:00")
    assert kept(s, Rules(monthly=2)) == ["2026-01-15 10:00", "2025-12-31 10:00"]
    assert kept(s, Rules(yearly=1)) == ["2026-01-15 10:00"]
    assert reasons(s, Rules(yearly=3))["2025-12-31 10:00"] == ["yearly 2025"]


def test_rules_add_up_and_each_kept_snapshot_says_why():
    s = snaps("2026-01-01 10:00", "2026-01-01 11:00", "2026-01-02 10:00", "2026-01-02 11:00")
    got = reasons(s, Rules(last=1, daily=2))
    assert got == {"2026-01-02 11:00": ["last", "daily 2026-01-02"],
                   "2026-01-02 10:00": [],
                   "2026-01-01 11:00": ["daily 2026-01-01"],
                   "2026-01-01 10:00": []}
    assert [v.keep for v in judge(s, Rules(last=1, daily=2))] == [True, False, True, False]


def test_keep_within_counts_back_from_the_newest_snapshot_not_from_now():
    s = snaps("2020-01-01 00:00", "2020-01-02 12:00", "2020-01-03 00:00")
    assert kept(s, Rules(within=Within(days=1))) == ["2020-01-03 00:00", "2020-01-02 12:00"]
    assert kept(s, Rules(within=Within(hours=12))) == ["2020-01-03 00:00"]   # strictly newer
    assert reasons(s, Rules(within=Within(days=2)))["2020-01-02 12:00"] == [
        "within 2d of the newest"]


def test_keep_within_months_go_by_the_calendar_like_go_adddate():
    within = Within(months=1)
    assert within.cutoff(at("2026-03-31 12:00"), UTC) == at("2026-03-03 12:00")
    assert Within(days=5).cutoff(at("2026-03-03 12:00"), UTC) == at("2026-02-26 12:00")
    assert Within(years=1, hours=1).cutoff(at("2028-02-29 00:00"), UTC) == \
        at("2027-02-28 23:00")


def test_periods_are_read_in_the_time_zone_given():
    athens = zoneinfo.ZoneInfo("Europe/Athens")
    s = snaps("2026-01-01 21:00", "2026-01-01 23:00")      # 23:00 and 01:00 in Athens
    assert kept(s, Rules(daily=1), UTC) == ["2026-01-01 23:00"]
    assert kept(s, Rules(daily=5), athens) == ["2026-01-01 23:00", "2026-01-01 21:00"]


def test_empty_input():
    assert judge([], Rules(last=3, daily=2, within=Within(days=1))) == []


@pytest.mark.parametrize("text, message", [
    (None, "expected a number or 'unlimited', got nothing"),
    ("-1", "got '-1'"), ("four", "got 'four'"), ("1.5", "got '1.5'")])
def test_bad_counts(text, message):
    with pytest.raises(errors.InvalidArgument, match=f"keep-daily: .*{message}"):
        parse_count("daily", text)


def test_counts_and_durations_parse():
    assert parse_count("last", "7") == 7 and parse_count("last", "unlimited") == UNLIMITED
    assert parse_within("1y2m3d4h") == Within(1, 2, 3, 4)
    assert parse_within("36h") == Within(hours=36) and str(Within(0, 2, 0, 5)) == "2m5h"


@pytest.mark.parametrize("text", [None, "", "0d", "2w", "1d1y", "d", "1.5d", "3 d"])
def test_bad_durations(text):
    with pytest.raises(errors.InvalidArgument, match="keep-within: expected a duration"):
        parse_within(text)
