"""Policy specs (rokfs/policy.py): clauses in any order, one canonical text,
the names and labels of a policy's snapshots."""

import datetime

import pytest

from rokfs import errors
from rokfs.policy import (AT_LABEL, POLICY_LABEL, parse_policy, snapshot_labels,
                          snapshot_stem, taken_at)
from rokfs.retention import UNLIMITED, Rules, Within

T = datetime.datetime(2026, 3, 30, 14, 5, 9, tzinfo=datetime.timezone.utc).timestamp()


@pytest.mark.parametrize("spec, canonical", [
    ("every 15m", "every 15m"),
    ("keep-daily 7 every 15m keep-last 4", "every 15m keep-last 4 keep-daily 7"),
    ("daily 2:30 label b=2 label a=1 push archive",
     "daily 02:30 label a=1 label b=2 push archive"),
    ("*/5 * * * 1-5 keep-within 1y2m tz UTC", "cron */5 * * * 1-5 keep-within 1y2m tz UTC"),
    ("tz Europe/Athens hourly volumes a,b keep-weekly unlimited",
     "volumes a,b hourly keep-weekly unlimited tz Europe/Athens"),
])
def test_clauses_in_any_order_give_one_canonical_text(spec, canonical):
    policy = parse_policy(spec)
    assert policy.text() == canonical
    assert parse_policy(canonical) == policy


def test_the_parts_of_a_policy():
    policy = parse_policy("volumes a,b every 1h keep-last 3 keep-monthly unlimited "
                          "keep-within 2d label k=v push s3 tz UTC")
    assert policy.rules == Rules(last=3, monthly=UNLIMITED, within=Within(days=2))
    assert (policy.volumes, policy.push, policy.labels) == (("a", "b"), "s3", (("k", "v"),))
    assert policy.describe()["keep"] == {"last": 3, "monthly": "unlimited", "within": "2d"}


def test_names_and_labels_of_the_snapshots_a_policy_takes():
    volume = parse_policy("hourly label team=ml tz UTC")
    assert snapshot_stem(volume, "data", T) == "auto-20260330-1405"
    labels = snapshot_labels(volume, "data", T)
    assert labels == {"team": "ml", POLICY_LABEL: "data", AT_LABEL: "2026-03-30T14:05:09Z"}
    assert taken_at(labels, created=0) == T and taken_at({}, created=5) == 5
    group = parse_policy("volumes a,b hourly tz Europe/Athens")
    assert snapshot_stem(group, "env", T) == "env-20260330-1705"     # in the policy's zone


@pytest.mark.parametrize("spec, message", [
    ("", "empty policy"),
    ("keep-last 4", "has no schedule"),
    ("every 15m hourly", "schedule given twice"),
    ("every 15m keep-last 1 keep-last 2", "keep-last given twice"),
    ("every 15m keep-lots 3", "unknown rule keep-lots"),
    ("every 15m keep-last", "keep-last: expected a number or 'unlimited', got nothing"),
    ("every 15m frobnicate", "unknown word 'frobnicate'"),
    ("every 15m label x", "invalid label 'x'"),
    ("every 15m label rokfs.policy.at=x", "keys under 'rokfs.' are the policy's own"),
    ("every 15m push", "push needs a remote"),
    ("every 15m volumes a,a", "volumes needs distinct names"),
    ("every 15m volumes A", "invalid volume name 'A'"),
    ("every 15m tz Mars/Base", "tz 'Mars/Base' is not a time zone"),
    ("daily 24:00", "daily: '24:00' is not a time"),
])
def test_bad_specs_name_the_bad_part(spec, message):
    with pytest.raises(errors.InvalidArgument, match=message):
        parse_policy(spec)
