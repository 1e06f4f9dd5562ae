"""The progress bar of the command-line front ends (`rokfs`, `rokctl`):
one line on stderr with a bar, bytes done/total, rate and ETA. It is a
callable `(done, total)`, the shape of the verbs' progress callbacks."""

import sys
import time

from .units import format_size

WIDTH = 30
EVERY = 0.2     # seconds between redraws


class ProgressBar:
    def __init__(self, label, enabled=None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start, self.last = time.monotonic(), 0.0

    def __call__(self, done, total):
        now = time.monotonic()
        if not self.enabled or (now - self.last < EVERY and done < total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        frac = done / total if total else 1.0
        eta = (total - done) / rate if rate > 0 and total else 0
        bar = "#" * int(frac * WIDTH)
        sys.stderr.write(f"\r{self.label} [{bar:<{WIDTH}}] {frac:6.1%} {format_size(done)}/"
                         f"{format_size(total)} {format_size(int(rate))}/s ETA {eta:4.0f}s ")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
