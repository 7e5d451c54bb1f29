"""volnb.spike at another share of positives (issue 15): the label threshold chosen on the training span only, PR-AUC
reweighted to a share of positives, and the equal-prevalence table. Model fits run on SYNTHETIC data
(`synthetic_spike_frame`), never presented as market data."""
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from sklearn.metrics import average_precision_score, roc_auc_score

from volnb.core import DataValidationError
from volnb.spike import (EQUAL_PREVALENCE_COLUMNS, SYNTHETIC_FEATURES, equal_prevalence_table, metrics_table,
                         pr_auc_at_prevalence, relabel_spikes, score_spike_models, synthetic_spike_frame, threshold_for_share,
                         train_spike_models)

FEATS = list(SYNTHETIC_FEATURES)
PARAMS = {"zscore": {"feature": "rv_5m"}, "logreg": {"C": 1.0, "class_weight": "balanced", "max_iter": 2000},
          "gradient_boosting": {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.1, "subsample": 0.8, "random_state": 0}}
MODELS = list(PARAMS)


def test_threshold_for_share_by_hand():
    assert threshold_for_share(np.arange(1, 11), 0.3) == 7.0            # 8, 9, 10 above: 3 of 10
    assert threshold_for_share(np.arange(1, 9), 0.25) == 6.0            # k = 2 of 8
    assert threshold_for_share([5, 1, 4, 2, 3], 0.4) == 3.0             # order does not matter
    assert threshold_for_share([1, 2, 2, 2, 3], 0.5) == 1.0             # > 1: 0.8, > 2: 0.2, tie at 0.3: the lower threshold
    assert threshold_for_share([1, 2, 2, 2, 3], 0.7) == 1.0             # 0.8 is closest
    assert threshold_for_share([1.0, np.nan, 2.0, 3.0, 4.0], 0.5) == 2.0  # NaN left out: 2 of 4 above 2
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=10_001)
    assert abs((x > threshold_for_share(x, 0.43)).mean() - 0.43) <= 1 / len(x)


@pytest.mark.parametrize("values, share, match", [([1, 2, 3], 0.0, "strictly between"), ([1, 2, 3], 1.0, "strictly between"),
                                                   ([2.0, 2.0, np.nan], 0.5, "two distinct")])
def test_threshold_for_share_errors(values, share, match):
    with pytest.raises(ValueError, match=match): threshold_for_share(values, share)


def test_relabel_spikes():
    df = pd.DataFrame({"rv_next": [0.1, 0.5, 0.3, 0.7], "label": [0, 0, 0, 1], "split": "train"})
    r = relabel_spikes(df, 0.3)
    assert r.label.tolist() == [0, 1, 0, 1] and r.attrs["threshold"] == 0.3      # strictly above, as build_spike_dataset labels
    assert df.label.tolist() == [0, 0, 0, 1]                                    # a copy
    with pytest.raises(DataValidationError, match="rv_next"): relabel_spikes(df.drop(columns="rv_next"), 0.3)


