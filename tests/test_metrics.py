"""volnb.metrics: the prediction-file contract, point and spike metrics, and the Diebold–Mariano test."""
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from volnb.core import DataValidationError
from volnb.metrics import (PREDICTION_COLUMNS, diebold_mariano, evaluate_predictions, mae, pointwise_loss,
                           precision_recall_f1, qlike, read_predictions, rmse, spike_confusion, summarise_over_seeds,
                           target_to_variance, validate_predictions, write_predictions)


@pytest.fixture
def preds():
    "Synthetic predictions: two models x two seeds x four days, test split, plus one validation day."
    ts = pd.date_range("2021-03-01", periods=5, freq="D", tz="UTC")
    target = np.array([0.7, 1.05, 0.95, 1.2, 0.8])
    rows = []
    for model, bias in [("garch", 0.0), ("ewma", 0.1)]:
        for seed in (0, 1):
            rows.append(pd.DataFrame({"timestamp": ts, "asset": "BTC", "horizon": "1d", "target": target,
                                      "prediction": target + bias + 0.01 * seed, "model": model, "seed": seed,
                                      "split": ["validation"] + ["test"] * 4}))
    return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------- point metrics

def test_rmse_mae_exact():
    y, yhat = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 1.0, 4.0]        # errors 0, 1, -2, 0
    assert rmse(y, yhat) == pytest.approx(np.sqrt(5 / 4), abs=1e-15)
    assert mae(y, yhat) == pytest.approx(3 / 4, abs=1e-15)
    with pytest.raises(ValueError, match="shapes differ"):
        rmse([1, 2], [1, 2, 3])


def test_target_to_variance_inverts_target_formula():
    rng = np.random.default_rng(1)
    r = rng.normal(0, 0.04, size=(100, 2))                       # synthetic pairs (r_t, r_{t+1})
    for ann, power in [(365, 0.25), (252, 0.5), (365, 1.0)]:
        y = (np.sqrt(ann) * r.std(axis=1, ddof=1)) ** power
        assert_allclose(target_to_variance(y, ann, power), r.var(axis=1, ddof=1), rtol=1e-10)
        assert_allclose(target_to_variance(y, ann, power), (r[:, 0] - r[:, 1]) ** 2 / 2, rtol=1e-10)
    with pytest.raises(ValueError, match="negative"):
        target_to_variance([0.5, -0.1])


def test_qlike_zero_at_truth_and_positive_elsewhere():
    y = np.array([0.6, 0.9, 1.3])
    assert pointwise_loss(y, y, "qlike").tolist() == [0.0, 0.0, 0.0]
    v = target_to_variance(y)
    assert qlike(v, v) == 0.0
    assert qlike(v, 2 * v) == pytest.approx(0.5 + np.log(2) - 1, rel=1e-12)   # ratio 1/2 everywhere
    assert qlike(v, 1.01 * v) > 0 and qlike(v, 0.99 * v) > 0
    assert qlike(v, 1.5 * v) == pytest.approx(qlike(2 * v, 3 * v))           # depends on ratio only


def test_qlike_floor_and_nonpositive_prediction():
    assert qlike([0.0], [1e-4], floor=1e-12) == pytest.approx(1e-8 - np.log(1e-8) - 1, rel=1e-12)
    assert qlike([1e-4], [0.0]) == np.inf
    assert pointwise_loss([0.9], [-0.2], "qlike")[0] == np.inf                # negative vol -> zero variance


# ---------------------------------------------------------------- spikes

def test_spike_confusion_six_elements():
    target = [0.5, 1.2, 1.0, 0.9, 1.5, 0.7]           # actual spikes (>= 1): F T T F T F
    prediction = [0.6, 1.1, 0.8, 1.3, 1.6, 0.2]       # flagged:             F T F T T F
    c = spike_confusion(target, prediction, threshold=1.0)
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (2, 1, 2, 1)
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == pytest.approx(2 / 3)
    assert c["f1"] == pytest.approx(2 / 3)
    c = spike_confusion(target, [1.1, 1.1, 1.1, 0.0, 0.0, 0.0], threshold=1.0)   # tp 2 fn 1 fp 1 tn 2
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (2, 1, 2, 1)
    c = spike_confusion(target, prediction, threshold=1.3)   # spikes: idx 4; flagged: idx 3, 4
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (1, 0, 4, 1)
    assert c["precision"] == 0.5 and c["recall"] == 1.0 and c["f1"] == pytest.approx(2 / 3)


