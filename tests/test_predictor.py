"""`volnb serve` end to end: the HTTP service and a replayed feed in one process, driven from the command line."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from volnb.data import load_minute_bars
from volnb.intraday import SPIKE_FEATURES, bar_features
from volnb.registry import Registry
from volnb.spike import fit_spike_model, load_artefact, save_artefact, synthetic_spike_frame

VOLNB = [sys.executable, "-c", "import sys; from volnb.cli import main; sys.exit(main())"]
BAR_FILE = "data/intraday/btcusdt_1m_binance_spot_freqtrade_2023-04-05_2023-05-05.json.gz"
TRADES = ["data/intraday/ws_binance_spot_btcusdt_20240808_2354-2400_hftbacktest.gz",
          "data/intraday/ws_binance_spot_btcusdt_20240809_0000-0005_hftbacktest.gz"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    "A registry whose models are fitted on SYNTHETIC rows (this tests the plumbing, not the model)."
    d = tmp_path_factory.mktemp("predictor")
    df = synthetic_spike_frame(n=3000, seed=5)
    tr = df[df.split == "train"]
    reg = Registry(d / "registry")
    for name, baseline, params in (("zscore", True, {"feature": "rv_5m"}), ("logreg", False, {"max_iter": 500})):
        m = fit_spike_model(name, tr[SPIKE_FEATURES].to_numpy(), tr["label"].to_numpy(), params, features=SPIKE_FEATURES)
        art = save_artefact(m, d / name, features=SPIKE_FEATURES, meta={"threshold": 0.5, "data": "synthetic"},
                            reference=tr[SPIKE_FEATURES].to_numpy()[:500])
        reg.register(art, baseline=baseline)
    return reg


def serve(root, registry, *args):
    ov = f"serve.registry={registry.root} serve.port={free_port()} serve.log_level=warning"
    return subprocess.run([*VOLNB, "serve", "--overrides", ov, *args, "--speed", "0", "--exit-after-feed"],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_serve_replays_bar_file_and_scores_every_bar(root, data_dir, registry):
    r = serve(root, registry, "--replay", BAR_FILE, "--start", "2023-04-20T13:00", "--end", "2023-04-20T13:30")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert (stats["warmup_bars"], stats["bars_out"], stats["gaps"], stats["duplicates"]) == (61, 30, 0, 0)


def test_served_scores_equal_offline_scores(root, data_dir, registry):
    "The same minutes scored offline from batch features give the scores the live path logged."
    from volnb.api import create_app
    from volnb.predictor import run_predictor
    from volnb.service import ServeSettings
    s = ServeSettings(port=free_port(), registry=registry.root, log_level="warning")
    app = create_app(registry.root, s)
    run_predictor(s, app, replay=root / BAR_FILE, speed=0, start="2023-04-20 13:00", end="2023-04-20 13:30",
                  exit_after_feed=True)
    live = list(app.state.service.live)
    bars = load_minute_bars(root / BAR_FILE).loc["2023-04-20 11:59":"2023-04-20 13:29"]
    X = bar_features(bars).loc["2023-04-20 13:00":, SPIKE_FEATURES].to_numpy()
    scorer = load_artefact(registry.path(registry.current()))
    assert [e["bar_time"] for e in live][:2] == ["2023-04-20T13:00:00+00:00", "2023-04-20T13:01:00+00:00"]
    np.testing.assert_array_equal([e["score"] for e in live], [scorer.predict_proba(x[None, :])[0] for x in X])
    assert {e["version"] for e in live} == {"v0001"}


def test_serve_replays_trade_recordings_without_scores(root, data_dir, registry):
    "The 11-minute trade/quote sessions build bars but are too short for a 61-bar feature row."
    r = serve(root, registry, "--replay", *TRADES)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["bars_out"] >= 10 and stats["duplicates"] == 0


def test_serve_bad_input(root, registry):
    r = subprocess.run([*VOLNB, "serve", "--replay", "data/intraday/no_such_file.gz"], cwd=root, capture_output=True, text=True)
    assert r.returncode == 2 and "replay file not found" in r.stderr
    r = subprocess.run([*VOLNB, "registry", "promote", "v0099", "--root", str(registry.root)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 2 and "v0099" in r.stderr
