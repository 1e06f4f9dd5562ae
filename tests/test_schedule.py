"""Schedules (rokfs/schedule.py): every form, time zones and DST, bad specs;
cron checked against a minute-by-minute scan."""

import datetime
import zoneinfo

import pytest
from hypothesis import given, settings, strategies as st

from rokfs import errors
from rokfs.schedule import parse_schedule, schedule_from_text

UTC = datetime.timezone.utc
ATHENS = zoneinfo.ZoneInfo("Europe/Athens")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def at(text, tz=UTC):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def next_run(spec, after, tz=UTC):
    t = schedule_from_text(spec).next_after(at(after, tz), tz)
    return datetime.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M %a")


@pytest.mark.parametrize("spec, after, expected", [
    ("every 15m", "2026-01-01 00:07", "2026-01-01 00:15 Thu"),
    ("every 15m", "2026-01-01 00:15", "2026-01-01 00:30 Thu"),      # strictly after
    ("every 15m", "2026-01-01 23:59:59.5", "2026-01-02 00:00 Fri"),
    ("every 2h", "2026-01-01 03:00", "2026-01-01 04:00 Thu"),
    ("every 1d", "2026-01-01 03:00", "2026-01-02 00:00 Fri"),
    ("hourly", "2026-01-01 03:00", "2026-01-01 04:00 Thu"),
    ("hourly", "2026-01-01 03:59", "2026-01-01 04:00 Thu"),
    ("daily 02:00", "2026-01-01 01:59", "2026-01-01 02:00 Thu"),
    ("daily 02:00", "2026-01-01 02:00", "2026-01-02 02:00 Fri"),
    ("daily 2:30", "2026-01-01 03:00", "2026-01-02 02:30 Fri"),
    ("daily", "2026-01-01 03:00", "2026-01-02 00:00 Fri"),
    ("cron 0 2 * * 1-5", "2026-01-02 03:00", "2026-01-05 02:00 Mon"),   # Fri -> Mon
    ("*/20 9-17 * * mon-fri", "2026-01-02 17:45", "2026-01-05 09:00 Mon"),
    ("10-30/10 * * * *", "2026-01-01 00:25", "2026-01-01 00:30 Thu"),
    ("5,35 */6 * * *", "2026-01-01 06:40", "2026-01-01 12:05 Thu"),
    ("0 0 13 * fri", "2026-01-10 00:00", "2026-01-13 00:00 Tue"),    # the 13th OR a Friday
    ("0 0 13 * fri", "2026-01-13 00:00", "2026-01-16 00:00 Fri"),
    ("0 0 * * 7", "2026-01-01 00:00", "2026-01-04 00:00 Sun"),       # 7 is Sunday
    ("0 12 1 jan,jul *", "2026-02-01 00:00", "2026-07-01 12:00 Wed"),
    ("0 0 29 2 *", "2026-01-01 00:00", "2028-02-29 00:00 Tue"),      # the next leap day
])
def test_next_run_of_every_form(spec, after, expected):
    assert next_run(spec, after) == expected


def test_wall_clock_forms_follow_the_time_zone_and_intervals_do_not():
    assert next_run("daily 02:00", "2026-01-01 03:00", ATHENS) == "2026-01-02 02:00 Fri"
    t = schedule_from_text("daily 02:00").next_after(at("2026-01-01 03:00", ATHENS), ATHENS)
    assert datetime.datetime.fromtimestamp(t, UTC).hour == 0          # UTC+2 in winter
    t = schedule_from_text("every 1d").next_after(at("2026-01-01 03:00", ATHENS), ATHENS)
    assert datetime.datetime.fromtimestamp(t, UTC).hour == 0          # epoch-aligned


