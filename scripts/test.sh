#!/usr/bin/env bash
# The test suite: set up, then run the library notebooks' examples (nbdev_test) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "[test] nbdev_test on the library notebooks"
nbdev_test --n_workers 2
echo "[test] pytest"
python -m pytest -q tests "$@"
