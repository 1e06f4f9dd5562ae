#!/usr/bin/env bash
# Run the whole rokfs test suite (installs what the tests need first).
# On two pytest-xdist workers (about 4 minutes on 2 cores). Arguments go to
# pytest after ours, so `-n 4` or `-n 0` (one process, no workers) overrides
# it: `tools/test.sh -n 0 tests/test_engine.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/setup.sh
# -rfEs: every failure, error and skip (with its reason) in the summary;
# --dist load: no grouping, so the long tests spread out over the workers
exec .venv/bin/python -m pytest -q -rfEs -p no:cacheprovider -n 2 --dist load "$@"
