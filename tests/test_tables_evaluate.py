"""volnb.metrics: the tables of the `evaluate` stage (Table 3, Table 4, Diebold–Mariano, protocol comparison) and the
model confidence set / SPA test, on SYNTHETIC prediction frames and loss matrices small enough to check by hand."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from arch.bootstrap import optimal_block_length

from volnb.metrics import (SPIKE_RULES, bootstrap_block_size, diebold_mariano, dm_table, evaluate_predictions,
                           headline_metrics, loss_matrix, mcs_table, pointwise_loss, protocol_comparison, seed_average,
                           spa_table, spike_actual, table3, table4)

TABLES = Path(__file__).resolve().parents[1] / "reports/tables/herremans"
DAYS = pd.date_range("2021-03-01", periods=4, freq="D", tz="UTC")
TARGET = np.array([1.05, 0.95, 1.2, 0.8])            # actual spikes (>= 1): days 0 and 2
UP = pd.Series([1, 0, 0, 1], index=DAYS)             # next-day return up on days 0 and 3: only day 0 is an upward spike
LABELS = {"garch": "GARCH(1,1)", "ewma": "EWMA", "nn": "Neural net"}


def frame(rows):
    "A SYNTHETIC test-split prediction frame from (model, seed, predictions) triples over DAYS."
    return pd.concat([pd.DataFrame({"timestamp": DAYS, "asset": "BTC", "horizon": "1d", "target": TARGET,
                                    "prediction": np.asarray(p, float), "model": m, "seed": s, "split": "test"})
                      for m, s, p in rows], ignore_index=True)


@pytest.fixture
def preds():
    return frame([("ewma", 0, TARGET + 0.1),                   # flags 1.15 1.05 1.3 0.9 -> days 0 1 2
                  ("garch", 0, TARGET),                        # perfect
                  ("nn", 0, [1.1, 0.9, 0.9, 0.9]),             # flags day 0 only
                  ("nn", 1, [0.9, 0.9, 0.9, 0.9])])            # flags nothing


def header(name):
    return (TABLES / f"{name}.csv").read_text().splitlines()[0].split(",")


# ---------------------------------------------------------------- Table 3

def test_spike_actual_rules(preds):
    g = preds[preds.model == "garch"]
    assert spike_actual(g, "vol>=1").tolist() == [True, False, True, False]
    assert spike_actual(g, "vol>=1 & r>0", 1.0, UP).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="unknown spike rule"):
        spike_actual(g, "vol>1")
    with pytest.raises(ValueError, match="needs `up`"):
        spike_actual(g, "vol>=1 & r>0")
    with pytest.raises(ValueError, match="no value for 1 prediction row"):
        spike_actual(g, "vol>=1 & r>0", 1.0, UP.iloc[:3])
    with pytest.raises(ValueError, match="0 or 1"):
        spike_actual(g, "vol>=1 & r>0", 1.0, UP * 2)


def test_table3_values_by_hand(preds):
    t3, seeds = table3(preds, UP, 1.0, order=["garch", "nn", "ewma"], labels=LABELS)
    assert t3.columns.tolist() == header("table3") and seeds.columns.tolist() == header("table3_seeds")
    assert list(zip(t3.rule, t3.model)) == [(r, m) for r in SPIKE_RULES for m in ["garch", "nn", "ewma"]]
    vol, up = (t3[t3.rule == r].set_index("model") for r in SPIKE_RULES)
    # ewma: rule vol>=1 -> tp 2 (days 0, 2), fp 1 (day 1), tn 1; rule & r>0 -> tp 1 (day 0), fp 2, tn 1
    assert vol.loc["ewma", ["tp_mean", "fn_mean", "tn_mean", "fp_mean"]].tolist() == [2, 0, 1, 1]
    assert up.loc["ewma", ["tp_mean", "fn_mean", "tn_mean", "fp_mean"]].tolist() == [1, 0, 1, 2]
    assert up.loc["ewma", "precision_mean"] == 1 / 3 and up.loc["ewma", "f1_mean"] == 0.5
    # nn: seed 0 F1 = 2/(2+0+1) = 2/3 under vol>=1 and 1 under & r>0; seed 1 flags nothing: precision, recall, F1 = 0
    assert vol.loc["nn", "f1_mean"] == pytest.approx(1 / 3) and up.loc["nn", "f1_mean"] == 0.5
    assert vol.loc["nn", "f1_std"] == pytest.approx(np.std([2 / 3, 0], ddof=1))
    assert vol.loc["nn", "precision_mean"] == 0.5 and vol.loc["nn", "n_seeds"] == 2
    assert vol.loc["garch", "rmse_mean"] == 0 and vol.loc["garch", "f1_mean"] == 1 and np.isnan(vol.loc["garch", "f1_std"])
    assert vol.loc["ewma", "rmse_mean"] == pytest.approx(0.1)
    assert up.rmse_mean.isna().all() and up.qlike_mean.isna().all()           # point losses: rule vol>=1 only
    assert vol.label.tolist() == ["GARCH(1,1)", "Neural net", "EWMA"]
    assert len(seeds) == 2 * 4 and seeds[seeds.rule == "vol>=1 & r>0"].rmse.isna().all()


def test_table3_agrees_with_evaluate_predictions_and_the_old_target_trick(preds):
    "Rule vol>=1 is evaluate_predictions itself; rule & r>0 counts what moving non-up spikes below the threshold counted."
    _, seeds = table3(preds, UP, 1.0)
    plain = evaluate_predictions(preds, 1.0).drop(columns=["asset", "horizon"])
    got = seeds[seeds.rule == "vol>=1"].drop(columns=["rule", "label"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, plain)
    up = UP.reindex(preds.timestamp).to_numpy()
    moved = preds.assign(target=np.where((preds.target >= 1.0) & (up == 0), np.nextafter(1.0, 0), preds.target))
    old = evaluate_predictions(moved, 1.0)
    cols = ["tp", "fn", "tn", "fp", "precision", "recall", "f1"]
    pd.testing.assert_frame_equal(seeds[seeds.rule == "vol>=1 & r>0"][cols].reset_index(drop=True), old[cols])


def test_table3_errors(preds):
    with pytest.raises(ValueError, match="no prediction rows in split 'validation'"):
        table3(preds, UP, split="validation")


# ---------------------------------------------------------------- Table 4

def test_table4_values_by_hand(preds):
    t4 = table4(preds, 1.0, [1.1, 1.2, 1.3], order=["garch", "nn", "ewma"], labels=LABELS)
    assert t4.columns.tolist() == header("table4")
    t4 = t4.set_index("model")
    # actual >= 1.1 and >= 1.2: day 2 only; >= 1.3: none. garch and ewma flag day 2, nn never does
    assert t4.loc["garch", ["tp_mean_1.1", "fn_mean_1.1", "tp_mean_1.2", "tp_mean_1.3", "fn_mean_1.3"]].tolist() == [1, 0, 1, 0, 0]
    assert t4.loc["nn", ["tp_mean_1.1", "fn_mean_1.1", "tp_std_1.1", "fn_std_1.1"]].tolist() == [0, 1, 0, 0]
    assert np.isnan(t4.loc["ewma", "tp_std_1.1"])                            # one seed: no std
    bump = np.zeros(16); bump[14] = 0.3                                       # nn seed 1 now flags day 2 (1.2)
    shifted = table4(preds.assign(prediction=preds.prediction + bump), 1.0, [1.1]).set_index("model")
    assert shifted.loc["nn", "tp_mean_1.1"] == 0.5 and shifted.loc["nn", "tp_std_1.1"] == pytest.approx(np.std([0, 1], ddof=1))
    with pytest.raises(ValueError, match="no actual thresholds"):
        table4(preds, 1.0, [])


# ---------------------------------------------------------------- Diebold–Mariano

def test_seed_average(preds):
    avg = seed_average(preds)
    assert avg.columns.tolist() == ["model", "timestamp", "target", "prediction"]
    assert avg[avg.model == "nn"].prediction.tolist() == pytest.approx([1.0, 0.9, 0.9, 0.9])
    assert avg[avg.model == "garch"].target.tolist() == TARGET.tolist()
    with pytest.raises(ValueError, match="single asset"):
        seed_average(pd.concat([preds, preds[preds.model == "garch"].assign(asset="ETH")], ignore_index=True))


def test_dm_table_matches_diebold_mariano_on_the_seed_averages(preds):
    avg = seed_average(preds)
    d = dm_table(avg, ["garch", "ewma"], ["garch", "nn", "ewma"], LABELS)
    assert d.columns.tolist() == header("diebold_mariano")
    assert list(zip(d.reference, d.model, d.loss)) == [("garch", "nn", "se"), ("garch", "nn", "qlike"),
                                                       ("garch", "ewma", "se"), ("garch", "ewma", "qlike"),
                                                       ("ewma", "garch", "se"), ("ewma", "garch", "qlike"),
                                                       ("ewma", "nn", "se"), ("ewma", "nn", "qlike")]
    nn_se = (np.array([1.0, 0.9, 0.9, 0.9]) - TARGET) ** 2                    # 0.0025 0.0025 0.09 0.01
    ewma_se = np.full(4, 0.01)
    row = d[(d.reference == "ewma") & (d.model == "nn") & (d.loss == "se")].iloc[0]
    assert row.mean_loss_model == pytest.approx(nn_se.mean()) and row.mean_loss_reference == pytest.approx(0.01)
    assert (row.dm_statistic, row.p_value) == pytest.approx(tuple(diebold_mariano(nn_se, ewma_se)), rel=1e-12)
    q = d[(d.reference == "garch") & (d.loss == "qlike")].set_index("model")
    assert q.mean_loss_reference.tolist() == [0.0, 0.0] and (q.dm_statistic > 0).all()   # garch is perfect
    with pytest.raises(ValueError, match="no forecasts for model 'har_rv'"):
        dm_table(avg, ["har_rv"], ["nn"])
    with pytest.raises(ValueError, match="reference 'garch' has no forecast on 1 day"):
        dm_table(avg[~((avg.model == "garch") & (avg.timestamp == DAYS[3]))], ["garch"], ["nn"])


# ---------------------------------------------------------------- protocol comparison and headline metrics

def test_protocol_comparison_and_headline(preds):
    clean, _ = table3(preds, UP, 1.0)
    other, _ = table3(preds.assign(prediction=preds.prediction + 0.2), UP, 1.0)
    c = protocol_comparison(clean, other, ["nn", "lstm"], LABELS)
    assert c.columns.tolist() == header("protocol_comparison")
    assert c.model.tolist() == ["nn"] and c.label.tolist() == ["Neural net"]
    # +0.2: both nn seeds flag all four days: tp 2, fp 2, F1 = 4 / (4 + 2) = 2/3 (clean: 2/3 and 0, mean 1/3)
    assert c.f1_published_code.item() == pytest.approx(2 / 3) and c.f1_clean.item() == pytest.approx(1 / 3)
    assert c.f1_change.item() == pytest.approx(1 / 3)
    assert (c.rmse_change == c.rmse_published_code - c.rmse_clean).all()
    h = headline_metrics(clean)
    assert list(h) == ["ewma", "garch", "nn"] and h["garch"] == {"rmse": 0.0, "qlike": 0.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    with pytest.raises(ValueError, match="lacks model"):
        protocol_comparison(clean, other[other.model != "nn"], ["nn"])


# ---------------------------------------------------------------- model confidence set and SPA

def synthetic_losses(n=400, seed=0):
    "SYNTHETIC losses: a common exponential component plus small model noise; `bad` is worse by 1."
    rng = np.random.default_rng(seed)
    L = pd.DataFrame(rng.exponential(1.0, (n, 1)) + rng.normal(0, 0.1, (n, 4)), columns=["a", "b", "c", "bad"])
    L["bad"] += 1.0
    return L


def test_loss_matrix(preds):
    avg = seed_average(preds)
    L = loss_matrix(avg, "se", models=["garch", "nn"])
    assert L.columns.tolist() == ["garch", "nn"] and L.index.tolist() == list(DAYS)
    assert L.nn.to_numpy() == pytest.approx((np.array([1.0, 0.9, 0.9, 0.9]) - TARGET) ** 2)
    q = loss_matrix(avg, "qlike")
    assert q.ewma.to_numpy() == pytest.approx(pointwise_loss(TARGET, TARGET + 0.1, "qlike"))
    with pytest.raises(ValueError, match="model 'nn' has no forecast on 1 of the 4 days"):
        loss_matrix(avg[~((avg.model == "nn") & (avg.timestamp == DAYS[0]))], "se")
    with pytest.raises(ValueError, match="no forecasts for model 'lstm'"):
        loss_matrix(avg, "se", models=["lstm"])


def test_bootstrap_block_size_is_arch_optimal_length():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 3))
    x[:, 2] = np.convolve(rng.standard_normal(309), np.ones(10), "valid")       # MA(9): strongly dependent
    expected = int(np.ceil(optimal_block_length(x)["stationary"].mean()))
    assert bootstrap_block_size(x) == expected and bootstrap_block_size(x[:, :2]) < bootstrap_block_size(x[:, 2:])
    assert bootstrap_block_size(np.zeros((20, 2))) == 1


def test_mcs_excludes_the_clearly_worse_model():
    L = synthetic_losses()
    m = mcs_table(L, size=0.10, reps=500, seed=0, labels={"a": "Model A"})
    assert m.columns.tolist() == ["model", "label", "mean_loss", "pvalue", "in_mcs", "size", "block_size", "reps"]
    m = m.set_index("model")
    assert m.in_mcs.to_dict() == {"a": True, "b": True, "c": True, "bad": False}
    assert m.pvalue["bad"] == 0.0 and m.pvalue[m.mean_loss.idxmin()] == 1.0 and m.label["a"] == "Model A"
    assert m.mean_loss.to_numpy() == pytest.approx(L.mean().to_numpy())
    assert (m.block_size == bootstrap_block_size(L.sub(L.mean(axis=1), axis=0))).all()
    # reproducible with the same seed; the set itself does not hinge on the seed here
    pd.testing.assert_frame_equal(mcs_table(L, size=0.10, reps=500, seed=0).set_index("model").drop(columns="label"),
                                  m.drop(columns="label"))
    assert mcs_table(L, size=0.10, reps=500, seed=1).in_mcs.tolist() == [True, True, True, False]


def test_mcs_per_loss_mapping_and_errors():
    L = synthetic_losses()
    both = mcs_table({"qlike": L, "se": L[["a", "bad"]]}, reps=200, block_size=3)
    assert both.columns[0] == "loss" and both.loss.tolist() == ["qlike"] * 4 + ["se"] * 2
    assert (both.block_size == 3).all()
    with pytest.raises(ValueError, match="'a' and 'b' have identical losses"):
        mcs_table(L.assign(b=L.a))
    with pytest.raises(ValueError, match="finite: model 'c'"):
        mcs_table(L.assign(c=np.inf))
    with pytest.raises(ValueError, match="at least two models"):
        mcs_table(L[["a"]])
    with pytest.raises(ValueError, match="size must be in"):
        mcs_table(L, size=1.5)


def test_spa_small_pvalue_when_a_model_beats_the_benchmark():
    L = synthetic_losses()
    L["a"] -= 0.3                                                  # a is better than b, c and bad on average
    s = spa_table(L, ["b", "a"], reps=500, seed=0).set_index("reference")
    p = ["pvalue_lower", "pvalue_consistent", "pvalue_upper"]
    assert (s.loc["b", p] < 0.01).all() and s.loc["b", "best_model"] == "a"
    assert s.loc["b", "mean_loss_best"] == pytest.approx(L.a.mean()) and s.loc["b", "n_models"] == 3
    # a is the best: nothing beats it (arch's statistic is not floored at 0, so lower/consistent sit near 0.5)
    assert s.loc["a", "pvalue_upper"] > 0.9 and s.loc["a", "pvalue_consistent"] > 0.2
    assert s.loc["a", "pvalue_lower"] <= s.loc["a", "pvalue_consistent"] <= s.loc["a", "pvalue_upper"]
    again = spa_table(L, ["b", "a"], reps=500, seed=0).set_index("reference")
    pd.testing.assert_frame_equal(again, s)


def test_spa_identical_losses_and_errors():
    L = synthetic_losses()
    same = spa_table(pd.DataFrame({"x": L.a, "y": L.a}), ["x"], reps=200, seed=0).iloc[0]
    assert (same.n_models, same.pvalue_lower, same.pvalue_consistent, same.pvalue_upper) == (0, 1.0, 1.0, 1.0)
    dup = spa_table(L.assign(b=L.c), ["c"], reps=200, seed=0).iloc[0]        # b copies the benchmark: left out
    assert dup.n_models == 2
    per_loss = spa_table({"qlike": L, "se": L}, ["a", "bad"], reps=100)
    assert per_loss[["loss", "reference"]].values.tolist() == [["qlike", "a"], ["qlike", "bad"], ["se", "a"], ["se", "bad"]]
    with pytest.raises(ValueError, match="benchmark 'garch' is not a column"):
        spa_table(L, ["garch"])
