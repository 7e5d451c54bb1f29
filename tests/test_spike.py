"""volnb.spike: the four spike classifiers, the pickle-free artefact, metrics without look-ahead, and the spike60s stages.

Model tests run on SYNTHETIC data (`synthetic_spike_frame`), never presented as market data; the
stage test runs the three spike60s notebooks on a short slice of the real snapshot.
"""
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

import volnb.spike as spike
from volnb.core import DataValidationError, compose_config
from volnb.spike import (ARTEFACT_FILES, MODEL_METRICS, MODELS_TABLE_COLUMNS, SPIKE_MODELS, SYNTHETIC_FEATURES,
                         ArtefactError, Contributions, SpikeScorer, calibration_bins, calibration_table, choose_threshold,
                         export_arrays, fit_spike_model, load_artefact, metrics_table, models_metrics, models_table,
                         sample_reference, save_artefact, score_spike_models, select_model, spike_metrics,
                         synthetic_spike_frame, train_spike_models)

FEATS = list(SYNTHETIC_FEATURES)
REF_ROWS = 700


@pytest.fixture(scope="module")
def cfg():
    return compose_config("experiment=spike60s")


@pytest.fixture(scope="module")
def data():
    "SYNTHETIC frame: 2000 rows per split."
    return synthetic_spike_frame(2000, splits=("train", "validation", "test"), seed=7)


@pytest.fixture(scope="module")
def models(cfg, data):
    "The four models with the configured (a priori) hyperparameters, fitted on the synthetic train rows."
    return train_spike_models(data, FEATS, cfg.experiment.model_params, cfg.experiment.models)


