"""Transfer learning of the multi-token study (volnb.transfer): the restriction to the majors, where fine-tuning starts,
no test row in training or selection, the leakage test with permuted labels, and the paired comparison."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from volnb.panel_features import panel_targets
from volnb.panel_models import block_data, predict_rows
from volnb.transfer import (best_baselines, compare_models, comparison_frame, finetune, prepare_finetune, pretrain, restrict,
                            target_groups, train_alone, transfer_block, transfer_tables, window_counts)
from volnb.walkforward import Block, baseline_metrics, bootstrap_intervals

from synthetic_panel import features, one_block, synthetic_panel as _panel

SETTINGS = {"window": 24, "warmup": 24, "quantiles": [0.1, 0.5, 0.9], "loss_weights": [1.0, 1.0, 1.0],
            "min_token_hours": 200, "n_buckets": 2, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.0,
            "samples_per_epoch": 3072, "epochs_first": 4, "epochs_refit": 1, "patience": 2, "warm_start": True,
            "val_samples": 1024, "seed": 0, "threads": 1, "gradient_clip_val": 1.0}
TRANSFER = {"majors": ["BTC", "ETH"], "pretrain": {"epochs": 5, "samples_per_epoch": 3072},
            "finetune": {"epochs": 2, "samples_per_epoch": 2048, "lr_factor": 0.5},
            "alone": {"epochs": 5, "samples_per_epoch": 3072}, "rebase_bias": True, "threads": 1}
LSTM = {"encoder": "lstm", "d_model": 16, "n_layers": 1, "dropout": 0.0}
CATS = {"BTC": "large", "ETH": "large", "AAA": "x", "BBB": "y", "CCC": "y"}
MAJORS = ["BTC", "ETH"]


def synthetic_panel(hours=3000, tokens=("BTC", "ETH", "AAA", "BBB"), seed=0, start="2021-01-01"):
    "The shared AR(1) panel with majors first; the targets are more volatile than the majors."
    return _panel(hours, tokens, seed=seed, start=start, vol_growth=1.0)


def make_data(panel, min_token_hours=200, targets=None):
    f, tg = features(panel), (panel_targets(panel, [1, 4]) if targets is None else targets)
    return block_data(panel, f, tg, CATS, one_block(panel), [1, 4], window=24, warmup=24, min_token_hours=min_token_hours,
                      n_buckets=2)


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def panel():
    return synthetic_panel()


@pytest.fixture(scope="module")
def data(panel):
    return make_data(panel)


@pytest.fixture(scope="module")
def pretrained(panel, data, tmp_path_factory):
    return pretrain(data, panel.token.to_numpy(), MAJORS, LSTM, SETTINGS, 2, 0, tmp_path_factory.mktemp("pre"), 1024)


def test_restrict_keeps_the_tokens_windows_only(panel, data):
    tok = panel.token.to_numpy()
    r = restrict(data, tok, MAJORS)
    for k in ("train", "val", "test"):
        rows = getattr(r, k)
        assert set(tok[rows]) == set(MAJORS)
        np.testing.assert_array_equal(rows, getattr(data, k)[np.isin(tok[getattr(data, k)], MAJORS)])
    c = window_counts(data, tok)
    assert c.loc[MAJORS, "train"].sum() == len(r.train) and c["test"].sum() == len(data.test)


def test_pretraining_sees_the_majors_only(panel, data, pretrained, tmp_path):
    "The pre-trained network does not change when every other token's targets change; it drew the majors' windows only."
    net, res = pretrained
    tok = panel.token.to_numpy()
    assert res["n_train_windows"] == int(np.isin(tok[data.train], MAJORS).sum())
    assert res["n_validation"] == int(np.isin(tok[data.val], MAJORS).sum())
    tg = panel_targets(panel, [1, 4])
    other = ~panel.token.isin(MAJORS)
    rng = np.random.default_rng(5)
    for c in tg.columns: tg.loc[other, c] = rng.permutation(tg.loc[other, c].to_numpy()) * (3.0 if c.startswith("vol") else 1.0)
    d2 = make_data(panel, targets=tg)
    assert not torch.equal(d2.y_vol, data.y_vol)
    net2, res2 = pretrain(d2, tok, MAJORS, LSTM, SETTINGS, 2, 0, tmp_path, 1024)
    assert states_equal(net, net2) and res2["best_val_loss"] == res["best_val_loss"]
    # and it does change when a major's targets change (the check above can fail)
    tg3 = panel_targets(panel, [1, 4])
    btc = panel.token == "BTC"
    tg3.loc[btc, "vol_1h"] *= 2.0
    net3, _ = pretrain(make_data(panel, targets=tg3), tok, MAJORS, LSTM, SETTINGS, 2, 0, tmp_path / "3", 1024)
    assert not states_equal(net, net3)


def test_finetuning_starts_from_the_pretrained_weights(panel, data, pretrained, tmp_path):
    net, _ = pretrained
    before = copy.deepcopy(net)
    tok = panel.token.to_numpy()
    start = prepare_finetune(net, restrict(data, tok, MAJORS), restrict(data, tok, ["AAA"]), SETTINGS["quantiles"])
    # with a zero learning rate fine-tuning changes nothing: the selected network is its starting point
    frozen, res = finetune(net, data, tok, "AAA", MAJORS, SETTINGS, 1, 0, tmp_path / "zero", lr_factor=0.0, samples_per_epoch=256)
    assert states_equal(frozen, start) and res["n_train_windows"] == int((tok[data.train] == "AAA").sum())
    # the starting point is the pre-trained network but for the documented rows: AAA's embedding rows and the output bias
    s0, s1 = net.state_dict(), start.state_dict()
    same = [k for k in s0 if torch.equal(s0[k], s1[k])]
    assert set(s0) - set(same) <= {"tok.weight", "cat.weight", "liq.weight", "head.3.bias"}
    assert "lstm.weight_ih_l0" in same and "head.3.weight" in same and "inp.weight" in same
    aaa = data.tokens.index("AAA") + 1
    trained = torch.unique(data.static[restrict(data, tok, MAJORS).train, 0])
    torch.testing.assert_close(s1["tok.weight"][aaa], s0["tok.weight"][trained].mean(0))
    # a real fine-tuning moves the weights, and leaves the pre-trained network as it was
    tuned, _ = finetune(net, data, tok, "AAA", MAJORS, SETTINGS, 1, 0, tmp_path / "one", lr_factor=1.0, samples_per_epoch=512)
    assert not states_equal(tuned, start) and states_equal(net, before)


def test_a_short_history_token_gets_the_same_forecasts_with_id_0_as_with_its_own(tmp_path):
    "CCC, listed 692 hours late, has 1308 training hours: id 0 with min_token_hours=1400, its own id with 200."
    late = synthetic_panel(hours=2300, tokens=("CCC",), seed=3, start="2021-01-29 20:00")
    p = pd.concat([synthetic_panel(), late], ignore_index=True).sort_values(["token", "timestamp"], ignore_index=True)
    tok = p.token.to_numpy()
    outs = []
    for mth, known in ((1400, False), (200, True)):
        d = make_data(p, min_token_hours=mth)
        assert ("CCC" in d.known_tokens) is known and set(MAJORS) <= set(d.known_tokens)
        assert (d.static[tok == "CCC", 0] == 0).all().item() is not known
        pre, _ = pretrain(d, tok, MAJORS, LSTM, SETTINGS, 1, 0, tmp_path / f"p{mth}", 512)
        ft, _ = finetune(pre, d, tok, "CCC", MAJORS, SETTINGS, 1, 0, tmp_path / f"f{mth}", 0.5, 512)
        outs.append(predict_rows(ft, d, restrict(d, tok, ["CCC"]).test, 24))
    assert len(outs[0]) > 500
    torch.testing.assert_close(outs[0], outs[1])


def test_no_test_hour_enters_training_or_selection(panel, data, tmp_path):
    "Every bar from the first test hour on is altered: the three fitted networks and their selection are unchanged."
    b = one_block(panel)
    later = panel.copy()
    after = later.timestamp >= b.test[0]
    move = np.exp(np.random.default_rng(2).normal(0, 0.05, int(after.sum())))
    for c in ("open", "high", "low", "close"): later.loc[after, c] *= move
    later.loc[after, "volume"] *= 10.0
    d2 = make_data(later)
    assert not torch.equal(d2.X[data.test], data.X[data.test])
    tok = panel.token.to_numpy()
    fits = []
    for i, d in enumerate((data, d2)):
        pre, r0 = pretrain(d, tok, MAJORS, LSTM, SETTINGS, 1, 0, tmp_path / f"p{i}", 512)
        ft, r1 = finetune(pre, d, tok, "BBB", MAJORS, SETTINGS, 1, 0, tmp_path / f"f{i}", 0.5, 512)
        al, r2 = train_alone(d, tok, "BBB", LSTM, SETTINGS, 1, 0, tmp_path / f"a{i}", 512)
        fits.append(((pre, ft, al), [r["best_val_loss"] for r in (r0, r1, r2)]))
    assert all(states_equal(x, y) for x, y in zip(fits[0][0], fits[1][0]))
    assert fits[0][1] == fits[1][1]
    # the validation and training windows (and their targets) all end before the test block
    ts = panel.timestamp.to_numpy()
    assert (ts[data.val] + np.timedelta64(4, "h") < np.datetime64(b.test[0])).all()


def test_real_labels_are_learned_and_permuted_labels_score_at_chance(panel, tmp_path):
    """The leakage test: the whole experiment on labels permuted within token (training and test) scores at chance,
    while the real labels of a predictable series (AR(1), phi = -0.6) are learned by the transferred and alone models."""
    f, tg = features(panel), panel_targets(panel, [1, 4])
    b = one_block(panel)
    accs = {}
    rng = np.random.default_rng(1)
    perm = tg.copy()
    for _, idx in panel.groupby("token").groups.items():
        for c in ("dir_1h", "dir_4h"): perm.loc[idx, c] = rng.permutation(perm.loc[idx, c].to_numpy())
    for kind, t in (("real", tg), ("permuted", perm)):
        logs = []
        fc, runs = transfer_block(panel, f, t, CATS, b, 0, "lstm", LSTM, SETTINGS, TRANSFER, tmp_path / kind, [1, 4],
                                  log=logs.append)
        assert sorted(fc.token.unique()) == ["AAA", "BBB"] and set(runs.role) == {"pretrain", "finetune", "alone"}
        y = t.loc[fc.index, "dir_1h"]
        ok = y.notna()
        assert ok.sum() > 1000
        for role in ("pretrained", "finetuned", "alone"):
            accs[kind, role] = float(((fc.loc[ok, f"lstm_{role}_dir_1h"] > 0.5) == (y[ok] > 0.5)).mean())
    assert min(accs["real", r] for r in ("pretrained", "finetuned", "alone")) > 0.6, accs   # about 0.68 for phi = -0.6
    for role in ("pretrained", "finetuned", "alone"):
        assert 0.45 < accs["permuted", role] < 0.55, accs                               # n ~ 1,150: chance +- 3 s.e.


def test_transfer_block_skips_tokens_without_windows_and_masks_direction(panel, tmp_path):
    p = panel.copy()
    drop = (p.token == "BBB") & (p.timestamp >= one_block(p).validation[0]) & (p.timestamp < one_block(p).test[0])
    p = p[~drop].reset_index(drop=True)                                     # BBB: no validation window
    logs = []
    small = {**TRANSFER, "pretrain": {"epochs": 1, "samples_per_epoch": 256}, "alone": {"epochs": 1, "samples_per_epoch": 256},
             "finetune": {"epochs": 1, "samples_per_epoch": 256, "lr_factor": 0.5}}
    fc, runs = transfer_block(p, features(p), panel_targets(p, [1, 4]), CATS, one_block(p), 3, "m", LSTM, SETTINGS, small,
                              tmp_path, [1, 4], direction_tokens=["BTC", "ETH", "BBB"], log=logs.append)
    assert list(fc.token.unique()) == ["AAA"] and any("BBB: skipped (no val window" in s for s in logs)
    assert fc["block"].eq(3).all() and fc["m_finetuned_dir_1h"].isna().all() and fc["m_alone_vol_4h_q90"].notna().all()
    with pytest.raises(ValueError, match="are majors"):
        transfer_block(p, features(p), panel_targets(p, [1, 4]), CATS, one_block(p), 3, "m", LSTM, SETTINGS, small, tmp_path,
                       [1, 4], tokens=["BTC"])
    with pytest.raises(ValueError, match="transfer settings lack threads"):
        transfer_block(p, features(p), panel_targets(p, [1, 4]), CATS, one_block(p), 3, "m", LSTM, SETTINGS,
                       {k: v for k, v in small.items() if k != "threads"}, tmp_path)
    with pytest.raises(ValueError, match="transfer.finetune.epochs must be at least 1"):
        transfer_block(p, features(p), panel_targets(p, [1, 4]), CATS, one_block(p), 3, "m", LSTM, SETTINGS,
                       {**small, "finetune": {"epochs": 0, "samples_per_epoch": 8, "lr_factor": 1.0}}, tmp_path)


def _frame(n_hours=600, seed=0):
    "A comparison frame of two tokens and three models over `n_hours` hours."
    rng = np.random.default_rng(seed)
    ts = np.repeat(pd.date_range("2023-01-01", periods=n_hours, freq="h"), 2)
    y = (rng.random(2 * n_hours) < 0.5).astype(float)
    vol = rng.lognormal(-4, 0.5, 2 * n_hours)
    f = pd.DataFrame({"token": np.tile(["A", "B"], n_hours), "timestamp": ts, "block": 0, "dir_1h": y, "vol_1h": vol})
    for m, signal, noise in (("good", 0.3, 0.2), ("bad", 0.0, 0.6), ("mid", 0.15, 0.4)):
        f[f"{m}_dir_1h"] = np.clip(np.where(y == 1, 0.5 + signal / 2, 0.5 - signal / 2) + rng.normal(0, noise / 2, len(y)), 0, 1)
        f[f"{m}_vol_1h"] = vol * rng.lognormal(0, noise, len(y))
    return f


def test_compare_models_agrees_with_the_library_metrics_and_intervals():
    f = _frame()
    c = compare_models(f, ["good", "bad", "mid"], "good", [1], block_hours=24, reps=200, seed=3)
    ref = baseline_metrics(f, [1]).set_index(["model"])
    for metric, task in (("accuracy", "direction"), ("brier", "direction"), ("qlike", "volatility"), ("mape", "volatility")):
        got = c[c.metric == metric].set_index("model")["value"]
        want = ref[ref.task == task][metric]
        np.testing.assert_allclose(got.sort_index(), want.sort_index(), rtol=1e-12)
    # the same resampling as volnb.walkforward.bootstrap_intervals: identical accuracy and MAPE intervals
    bi = bootstrap_intervals(f, [1], block_hours=24, reps=200, seed=3).set_index(["metric", "model"])
    cc = c.set_index(["metric", "model"])
    for key in bi.index:
        np.testing.assert_allclose(cc.loc[key, ["lo", "hi"]].to_numpy(float), bi.loc[key, ["lo", "hi"]].to_numpy(float), rtol=1e-12)
    # gains: accuracy(good) - accuracy(m), loss(m) - loss(good); the noisier model is worse beyond the noise
    v = cc["value"]
    assert cc.loc[("accuracy", "bad"), "gain"] == pytest.approx(v[("accuracy", "good")] - v[("accuracy", "bad")], abs=1e-12)
    assert cc.loc[("qlike", "bad"), "gain"] == pytest.approx(v[("qlike", "bad")] - v[("qlike", "good")], abs=1e-12)
    assert cc.loc[("qlike", "bad"), "gain_lo"] > 0 and cc.loc[("brier", "bad"), "gain_lo"] > 0
    assert cc.loc[("qlike", "good"), ["gain", "gain_lo", "gain_hi"]].isna().all()
    # a paired interval is narrower than the difference of two unpaired intervals would suggest
    assert cc.loc[("qlike", "mid"), "gain_hi"] - cc.loc[("qlike", "mid"), "gain_lo"] < (
        cc.loc[("qlike", "mid"), "hi"] - cc.loc[("qlike", "mid"), "lo"] + cc.loc[("qlike", "good"), "hi"] - cc.loc[("qlike", "good"), "lo"])
    with pytest.raises(ValueError, match="lacks column"):
        compare_models(f, ["good", "worse"], "good", [1])


def test_transfer_tables_per_token_and_groups():
    f = _frame(200)
    groups = pd.DataFrame({"liquidity": ["low", "high"], "history": ["short", "short"]}, index=pd.Index(["A", "B"], name="token"))
    per, by = transfer_tables(f, ["good", "bad"], "good", groups, [1], block_hours=24, reps=50)
    assert set(per.token) == {"A", "B"} and per.loc[per.token == "A", "liquidity"].eq("low").all()
    a = compare_models(f[f.token == "A"], ["good", "bad"], "good", [1], block_hours=24, reps=50)
    np.testing.assert_allclose(per[per.token == "A"]["value"].to_numpy(), a["value"].to_numpy())
    allg = by[by.grouping == "all"]
    np.testing.assert_allclose(allg["value"].to_numpy(), compare_models(f, ["good", "bad"], "good", [1], block_hours=24, reps=50)["value"])
    assert set(zip(by.grouping, by.group)) == {("all", "all"), ("liquidity", "high"), ("liquidity", "low"), ("history", "short")}
    assert by.loc[by.group == "low", "tokens"].eq("A").all() and by.loc[by.group == "short", "n_tokens"].eq(2).all()
    with pytest.raises(ValueError, match="no group for token"):
        transfer_tables(f, ["good", "bad"], "good", groups.loc[["A"]], [1])


def test_best_baseline_is_chosen_on_earlier_blocks_only():
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.5).astype(float)
    vol = rng.lognormal(-4, 0.3, n)
    b = pd.DataFrame({"token": "A", "timestamp": pd.date_range("2023-01-01", periods=n, freq="h"), "block": np.repeat([0, 1], n // 2),
                      "dir_1h": y, "vol_1h": vol, "x_dir_1h": 0.5, "z_dir_1h": np.where(y == 1, 0.6, 0.4),
                      "x_vol_1h": vol, "z_vol_1h": vol * 2})
    # block 0: z is the better direction forecast, x the better volatility one; in block 1 the opposite
    late = b.block == 1
    b.loc[late, "z_dir_1h"] = np.where(y[late] == 1, 0.1, 0.9)
    b.loc[late, "x_vol_1h"] = vol[late] * 5
    choice = best_baselines(b, [0], [1]).set_index("task")
    assert choice.loc["direction", "model"] == "z" and choice.loc["volatility", "model"] == "x"
    assert choice.loc["direction", "criterion"] == "brier" and choice.loc["volatility", "blocks"] == "0"
    assert best_baselines(b, [0, 1], [1], {"direction": "accuracy", "volatility": "qlike"}).shape == (2, 6)
    with pytest.raises(ValueError, match=r"no baseline forecast in block\(s\) \[7\]"):
        best_baselines(b, [7], [1])
    # the comparison frame: this experiment's forecasts, the global model's, the chosen baseline; one block throughout
    tr = b.loc[late, ["token", "timestamp", "block"]].copy()
    for role in ("pretrained", "finetuned", "alone"):
        tr[f"m_{role}_dir_1h"], tr[f"m_{role}_vol_1h"] = 0.5, vol[late]
    glob = tr[["token", "timestamp", "block"]].assign(m_dir_1h=0.4, m_vol_1h=vol[late] * 1.1)
    glob.iloc[:10, 3:] = np.nan                                            # the global model lacks 10 rows
    cf = comparison_frame(tr, glob, b, "m", best_baselines(b, [0], [1]), [1])
    assert cf["m_global_dir_1h"].notna().sum() == late.sum() - 10 and cf["m_finetuned_dir_1h"].notna().sum() == late.sum() - 10
    np.testing.assert_allclose(cf["baseline_dir_1h"].dropna(), b.loc[late, "z_dir_1h"].iloc[10:])
    with pytest.raises(ValueError, match="another walk-forward block"):
        comparison_frame(tr, glob.assign(block=0), b, "m", best_baselines(b, [0], [1]), [1])


def test_target_groups_label_short_histories(panel):
    late = synthetic_panel(hours=2300, tokens=("CCC",), seed=3, start="2021-01-29 20:00")
    p = pd.concat([panel, late], ignore_index=True).sort_values(["token", "timestamp"], ignore_index=True)
    g = target_groups(p, one_block(p), CATS, ["AAA", "CCC"], short_history_hours=1500, n_buckets=2)
    # CCC is listed 28 days 20 hours (692 hours) after the panel starts; training ends at hour 2000
    assert g.loc["CCC", "training_hours"] == 2000 - 692 and g.loc["AAA", "training_hours"] == 2000
    assert g["history"].to_dict() == {"AAA": "long", "CCC": "short"} and g.loc["CCC", "category"] == "y"
    assert set(g["liquidity"]) <= {"q0", "q1", "new"}
