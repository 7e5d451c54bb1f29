"""volnb.models: shapes, causality, checkpoints and gradients of the Transformer variants and the LSTM; build_model."""
import io

import pytest
import torch

from volnb.attention import ATTENTION_VARIANTS
from volnb.models import (PAPER_MODELS, POSITIONAL_ENCODINGS, DecoderTransformer, LSTMRegressor, build_model)

F, L, B = 5, 8, 3
SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "ff_mult": 2, "rank": 3}


def transformer(attention="dot", positional="learned", seed=0, **kw):
    torch.manual_seed(seed)
    return DecoderTransformer(F, max_len=L, attention=attention, positional=positional, **{**SMALL, **kw})


def lstm(seed=0):
    torch.manual_seed(seed)
    return LSTMRegressor(F, hidden=8, n_layers=2)


ALL = [(a, p) for a in ATTENTION_VARIANTS for p in POSITIONAL_ENCODINGS]


@pytest.fixture
def x():
    return torch.randn(B, L, F, generator=torch.Generator().manual_seed(1))       # synthetic features


@pytest.mark.parametrize("attention,positional", ALL)
def test_transformer_shapes(attention, positional, x):
    m = transformer(attention, positional).eval()
    with torch.no_grad():
        assert m(x).shape == (B, L)
        assert m(x[:, :3]).shape == (B, 3)
        maps = m.attention_maps(x)
    assert len(maps) == SMALL["n_layers"]
    for w in maps:
        assert w.shape == (B, SMALL["n_heads"], L, L)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, SMALL["n_heads"], L), atol=1e-6, rtol=0)
        assert (w.triu(1) == 0).all()


def test_lstm_shape(x):
    assert lstm()(x).shape == (B, L)


def _check_causal(m, x):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        y = m(x)
        for t in range(L - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn(B, L - t - 1, F, generator=g) * 3
            y2 = m(x2)
            torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


@pytest.mark.parametrize("attention,positional", ALL)
def test_transformer_causal(attention, positional, x):
    _check_causal(transformer(attention, positional).eval(), x)


def test_lstm_causal(x):
    _check_causal(lstm().eval(), x)


def _round_trip(make, x):
    m = make(0).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.05 * torch.randn_like(p))
    buf = io.BytesIO(); torch.save(m.state_dict(), buf); buf.seek(0)
    fresh = make(99).eval()
    fresh.load_state_dict(torch.load(buf))
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))


@pytest.mark.parametrize("attention,positional", ALL)
def test_transformer_checkpoint_round_trip(attention, positional, x):
    _round_trip(lambda s: transformer(attention, positional, seed=s), x)


def test_lstm_checkpoint_round_trip(x):
    _round_trip(lstm, x)


def _check_grads(m, x):
    y = torch.randn(B, L, generator=torch.Generator().manual_seed(2))
    ((m(x) - y) ** 2).mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {n}"


@pytest.mark.parametrize("attention,positional", ALL)
def test_transformer_every_parameter_gets_gradient(attention, positional, x):
    _check_grads(transformer(attention, positional, dropout=0.0).train(), x)


def test_lstm_every_parameter_gets_gradient(x):
    _check_grads(lstm().train(), x)


def test_sinusoidal_is_not_a_parameter():
    m = transformer(positional="sinusoidal")
    assert "pos" not in m.state_dict()
    assert "pos" in transformer(positional="learned").state_dict()


def test_transformer_bad_input():
    m = transformer()
    with pytest.raises(ValueError, match=r"L=9.*max_len=8"):
        m(torch.randn(1, L + 1, F))
    with pytest.raises(ValueError, match="features"):
        m(torch.randn(1, L, F + 1))
    with pytest.raises(ValueError, match="factorized_dense"):
        DecoderTransformer(F, attention="nope")
    with pytest.raises(ValueError, match="sinusoidal"):
        DecoderTransformer(F, positional="rotary")


def test_paper_models():
    assert list(PAPER_MODELS) == ["LSTM", "Transformer (V)", "Synthesizer R", "Synthesizer FR", "Synthesizer D",
                                  "Synthesizer FD", "Synthesizer MD", "Synthesizer MR"]
    paper = {c["attention"] for c in PAPER_MODELS.values() if c["name"] == "transformer"}
    assert paper == set(ATTENTION_VARIANTS) - {"linear"}                          # linear attention is not the paper's
    for label, cfg in PAPER_MODELS.items():
        m = build_model(cfg, n_features=F, max_len=L)
        assert isinstance(m, LSTMRegressor if label == "LSTM" else DecoderTransformer)
        if label != "LSTM":
            assert m.attention == cfg["attention"] and m.max_len == L


def test_build_model_kwargs_pass_through():
    m = build_model({"name": "transformer", "attention": "random_dot", "positional": "sinusoidal", **SMALL}, F, L)
    assert m.positional == "sinusoidal" and len(m.blocks) == 2 and m.blocks[0].attn.rank == 3
    assert build_model({"name": "transformer", "max_len": 16, **SMALL}, F, L).max_len == 16
    assert build_model({"name": "lstm", "hidden": 8, "n_layers": 1, "dropout": 0.0}, F, L).lstm.hidden_size == 8


def test_transformer_linear_config_builds_linear_attention(x):
    "model=transformer_linear is transformer.yaml with attention: linear, and builds linear attention in every block."
    from omegaconf import OmegaConf
    from volnb.core import compose_config
    lin, base = (OmegaConf.to_container(compose_config(f"model={n}").model) for n in ("transformer_linear", "transformer"))
    assert lin == {**base, "label": "Linear Transformer", "attention": "linear"}
    m = build_model(lin, F, L).eval()
    assert {blk.attn.variant for blk in m.blocks} == {"linear"}
    with torch.no_grad():
        assert m(x).shape == (B, L) and torch.isfinite(m(x)).all()


def test_build_model_accepts_omegaconf():
    from omegaconf import OmegaConf
    m = build_model(OmegaConf.create({"name": "transformer", "attention": "dense", **SMALL}), F, L)
    assert m.attention == "dense"


@pytest.mark.parametrize("cfg,field", [
    ({"name": "gru"}, "model.name"),
    ({}, "model.name"),
    ({"name": "transformer", "attention": "linformer"}, "model.attention"),
    ({"name": "transformer", "positional": "rotary"}, "model.positional"),
    ({"name": "transformer", "max_len": 4}, "model.max_len"),
    ({"name": "lstm", "n_heads": 2}, "model.n_heads"),
])
def test_build_model_errors(cfg, field):
    with pytest.raises(ValueError, match=field):
        build_model(cfg, F, L)


def test_build_model_ignores_label():
    m = build_model({"name": "lstm", "label": "LSTM", "hidden": 8}, F, L)
    assert isinstance(m, LSTMRegressor)


def test_build_model_from_repo_model_configs(root, x):
    "Every config in conf/model/, composed as Hydra does (the synthesizers extend transformer.yaml), builds a model (B, L, F) -> (B, L)."
    from volnb.core import compose_config
    files = sorted((root / "conf" / "model").glob("*.yaml"))
    own = [f for f in files if not f.stem.startswith("paper_")]
    assert len(own) == 9, [f.name for f in own]              # 8 of the paper + transformer_linear
    assert len(files) == 18, [f.name for f in files]         # + the 8 paper_* variants (Table 2) and their base
    for f in files:
        m = build_model(compose_config(f"model={f.stem}").model, F, L).eval()
        with torch.no_grad(): assert m(x).shape == (B, L), f.name
