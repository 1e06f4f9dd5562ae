"""Short coverage-guided runs (bench/fuzz.py, atheris) of every target (the
remote's parsers, the settings parsers, the NBD protocol) from the
committed seed corpus, and the seeds themselves: every seed goes through
its target without a finding, and the remote's seeds named valid-* still
decode (a format change that breaks them shows here)."""

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_corpus")
sys.path.insert(0, BENCH)

import fuzz  # noqa: E402
import fuzz_remote  # noqa: E402

ALL_TARGETS = sorted(fuzz.TARGETS)


def seeds(target):
    folder = os.path.join(CORPUS, target)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            yield name, f.read()


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_seeds_run_through_their_target(target):
    function = fuzz.load(fuzz.TARGETS[target].function)
    names = []
    for name, data in seeds(target):
        function(data)                    # a finding raises
        names.append(name)
    assert any(n.startswith("valid") for n in names)


def test_valid_seeds_decode():
    from rokfs.remote.formats import decode_manifest, decode_segment, chunk_hash
    for name, data in seeds("manifest"):
        if name.startswith("valid"):
            fuzz_remote.check_manifest_invariants(decode_manifest(data, "manifests/data@s"))
    for name, data in seeds("segment"):
        decode_segment(data, "segments/" + chunk_hash(data))


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_a_short_fuzz_run_finds_nothing(target):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "fuzz.py"), target,
                           "--seconds", "3"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and " 0 findings" in proc.stdout, proc.stdout + proc.stderr
    runs = int(proc.stdout.split(": ", 1)[1].split()[0])
    assert runs > 500, proc.stdout
