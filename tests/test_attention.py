"""volnb.attention: every variant is causal, fully trained, serialisable and well-formed."""
import copy
import io

import pytest
import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from volnb.attention import (ATTENTION_VARIANTS, CausalSelfAttention, causal_linear_attention, elu_feature_map,
                             linear_attention_weights)

D, NH, MAXLEN, RANK = 8, 2, 6, 3


def make(variant, seed=0, **kw):
    torch.manual_seed(seed)
    return CausalSelfAttention(D, NH, MAXLEN, variant=variant, rank=RANK, **kw)


@pytest.fixture
def x():
    return torch.randn(3, MAXLEN, D, generator=torch.Generator().manual_seed(1))   # synthetic input


def test_variants_listed():
    assert set(ATTENTION_VARIANTS) == {"dot", "dense", "random", "factorized_dense", "factorized_random",
                                       "dense_dot", "random_dot", "linear"}


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
                "random_dot": {"r", "alpha", "qk.weight"}, "dot": {"qk.weight"}, "linear": {"qk.weight"}}[variant]
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


# --- linear (kernelised) attention ----------------------------------------------------------------------

def phi_ref(u):
    "elu(u) + 1 written out: exp(u) for u <= 0, u + 1 for u > 0."
    return torch.where(u > 0, u + 1, torch.exp(torch.clamp(u, max=0)))


def explicit_linear(att, x):
    "O(L^2) reference in float64: A = tril(phi(Q) phi(K)^T) normalised by row, y = proj(A V)."
    att = copy.deepcopy(att).double()
    B, L, _ = x.shape
    heads = lambda t: t.view(B, L, NH, D // NH).transpose(1, 2)                   # (B, nh, L, hs)
    q, k = (phi_ref(heads(t)) for t in att.qk(x.double()).split(D, dim=2))
    a = q @ k.transpose(-1, -2)                                                   # (B, nh, L, L)
    a = a * torch.ones(L, L, dtype=torch.bool).tril()
    w = a / a.sum(-1, keepdim=True)
    y = (w @ heads(att.v(x.double()))).transpose(1, 2).reshape(B, L, D)
    return att.proj(y).float(), w.float()


def test_linear_by_hand():
    "One head of size 1, phi(q) = 1, phi(k) = (1, 2) (elu(0)+1, elu(1)+1), v = (3, 6): y = (3, (3 + 12) / 3) = (3, 5)."
    q, k, v = torch.ones(1, 2, 1), elu_feature_map(torch.tensor([[[0.], [1.]]])), torch.tensor([[[3.], [6.]]])
    for chunk in (1, 2, 64):
        torch.testing.assert_close(causal_linear_attention(q, k, v, chunk=chunk), torch.tensor([[[3.], [5.]]]))
    torch.testing.assert_close(linear_attention_weights(q, k), torch.tensor([[[1., 0.], [1 / 3, 2 / 3]]]))


@pytest.mark.parametrize("chunk", [1, 2, 4, 64])
@pytest.mark.parametrize("L", [1, 5, MAXLEN])
def test_linear_matches_explicit_quadratic(chunk, L, x):
    att = make("linear", chunk=chunk).eval()
    with torch.no_grad():
        want_y, want_w = explicit_linear(att, x[:, :L])
        y, w = att(x[:, :L], return_weights=True)
        torch.testing.assert_close(att(x[:, :L]), want_y, atol=1e-5, rtol=1e-5)       # the O(L) path
        torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w, want_w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk", [16, 64, 300])
def test_linear_matches_explicit_on_longer_sequences(chunk):
    "Several chunks, one that does not divide L (zero padding), and a chunk longer than L."
    L = 250
    torch.manual_seed(0)
    att = CausalSelfAttention(D, NH, L, variant="linear", chunk=chunk).eval()
    with torch.no_grad():
        for p in att.parameters(): p.normal_(0, 0.5)
        xl = torch.randn(2, L, D, generator=torch.Generator().manual_seed(4))
        want, _ = explicit_linear(att, xl)
        torch.testing.assert_close(att(xl), want, atol=1e-5, rtol=1e-5)


def test_linear_starts_from_the_dot_parameters(x):
    "Same seed, same parameters in the same order as `dot` (q/k, v, proj): the existing variants' draws are unchanged."
    lin, dot = make("linear"), make("dot")
    assert list(lin.state_dict()) == list(dot.state_dict())
    for n, p in dot.state_dict().items():
        assert torch.equal(lin.state_dict()[n], p), n
    with torch.no_grad():
        assert not torch.allclose(lin(x), dot(x))                                   # but a different attention


def test_linear_ignores_attention_dropout(x):
    att = make("linear", dropout=0.5)
    with torch.no_grad():
        assert torch.equal(att.train()(x), att.eval()(x))


def test_linear_errors(x):
    with pytest.raises(ValueError, match="no softmax logits"):
        make("linear").logits(x)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        make("linear", chunk=0)
    q = torch.rand(1, 4, 3)
    with pytest.raises(ValueError, match="same shape"):
        causal_linear_attention(q, q[..., :2], q)
    with pytest.raises(ValueError, match="leading dimensions"):
        causal_linear_attention(q, q, q[:, :3])


class TensorShapes(TorchDispatchMode):
    "Records the shape of every tensor produced by an aten op (forward and backward) while active."
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out


def tensors_of_a_train_step(att, L, return_weights=False):
    x = torch.randn(1, L, D, generator=torch.Generator().manual_seed(5))
    with TensorShapes() as rec:
        y = att(x, return_weights=return_weights)
        (y[0] if return_weights else y).pow(2).mean().backward()
    return rec.shapes


def square(shapes, L):
    "Shapes with two dimensions of at least L (an L x L matrix, or more)."
    return [s for s in shapes if sum(n >= L for n in s) >= 2]


def test_linear_never_forms_an_L_by_L_tensor():
    "Forward and backward at L = 16384 (an fp32 (L, L) per head would be 1 GiB): the largest tensor grows as L."
    big, small = 16384, 4096
    att = CausalSelfAttention(D, NH, big, variant="linear", chunk=64)
    shapes = tensors_of_a_train_step(att, big)
    assert square(shapes, big) == []
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in att.parameters())
    largest = lambda shs: max(torch.Size(s).numel() for s in shs)
    assert largest(shapes) == 4 * largest(tensors_of_a_train_step(att, small))      # 4x the length, 4x the size
    assert largest(shapes) < big * big / 100
    # the recorder does catch an L x L tensor: the explicit weights path forms one
    assert square(tensors_of_a_train_step(CausalSelfAttention(D, NH, 256, variant="linear"), 256, True), 256)
