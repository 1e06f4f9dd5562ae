"""Policy verbs (part of Control, the one door): schedules, retention,
plans and runs of snapshot policies.

Invariants:
- Thin: the spec is policy.py's, runs, plans and the runner policies.py's.
- A policy is stored in the pool and committed before the verb returns;
  the daemon's runner (if any) is woken to follow it.
"""

import time

from . import policies
from .errors import NotFound
from .policy import POLICY_LABEL, parse_policy


class PolicyVerbs:
    """Control's policy verbs (mixed into Control)."""

    policy_runner = None        # the daemon's PolicyRunner while it runs

    def policy_now(self):
        """The policies' clock: the runner's (a MockClock in tests), else the wall clock."""
        return self.policy_runner.now() if self.policy_runner else time.time()

    async def set_policy(self, target, spec):
        """Give volume (or group, with `volumes` in the spec) `target` a policy;
        its next run is counted from now unless the schedule is unchanged."""
        policy = parse_policy(spec)
        policies.check_target(self, target, policy)
        old = self.pool.policy_record(target)
        kept = old and parse_policy(old["spec"]).schedule.text == policy.schedule.text
        self.pool.put_policy(target, policy.text(), old["anchor"] if kept else self.policy_now())
        await self._policies_changed()
        return self.show_policy(target)

    def show_policy(self, target):
        runner = self.policy_runner
        return policies.show(self, target, self._policy_record(target),
                             runner.last.get(target) if runner else None)

    def list_policies(self):
        return [self.show_policy(target) for target in sorted(self.pool.policy_records())]

    async def delete_policy(self, target):
        """Drop `target`'s policy; the snapshots it took stay."""
        self.pool.drop_policy(target)
        await self._policies_changed()

    def plan_policy(self, target):
        """What the policy's retention would delete now, why each other
        snapshot is kept, and the bytes deleting them together frees."""
        return policies.plan(self, target, self._policy(target))

    async def run_policy(self, target):
        """Run `target`'s policy now (snapshot, push, retention); its report."""
        if self.policy_runner is not None:
            return await self.policy_runner.run_now(target, self._policy(target))
        return await policies.run_once(self, target, self._policy(target), self.policy_now())

    def policy_records(self):
        """{target: {"spec", "anchor"}} for the runner (not a verb)."""
        return self.pool.policy_records()

    def policy_snapshots(self, target, volume=None):
        """The snapshots (of `volume`) labelled as taken by `target`'s policy:
        name, group, labels, created and holds only, so that a run walks no
        map (not a verb)."""
        return [{"name": s.full_name, "group": s.group, "labels": dict(s.labels),
                 "created": s.created, "holds": dict(s.holds)}
                for s in self.pool.list_snapshots(volume)
                if s.labels.get(POLICY_LABEL) == target]

    def mark_policy_run(self, target, at):
        """A run of `target` starts at `at`: its anchor, committed with the
        run's snapshot (not a verb)."""
        record = self.pool.policy_record(target)
        if record is not None:
            self.pool.put_policy(target, record["spec"], at)

    def _policy_record(self, target):
        record = self.pool.policy_record(target)
        if record is None:
            raise NotFound(f"no policy for {target!r}")
        return record

    def _policy(self, target):
        return parse_policy(self._policy_record(target)["spec"])

    async def _policies_changed(self):
        await self.flush()
        if self.policy_runner is not None:
            self.policy_runner.wake()
