"""Coverage-guided fuzzing of rokfs's parsers of untrusted input: atheris
(libFuzzer driving Python code instrumented for coverage).

    python bench/fuzz.py TARGET... [--seconds N] [--keep DIR]
    python bench/fuzz.py all --seconds 600
    python bench/fuzz.py --list

Each target runs for N seconds in a child process, starting from its seed
corpus tests/fuzz_corpus/TARGET, which it only reads: the inputs a run finds
go to a scratch directory (or to --keep DIR/TARGET). For each target it
prints the inputs run and each finding: an input on which the target raised
an exception it does not allow or failed one of its checks, with the
traceback and the file holding that input. libFuzzer stops a run at its
first finding. The exit status is 1 if anything was found.

Invariants:
- A target is one entry in TARGETS: its function ("module:name" in
  bench/, taking one bytes input; raising is a finding), the modules to
  instrument for coverage, optionally a custom mutator, and the largest
  input worth trying. Adding a
  parser (config loader, xattr values, NBD requests) is one function, its
  seeds and one entry.
- The committed seeds are never written by a run.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(os.path.dirname(HERE), "tests", "fuzz_corpus")
REMOTE_PARSERS = ("rokfs.remote.formats", "rokfs.remote.chunks", "rokfs.names")
SETTINGS_PARSERS = ("rokfs.config", "rokfs.fusefs.xattrs", "rokfs.names", "rokfs.units",
                    "rokfs.remote.objects", "rokfs.endpoints")


@dataclass(frozen=True)
class Target:
    function: str                  # "module:name", the module in bench/
    instrument: tuple              # modules (and their submodules) to trace
    mutator: str = ""              # "module:name" of a custom mutator, if any
    max_len: int = 4096


TARGETS = {
    "manifest": Target("fuzz_remote:manifest", REMOTE_PARSERS, "fuzz_remote:manifest_mutator"),
    "segment": Target("fuzz_remote:segment", REMOTE_PARSERS, "fuzz_remote:segment_mutator"),
    "pack_header": Target("fuzz_remote:pack_header", REMOTE_PARSERS,
                          "fuzz_remote:pack_mutator"),
    "chunk_frame": Target("fuzz_remote:chunk_frame", REMOTE_PARSERS, max_len=9000),
    "config": Target("fuzz_settings:config_file", SETTINGS_PARSERS),
    "xattr": Target("fuzz_settings:xattr", SETTINGS_PARSERS, max_len=512),
    "remote_url": Target("fuzz_settings:remote_url", SETTINGS_PARSERS, max_len=1024),
    "nbd": Target("fuzz_nbd:session", ("nbd_server",)),
}


@dataclass
class Outcome:
    target: str
    runs: int
    seconds: float
    corpus: int
    finding: str                   # "" when nothing was found


def load(function):
    module, name = function.split(":")
    sys.path.insert(0, HERE)
    return getattr(__import__(module), name)


def run_child(name, libfuzzer_args):
    """In the child: instrument the target's modules, then hand over to libFuzzer."""
    import atheris
    target = TARGETS[name]
    with atheris.instrument_imports(include=list(target.instrument)):
        function = load(target.function)
    extra = {"custom_mutator": load(target.mutator)} if target.mutator else {}
    atheris.Setup([sys.argv[0], *libfuzzer_args], function, **extra)
    atheris.Fuzz()


def fuzz(name, seconds, keep=None):
    """Run target `name` for `seconds` in a child process; its Outcome."""
    target = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix=f"rokfs-fuzz-{name}-") as scratch:
        found = os.path.join(keep, name) if keep else os.path.join(scratch, "corpus")
        os.makedirs(found, exist_ok=True)
        args = [f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
                f"-max_len={target.max_len}", "-print_final_stats=1",
                f"-artifact_prefix={scratch}/", found, os.path.join(CORPUS, name)]
        started = time.monotonic()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name,
                               "--", *args], capture_output=True, text=True,
                              timeout=seconds + 120)
        return _outcome(name, proc, time.monotonic() - started, keep)


def _outcome(name, proc, seconds, keep):
    log = proc.stdout + proc.stderr
    runs = _last_int(r"stat::number_of_executed_units: (\d+)", log) or \
        _last_int(r"^#(\d+)", log)
    corpus = _last_int(r"corp: (\d+)/", log)
    finding = _finding_text(log, keep) if proc.returncode else ""
    return Outcome(name, runs, seconds, corpus, finding)


def _last_int(pattern, text):
    found = re.findall(pattern, text, re.MULTILINE)
    return int(found[-1]) if found else 0


def _finding_text(log, keep):
    """The traceback (or libFuzzer's error) of a failed run and the file of
    its input; an input left in a scratch directory is copied out."""
    lines = log.splitlines()
    first = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line
                  or "ERROR: libFuzzer" in line), max(len(lines) - 40, 0))
    shown = [line for line in lines[first:] if not line.startswith(("#", "INFO", "MS:"))][:60]
    for path in re.findall(r"Test unit written to (\S+)", log):
        if os.path.exists(path):
            kept = os.path.join(keep or tempfile.gettempdir(), os.path.basename(path))
            with open(path, "rb") as src, open(kept, "wb") as dst:
                dst.write(src.read())
            shown.append(f"input kept in {kept}")
    return "\n".join(shown)


def report(outcome):
    rate = outcome.runs / outcome.seconds if outcome.seconds else 0
    print(f"{outcome.target}: {outcome.runs} inputs in {outcome.seconds:.0f} s ({rate:.0f}/s), "
          f"corpus {outcome.corpus}, {'1 finding' if outcome.finding else '0 findings'}",
          flush=True)
    if outcome.finding:
        print(outcome.finding, flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return run_child(argv[1], argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", metavar="TARGET", help="'all' or any of --list")
    p.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    p.add_argument("--keep", metavar="DIR", help="keep the inputs each run finds in DIR/TARGET")
    p.add_argument("--list", action="store_true", help="list the targets")
    args = p.parse_args(argv)
    if args.list or not args.targets:
        print("\n".join(TARGETS))
        return 0
    names = list(TARGETS) if args.targets == ["all"] else args.targets
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    try:
        import atheris  # noqa: F401
    except ImportError:
        p.error("atheris is not installed: pip install atheris (rokfs's dev extras have it)")
    outcomes = []
    for name in names:
        outcomes.append(fuzz(name, args.seconds, args.keep))
        report(outcomes[-1])
    return 1 if any(o.finding for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
