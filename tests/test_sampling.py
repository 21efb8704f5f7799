"""vaelib.sampling: z = mu + sigma * eps: shape, moments, pathwise gradients, seeding."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelib import reparameterize

# Examples per property; VAELIB_HYPOTHESIS_EXAMPLES=2000 makes a soak run.
SETTINGS = settings(
    max_examples=int(os.environ.get("VAELIB_HYPOTHESIS_EXAMPLES", "40")), deadline=None, database=None
)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_samples", [1, 3])
@pytest.mark.parametrize("shape", [(4, 2), (1, 5), (3,)])
def test_shape_has_a_leading_sample_dimension(n_samples, shape):
    z = reparameterize(torch.zeros(shape), torch.zeros(shape), n_samples=n_samples)
    assert z.shape == (n_samples, *shape)
    assert z.dtype == torch.float32


def test_dtype_follows_the_inputs():
    assert reparameterize(torch.zeros(2, 2, dtype=F64), torch.zeros(2, 2, dtype=F64)).dtype == F64


def test_moments_match_within_standard_errors():
    mu = torch.tensor([[0.5, -2.0], [10.0, 0.0]], dtype=F64)
    logvar = torch.tensor([[0.0, math.log(4.0)], [-3.0, 2.0]], dtype=F64)
    n = 40_000
    z = reparameterize(mu, logvar, n_samples=n, generator=_gen(0))
    var = logvar.exp()
    mean_se = torch.sqrt(var / n)
    assert bool(((z.mean(0) - mu).abs() < 4 * mean_se).all())
    var_se = var * math.sqrt(2 / (n - 1))  # standard error of a Gaussian sample variance
    assert bool(((z.var(0) - var).abs() < 4 * var_se).all())
    # Gaussian shape: P(|z - mu| < sigma) = 0.6827 (binomial standard error).
    inside = ((z - mu).abs() < var.sqrt()).double().mean(0)
    p = math.erf(1 / math.sqrt(2))
    assert bool(((inside - p).abs() < 4 * math.sqrt(p * (1 - p) / n)).all())
    # Draws of different examples and dimensions are uncorrelated.
    flat = (z - mu) / var.sqrt()
    corr = torch.corrcoef(flat.reshape(n, -1).T)
    assert bool(((corr - torch.eye(4, dtype=F64)).abs() < 4 / math.sqrt(n)).all())


@SETTINGS
@given(
    batch=st.integers(1, 4),
    d=st.integers(1, 4),
    n_samples=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_pathwise_gradients(batch, d, n_samples, seed):
    g = _gen(seed)
    mu = torch.randn(batch, d, generator=g, dtype=F64, requires_grad=True)
    logvar = (3 * torch.randn(batch, d, generator=g, dtype=F64)).requires_grad_(True)
    z = reparameterize(mu, logvar, n_samples=n_samples, generator=g)
    w = torch.randn(z.shape, generator=g, dtype=F64)  # an arbitrary linear functional of all the draws
    (w * z).sum().backward()
    # dz/dmu = 1 and dz/dlogvar = sigma * eps / 2 = (z - mu) / 2, draw by draw.
    torch.testing.assert_close(mu.grad, w.sum(0), rtol=1e-14, atol=1e-14)
    half_sigma_eps = 0.5 * (z - mu).detach()
    torch.testing.assert_close(logvar.grad, (w * half_sigma_eps).sum(0), rtol=1e-9, atol=1e-12)


def test_gradient_of_a_single_draw_by_autograd_jacobian():
    mu = torch.tensor([[0.3, -1.0]], dtype=F64)
    logvar = torch.tensor([[0.2, -0.7]], dtype=F64)
    z = reparameterize(mu, logvar, generator=_gen(5))
    eps = ((z - mu) / torch.exp(0.5 * logvar))[0]
    jac_mu, jac_logvar = torch.autograd.functional.jacobian(
        lambda m, lv: reparameterize(m, lv, generator=_gen(5)), (mu, logvar)
    )
    torch.testing.assert_close(jac_mu.reshape(2, 2), torch.eye(2, dtype=F64), rtol=0, atol=1e-15)
    expected = torch.diag((0.5 * torch.exp(0.5 * logvar) * eps)[0])
    torch.testing.assert_close(jac_logvar.reshape(2, 2), expected, rtol=1e-10, atol=1e-15)


def test_same_seed_same_samples_and_the_generator_advances():
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
    a = reparameterize(mu, logvar, 4, generator=_gen(7))
    b = reparameterize(mu, logvar, 4, generator=_gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, reparameterize(mu, logvar, 4, generator=_gen(8)))
    g = _gen(7)
    first, second = reparameterize(mu, logvar, 4, generator=g), reparameterize(mu, logvar, 4, generator=g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_a_seeded_generator_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    reparameterize(torch.zeros(2, 2), torch.zeros(2, 2), 3, generator=_gen(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_zero_variance_limit_returns_the_mean():
    mu = torch.tensor([[1.5, -2.0]], dtype=F64)
    z = reparameterize(mu, torch.full_like(mu, -200.0), 3, generator=_gen(0))
    torch.testing.assert_close(z, mu.expand(3, 1, 2), rtol=0, atol=1e-40)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mu and logvar must have the same shape"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), n_samples=0)
    with pytest.raises(TypeError, match="n_samples must be an integer"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), n_samples=2.0)
    with pytest.raises(TypeError, match="generator"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), generator=0)