def test_spike_zero_division_is_zero():
    c = spike_confusion([0.5, 0.6], [0.5, 0.6])      # no spikes, none flagged
    assert (c["precision"], c["recall"], c["f1"], c["tn"]) == (0.0, 0.0, 0.0, 2)
    c = spike_confusion([1.5, 0.6], [0.5, 0.6])      # a spike missed, none flagged
    assert (c["precision"], c["recall"], c["f1"], c["fn"]) == (0.0, 0.0, 0.0, 1)


def _sklearn_prf(tp, fp, fn, tn=1):
    from sklearn.metrics import precision_recall_fscore_support
    y = [1] * tp + [0] * fp + [1] * fn + [0] * tn
    yhat = [1] * tp + [1] * fp + [0] * fn + [0] * tn
    return tuple(float(v) for v in precision_recall_fscore_support(y, yhat, average="binary", zero_division=0)[:3])


def test_precision_recall_f1_is_sklearn_zero_division_0():
    "Every count triple up to 6 (the zero-denominator cases included), and Table 3's own counts, to the last bit."
    for tp in range(7):
        for fp in range(7):
            for fn in range(7):
                assert precision_recall_f1(tp, fp, fn) == _sklearn_prf(tp, fp, fn), (tp, fp, fn)
    for counts in [(15, 6, 46), (12, 5, 49), (4, 0, 57), (0, 0, 61), (9, 12, 24)]:
        assert precision_recall_f1(*counts) == _sklearn_prf(*counts)
    assert precision_recall_f1(np.int64(2), np.int64(1), np.int64(1)) == (2 / 3, 2 / 3, 2 / 3)


def test_precision_recall_f1_zero_denominators_and_bad_counts():
    assert precision_recall_f1(0, 0, 5) == (0.0, 0.0, 0.0)      # nothing predicted positive
    assert precision_recall_f1(0, 3, 0) == (0.0, 0.0, 0.0)      # no positives
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(3, 0, 1) == (1.0, 0.75, 6 / 7)
    for bad, name in [((-1, 0, 0), "tp"), ((1, 2.5, 0), "fp"), ((1, 0, True), "fn"), ((1, 0, "2"), "fn")]:
        with pytest.raises(ValueError, match=f"{name} must be a non-negative integer count"):
            precision_recall_f1(*bad)


def test_spike_confusion_with_explicit_actual_spikes():
    target, prediction = [0.5, 1.2, 1.0, 0.9, 1.5, 0.7], [0.6, 1.1, 0.8, 1.3, 1.6, 0.2]
    actual = np.array([False, True, False, False, False, False])   # only row 1 counts as a spike
    c = spike_confusion(target, prediction, 1.0, actual=actual)
    assert (c["tp"], c["fn"], c["tn"], c["fp"]) == (1, 0, 3, 2)
    assert (c["precision"], c["recall"]) == (1 / 3, 1.0)
    with pytest.raises(ValueError, match="boolean array of shape"):
        spike_confusion(target, prediction, 1.0, actual=actual[:3])


# ---------------------------------------------------------------- evaluation table

def test_evaluate_one_row_per_model_seed(preds):
    t = evaluate_predictions(preds, threshold=1.0, split="test")
    assert list(zip(t.model, t.seed)) == [("garch", 0), ("garch", 1), ("ewma", 0), ("ewma", 1)]
    assert t.n.tolist() == [4, 4, 4, 4]
    assert_allclose(t.rmse, [0.0, 0.01, 0.1, 0.11], atol=1e-12)
    assert_allclose(t.mae, [0.0, 0.01, 0.1, 0.11], atol=1e-12)
    assert t.qlike.iloc[0] == 0.0 and (t.qlike.iloc[1:] > 0).all()
    # test targets 1.05 0.95 1.2 0.8: spikes T F T F; ewma seed 0 predicts 1.15 1.05 1.3 0.9
    e = t.iloc[2]
    assert (e.tp, e.fn, e.tn, e.fp) == (2, 0, 1, 1)
    assert e.precision == pytest.approx(2 / 3) and e.recall == 1.0 and e.f1 == pytest.approx(0.8)
    assert evaluate_predictions(preds, split=None).n.tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="no prediction rows"):
        evaluate_predictions(preds, split="train")