def test_pr_auc_at_prevalence_against_sklearn():
    y, s = np.array([1, 0, 1, 0, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # at the observed share nothing changes
    assert_allclose(pr_auc_at_prevalence(y, s, 3 / 8), average_precision_score(y, s), atol=1e-12)
    # share 3/13: negatives weigh 2 -- the same as each negative written twice
    twice = np.r_[y, y[y == 0]], np.r_[s, s[y == 0]]
    assert_allclose(pr_auc_at_prevalence(y, s, 3 / 13), average_precision_score(*twice), atol=1e-12)
    # a classifier that cannot rank scores the share of positives it is reweighted to
    assert_allclose(pr_auc_at_prevalence(y, np.full(8, 0.5), 0.43), 0.43, atol=1e-12)
    # a perfect ranking scores 1 at any share
    assert_allclose(pr_auc_at_prevalence(y, y + 0.0, 0.05), 1.0, atol=1e-12)
    assert np.isnan(pr_auc_at_prevalence([0, 0], [0.1, 0.2], 0.4))
    with pytest.raises(ValueError, match="strictly between"): pr_auc_at_prevalence(y, s, 1.0)
    with pytest.raises(ValueError, match="8 labels but 7 scores"): pr_auc_at_prevalence(y, s[:7], 0.4)


@pytest.fixture(scope="module")
def frame():
    "SYNTHETIC frame: 1500 rows per split, labelled at 95 % of train; its scores from models fitted on train."
    D = synthetic_spike_frame(1500, splits=("train", "validation", "test"), seed=3)
    P = score_spike_models(train_spike_models(D, FEATS, PARAMS, MODELS), D)
    return D, P


@pytest.fixture(scope="module")
def table(frame):
    D, P = frame
    return equal_prevalence_table(D, P, FEATS, PARAMS, 0.43, models=MODELS, target_name="deck")


def test_equal_prevalence_table(frame, table):
    D, P = frame
    E, Q = table
    assert E.columns.tolist() == EQUAL_PREVALENCE_COLUMNS
    assert len(E) == 2 * len(MODELS) * 2 and not E.duplicated(["labels", "model", "split"]).any()
    dk, ours = E[E.labels == "deck"].set_index(["model", "split"]), E[E.labels == "ours"].set_index(["model", "split"])
    tau = dk.label_threshold.iloc[0]
    train = D[D.split == "train"]
    assert dk.label_threshold.nunique() == 1 and tau == threshold_for_share(train.rv_next, 0.43)
    assert_allclose(dk.train_share, (train.rv_next > tau).mean())
    assert abs(dk.train_share.iloc[0] - 0.43) <= 1 / len(train)
    for split in ("validation", "test"):                # the realised share on each split, and it is the random baseline
        share = (D.rv_next[D.split == split] > tau).mean()
        assert_allclose(dk.xs(split, level="split").share, share)
        assert_allclose(dk.xs(split, level="split").pr_auc_baseline, share)
    q = Q[(Q.model == "logreg") & (Q.split == "test")]
    assert (q.label.to_numpy() == (D.rv_next[D.split == "test"] > tau).to_numpy()).all()
    assert_allclose(dk.at[("logreg", "test"), "roc_auc"], roc_auc_score(q.label, q.score))
    assert_allclose(dk.at[("logreg", "test"), "pr_auc"], average_precision_score(q.label, q.score))
    assert_allclose(dk.at[("logreg", "test"), "pr_auc_at_target"], pr_auc_at_prevalence(q.label, q.score, 0.43))
    # our labels: the scores given, unchanged, and the same numbers as metrics_table
    T = metrics_table(P[P.split != "train"]).set_index(["model", "split"])
    for c in ("roc_auc", "pr_auc", "f1", "positives"):
        assert_allclose(ours[c].to_numpy(dtype=float), T.loc[ours.index, c].to_numpy(dtype=float))
    assert_allclose(ours.train_share, D.label[D.split == "train"].mean())
    assert E.groupby("labels").apply(lambda g: g[g.split == "validation"].selected.sum(), include_groups=False).tolist() == [1, 1]
    # the deck's models are refitted on the relabelled rows: their decision thresholds differ from ours
    assert dk.at[("zscore", "test"), "decision_threshold"] != ours.at[("zscore", "test"), "decision_threshold"]


def test_threshold_from_training_rows_only(frame, table):
    "Rewriting the test span (its volatilities, its labels, its features) moves neither the threshold nor anything on validation."
    D, P = frame
    E, _ = table
    D2 = D.copy()
    te = D2.split == "test"
    D2.loc[te, "rv_next"] = D2.loc[te, "rv_next"].to_numpy()[::-1] * 4
    D2.loc[te, "label"] = 1 - D2.loc[te, "label"]
    D2.loc[te, FEATS] = D2.loc[te, FEATS].to_numpy()[::-1]
    E2, _ = equal_prevalence_table(D2, P, FEATS, PARAMS, 0.43, models=MODELS, target_name="deck")
    a, b = E[E.labels == "deck"].set_index(["model", "split"]), E2[E2.labels == "deck"].set_index(["model", "split"])
    assert b.label_threshold.iloc[0] == a.label_threshold.iloc[0] and b.train_share.iloc[0] == a.train_share.iloc[0]
    val = [c for c in EQUAL_PREVALENCE_COLUMNS if c not in ("labels", "model", "split")]
    pd.testing.assert_frame_equal(a.xs("validation", level="split")[val], b.xs("validation", level="split")[val])
    assert (b.xs("test", level="split").share > a.xs("test", level="split").share).all()   # the test span did change


def test_equal_prevalence_errors(frame):
    D, P = frame
    with pytest.raises(DataValidationError, match="rv_next"):
        equal_prevalence_table(D.drop(columns="rv_next"), P, FEATS, PARAMS, 0.43, models=MODELS)
    with pytest.raises(DataValidationError, match="training rows"):
        equal_prevalence_table(D[D.split != "train"], P, FEATS, PARAMS, 0.43, models=MODELS)
    with pytest.raises(ValueError, match="strictly between"):
        equal_prevalence_table(D, P, FEATS, PARAMS, 43, models=MODELS)
    with pytest.raises(DataValidationError, match="score"):
        equal_prevalence_table(D, P.drop(columns="score"), FEATS, PARAMS, 0.43, models=MODELS)
