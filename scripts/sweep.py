"""Kept for old commands: `python scripts/sweep.py SPEC [options]` is `volnb sweep SPEC [options]` (volnb.sweep).

Usage: .venv/bin/python scripts/sweep.py conf/sweep/herremans_grid.yaml [--dry-run] [--executor serial|local|ray] ...
See `volnb sweep --help`.
"""
import sys

from volnb.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
