#!/usr/bin/env bash
# Run the whole rokfs test suite (installs what the tests need first).
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/setup.sh
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"   # -rs: every skip with its reason
