"""vaelib.kl: the closed-form Gaussian KL, against torch.distributions, Monte Carlo and its properties."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal, kl_divergence

from vaelib import gaussian_kl, kl_normal

# Examples per property; VAELIB_HYPOTHESIS_EXAMPLES=2000 makes a soak run.
SETTINGS = settings(
    max_examples=int(os.environ.get("VAELIB_HYPOTHESIS_EXAMPLES", "40")), deadline=None, database=None
)
F64 = torch.float64


def _normal(mu, logvar):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


@st.composite
def diag_gaussians(draw, n: int = 1):
    """``n`` (mu, logvar) pairs of one random shape (batch, d): any mu, log-variances in [-50, 50]."""
    batch = draw(st.integers(1, 6))
    d = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mu_scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0, 1e4]))
    out = []
    for _ in range(n):
        mu = mu_scale * torch.randn(batch, d, generator=g, dtype=F64)
        logvar = torch.empty(batch, d, dtype=F64).uniform_(-50, 50, generator=g)
        out += [mu, logvar]
    return out


def _tolerance(*terms: torch.Tensor) -> float:
    """Rounding of a sum of terms is relative to the terms, not to their (possibly cancelling) sum."""
    return 1e-12 * float(sum(t.abs() for t in terms).sum(-1).max() + 1)


@SETTINGS
@given(diag_gaussians())
def test_gaussian_kl_matches_torch_distributions(case):
    mu, logvar = case
    ref = kl_divergence(_normal(mu, logvar), _normal(torch.zeros_like(mu), torch.zeros_like(mu)))
    got = gaussian_kl(mu, logvar)
    assert got.shape == mu.shape[:-1]
    torch.testing.assert_close(got, ref, rtol=0, atol=_tolerance(mu.pow(2), logvar.exp(), logvar))


@SETTINGS
@given(diag_gaussians(n=2))
def test_kl_normal_matches_torch_distributions(case):
    mu_q, logvar_q, mu_p, logvar_p = case
    ref = kl_divergence(_normal(mu_q, logvar_q), _normal(mu_p, logvar_p))
    got = kl_normal(mu_q, logvar_q, mu_p, logvar_p)
    ratio = logvar_q - logvar_p
    atol = _tolerance((mu_q - mu_p).pow(2) * torch.exp(-logvar_p), ratio.exp(), ratio)
    torch.testing.assert_close(got, ref, rtol=0, atol=atol)


@SETTINGS
@given(diag_gaussians(n=2))
def test_kl_is_nonnegative_and_zero_only_between_equal_gaussians(case):
    mu_q, logvar_q, mu_p, logvar_p = case
    assert bool((gaussian_kl(mu_q, logvar_q) >= 0).all())
    assert bool((kl_normal(mu_q, logvar_q, mu_p, logvar_p) >= 0).all())
    assert bool((kl_normal(mu_q, logvar_q, mu_q, logvar_q) == 0).all())
    # Any difference of at least 1e-3 (in mean, in units of sigma_p, or in log-variance) is seen; a
    # shift of the mean below float64's resolution of mu_p is no difference at all.
    shift = mu_p + 1e-3 * torch.exp(0.5 * logvar_p)
    assert bool(((kl_normal(shift, logvar_p, mu_p, logvar_p) > 0) | (shift == mu_p).all(-1)).all())
    assert bool((kl_normal(mu_p, logvar_p + 1e-3, mu_p, logvar_p) > 0).all())


def test_gaussian_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere():
    assert float(gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3))) == 0.0
    assert float(gaussian_kl(torch.tensor([[1e-3, 0.0]]), torch.zeros(1, 2))) > 0
    assert float(gaussian_kl(torch.zeros(1, 2), torch.tensor([[0.0, -1e-3]]))) > 0


def test_gaussian_kl_by_hand():
    # KL(N(1, e^1) || N(0, 1)) = (1 + e - 1 - 1) / 2 in one dimension; the KL sums over dimensions.
    mu = torch.tensor([[1.0, 0.0]], dtype=F64)
    logvar = torch.tensor([[1.0, 0.0]], dtype=F64)
    assert float(gaussian_kl(mu, logvar)) == pytest.approx((math.e - 1) / 2, abs=1e-15)


def test_gaussian_kl_keeps_float32_precision_near_the_prior():
    # sigma^2 - 1 - log sigma^2 = logvar^2/2 + ...: computed as expm1(logvar) - logvar, the float32
    # rounding error is relative to |logvar|, not to 1 as with exp(logvar) - 1 - logvar.
    logvar = torch.tensor([[1e-3, -1e-4, 3e-6]])
    exact = float(gaussian_kl(torch.zeros(1, 3, dtype=F64), logvar.double()))
    got = float(gaussian_kl(torch.zeros(1, 3), logvar))
    tol = 1e-6 * float(logvar.abs().sum())
    assert abs(got - exact) < tol
    naive = float(0.5 * (logvar.exp() - 1 - logvar).sum())
    assert abs(naive - exact) > tol  # what the expm1 form avoids


def test_kl_normal_with_a_standard_prior_is_gaussian_kl_and_broadcasts():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    zeros = torch.zeros(3, dtype=F64)  # (d,) prior parameters broadcast over the batch
    torch.testing.assert_close(kl_normal(mu, logvar, zeros, zeros), gaussian_kl(mu, logvar), rtol=1e-14, atol=1e-14)
    mu_p, logvar_p = torch.randn(3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    per_row = torch.stack([kl_normal(mu[i], logvar[i], mu_p, logvar_p) for i in range(5)])
    torch.testing.assert_close(kl_normal(mu, logvar, mu_p, logvar_p), per_row, rtol=1e-14, atol=1e-14)


def test_kl_is_asymmetric():
    a = (torch.tensor([0.0]), torch.tensor([0.0]))
    b = (torch.tensor([1.0]), torch.tensor([math.log(4.0)]))
    assert float(kl_normal(*a, *b)) != pytest.approx(float(kl_normal(*b, *a)), rel=1e-3)


@pytest.mark.parametrize(
    "mu_q, logvar_q, mu_p, logvar_p",
    [
        ([0.5, -1.0, 2.0], [0.3, -1.0, 1.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([1.0, 0.0], [-0.5, 0.5], [-1.0, 0.5], [1.0, -0.3]),
    ],
)
def test_kl_matches_monte_carlo_within_standard_errors(mu_q, logvar_q, mu_p, logvar_p):
    mu_q, logvar_q, mu_p, logvar_p = (torch.tensor(v, dtype=F64) for v in (mu_q, logvar_q, mu_p, logvar_p))
    g = torch.Generator().manual_seed(1)
    n = 200_000
    z = mu_q + torch.exp(0.5 * logvar_q) * torch.randn(n, mu_q.shape[0], generator=g, dtype=F64)
    log_ratio = _normal(mu_q, logvar_q).log_prob(z) - _normal(mu_p, logvar_p).log_prob(z)
    estimate, se = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(n))
    exact = float(kl_normal(mu_q, logvar_q, mu_p, logvar_p))
    assert abs(estimate - exact) < 4 * se
    if float(mu_p.abs().sum() + logvar_p.abs().sum()) == 0:
        assert exact == pytest.approx(float(gaussian_kl(mu_q, logvar_q)), rel=1e-14)


def test_gaussian_kl_shapes():
    assert gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 3)).shape == (4,)
    assert gaussian_kl(torch.zeros(3), torch.zeros(3)).shape == ()
    assert gaussian_kl(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)).shape == (2, 4)


def test_kl_rejects_mismatched_and_scalar_inputs():
    with pytest.raises(ValueError, match="mu and logvar must have the same shape"):
        gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="mu must have at least one dimension"):
        gaussian_kl(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="mu_p and logvar_p must broadcast"):
        kl_normal(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4), torch.zeros(4))
    # p must broadcast *to* q's shape: neither extra batch dimensions nor a stretched latent dimension.
    with pytest.raises(ValueError, match=r"mu_p and logvar_p must broadcast.*\(4, 3, 2\)"):
        kl_normal(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4, 3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"mu_p and logvar_p must broadcast.*\(3, 1\)"):
        kl_normal(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="mu_q and logvar_q"):
        kl_normal(torch.zeros(3, 2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
