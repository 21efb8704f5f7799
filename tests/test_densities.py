"""vaelib.densities: the Gaussian and Bernoulli log-densities, against torch.distributions and by hand."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Independent, Normal

from vaelib import log_bernoulli, log_normal

# Examples per property; VAELIB_HYPOTHESIS_EXAMPLES=2000 makes a soak run.
SETTINGS = settings(
    max_examples=int(os.environ.get("VAELIB_HYPOTHESIS_EXAMPLES", "40")), deadline=None, database=None
)


def _log_sigmoid(t: float) -> float:
    """log(sigmoid(t)) in exact-enough float64 arithmetic, stable for any t (an independent reference)."""
    return -math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))


@st.composite
def gaussian_case(draw):
    batch = draw(st.integers(1, 5))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    mu = scale * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    x = mu + scale * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    logvar = torch.empty(batch, dim, dtype=torch.float64).uniform_(-50, 50, generator=g)
    return x, mu, logvar


@SETTINGS
@given(gaussian_case())
def test_log_normal_matches_torch_distributions(case):
    x, mu, logvar = case
    ref = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(x)
    got = log_normal(x, mu, logvar)
    assert got.shape == ref.shape == x.shape[:-1]
    # Each term's rounding is relative to the term's size: scale the tolerance by the largest term.
    terms = (logvar.abs() + (x - mu).pow(2) * torch.exp(-logvar) + 2).sum(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * float(terms.max()))


def test_log_normal_is_the_sum_of_one_dimensional_densities():
    g = torch.Generator().manual_seed(0)
    x, mu, logvar = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    by_dim = sum(log_normal(x[:, j : j + 1], mu[:, j : j + 1], logvar[:, j : j + 1]) for j in range(4))
    torch.testing.assert_close(log_normal(x, mu, logvar), by_dim, rtol=1e-14, atol=1e-14)


def test_log_normal_by_hand_and_broadcasting():
    # One point, by hand: N(1; 0, e^0) = exp(-1/2)/sqrt(2 pi).
    got = log_normal(torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                     torch.zeros(1, dtype=torch.float64))
    assert float(got) == pytest.approx(-0.5 - 0.5 * math.log(2 * math.pi), abs=1e-15)
    # (samples, batch, D) points against (batch, D) means and a scalar log-variance.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 4, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    logvar = torch.tensor(0.3, dtype=torch.float64)
    got = log_normal(x, mu, logvar)
    ref = Independent(Normal(mu.expand(7, 3, 4), torch.exp(0.5 * logvar).expand(7, 3, 4)), 1).log_prob(x)
    assert got.shape == (7, 3)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)


def test_log_normal_of_an_infinite_point_is_minus_infinity():
    got = log_normal(torch.tensor([[math.inf, 0.0]]), torch.zeros(1, 2), torch.zeros(1, 2))
    assert got.item() == -math.inf


def test_log_normal_rejects_bad_shapes():
    with pytest.raises(ValueError, match="broadcast"):
        log_normal(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3, 4))
    # The summed dimension is x's: a (3, 1) x is not stretched into 4 copies by (4,) means.
    with pytest.raises(ValueError, match=r"summed last dimension of x must not be broadcast.*\(3, 1\)"):
        log_normal(torch.zeros(3, 1), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="x must have at least one dimension"):
        log_normal(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="logvar"):
        log_normal(torch.zeros(3), torch.zeros(3), torch.full((3,), math.nan))


@st.composite
def bernoulli_case(draw):
    batch = draw(st.integers(1, 5))
    dim = draw(st.integers(1, 8))
    logits = draw(
        st.lists(st.floats(-100, 100, allow_nan=False), min_size=batch * dim, max_size=batch * dim)
    )
    bits = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=batch * dim, max_size=batch * dim))
    return (
        torch.tensor(bits, dtype=torch.float64).reshape(batch, dim),
        torch.tensor(logits, dtype=torch.float64).reshape(batch, dim),
    )


@SETTINGS
@given(bernoulli_case())
def test_log_bernoulli_matches_torch_and_a_scalar_reference(case):
    x, logits = case
    got = log_bernoulli(x, logits)
    ref = Independent(Bernoulli(logits=logits), 1).log_prob(x)
    by_hand = torch.tensor(
        [
            sum(_log_sigmoid(l) if xi == 1 else _log_sigmoid(-l) for xi, l in zip(row_x, row_l))
            for row_x, row_l in zip(x.tolist(), logits.tolist())
        ],
        dtype=torch.float64,
    )
    assert got.shape == (x.shape[0],)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_bernoulli_logits_plus_minus_100_are_finite_and_correct(dtype):
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=dtype)
    logits = torch.tensor([[100.0, 100.0, -100.0, -100.0]], dtype=dtype, requires_grad=True)
    per_pixel = [_log_sigmoid(100.0), _log_sigmoid(-100.0), _log_sigmoid(-100.0), _log_sigmoid(100.0)]
    got = log_bernoulli(x, logits)
    assert bool(torch.isfinite(got).all())
    assert float(got.detach()) == pytest.approx(sum(per_pixel), rel=1e-6)  # = -200 up to e^-100
    got.sum().backward()
    # d/dlogit log p = x - sigmoid(logit): finite, 0 or +-1.
    torch.testing.assert_close(
        logits.grad, torch.tensor([[0.0, -1.0, 1.0, 0.0]], dtype=dtype), rtol=0, atol=1e-6
    )


def test_log_bernoulli_broadcasts_data_against_sample_logits():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 5, generator=g) < 0.5).double()
    logits = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    got = log_bernoulli(x, logits)
    assert got.shape == (4, 3)
    ref = Independent(Bernoulli(logits=logits), 1).log_prob(x.expand(4, 3, 5))
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("value", [0.5, 0.999, -1.0, 2.0])
def test_log_bernoulli_rejects_grey_levels(value):
    x = torch.tensor([[0.0, 1.0, value]])
    with pytest.raises(ValueError, match="binary"):
        log_bernoulli(x, torch.zeros(1, 3))


def test_log_bernoulli_rejects_bad_shapes():
    with pytest.raises(ValueError, match="broadcast"):
        log_bernoulli(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"summed last dimension of x must not be broadcast.*\(3, 1\)"):
        log_bernoulli(torch.zeros(3, 1), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least one dimension"):
        log_bernoulli(torch.tensor(1.0), torch.tensor(0.0))
