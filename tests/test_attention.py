"""volnb.attention: every variant is causal, fully trained, serialisable and well-formed."""
import io

import pytest
import torch

from volnb.attention import ATTENTION_VARIANTS, CausalSelfAttention

D, NH, MAXLEN, RANK = 8, 2, 6, 3


def make(variant, seed=0, **kw):
    torch.manual_seed(seed)
    return CausalSelfAttention(D, NH, MAXLEN, variant=variant, rank=RANK, **kw)


@pytest.fixture
def x():
    return torch.randn(3, MAXLEN, D, generator=torch.Generator().manual_seed(1))   # synthetic input


def test_variants_listed():
    assert set(ATTENTION_VARIANTS) == {"dot", "dense", "random", "factorized_dense", "factorized_random",
                                       "dense_dot", "random_dot"}


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_every_parameter_gets_gradient_and_moves(variant, x):
    att = make(variant)
    names = dict(att.named_parameters())
    before = {n: p.detach().clone() for n, p in names.items()}
    opt = torch.optim.Adam(att.parameters(), lr=1e-2)
    target = torch.randn(3, MAXLEN, D, generator=torch.Generator().manual_seed(2))
    loss = ((att(x) - target) ** 2).mean()
    loss.backward()
    for n, p in names.items():
        assert p.grad is not None, n
        assert p.grad.abs().sum() > 0, f"{variant}: zero gradient for {n}"
    opt.step()
    for n, p in names.items():
        assert not torch.equal(p.detach(), before[n]), f"{variant}: {n} did not change"


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_synthetic_weights_are_registered(variant):
    att = make(variant)
    keys = set(att.state_dict())
    expected = {"dense": {"w1", "b1", "w2", "b2"}, "random": {"r"}, "factorized_dense": {"wa", "ba", "wb", "bb"},
                "factorized_random": {"r1", "r2"}, "dense_dot": {"w1", "b1", "w2", "b2", "alpha", "qk.weight"},
                "random_dot": {"r", "alpha", "qk.weight"}, "dot": {"qk.weight"}}[variant]
    assert expected <= keys
    assert {"v.weight", "proj.weight"} <= keys


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
@pytest.mark.parametrize("return_weights", [False, True])
def test_causal(variant, return_weights, x):
    att = make(variant).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        y = att(x, return_weights=return_weights)
        y = y[0] if return_weights else y
        for t in range(MAXLEN - 1):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn(3, MAXLEN - t - 1, D, generator=g) * 5
            y2 = att(x2, return_weights=return_weights)
            y2 = y2[0] if return_weights else y2
            torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])   # the future does matter to later positions


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_state_dict_round_trip(variant, x):
    att = make(variant, seed=0).eval()
    with torch.no_grad():                      # move every parameter away from its initial value
        for p in att.parameters(): p.add_(0.1 * torch.randn_like(p))
    buf = io.BytesIO(); torch.save(att.state_dict(), buf); buf.seek(0)
    fresh = make(variant, seed=123).eval()
    with torch.no_grad(): assert not torch.equal(fresh(x), att(x))
    fresh.load_state_dict(torch.load(buf))
    with torch.no_grad():
        assert torch.equal(fresh(x), att(x))
        assert torch.equal(fresh(x, return_weights=True)[1], att(x, return_weights=True)[1])


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_weights_row_stochastic_and_causal(variant, x):
    att = make(variant).eval()
    with torch.no_grad():
        for L in (1, 4, MAXLEN):
            y, w = att(x[:, :L], return_weights=True)
            assert y.shape == (3, L, D) and w.shape == (3, NH, L, L)
            torch.testing.assert_close(w.sum(-1), torch.ones(3, NH, L), atol=1e-6, rtol=0)
            assert (w.triu(1) == 0).all()
            assert (w >= 0).all()


def test_dot_fused_path_matches_explicit(x):
    att = make("dot").eval()
    with torch.no_grad():
        torch.testing.assert_close(att(x), att(x, return_weights=True)[0], atol=1e-6, rtol=1e-5)


def test_mixture_is_dot_plus_synthetic(x):
    "MR logits = dot logits + softplus(alpha) * R: with R zeroed MR equals the vanilla dot attention."
    dot, mr = make("dot"), make("random_dot")
    mr.load_state_dict({**dot.state_dict(), "r": torch.zeros(NH, MAXLEN, MAXLEN), "alpha": mr.alpha.detach()})
    with torch.no_grad():
        torch.testing.assert_close(mr(x), dot(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_too_long_raises(variant):
    att = make(variant)
    with pytest.raises(ValueError, match=r"L=7.*max_len=6"):
        att(torch.randn(1, MAXLEN + 1, D))


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="dense_dot"):
        CausalSelfAttention(D, NH, MAXLEN, variant="linformer")