@pytest.fixture(scope="module")
def saved(models, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("artefacts")
    ref = sample_reference(data[data.split == "train"][FEATS].to_numpy(), REF_ROWS, seed=0)
    for name, m in models.items():
        save_artefact(m, root / name, features=FEATS, meta={"threshold": 0.4, "train_span": ["a", "b"]}, reference=ref)
    return root


@pytest.fixture
def copy(saved, tmp_path):
    "A fresh copy of one saved artefact, to tamper with."
    import shutil
    def _copy(kind="logreg"):
        dst = tmp_path / kind
        shutil.copytree(saved / kind, dst)
        return dst
    return _copy


def sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def rewrite_model(art, mutate, **savez_kw):
    "Replace model.npz with mutate(arrays) and update meta.json's checksum (a forged but self-consistent artefact)."
    with np.load(art / "model.npz", allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays = mutate(arrays) or arrays
    np.savez(art / "model.npz", **arrays, **savez_kw)
    meta = json.loads((art / "meta.json").read_text())
    meta["sha256"]["model.npz"] = sha(art / "model.npz")
    (art / "meta.json").write_text(json.dumps(meta))


def edit_meta(art, fn):
    meta = json.loads((art / "meta.json").read_text())
    fn(meta)
    (art / "meta.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- models and the round trip

def test_config_drives_the_models(cfg, models):
    assert list(cfg.experiment.models) == list(SPIKE_MODELS) == list(models)
    rf, gb = models["random_forest"].estimator, models["gradient_boosting"].estimator
    assert len(rf.estimators_) == cfg.experiment.model_params.random_forest.n_estimators == 200
    assert rf.max_depth == 8 and rf.min_samples_leaf == 50 and rf.class_weight == "balanced_subsample"
    assert gb.estimators_.shape == (200, 1) and gb.learning_rate == 0.05 and gb.subsample == 0.8
    assert models["logreg"].estimator.named_steps["logreg"].class_weight == "balanced"
    assert models["zscore"].estimator.feature_index == FEATS.index(cfg.experiment.model_params.zscore.feature)


def boundary_rows(scorer, X):
    "Rows whose split feature sits exactly on a split threshold, and one float32 step above it."
    a = scorer.arrays
    inner = np.flatnonzero(a["children_left"] >= 0)[:1500]
    on, above = X[: len(inner)].copy(), X[: len(inner)].copy()
    for i, j in enumerate(inner):
        t = a["threshold"][j]
        on[i, a["feature"][j]] = t
        above[i, a["feature"][j]] = float(np.nextafter(np.float32(t), np.float32(np.inf)))
    return np.r_[on, above]


@pytest.mark.parametrize("kind", SPIKE_MODELS)
def test_artefact_scores_equal_sklearn(kind, models, saved, data):
    s = load_artefact(saved / kind)
    X = data[FEATS].to_numpy()
    rows = [X, X * 50.0, -X, np.zeros((3, 7))]
    if kind in ("random_forest", "gradient_boosting"): rows.append(boundary_rows(s, X))
    X = np.concatenate(rows)
    want = models[kind].estimator.predict_proba(X)[:, 1]
    got = s.predict_proba(X)
    assert got.shape == (len(X),)
    assert_allclose(got, want, rtol=0, atol=1e-9)
    assert_allclose(s.predict_proba(X[17]), want[17:18], rtol=0, atol=1e-9)      # one row, 1-D
    assert_allclose(s.predict_proba(pd.DataFrame(X[:5], columns=FEATS)), want[:5], rtol=0, atol=1e-9)
    assert s.predict(X[:50]).tolist() == (want[:50] >= 0.4).astype(int).tolist()


def test_random_forest_and_boosting_formulas(models, saved, data):
    "forest = mean of per-tree class-1 leaf fractions; boosting = sigmoid(init + lr * sum of leaf values)."
    X = data[FEATS].to_numpy()[:200]
    rf = models["random_forest"].estimator
    per_tree = np.mean([t.predict_proba(X.astype(np.float32))[:, 1] for t in rf.estimators_], axis=0)
    assert_allclose(load_artefact(saved / "random_forest").predict_proba(X), per_tree, rtol=0, atol=1e-12)
    gb, s = models["gradient_boosting"].estimator, load_artefact(saved / "gradient_boosting")
    lr, init = s.arrays["learning_rate"][0], s.arrays["init"][0]
    assert lr == 0.05
    assert_allclose(gb.decision_function(X), init + lr * s._leaf_values(X).sum(axis=1), rtol=0, atol=1e-10)


def test_zscore_is_normal_cdf_of_training_zscore(models, saved, data):
    from scipy.stats import norm
    tr = data[data.split == "train"].rv_5m
    s = load_artefact(saved / "zscore")
    assert s.arrays["mean"][0] == pytest.approx(tr.mean(), rel=1e-14)
    assert s.arrays["std"][0] == pytest.approx(tr.std(ddof=0), rel=1e-14)
    x = data[FEATS].to_numpy()[:10]
    assert_allclose(s.predict_proba(x), norm.cdf((x[:, 1] - tr.mean()) / tr.std(ddof=0)), rtol=1e-12)


# ---------------------------------------------------------------- the artefact format

def test_artefact_is_three_pickle_free_files(saved, data):
    for kind in SPIKE_MODELS:
        d = saved / kind
        assert sorted(p.name for p in d.iterdir()) == sorted(ARTEFACT_FILES)
        for f in ("model.npz", "reference.npz"):
            with np.load(d / f, allow_pickle=False) as z:
                assert all(z[k].dtype.kind in "iuf" for k in z.files)
            with zipfile.ZipFile(d / f) as zf:
                assert all(n.endswith(".npy") for n in zf.namelist())
        meta = json.loads((d / "meta.json").read_text())
        assert meta["kind"] == kind and meta["features"] == FEATS and meta["threshold"] == 0.4
        assert meta["format"] == spike.ARTEFACT_FORMAT and meta["train_span"] == ["a", "b"]
        assert {"numpy", "scikit-learn", "volnb", "python"} <= set(meta["versions"])
        assert pd.Timestamp(meta["created_at"]).tzinfo is not None
        assert meta["sha256"] == {f: sha(d / f) for f in ("model.npz", "reference.npz")}
    names = [p.name for p in saved.rglob("*")]
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib", ".pt", ".tmp", ".old"))]


def test_reference_is_a_fixed_sample_of_training_rows(saved, data):
    tr = data[data.split == "train"][FEATS].to_numpy()
    ref = load_artefact(saved / "logreg").reference
    assert ref.shape == (REF_ROWS, 7)
    assert set(map(tuple, ref)) <= set(map(tuple, tr))                 # training rows only
    assert len(set(map(tuple, ref))) == REF_ROWS                        # without replacement
    assert np.array_equal(ref, sample_reference(tr, REF_ROWS, seed=0))  # the fixed RNG
    assert sample_reference(tr[:10], REF_ROWS).shape == (10, 7)         # fewer rows than asked: all of them


def test_same_model_same_bytes(models, tmp_path, data):
    ref = data[FEATS].to_numpy()[:20]
    for i in range(2):
        save_artefact(models["gradient_boosting"], tmp_path / f"a{i}", features=FEATS, meta={"threshold": 0.5}, reference=ref)
    assert sha(tmp_path / "a0/model.npz") == sha(tmp_path / "a1/model.npz")


def test_save_refuses_bad_arguments(models, tmp_path, data):
    m, ref = models["logreg"], data[FEATS].to_numpy()[:20]
    with pytest.raises(ValueError, match="threshold"):
        save_artefact(m, tmp_path / "x", features=FEATS, meta={}, reference=ref)
    with pytest.raises(ValueError, match="threshold"):
        save_artefact(m, tmp_path / "x", features=FEATS, meta={"threshold": 1.5}, reference=ref)
    with pytest.raises(ValueError, match="reserved"):
        save_artefact(m, tmp_path / "x", features=FEATS, meta={"threshold": 0.5, "kind": "svm"}, reference=ref)
    with pytest.raises(ValueError, match="differ"):
        save_artefact(m, tmp_path / "x", features=FEATS[::-1], meta={"threshold": 0.5}, reference=ref)
    with pytest.raises(ValueError, match=r"shape \(n, 7\)"):
        save_artefact(m, tmp_path / "x", features=FEATS, meta={"threshold": 0.5}, reference=ref[:, :6])
    bad = ref.copy(); bad[3, 2] = np.nan
    with pytest.raises(DataValidationError, match="rv_15m"):
        save_artefact(m, tmp_path / "x", features=FEATS, meta={"threshold": 0.5}, reference=bad)
    assert list(tmp_path.iterdir()) == []                                # nothing half-written, no temp dirs


def test_failed_overwrite_keeps_the_old_artefact(models, tmp_path, data, monkeypatch):
    ref = data[FEATS].to_numpy()[:20]
    dest = tmp_path / "model"
    save_artefact(models["logreg"], dest, features=FEATS, meta={"threshold": 0.3}, reference=ref)
    before = {f: (dest / f).read_bytes() for f in ARTEFACT_FILES}
    real, calls = spike._write_npz, []
    def failing(path, arrays):
        calls.append(path)
        if len(calls) == 2: raise OSError("disk full (simulated)")
        real(path, arrays)
    monkeypatch.setattr(spike, "_write_npz", failing)
    with pytest.raises(OSError, match="disk full"):
        save_artefact(models["random_forest"], dest, features=FEATS, meta={"threshold": 0.6}, reference=ref)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert {f: (dest / f).read_bytes() for f in ARTEFACT_FILES} == before
    assert load_artefact(dest).kind == "logreg"
    monkeypatch.undo()
    save_artefact(models["random_forest"], dest, features=FEATS, meta={"threshold": 0.6}, reference=ref)
    assert load_artefact(dest).kind == "random_forest" and [p.name for p in tmp_path.iterdir()] == ["model"]


# ---------------------------------------------------------------- bad artefacts

@pytest.mark.parametrize("f", ["model.npz", "reference.npz"])
def test_tampered_file_fails_its_checksum(copy, f):
    d = copy("random_forest")
    b = bytearray((d / f).read_bytes()); b[len(b) // 2] ^= 0xFF
    (d / f).write_bytes(bytes(b))
    with pytest.raises(ArtefactError, match=rf"sha256 mismatch.*file {f}") as e:
        load_artefact(d)
    assert e.value.file == f and e.value.field == "sha256"


@pytest.mark.parametrize("f", ARTEFACT_FILES)
def test_missing_file(copy, f):
    d = copy()
    (d / f).unlink()
    with pytest.raises(ArtefactError, match=rf"missing file.*file {f}"):
        load_artefact(d)


def test_not_a_directory(tmp_path):
    with pytest.raises(ArtefactError, match="no artefact directory"):
        load_artefact(tmp_path / "nope")


@pytest.mark.parametrize("edit, file, field, msg", [
    (lambda m: m.update(kind="svm"), "meta.json", "kind", "unknown kind"),
    (lambda m: m.update(format="other/9"), "meta.json", "format", "unknown format"),
    (lambda m: m.pop("threshold"), "meta.json", "threshold", "missing field"),
    (lambda m: m.update(threshold=float("nan")), "meta.json", "threshold", "probability"),
    (lambda m: m.update(threshold="0.5"), "meta.json", "threshold", "probability"),
    (lambda m: m.update(features=FEATS[:6]), "meta.json", "features", "wrong feature count"),
    (lambda m: m.update(features=FEATS[:6] + ["rv_1m"]), "meta.json", "features", "distinct"),
    (lambda m: m["sha256"].pop("reference.npz"), "meta.json", "sha256.reference.npz", "no checksum"),
])
def test_bad_manifest(copy, edit, file, field, msg):
    d = copy("gradient_boosting")
    edit_meta(d, edit)
    with pytest.raises(ArtefactError, match=msg) as e:
        load_artefact(d)
    assert (e.value.file, e.value.field) == (file, field)
    assert f"file {file}" in str(e.value)


def test_meta_not_json(copy):
    d = copy()
    (d / "meta.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="not valid JSON.*file meta.json"):
        load_artefact(d)


def nan_coef(a):
    a["coef"][1] = np.nan


def drop_intercept(a):
    a.pop("intercept")


def int_scale(a):
    a["scaler_scale"] = a["scaler_scale"].astype(np.int64) + 1


@pytest.mark.parametrize("mutate, field, msg", [
    (nan_coef, "coef", "non-finite"),
    (drop_intercept, "intercept", "missing array"),
    (lambda a: a.update(extra=np.zeros(2)), "extra", "unexpected"),
    (lambda a: a.update(coef=a["coef"][:6]), "coef", r"expected shape \(7,\)"),
    (lambda a: a.update(n_features=np.array([6])), "scaler_mean", r"expected shape \(6,\)"),
])
def test_bad_logreg_arrays(copy, mutate, field, msg):
    d = copy("logreg")
    rewrite_model(d, mutate)
    with pytest.raises(ArtefactError, match=msg) as e:
        load_artefact(d)
    assert e.value.field == field
    assert e.value.file == "model.npz"


def test_model_and_manifest_disagree_on_feature_count(copy):
    d = copy("zscore")
    rewrite_model(d, lambda a: a.update(n_features=np.array([6])))
    with pytest.raises(ArtefactError, match="wrong feature count.*file meta.json, field 'features'"):
        load_artefact(d)


def cycle(a):
    i = int(np.flatnonzero(a["children_left"] >= 0)[5])
    a["children_left"][i] = 0                           # points back to the root: not after its parent


def bad_feature(a):
    a["feature"][int(np.flatnonzero(a["children_left"] >= 0)[0])] = 7


def inf_threshold(a):
    a["threshold"][0] = np.inf


def bad_offsets(a):
    a["tree_offsets"][-1] += 1


@pytest.mark.parametrize("mutate, field", [(cycle, "children_left"), (bad_feature, "feature"),
                                           (inf_threshold, "threshold"), (bad_offsets, "tree_offsets")])
def test_bad_tree_arrays(copy, mutate, field):
    d = copy("random_forest")
    rewrite_model(d, mutate)
    with pytest.raises(ArtefactError, match="file model.npz") as e:
        load_artefact(d)
    assert e.value.field == field


def test_pickled_array_is_refused_and_never_unpickled(copy, tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    d = copy("zscore")
    def add_object_array(a):
        a["mean"] = np.array([Payload()], dtype=object)
    rewrite_model(d, add_object_array, allow_pickle=True)
    with pytest.raises(ArtefactError, match="unreadable .npz.*file model.npz"):
        load_artefact(d)
    assert not marker.exists()


def test_corrupt_npz_with_matching_checksum(copy):
    d = copy("zscore")
    (d / "model.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    edit_meta(d, lambda m: m["sha256"].update({"model.npz": sha(d / "model.npz")}))
    with pytest.raises(ArtefactError, match="unreadable .npz.*file model.npz"):
        load_artefact(d)


# ---------------------------------------------------------------- scoring input

def test_predict_proba_input_errors(saved):
    s = load_artefact(saved / "gradient_boosting")
    with pytest.raises(ValueError, match=r"shape \(n, 7\)"):
        s.predict_proba(np.ones((3, 6)))
    x = np.ones((3, 7)); x[2, 4] = np.inf
    with pytest.raises(DataValidationError, match="ret_5m") as e:
        s.predict_proba(x)
    assert e.value.row == 2
    with pytest.raises(DataValidationError, match="hl_range"):
        s.predict_proba(pd.DataFrame(np.ones((2, 6)), columns=[f for f in FEATS if f != "hl_range"]))


@pytest.mark.filterwarnings("error")
def test_extreme_but_finite_rows(saved, models):
    huge = np.array([[1e308] * 7, [-1e308] * 7, [1e39] * 7])
    for kind in ("random_forest", "gradient_boosting", "zscore"):    # beyond float32: ordered like +-inf, no warning
        p = load_artefact(saved / kind).predict_proba(huge)
        assert p.shape == (3,) and np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all()
    assert_allclose(load_artefact(saved / "random_forest").predict_proba(huge[:2]),
                    models["random_forest"].estimator.predict_proba(np.clip(huge[:2], -3e38, 3e38))[:, 1], atol=1e-12)
    coef = load_artefact(saved / "logreg").arrays["coef"]
    assert (coef > 0).any() and (coef < 0).any()                      # so inf - inf would be NaN
    with pytest.raises(ValueError, match="out of range.*row 0"):
        load_artefact(saved / "logreg").predict_proba(huge)


def test_fit_errors(data):
    X, y = data[FEATS], data.label
    with pytest.raises(ValueError, match="unknown spike model"):
        fit_spike_model("svm", X, y)
    with pytest.raises(ValueError, match="single class"):
        fit_spike_model("logreg", X, np.zeros(len(X), int))
    with pytest.raises(DataValidationError, match="labels must be 0 or 1"):
        fit_spike_model("logreg", X, np.full(len(X), 2))
    with pytest.raises(ValueError, match="rv_2m"):
        fit_spike_model("zscore", X, y, {"feature": "rv_2m"})
    with pytest.raises(ValueError, match="rows"):
        fit_spike_model("logreg", X, y[:-1])


# ---------------------------------------------------------------- no look-ahead

def perturbed(data, seed=1):
    "The same frame with every validation and test row's features and labels scrambled."
    rng = np.random.default_rng(seed)
    d = data.copy()
    held = d.split != "train"
    d.loc[held, FEATS] = d.loc[held, FEATS].to_numpy() * rng.uniform(0.1, 10, (held.sum(), len(FEATS)))
    d.loc[held, "label"] = rng.integers(0, 2, held.sum())
    return d


def test_fit_uses_training_rows_only(cfg, data, models):
    again = train_spike_models(perturbed(data), FEATS, cfg.experiment.model_params, cfg.experiment.models)
    for name in SPIKE_MODELS:
        a, b = export_arrays(models[name]), export_arrays(again[name])
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    tr = data[data.split == "train"]
    z = again["zscore"].estimator
    assert (z.mean_, z.std_) == (float(tr.rv_5m.mean()), float(tr.rv_5m.std(ddof=0)))


def test_thresholds_come_from_validation_only(models, data):
    P = score_spike_models(models, data)
    T = metrics_table(P)
    Q = P.copy()
    test = Q.split == "test"
    Q.loc[test, "score"] = np.random.default_rng(0).uniform(size=test.sum())
    Q.loc[test, "label"] = 1 - Q.loc[test, "label"]
    U = metrics_table(Q)
    assert T.threshold.tolist() == U.threshold.tolist()
    keep = ["model", "pr_auc", "roc_auc", "f1", "precision", "recall", "brier"]
    pd.testing.assert_frame_equal(T[T.split == "validation"][keep].reset_index(drop=True),
                                  U[U.split == "validation"][keep].reset_index(drop=True))
    for name, g in P.groupby("model"):
        v = g[g.split == "validation"]
        assert T[T.model == name].threshold.unique().tolist() == [choose_threshold(v.label, v.score)]


def constructed_scores():
    "Two models: `a` ranks the validation spikes perfectly and the test spikes badly, `b` the reverse."
    rng = np.random.default_rng(3)
    rows = []
    for split in ("validation", "test"):
        y = (rng.uniform(size=400) < 0.1).astype(int)
        good = np.where(y == 1, rng.uniform(0.6, 1.0, 400), rng.uniform(0.0, 0.5, 400))
        noisy = rng.uniform(size=400)
        for m, s in (("a", good if split == "validation" else noisy), ("b", noisy if split == "validation" else good)):
            rows.append(pd.DataFrame({"model": m, "split": split, "label": y, "score": s}))
    return pd.concat(rows, ignore_index=True)


def test_selection_and_threshold_use_validation_not_test():
    P = constructed_scores()
    T = metrics_table(P)
    assert select_model(T, "pr_auc", "test") == "b"              # the test-best model...
    assert select_model(T, "pr_auc") == "a"                      # ...is not the one chosen
    assert select_model(T, "brier") == "a"                       # lower is better for Brier
    a = P[P.model == "a"]
    thr = T[T.model == "a"].threshold.unique()
    assert thr.tolist() == [choose_threshold(a[a.split == "validation"].label, a[a.split == "validation"].score)]
    assert thr[0] != choose_threshold(a[a.split == "test"].label, a[a.split == "test"].score)
    with pytest.raises(ValueError, match="no pr_auc values on the train split"):
        select_model(T, "pr_auc", "train")
    with pytest.raises(DataValidationError, match="validation rows"):
        metrics_table(P[P.split == "test"])


# ---------------------------------------------------------------- metric values

def test_metric_values_by_hand():
    m = spike_metrics([0, 0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.9], threshold=0.35)
    # predicted spikes at >= 0.35: rows 1, 2, 3, 4 -> tp 2, fp 2, fn 0
    assert (m["n"], m["positives"]) == (5, 2)
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["f1"] == pytest.approx(2 / 3)
    assert m["positive_rate"] == 0.4 and m["predicted_positive_rate"] == 0.8
    assert m["roc_auc"] == pytest.approx(3 / 6)                  # 3 of the 6 (spike, calm) pairs ranked right
    assert m["pr_auc"] == pytest.approx((1 / 2 + 2 / 4) / 2)     # AP: recall steps at ranks 2 (P=1/2) and 4 (P=2/4)
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.16, 0.4225, 0.04, 0.81]))
    none = spike_metrics([0, 0, 0], [0.2, 0.9, 0.1], 0.5)          # no spike: recall 0 by convention, the AUCs undefined
    assert np.isnan(none["pr_auc"]) and np.isnan(none["roc_auc"]) and none["recall"] == 0.0 and none["f1"] == 0
    quiet = spike_metrics([0, 1, 1], [0.2, 0.3, 0.1], 0.5)         # nothing flagged: precision 0
    assert (quiet["precision"], quiet["recall"], quiet["f1"], quiet["predicted_positive_rate"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("y,score,threshold", [
    ([0, 0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8, 0.9], 0.35),
    ([0, 0, 0], [0.2, 0.9, 0.1], 0.5),                              # no positives
    ([0, 1, 1], [0.2, 0.3, 0.1], 0.5),                              # nothing predicted positive
    ([0, 0, 0], [0.2, 0.3, 0.1], 0.5),                              # neither
    ([1, 1, 0, 1, 0, 0, 1], [0.9, 0.2, 0.6, 0.7, 0.1, 0.55, 0.5], 0.5),
])
def test_precision_recall_f1_equal_sklearn_zero_division_0(y, score, threshold):
    "The one convention (volnb.metrics.precision_recall_f1) is scikit-learn's zero_division=0, to the last bit."
    from sklearn.metrics import precision_recall_fscore_support
    m = spike_metrics(y, score, threshold)
    yhat = (np.asarray(score) >= threshold).astype(int)
    ref = precision_recall_fscore_support(y, yhat, average="binary", zero_division=0)[:3]
    assert (m["precision"], m["recall"], m["f1"]) == tuple(float(v) for v in ref)


def test_models_table_calibration_table_and_metrics():
    P = constructed_scores()
    T = models_table(P, "a")
    assert T.columns.tolist() == MODELS_TABLE_COLUMNS
    # the committed table has exactly these columns, in this order
    committed = Path(__file__).resolve().parents[1] / "reports/tables/spike60s/models.csv"
    assert committed.read_text().splitlines()[0].split(",") == MODELS_TABLE_COLUMNS
    assert list(zip(T.model, T.split, T.selected)) == [("a", "validation", True), ("a", "test", True),
                                                       ("b", "validation", False), ("b", "test", False)]
    pd.testing.assert_frame_equal(T.drop(columns="selected"), metrics_table(P)[[c for c in MODELS_TABLE_COLUMNS if c != "selected"]])
    with pytest.raises(ValueError, match="'b' is not the best by validation pr_auc"):
        models_table(P, "b")
    cal = calibration_table(P, ["b"], splits=("test", "test_2026"))
    assert set(cal.split) == {"test"} and cal.n.sum() == 400 and set(cal.model) == {"b"}
    assert cal.columns.tolist() == pd.read_csv(committed.with_name("calibration.csv")).columns.tolist()
    with pytest.raises(ValueError, match="no rows"):
        calibration_table(P, ["b"], splits=("cross_venue",))
    m = models_metrics(T)
    assert list(m) == ["a", "b"] and list(m["a"]) == ["validation", "test"]
    row = T[(T.model == "b") & (T.split == "test")].iloc[0]
    assert m["b"]["test"] == {k: row[k] for k in MODEL_METRICS}


def test_choose_threshold_maximises_f1():
    rng = np.random.default_rng(5)
    y = (rng.uniform(size=300) < 0.15).astype(int)
    s = np.round(0.3 * y + rng.uniform(size=300), 2)              # ties on purpose
    f1 = {t: spike_metrics(y, s, t)["f1"] for t in np.unique(s)}
    assert spike_metrics(y, s, choose_threshold(y, s))["f1"] == pytest.approx(max(f1.values()), abs=1e-12)
    with pytest.raises(ValueError, match="no positive labels"):
        choose_threshold(np.zeros(5, int), np.arange(5))


def test_calibration_bins():
    rng = np.random.default_rng(2)
    s = rng.uniform(size=1000)
    y = (rng.uniform(size=1000) < s).astype(int)
    c = calibration_bins(y, s, n_bins=5)
    assert c.n.sum() == 1000 and c.bin.tolist() == [0, 1, 2, 3, 4]
    b = np.minimum((s * 5).astype(int), 4)
    assert_allclose(c.observed_rate, [y[b == i].mean() for i in range(5)])
    assert_allclose(c.mean_score, [s[b == i].mean() for i in range(5)])
    q = calibration_bins(y, s, n_bins=4, strategy="quantile")
    assert q.n.tolist() == [250, 250, 250, 250]
    with pytest.raises(ValueError, match="strategy"):
        calibration_bins(y, s, strategy="kde")


# ---------------------------------------------------------------- per-feature contributions (explain=true)

def extended_rows(scorer, X):
    "Data rows, far-out rows, zeros and (for trees) rows on a split threshold and one float32 step above it."
    rows = [X, X * 50.0, -X, np.zeros((3, X.shape[1]))]
    if scorer.kind in ("random_forest", "gradient_boosting"): rows.append(boundary_rows(scorer, X))
    return np.concatenate(rows)


@pytest.mark.parametrize("kind", SPIKE_MODELS)
def test_contributions_add_up_to_the_score(kind, models, saved, data):
    s = load_artefact(saved / kind)
    X = extended_rows(s, data[FEATS].to_numpy())
    c = s.contributions(X)
    assert isinstance(c, Contributions) and c.features == FEATS
    assert c.space == {"zscore": "z", "logreg": "log_odds", "random_forest": "probability", "gradient_boosting": "log_odds"}[kind]
    assert c.bias.shape == (len(X),) and c.values.shape == (len(X), 7)
    assert np.isfinite(c.values).all() and (c.bias == c.bias[0]).all()
    link = {"log_odds": lambda z: 1 / (1 + np.exp(-z)), "probability": lambda z: z, "z": spike_norm_cdf}[c.space]
    p = s.predict_proba(X)
    assert_allclose(link(c.bias + c.values.sum(axis=1)), p, rtol=0, atol=1e-12)
    assert_allclose(c.proba(), p, rtol=0, atol=1e-12)
    if kind in ("logreg", "gradient_boosting"):                        # the log-odds are sklearn's decision function
        assert_allclose(c.total, models[kind].estimator.decision_function(X), rtol=0, atol=1e-10)
    one = s.contributions(X[17])                                       # one row as a 1-D vector
    assert one.values.shape == (1, 7) and one.bias.shape == (1,)
    assert_allclose(one.values, c.values[17:18], rtol=0, atol=1e-15)
    assert_allclose(s.contributions(pd.DataFrame(X[:5, ::-1], columns=FEATS[::-1])).values, c.values[:5], rtol=0, atol=1e-15)


def spike_norm_cdf(z):
    from scipy.stats import norm
    return norm.cdf(z)


def saabas_walk(trees, values, x):
    "Plain per-tree walk of one row on sklearn `tree_` arrays (float32 features): (sum of root values, per-feature terms)."
    bias, terms = 0.0, np.zeros(len(x))
    for t, v in zip(trees, values):
        node = 0
        bias += v[0]
        while t.children_left[node] != -1:
            f = t.feature[node]
            with np.errstate(over="ignore"):
                go_left = np.float32(x[f]) <= t.threshold[node]
            child = t.children_left[node] if go_left else t.children_right[node]
            terms[f] += v[child] - v[node]
            node = child
    return bias, terms


def test_tree_contributions_equal_a_plain_walk(data):
    "A small forest and a small boosted model: the vectorised walk equals a per-row, per-tree Python walk."
    tr = data[data.split == "train"]
    small = {"random_forest": {"n_estimators": 5, "max_depth": 4, "min_samples_leaf": 20, "random_state": 0},
             "gradient_boosting": {"n_estimators": 6, "max_depth": 3, "learning_rate": 0.1, "subsample": 0.8, "random_state": 0}}
    X0 = data[data.split == "validation"][FEATS].to_numpy()[:150]
    for kind, params in small.items():
        m = fit_spike_model(kind, tr[FEATS], tr.label.to_numpy(), params, features=FEATS)
        s = SpikeScorer(kind, FEATS, export_arrays(m))
        X = np.r_[extended_rows(s, X0), [[1e308] * 7, [-1e308] * 7, [1e39] * 7]]
        est = m.estimator
        if kind == "random_forest":
            trees = [e.tree_ for e in est.estimators_]
            vals = [t.value[:, 0, 1] / t.value[:, 0, :].sum(axis=1) for t in trees]
            walked = [saabas_walk(trees, vals, x) for x in X]
            bias = np.array([b for b, _ in walked]) / len(trees)
            assert np.ptp([v[0] for v in vals]) > 0                     # roots differ between bootstrap samples
            terms = np.array([t for _, t in walked]) / len(trees)
            assert_allclose(bias + terms.sum(axis=1), est.predict_proba(np.clip(X, -3e38, 3e38))[:, 1], rtol=0, atol=1e-12)
        else:
            trees = [e.tree_ for e in est.estimators_[:, 0]]
            vals = [t.value[:, 0, 0] for t in trees]
            walked = [saabas_walk(trees, vals, x) for x in X]
            prior = tr.label.mean()
            bias = np.log(prior / (1 - prior)) + 0.1 * np.array([b for b, _ in walked])
            terms = 0.1 * np.array([t for _, t in walked])
            assert_allclose(bias + terms.sum(axis=1), est.decision_function(np.clip(X, -3e38, 3e38)), rtol=0, atol=1e-10)
        c = s.contributions(X)
        assert (terms != 0).sum() > len(X)                              # the walk does split on several features
        assert_allclose(c.bias, bias, rtol=0, atol=1e-12)
        assert_allclose(c.values, terms, rtol=0, atol=1e-12)


def test_forest_contributions_equal_treeinterpreter(models, saved, data):
    "External reference: treeinterpreter's Saabas contributions (class-1 column) for the fitted RandomForestClassifier."
    import copy
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)          # it imports distutils' LooseVersion
        from treeinterpreter import treeinterpreter as ti
    rf = copy.deepcopy(models["random_forest"].estimator)              # ti normalises tree_.value in place
    s = load_artefact(saved / "random_forest")
    X = data[FEATS].to_numpy()
    X = np.r_[X[:200], boundary_rows(s, X)[::10]]
    pred, bias, contrib = ti.predict(rf, X)
    c = s.contributions(X)
    assert_allclose(pred[:, 1], s.predict_proba(X), rtol=0, atol=1e-12)
    assert_allclose(c.bias, bias[:, 1], rtol=0, atol=1e-12)
    assert_allclose(c.values, contrib[:, :, 1], rtol=0, atol=1e-12)


def test_logreg_contributions_are_standardised_terms(models, saved, data):
    pipe = models["logreg"].estimator
    sc, lr = pipe.named_steps["scale"], pipe.named_steps["logreg"]
    X = data[FEATS].to_numpy()[:300]
    c = load_artefact(saved / "logreg").contributions(X)
    assert_allclose(c.values, sc.transform(X) * lr.coef_[0], rtol=1e-12, atol=1e-15)
    assert_allclose(c.bias, np.full(len(X), lr.intercept_[0]), rtol=0, atol=0)
    assert_allclose(c.total, pipe.decision_function(X), rtol=0, atol=1e-12)


def test_zscore_contributions_are_the_z_score(data, saved):
    tr = data[data.split == "train"].rv_5m
    X = data[FEATS].to_numpy()[:50]
    c = load_artefact(saved / "zscore").contributions(X)
    j = FEATS.index("rv_5m")
    assert (c.space, (c.bias == 0).all(), (np.delete(c.values, j, axis=1) == 0).all()) == ("z", True, True)
    assert_allclose(c.values[:, j], (X[:, j] - tr.mean()) / tr.std(ddof=0), rtol=1e-12)


def test_contributions_by_hand():
    "One tree: root x0 <= 0.5, right child x1 <= 2; values root 0, left -1, right 1, leaves 0.5 and 3."
    tree = {"n_features": np.array([2]), "tree_offsets": np.array([0, 5]), "children_left": np.array([1, -1, 3, -1, -1]),
            "children_right": np.array([2, -1, 4, -1, -1]), "feature": np.array([0, -1, 1, -1, -1]),
            "threshold": np.array([0.5, 0, 2.0, 0, 0])}
    gb = SpikeScorer("gradient_boosting", ["x0", "x1"], {**tree, "value": np.array([0.0, -1, 1, 0.5, 3]),
                                                         "init": np.array([-2.0]), "learning_rate": np.array([0.1])})
    X = np.array([[1.0, 3.0], [1.0, 2.0], [0.5 + 1e-9, 3.0], [0.5 + 1e-7, 3.0]])   # 0.5 + 1e-9 is 0.5 in float32: left
    c = gb.contributions(X)
    assert c.space == "log_odds"
    assert_allclose(c.bias, [-2.0] * 4, rtol=0, atol=1e-15)
    assert_allclose(c.values, [[0.1, 0.2], [0.1, -0.05], [-0.1, 0.0], [0.1, 0.2]], rtol=0, atol=1e-15)
    rf = SpikeScorer("random_forest", ["x0", "x1"], {**tree, "value": np.array([0.3, 0.1, 0.6, 0.2, 0.9])})
    c = rf.contributions(X)
    assert c.space == "probability"
    assert_allclose(c.bias, [0.3] * 4, rtol=0, atol=1e-15)
    assert_allclose(c.values, [[0.3, 0.3], [0.3, -0.4], [-0.2, 0.0], [0.3, 0.3]], rtol=0, atol=1e-15)
    assert c.frame().columns.tolist() == ["bias", "x0", "x1"]
    assert c.records()[1] == {"space": "probability", "bias": 0.3, "contributions": {"x0": c.values[1, 0], "x1": c.values[1, 1]}}


def test_contributions_input_errors(saved):
    s = load_artefact(saved / "random_forest")
    with pytest.raises(ValueError, match=r"shape \(n, 7\) for features \['rv_1m'.*got \(3, 6\)"):
        s.contributions(np.ones((3, 6)))
    with pytest.raises(ValueError, match=r"got \(6,\)"):
        s.contributions(np.ones(6))
    x = np.ones((3, 7)); x[1, 2] = np.nan
    with pytest.raises(DataValidationError, match="rv_15m") as e:
        s.contributions(x)
    assert e.value.row == 1
    with pytest.raises(DataValidationError, match="hl_range"):
        s.contributions(pd.DataFrame(np.ones((2, 6)), columns=[f for f in FEATS if f != "hl_range"]))


@pytest.mark.filterwarnings("error")
def test_contributions_of_extreme_but_finite_rows(saved):
    huge = np.array([[1e308] * 7, [-1e308] * 7, [1e39] * 7, [1e12] * 7])
    for kind in ("random_forest", "gradient_boosting"):               # beyond float32: ordered like +-inf, no warning
        s = load_artefact(saved / kind)
        c = s.contributions(huge)
        assert np.isfinite(c.values).all()
        assert_allclose(c.proba(), s.predict_proba(huge), rtol=0, atol=1e-12)
        json.dumps(c.records(), allow_nan=False)
    z = load_artefact(saved / "zscore")
    assert np.isfinite(z.contributions(huge[2:]).values).all()
    for kind in ("zscore", "logreg"):                                  # (1e308 - mean) / std overflows float64: refused
        with pytest.raises(ValueError, match="out of range.*row 0"):
            load_artefact(saved / kind).contributions(huge)


# ---------------------------------------------------------------- the stages on a slice of the real snapshot

SLICE = ("experiment=spike60s experiment.split.train=['2021-04-02 00:00','2021-04-12 23:59'] "
         "experiment.split.validation=['2023-03-20 00:00','2023-03-27 23:59'] "
         "experiment.split.test=['2023-04-20 00:00','2023-04-25 23:59'] "
         "experiment.split.test_2026=['2026-04-01 00:00','2026-04-03 23:59'] "
         "experiment.model_params.random_forest.n_estimators=20 experiment.model_params.gradient_boosting.n_estimators=20 "
         "experiment.reference_rows=1000")


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, root, data_dir):
    import papermill as pm
    if not (data_dir / "intraday").is_dir():
        pytest.fail("data/intraday is missing: run `dvc pull data.dvc`")
    tmp = tmp_path_factory.mktemp("spike_stages")
    ov = f"{SLICE} paths.reports_dir={tmp}/reports paths.artifacts_dir={tmp}/reports/artifacts"
    for stage in ("spike_prepare", "spike_train", "spike_evaluate"):
        pm.execute_notebook(str(root / "nbs/pipeline" / f"{stage}.ipynb"), str(tmp / f"{stage}.ipynb"),
                            parameters={"overrides": ov}, kernel_name="python3", progress_bar=False, cwd=str(root))
    return tmp / "reports"


def test_stages_on_a_slice(stage_run):
    rep = stage_run
    splits = pd.read_csv(rep / "tables/spike60s/splits.csv").set_index("split")
    assert splits.index.tolist() == ["train", "validation", "test", "test_2026", "cross_venue"]
    assert splits.loc["train", "first_bar"] >= "2021-04-02" and splits.loc["train", "last_bar"] <= "2021-04-12 23:59"
    assert splits.loc["test", "first_bar"] >= "2023-04-20" and splits.loc["test", "last_bar"] <= "2023-04-25 23:59"
    assert splits.loc["train", "positive_rate"] == pytest.approx(0.05, abs=0.002)   # the 95% training quantile
    t = pd.read_csv(rep / "tables/spike60s/models.csv")
    assert len(t) == 4 * 5 and set(t.model) == set(SPIKE_MODELS)
    assert (t.groupby("model").n.apply(list).apply(lambda n: n == splits.rows.tolist())).all()
    val = t[t.split == "validation"].set_index("model")
    sel = json.loads((rep / "artifacts/spike60s/selected.json").read_text())
    assert sel["model"] == val.pr_auc.idxmax() and t[t.selected].model.unique().tolist() == [sel["model"]]
    assert t.pr_auc.between(0, 1).all() and (t.groupby("model").threshold.nunique() == 1).all()
    metrics = json.loads((rep / "metrics/spike60s.json").read_text())
    assert metrics["selected"] == sel["model"] and set(metrics["models"]) == set(SPIKE_MODELS)
    for name in ("precision_recall", "calibration"):
        assert (rep / f"figures/spike60s/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = pd.read_csv(rep / "tables/spike60s/calibration.csv")
    assert (cal.groupby(["model", "split"]).n.sum() == t.set_index(["model", "split"]).n.loc[cal.groupby(["model", "split"]).n.sum().index]).all()
    ep = pd.read_csv(rep / "tables/spike60s/equal_prevalence.csv")       # issue 15: our labels beside the deck's share
    assert set(ep.labels) == {"ours", "deck"} and set(ep.split) == {"validation", "test"} and set(ep.model) == set(SPIKE_MODELS)
    deck = ep[ep.labels == "deck"]
    assert deck.train_share.sub(0.43).abs().max() <= 1 / splits.loc["train", "rows"] and (deck.target_share == 0.43).all()
    ours = ep[ep.labels == "ours"].set_index(["model", "split"])
    assert_allclose(ours.pr_auc, t.set_index(["model", "split"]).pr_auc.loc[ours.index], rtol=0, atol=1e-12)


def test_stage_artefacts_reproduce_predictions(stage_run):
    art = stage_run / "artifacts/spike60s"
    ds = pd.read_parquet(art / "prepare/dataset.parquet")
    P = pd.read_parquet(art / "predictions.parquet")
    for name in SPIKE_MODELS:
        s = load_artefact(art / "models" / name)
        assert s.features == list(SYNTHETIC_FEATURES) and s.reference.shape == (1000, 7)
        assert pd.Timestamp(s.meta["train_span"][1]) <= pd.Timestamp("2021-04-12 23:59", tz="UTC")
        v = P[(P.model == name) & (P.split == "validation")]
        assert s.threshold == choose_threshold(v.label, v.score)
        assert_allclose(s.predict_proba(ds[s.features].to_numpy()), P[P.model == name].score.to_numpy(), rtol=0, atol=1e-9)
    assert not list(art.rglob("*.pkl")) and not list(art.rglob("*.joblib"))


def test_stage_builds_the_serving_registry(stage_run):
    from volnb.registry import Registry
    art = stage_run / "artifacts/spike60s"
    sel = json.loads((art / "selected.json").read_text())
    reg = Registry(art / "registry")
    assert reg.current() == "v0001" and reg.load("v0001").kind == sel["model"]
    assert reg.load("baseline").kind == "zscore"
    assert (art / "models" / sel["model"] / "model.npz").read_bytes() == (art / "registry/versions/v0001/model.npz").read_bytes()
    assert not (art / ".registry.tmp").exists()
