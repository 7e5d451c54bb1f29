"""`volnb serve` end to end: the HTTP service and a replayed feed in one process, driven from the command line."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volnb.bars import bars_from_recording
from volnb.data import load_minute_bars
from volnb.feeds import feature_input
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


SHORT = ["rv_1m", "rv_5m", "ret_5m", "hl_range"]      # short-window features: a row needs 6 bars, not 61
SHORT_OVERRIDES = f"experiment.features=[{','.join(SHORT)}] experiment.history_bars=6"


def make_registry(d, features):
    "A registry whose models of `features` are fitted on SYNTHETIC rows (this tests the plumbing, not the model)."
    df = synthetic_spike_frame(n=3000, seed=5)
    tr = df[df.split == "train"]
    reg = Registry(d / "registry")
    for name, baseline, params in (("zscore", True, {"feature": "rv_5m"}), ("logreg", False, {"max_iter": 500})):
        m = fit_spike_model(name, tr[features].to_numpy(), tr["label"].to_numpy(), params, features=features)
        art = save_artefact(m, d / name, features=features, meta={"threshold": 0.5, "data": "synthetic"},
                            reference=tr[features].to_numpy()[:500])
        reg.register(art, baseline=baseline)
    return reg


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("predictor"), SPIKE_FEATURES)


@pytest.fixture(scope="module")
def short_registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("predictor_short"), SHORT)


def serve(root, registry, *args, overrides=""):
    ov = f"serve.registry={registry.root} serve.port={free_port()} serve.log_level=warning {overrides}"
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


def run_in_process(registry, replay, features=SPIKE_FEATURES, **kw):
    "run_predictor on `replay` at speed 0; (feed counters, live scores, feature rows scored, app)."
    from volnb.api import create_app
    from volnb.predictor import run_predictor
    from volnb.service import ServeSettings
    s = ServeSettings(port=free_port(), registry=registry.root, log_level="warning", features=list(features))
    app = create_app(registry.root, s)
    service, rows = app.state.service, []
    score = service.score_live
    service.score_live = lambda row, **k: (rows.append(row), score(row, **k))[1]      # record what is scored
    stats = run_predictor(s, app, replay=replay, speed=0, exit_after_feed=True, **kw)
    return stats, list(service.live), rows, app


def offline_scores(registry, X):
    scorer = load_artefact(registry.path(registry.current()))
    return [scorer.predict_proba(x[None, :])[0] for x in X]


# ------------------------------------------------------------------------------------------------ history from the config


def test_serve_history_and_features_follow_the_config(root, data_dir, short_registry):
    "experiment.features and experiment.history_bars reach the feed: a 6-bar warm-up, not 61, and every bar scored."
    r = serve(root, short_registry, "--replay", BAR_FILE, "--start", "2023-04-20T13:00", "--end", "2023-04-20T13:30",
              overrides=SHORT_OVERRIDES)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert (stats["warmup_bars"], stats["bars_out"], stats["gaps"], stats["duplicates"]) == (6, 30, 0, 0)
    # the schema holds history_bars to the features: the default 61 with the short features is refused, by name
    r = serve(root, short_registry, "--replay", BAR_FILE, overrides=f"experiment.features=[{','.join(SHORT)}]")
    assert r.returncode == 2 and "history_bars must be 6" in r.stderr and "Traceback" not in r.stderr


def test_short_history_scores_the_trade_recordings_from_the_sixth_bar(root, data_dir, short_registry):
    "With 6 bars of history the 11-minute trade sessions are scored: rows of exactly the service's features, the"
    "first one on the 6th contiguous complete bar, each score the offline score of the batch row."
    stats, live, rows, _ = run_in_process(short_registry, [root / p for p in TRADES], SHORT, history_bars=6)
    bars = bars_from_recording([root / p for p in TRADES])
    ref = bar_features(pd.DataFrame([feature_input(b) for b in bars.reset_index().to_dict("records")]).set_index("timestamp"))
    expected = ref[SHORT].dropna()
    # the first and last bars are partial (holes), so rows need five returns after 23:55: 00:00 .. 00:04
    assert list(expected.index) == list(pd.date_range("2024-08-09 00:00", "2024-08-09 00:04", freq="min", tz="UTC"))
    assert [e["bar_time"] for e in live] == [t.isoformat() for t in expected.index]
    assert all(list(r) == SHORT for r in rows) and len(rows) == 5
    np.testing.assert_array_equal([list(r.values()) for r in rows], expected.to_numpy())
    np.testing.assert_array_equal([e["score"] for e in live], offline_scores(short_registry, expected.to_numpy()))
    assert stats["warmup_bars"] == 0 and stats["duplicates"] == 0


def test_a_history_too_short_for_the_features_is_refused(root, data_dir, registry):
    from volnb.predictor import run_predictor
    from volnb.service import ServeSettings
    with pytest.raises(ValueError, match="'rv_60m' needs 61 contiguous bars"):
        run_predictor(ServeSettings(port=free_port(), registry=registry.root, log_level="warning"),
                      replay=root / BAR_FILE, history_bars=6)


# ------------------------------------------------------------------------------------------------ replay faults


def test_replay_faults_every_bar_scored_once_and_drops_shown(root, data_dir, registry):
    "A drop after every 7th kline: the client reconnects 4 times, every bar is scored once, with the offline score."
    from volnb.api import feed_status
    stats, live, _, app = run_in_process(registry, root / BAR_FILE, start="2023-04-20 13:00", end="2023-04-20 13:30",
                                         replay_faults="drop_every=7")
    bars = load_minute_bars(root / BAR_FILE).loc["2023-04-20 11:59":"2023-04-20 13:29"]
    X = bar_features(bars).loc["2023-04-20 13:00":, SPIKE_FEATURES]
    assert [e["bar_time"] for e in live] == [t.isoformat() for t in X.index]      # 30 bars, each once, in order
    np.testing.assert_array_equal([e["score"] for e in live], offline_scores(registry, X.to_numpy()))
    assert (stats["reconnects"], stats["duplicates"], stats["injected"]) == (4, 0, {"drops": 4, "pauses": 0, "restarts": 0})
    status = feed_status(app.state.live_feed)                 # the "feed" part of GET /live
    assert status["reconnects"] == 4 and status["replay"]["faults"] == "drop_every=7"
    assert status["replay"]["injected"]["drops"] == 4


def test_serve_replay_faults_from_the_command_line(root, data_dir, registry):
    r = serve(root, registry, "--replay", BAR_FILE, "--start", "2023-04-20T13:00", "--end", "2023-04-20T13:30",
              "--replay-faults", "drop_every=7,pause_every=10:0.2")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert (stats["bars_out"], stats["duplicates"], stats["gaps"]) == (30, 0, 0)
    # drops after klines 7, 14, 21, 28 (each a reconnect); 0.2 s pauses after klines 10, 20, 30 (no reconnect)
    assert stats["injected"] == {"drops": 4, "pauses": 3, "restarts": 0} and stats["reconnects"] == 4


@pytest.mark.parametrize("args,text", [
    (["--replay", BAR_FILE, "--replay-faults", "drop_every=5,pause_evry=3"], "unknown fault 'pause_evry' in 'pause_evry=3'"),
    (["--replay", BAR_FILE, "--replay-faults", "drop_every=0"], "drop_every must be a positive integer"),
    (["--replay", BAR_FILE, "--replay-faults", "restart_after=10:soon"], "restart_after='10:soon'"),
    (["--replay-faults", "drop_every=5"], "--replay-faults needs --replay"),
])
def test_serve_bad_replay_faults(root, args, text):
    r = subprocess.run([*VOLNB, "serve", *args], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and text in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ serve.workers


def test_serve_workers_setting():
    from pydantic import ValidationError
    from volnb.config import ConfigError, ServeSettings
    from volnb.core import compose_config
    assert ServeSettings().workers == 1 and compose_config().serve.workers == 1
    assert compose_config("serve.workers=4").serve.workers == 4
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ServeSettings(workers=0)
    with pytest.raises(ConfigError, match=r"serve.workers: Input should be greater than or equal to 1"):
        compose_config("serve.workers=0")
