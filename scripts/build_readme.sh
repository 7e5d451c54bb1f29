#!/usr/bin/env bash
# README.md is generated from nbs/index.ipynb (nbconvert; nbdev_readme needs Quarto, which is optional here).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "from volnb.core import render_readme; render_readme()"
