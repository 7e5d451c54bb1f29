"""Shared fixtures: the repository root, the raw snapshot, and a writer for small bad-input files."""
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA / "btc_usd_daily_bitstamp_cdd.csv").exists():
        pytest.fail("data/ is missing: run `dvc pull data.dvc` (scripts/setup.sh does)")
    return DATA


@pytest.fixture
def write(tmp_path):
    def _write(name, text):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return p
    return _write
