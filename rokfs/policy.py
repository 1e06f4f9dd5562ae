"""Snapshot policies as text: one spec, the same for rokctl, the xattr and the client.

    every 15m keep-last 4 keep-daily 7 label tier=gold push archive
    volumes a,b daily 02:00 keep-weekly 4 tz Europe/Athens

A spec is clauses in any order, each at most once (labels repeat):
- a schedule (schedule.py: `every 15m`, `hourly`, `daily 02:00`, `cron M H
  DOM MON DOW` or the five cron fields alone); required;
- retention: `keep-last N`, `keep-hourly N`, `keep-daily N`, `keep-weekly N`,
  `keep-monthly N`, `keep-yearly N` (N or `unlimited`), `keep-within 2d`
  (retention.py); none at all keeps every snapshot;
- `label KEY=VALUE`: set on every snapshot the policy takes;
- `push REMOTE`: push each new snapshot there;
- `publish TEAM/NAME`: publish each new snapshot (a group policy: the group
  snapshot) as the next version of that registry bucket, on the push
  remote if there is one, else the default remote (docs/registry.md);
- `volumes V1,V2`: the policy is a group's: it takes group snapshots of
  these volumes (one consistent cut), named after the group;
- `tz ZONE`: the IANA time zone of the schedule and of retention's periods
  (default: the daemon's local time).

Invariants:
- Pure: parsing and naming need no pool and no clock.
- `parse_policy(p.text())` == p: the canonical text is what is stored.
- Labels under `rokfs.` are the policy's own (POLICY_LABEL names the
  target, AT_LABEL the time the snapshot was taken, by the runner's clock);
  a spec cannot set them, so only the policy's snapshots carry them.
- Bad input raises InvalidArgument naming the bad word and what fits.
"""

import dataclasses
import datetime
import zoneinfo

from . import names, retention, schedule
from .errors import InvalidArgument

POLICY_LABEL = "rokfs.policy"
AT_LABEL = "rokfs.policy.at"
SCHEDULE_WORDS = ("every", "hourly", "daily", "cron")
CLAUSES = ("a schedule", "keep-RULE N", "keep-within DURATION", "label KEY=VALUE",
           "push REMOTE", "publish TEAM/NAME", "volumes V1,V2", "tz ZONE")


@dataclasses.dataclass(frozen=True)
class Policy:
    schedule: object                     # schedule.Interval | schedule.Cron
    rules: retention.Rules = retention.Rules()
    labels: tuple = ()                   # ((key, value), ...) sorted
    push: str = None
    volumes: tuple = ()                  # a group policy's volumes; () for a volume's
    tz: str = None                       # IANA name; None = local time
    publish: str = None                  # a registry bucket, TEAM/NAME

    @property
    def zone(self):
        return zoneinfo.ZoneInfo(self.tz) if self.tz else None

    def text(self):
        words = [f"volumes {','.join(self.volumes)}"] if self.volumes else []
        words += [self.schedule.text, *self.rules.words()]
        words += [f"label {k}={v}" for k, v in self.labels]
        words += [f"push {self.push}"] if self.push else []
        words += [f"publish {self.publish}"] if self.publish else []
        words += [f"tz {self.tz}"] if self.tz else []
        return " ".join(words)

    def describe(self):
        """The policy as JSON-able fields."""
        words = self.rules.words()
        keep = {rule[5:]: int(value) if value.isdigit() else value
                for rule, value in zip(words[::2], words[1::2])}
        return {"spec": self.text(), "schedule": self.schedule.text, "keep": keep,
                "labels": dict(self.labels), "push": self.push, "publish": self.publish,
                "volumes": list(self.volumes), "tz": self.tz or "local"}


def parse_policy(text):
    """A Policy from spec text (see the module's doc)."""
    words = str(text).split()
    if not words:
        raise InvalidArgument(f"empty policy: give {', '.join(CLAUSES)}")
    found, labels, i = {}, {}, 0
    while i < len(words):
        key, value, used = _clause(words, i)
        if key == "label":
            labels.update(value)
        elif key in found:
            raise InvalidArgument(f"policy: {key} given twice")
        else:
            found[key] = value
        i += used
    if "schedule" not in found:
        raise InvalidArgument(f"policy {text!r} has no schedule: use {schedule.FORMS}")
    counts = {k[5:]: v for k, v in found.items() if k.startswith("keep-")}
    return Policy(found["schedule"], retention.Rules(**counts), tuple(sorted(labels.items())),
                  found.get("push"), found.get("volumes", ()), found.get("tz"),
                  found.get("publish"))


def _clause(words, i):
    """(key, value, words used) of the clause starting at words[i]."""
    word, arg = words[i], words[i + 1] if i + 1 < len(words) else None
    if word in SCHEDULE_WORDS or schedule.looks_like_cron(word):
        sched, used = schedule.parse_schedule(words[i:])
        return "schedule", sched, used
    if word.startswith("keep-"):
        return word, _keep(word[5:], arg), 2
    parsers = {"label": _label, "push": _push, "publish": _publish, "volumes": _volumes,
               "tz": _zone}
    if word not in parsers:
        raise InvalidArgument(f"policy: unknown word {word!r}: expected {', '.join(CLAUSES)}")
    return word, parsers[word](arg), 2


def _keep(rule, arg):
    if rule not in retention.RULES:
        raise InvalidArgument(f"policy: unknown rule keep-{rule}: use keep-"
                              f"{', keep-'.join(retention.RULES)}")
    if rule == "within":
        return retention.parse_within(arg)
    return retention.parse_count(rule, arg)


def _label(arg):
    label = names.parse_labels([arg or ""])
    key = next(iter(label))
    if key.startswith("rokfs."):
        raise InvalidArgument(f"policy: label {key!r}: keys under 'rokfs.' are the policy's own")
    return label


def _push(arg):
    if not arg:
        raise InvalidArgument("policy: push needs a remote name or URL")
    return arg


def _publish(arg):
    return names.check_bucket(arg, "policy: publish needs a registry bucket")


def _volumes(arg):
    vols = tuple(names.check_name(v) for v in (arg or "").split(",") if v)
    if not vols or len(set(vols)) != len(vols):
        raise InvalidArgument(f"policy: volumes needs distinct names V1,V2,..., got {arg!r}")
    return vols


def _zone(arg):
    try:
        zoneinfo.ZoneInfo(arg or "")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"policy: tz {arg!r} is not a time zone (e.g. UTC, "
                              "Europe/Athens)") from None
    return arg


# -- the snapshots a policy takes ------------------------------------------------------

def snapshot_labels(policy, target, at):
    """The labels of the snapshot(s) `policy` for `target` takes at time `at`."""
    return {**dict(policy.labels), POLICY_LABEL: target, AT_LABEL: format_time(at)}


def snapshot_stem(policy, target, at):
    """The name of a run's snapshot (VOLUME@auto-...) or group (GROUP-...),
    in the policy's time zone, before any suffix that makes it unique."""
    stamp = datetime.datetime.fromtimestamp(at, policy.zone).strftime("%Y%m%d-%H%M")
    return f"{target[:44]}-{stamp}" if policy.volumes else f"auto-{stamp}"


def format_time(t):
    """POSIX seconds as ISO 8601 UTC, to the microsecond: '2026-01-01T02:15:00Z'."""
    text = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def taken_at(labels, created):
    """When the policy took a snapshot: its AT_LABEL, else `created`."""
    try:
        return datetime.datetime.fromisoformat(labels[AT_LABEL]).timestamp()
    except (KeyError, ValueError):
        return created
