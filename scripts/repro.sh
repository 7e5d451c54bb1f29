#!/usr/bin/env bash
# The main job: set up, then regenerate every table and figure from the raw snapshot (dvc repro).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
dvc metrics show