def test_daylight_saving_time_runs_a_missing_time_late_and_a_doubled_one_once():
    spring = schedule_from_text("30 2 * * *")       # 2026-03-08 02:30 does not exist in NY
    t = spring.next_after(at("2026-03-08 00:00", NEW_YORK), NEW_YORK)
    assert datetime.datetime.fromtimestamp(t, NEW_YORK).strftime("%d %H:%M") == "08 03:30"
    autumn = schedule_from_text("30 1 * * *")       # 2026-11-01 01:30 happens twice
    first = autumn.next_after(at("2026-11-01 00:00", NEW_YORK), NEW_YORK)
    second = autumn.next_after(first, NEW_YORK)
    assert second - first == 25 * 3600              # the next day's, not the repeat


CRON_SPECS = ["*/20 9-17 * * mon-fri", "0 0 13 * fri", "15 3 1-7 * 1", "0 */5 * 2,6 *",
              "59 23 31 * *", "0 12 * * 0"]


@settings(max_examples=60, deadline=None)
@given(spec=st.sampled_from(CRON_SPECS),
       t=st.floats(min_value=at("2026-01-01 00:00"), max_value=at("2027-12-31 00:00")))
def test_cron_next_run_is_the_first_matching_minute(spec, t):
    got = schedule_from_text(spec).next_after(t, UTC)
    assert got > t
    minute = (int(t // 60) + 1) * 60
    while not _matches(spec, minute):
        minute += 60
    assert got == minute


def _matches(spec, t):
    """An independent reading of the cron specs above, for the scan."""
    d = datetime.datetime.fromtimestamp(t, UTC)
    dow = d.isoweekday() % 7
    return {
        "*/20 9-17 * * mon-fri": d.minute % 20 == 0 and 9 <= d.hour <= 17 and 1 <= dow <= 5,
        "0 0 13 * fri": d.minute == 0 and d.hour == 0 and (d.day == 13 or dow == 5),
        "15 3 1-7 * 1": d.minute == 15 and d.hour == 3 and (d.day <= 7 or dow == 1),
        "0 */5 * 2,6 *": d.minute == 0 and d.hour % 5 == 0 and d.month in (2, 6),
        "59 23 31 * *": d.minute == 59 and d.hour == 23 and d.day == 31,
        "0 12 * * 0": d.minute == 0 and d.hour == 12 and dow == 0,
    }[spec]


@pytest.mark.parametrize("spec, message", [
    ("", "no schedule"),
    ("weekly", "unknown schedule 'weekly'"),
    ("every", "every: expected an interval like 15m, 2h or 1d, got nothing"),
    ("every 15x", "got '15x'"),
    ("every 0m", "got '0m'"),
    ("every 15", "got '15'"),
    ("daily 25:00", "daily: '25:00' is not a time HH:MM"),
    ("daily 2", "daily: '2' is not a time"),
    ("daily 02:60", "'02:60' is not a time"),
    ("cron 0 2 * *", "expected 5 fields"),
    ("61 * * * *", "cron minute field '61': '61' is not a number from 0 to 59"),
    ("0 24 * * *", "cron hour field '24'"),
    ("0 0 0 * *", "cron day of month field '0'"),
    ("0 0 * 13 *", "cron month field '13'"),
    ("0 0 * foo *", "'foo' is not a number from 1 to 12 or jan..dec"),
    ("0 0 * * 8", "cron day of week field '8'"),
    ("5-1 * * * *", "range '5-1' runs backwards"),
    ("*/0 * * * *", "cron minute step field '*/0'"),
    ("1,,2 * * * *", "'' is not a number"),
    ("0 0 31 2 *", "never runs"),
    ("every 15m and more", "unexpected 'and more' after 'every 15m'"),
])
def test_bad_schedules_name_the_bad_part(spec, message):
    with pytest.raises(errors.InvalidArgument) as exc:
        schedule_from_text(spec)
    assert message in str(exc.value)


def test_parse_schedule_says_how_many_words_it_used():
    assert parse_schedule("every 15m keep-last 4".split())[1] == 2
    assert parse_schedule("hourly keep-last 4".split())[1] == 1
    assert parse_schedule("daily keep-last 4".split())[1] == 1
    assert parse_schedule("daily 02:00 label a=b".split())[1] == 2
    assert parse_schedule("0 2 * * * push r".split())[1] == 5
    assert parse_schedule("cron 0 2 * * * push r".split())[1] == 6
