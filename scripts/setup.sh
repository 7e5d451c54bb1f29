#!/usr/bin/env bash
# Set up volnb on a fresh clone: a virtual environment in .venv, torch 2.13.0 (CPU) first, then the
# project (editable, with dev extras) from settings.ini, then the raw data snapshot from the DVC remote.
# Idempotent: a stamp keyed on settings.ini and setup.py skips the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.volnb-installed-$(cat settings.ini setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing torch==2.13.0 first (the CPU wheel), then volnb[dev]"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  rm -f .venv/.volnb-installed-*
  touch "$stamp"
else
  echo "[setup] dependencies up to date ($stamp)"
fi

# The raw snapshot only (the remote holds nothing else; stage outputs are rebuilt by dvc repro).
.venv/bin/dvc pull --quiet data.dvc
echo "[setup] data/ matches data.dvc"