def test_evaluate_with_an_actual_spike_column(preds):
    flags = preds.assign(actual=preds.target >= 1.1)         # only the 1.2 day is an actual spike
    t = evaluate_predictions(flags, threshold=1.0, actual="actual")
    plain = evaluate_predictions(preds, threshold=1.0)
    e = t.iloc[2]                                             # ewma seed 0 flags 1.15 1.05 1.3 -> days 1, 2, 3
    assert (e.tp, e.fn, e.tn, e.fp) == (1, 0, 1, 2)
    pd.testing.assert_frame_equal(t[["rmse", "mae", "qlike", "n"]], plain[["rmse", "mae", "qlike", "n"]])
    with pytest.raises(ValueError, match="boolean column"):
        evaluate_predictions(flags.assign(actual=1), actual="actual")
    with pytest.raises(ValueError, match="boolean column"):
        evaluate_predictions(preds, actual="missing")


def test_summarise_over_seeds(preds):
    s = summarise_over_seeds(evaluate_predictions(preds))
    assert s.model.tolist() == ["garch", "ewma"] and s.n_seeds.tolist() == [2, 2]
    assert_allclose(s.rmse_mean, [0.005, 0.105], atol=1e-12)
    assert_allclose(s.rmse_std, [np.std([0, 0.01], ddof=1), np.std([0.1, 0.11], ddof=1)], atol=1e-12)
    one = summarise_over_seeds(evaluate_predictions(preds[preds.seed == 0]))
    assert one.n_seeds.tolist() == [1, 1] and one.mae_std.isna().all()


# ---------------------------------------------------------------- Diebold–Mariano

def test_dm_hand_computed():
    # d = (1, -1, 2, 0): mean 0.5, gamma_0 = 1.25, DM = 0.5 / sqrt(1.25/4), HLN factor sqrt(3/4)
    res = diebold_mariano([2, 0, 3, 1], [1, 1, 1, 1], h=1)
    assert res.statistic == pytest.approx(np.sqrt(0.6), rel=1e-12)
    assert res.pvalue == pytest.approx(2 * stats.t.sf(np.sqrt(0.6), 3), rel=1e-12)
    stat, p = diebold_mariano([1, 1, 1, 1], [2, 0, 3, 1])    # unpacks; a has lower loss => negative
    assert stat == pytest.approx(-np.sqrt(0.6)) and p == pytest.approx(res.pvalue)


def test_dm_h2_hand_computed():
    d = np.array([1.0, 2.0, 2.0, 0.0, -1.0])              # n = 5, h = 2: one autocovariance lag
    e = d - d.mean()
    g0, g1 = e @ e / 5, e[1:] @ e[:-1] / 5
    assert (g0, g1) == pytest.approx((1.36, 0.432))
    hln = np.sqrt((5 + 1 - 4 + 2 / 5) / 5)
    res = diebold_mariano(d, np.zeros(5), h=2)
    assert res.statistic == pytest.approx(0.8 / np.sqrt((g0 + 2 * g1) / 5) * hln, rel=1e-12)
    assert res.pvalue == pytest.approx(2 * stats.t.sf(res.statistic, 4), rel=1e-12)
    bart = diebold_mariano(d, np.zeros(5), h=2, kernel="bartlett")      # weight 1 - 1/2 on gamma_1
    assert bart.statistic == pytest.approx(0.8 / np.sqrt((g0 + g1) / 5) * hln, rel=1e-12)


def test_dm_falls_back_to_bartlett_when_uniform_variance_not_positive():
    d = np.array([1.0, -1.0, 2.0, 0.0, 1.0])
    e = d - d.mean()
    g0, g1 = e @ e / 5, e[1:] @ e[:-1] / 5
    assert g0 + 2 * g1 < 0 < g0 + g1
    expected = d.mean() / np.sqrt((g0 + g1) / 5) * np.sqrt((5 + 1 - 4 + 2 / 5) / 5)
    assert diebold_mariano(d, np.zeros(5), h=2).statistic == pytest.approx(expected, rel=1e-12)


def test_dm_sign_and_power_on_synthetic_losses():
    rng = np.random.default_rng(3)
    la, lb = rng.exponential(1.0, 800), rng.exponential(1.4, 800)    # synthetic: a is better
    ab, ba = diebold_mariano(la, lb), diebold_mariano(lb, la)
    assert ab.statistic < -3 and ab.pvalue < 0.01
    assert ba.statistic == pytest.approx(-ab.statistic) and ba.pvalue == pytest.approx(ab.pvalue)
    same = diebold_mariano(la, la + rng.normal(0, 1e-3, 800))          # no real difference
    assert same.pvalue > 0.01


