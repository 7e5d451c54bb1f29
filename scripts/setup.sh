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

# The browser of the site check (volnb site check, tests/test_site.py): Debian's Chromium, installed only when missing.
if [ ! -x /usr/bin/chromium ]; then
  echo "[setup] /usr/bin/chromium is missing: installing Debian's chromium and chromium-driver (the site check's browser)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] ERROR: apt-get is not available; install Chromium as /usr/bin/chromium yourself." \
         "Until then the site check (volnb site check, tests/test_site.py) FAILS." >&2
  elif ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq --no-install-recommends chromium chromium-driver; }; then
    echo "[setup] ERROR: apt-get could not install chromium chromium-driver (see above)." \
         "Until /usr/bin/chromium exists the site check (volnb site check, tests/test_site.py) FAILS." >&2
  else
    echo "[setup] $(/usr/bin/chromium --version 2>/dev/null | head -1)"
  fi
fi

# The raw snapshot only (the remote holds nothing else; stage outputs are rebuilt by dvc repro).
.venv/bin/dvc pull --quiet data.dvc
echo "[setup] data/ matches data.dvc"