def test_dm_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        diebold_mariano([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="more than h"):
        diebold_mariano([1, 2], [2, 1], h=2)
    with pytest.raises(ValueError, match="finite"):
        diebold_mariano([1, np.nan, 3], [1, 2, 3])


# ---------------------------------------------------------------- the contract

def _error(df) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate_predictions(df, source="preds/garch.parquet")
    assert info.value.file == "preds/garch.parquet" and "preds/garch.parquet" in str(info.value)
    return info.value


def test_valid_frame_passes(preds):
    assert validate_predictions(preds) is preds


@pytest.mark.parametrize("column", PREDICTION_COLUMNS)
def test_missing_column_is_named(preds, column):
    e = _error(preds.drop(columns=column))
    assert e.column == column and repr(column) in str(e)


@pytest.mark.parametrize("column,value", [("target", np.nan), ("target", np.inf),
                                          ("prediction", np.nan), ("prediction", -np.inf)])
def test_non_finite_values_name_column_and_row(preds, column, value):
    bad = preds.copy()
    bad.loc[7, column] = value
    bad.loc[12, column] = value
    e = _error(bad)
    assert (e.column, e.row) == (column, 7) and "row 7" in str(e)


def test_unknown_split(preds):
    bad = preds.copy()
    bad.loc[3, "split"] = "Test"
    e = _error(bad)
    assert (e.column, e.row, e.value) == ("split", 3, "Test")


def test_duplicate_key(preds):
    bad = preds.copy()
    bad.loc[9, "seed"] = 0                                   # row 9 becomes (day 4, garch, 0): a copy of row 4
    e = _error(bad)
    assert e.row == 9 and "duplicate" in str(e) and "seed" in e.column
    assert e.value[3:] == ("garch", 0)


def test_non_utc_timestamps(preds):
    e = _error(preds.assign(timestamp=preds.timestamp.dt.tz_localize(None)))
    assert e.column == "timestamp" and "tz-naive" in str(e)
    e = _error(preds.assign(timestamp=preds.timestamp.dt.tz_convert("America/New_York")))
    assert e.column == "timestamp" and "must be UTC" in str(e)
    e = _error(preds.assign(timestamp=preds.timestamp.astype(str)))
    assert e.column == "timestamp" and e.row == 0
    bad = preds.copy()
    bad.loc[6, "timestamp"] = pd.NaT
    assert (_error(bad).column, _error(bad).row) == ("timestamp", 6)


def test_bad_labels_and_seed(preds):
    bad = preds.copy()
    bad.loc[2, "asset"] = ""
    assert (_error(bad).column, _error(bad).row) == ("asset", 2)
    e = _error(preds.assign(seed=preds.seed.astype(float)))
    assert e.column == "seed"


def test_write_read_round_trip(preds, tmp_path):
    path = write_predictions(preds.iloc[::-1].set_index("model", drop=False).assign(extra=1.5), tmp_path / "p.parquet")
    back = read_predictions(path)
    assert list(back.columns) == PREDICTION_COLUMNS + ["extra"]
    assert str(back.timestamp.dtype.tz) == "UTC"
    pd.testing.assert_frame_equal(back[PREDICTION_COLUMNS],
                                  preds.iloc[::-1].reset_index(drop=True)[PREDICTION_COLUMNS], check_dtype=False)
    assert back.seed.dtype.kind == "i"


def test_read_several_files_and_reject_bad_ones(preds, tmp_path):
    a = write_predictions(preds[preds.model == "garch"], tmp_path / "garch.parquet")
    b = write_predictions(preds[preds.model == "ewma"], tmp_path / "ewma.parquet")
    both = read_predictions([a, b])
    assert len(both) == len(preds) and both.model.unique().tolist() == ["garch", "ewma"]
    with pytest.raises(DataValidationError, match="duplicate"):
        read_predictions([a, a])
    bad = preds.copy()
    bad.loc[5, "prediction"] = np.nan
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataValidationError) as info:
        read_predictions([a, tmp_path / "bad.parquet"])
    assert "bad.parquet" in str(info.value) and info.value.row == 5
    with pytest.raises(DataValidationError):
        write_predictions(bad, tmp_path / "never.parquet")
    assert not (tmp_path / "never.parquet").exists()
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "missing.parquet")
