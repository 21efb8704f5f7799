"""The identities chapter 4 (book/ch4_reconstruction_regularisation.md) asserts, checked more generally.

* eq. ``elbo-decomposition``: ``vaelib.elbo`` is reconstruction minus KL exactly; its KL term is the
  closed form; its reconstruction term is the Monte Carlo average of log p(x|z) with the same noise; and
  it agrees with the joint form E_q[log p(x, z) - log q(z|x)] of chapter 3 up to Monte Carlo error.
* eq. ``kl-standard-normal`` against ``torch.distributions`` and Monte Carlo; its per-unit terms are
  non-negative and vanish only at the prior.
* The reference numbers of a reconstruction in nats: Bernoulli (perfect = 0, coin flip = -D log 2,
  never positive) and Gaussian (perfect = -D/2 log(2 pi sigma^2), best sigma^2 = the mean squared error);
  the normaliser of exp(-BCE) on grey levels.
* Theorem ``thm-beta-monotone`` on finite families, and the chapter's beta experiment repeated with
  other seeds: the rate falls, the distortion rises and the number of active units does not grow with
  beta; units collapse at beta = 4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import HYPOTHESIS_EXAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

import vaelib
from vaelib import VAE, active_units, elbo, gaussian_kl, log_bernoulli, log_normal, reparameterize

F64 = torch.float64
SETTINGS = settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model_and_data(likelihood: str, z_dim: int, seed: int, n: int = 16, x_dim: int = 10):
    g = _gen(seed + 1000)
    model = VAE(x_dim, z_dim, hidden=(7,), likelihood=likelihood, seed=seed)
    if likelihood == "bernoulli":
        x = (torch.rand(n, x_dim, generator=g) < 0.4).float()
    else:
        x = torch.randn(n, x_dim, generator=g)
        with torch.no_grad():
            model.obs_logvar.fill_(math.log(0.3))
    return model, x


# ---- eq. elbo-decomposition ---------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("z_dim", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_samples", [1, 4])
def test_elbo_is_reconstruction_minus_closed_form_kl(likelihood, z_dim, seed, n_samples):
    model, x = _model_and_data(likelihood, z_dim, seed)
    terms = elbo(model, x, n_samples=n_samples, generator=_gen(seed))
    assert torch.equal(terms.elbo, terms.reconstruction - terms.kl)
    mu, logvar = model.encode(x)
    assert torch.equal(terms.kl, gaussian_kl(mu, logvar))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n_samples", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 5])
def test_reconstruction_is_the_monte_carlo_average_with_the_same_noise(likelihood, n_samples, seed):
    model, x = _model_and_data(likelihood, 4, seed)
    terms = elbo(model, x, n_samples=n_samples, generator=_gen(seed))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = torch.randn((n_samples, *mu.shape), generator=_gen(seed))  # the chapter's hand-written draw
        z = mu + torch.exp(0.5 * logvar) * eps
        out = model.decode(z)
        if likelihood == "bernoulli":
            log_px_z = log_bernoulli(x, out)
        else:
            log_px_z = log_normal(x, out, model.obs_logvar.detach())
    # float32 sums over 10 pixels, added in different orders: rounding ~1e-6 of the magnitude.
    torch.testing.assert_close(log_px_z.mean(0), terms.reconstruction.detach(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_decomposition_equals_the_joint_form_up_to_monte_carlo_error(likelihood):
    """E_q[log p(x|z) + log p(z) - log q(z|x)] with the same draws differs from elbo() only by the MC error
    of the KL part, E_q[log q - log p(z)] - KL, which must be within 5 standard errors."""
    model, x = _model_and_data(likelihood, 3, 0)
    model = model.double()
    x = x.double()
    S = 20_000
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = reparameterize(mu, logvar, S, generator=_gen(7))  # (S, n, d)
        log_ratio = log_normal(z, mu, logvar) - log_normal(z, torch.zeros_like(mu), torch.zeros_like(mu))
        log_px_z = model.log_px_z(x, z)
    joint_form = (log_px_z - log_ratio).mean(0)
    decomposed = log_px_z.mean(0) - gaussian_kl(mu, logvar)
    se = log_ratio.std(0) / math.sqrt(S)
    assert ((joint_form - decomposed).abs() <= 5 * se + 1e-12).all()


# ---- eq. kl-standard-normal ---------------------------------------------------------------------


@SETTINGS
@given(
    batch=st.integers(1, 6),
    d=st.integers(1, 10),
    seed=st.integers(0, 100_000),
    scale=st.floats(0.01, 5.0),
)
def test_kl_standard_normal_matches_torch_distributions(batch, d, seed, scale):
    g = _gen(seed)
    mu = scale * torch.randn(batch, d, generator=g, dtype=F64)
    logvar = scale * torch.randn(batch, d, generator=g, dtype=F64)
    ours = gaussian_kl(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    # the per-unit terms: non-negative, and each is the closed form of one dimension
    per_unit = gaussian_kl(mu.unsqueeze(-1), logvar.unsqueeze(-1))
    assert (per_unit >= 0).all()
    torch.testing.assert_close(per_unit, 0.5 * (mu**2 + logvar.exp() - logvar - 1), rtol=1e-10, atol=1e-12)


def test_kl_per_unit_vanishes_only_at_the_prior():
    assert gaussian_kl(torch.zeros(1, 5, dtype=F64), torch.zeros(1, 5, dtype=F64)).item() == 0.0
    for mu, logvar in [(1e-3, 0.0), (0.0, 1e-3), (0.0, -1e-3), (-0.2, 0.1)]:
        kl = gaussian_kl(torch.tensor([[mu]], dtype=F64), torch.tensor([[logvar]], dtype=F64)).item()
        assert kl > 0
        # second-order expansion of exercise ex-collapsed-unit: mu^2/2 + (sigma^2 - 1)^2/4
        eta = math.expm1(logvar)
        assert kl == pytest.approx(0.5 * mu**2 + 0.25 * eta**2, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_standard_normal_matches_monte_carlo(seed):
    g = _gen(seed)
    mu = torch.randn(8, 4, generator=g, dtype=F64)
    logvar = 0.5 * torch.randn(8, 4, generator=g, dtype=F64)
    S = 20_000
    z = reparameterize(mu, logvar, S, generator=g)
    log_ratio = log_normal(z, mu, logvar) - log_normal(z, torch.zeros_like(mu), torch.zeros_like(mu))
    se = log_ratio.std(0) / math.sqrt(S)
    assert ((log_ratio.mean(0) - gaussian_kl(mu, logvar)).abs() < 5 * se).all()


# ---- reconstruction in nats ---------------------------------------------------------------------


@pytest.mark.parametrize("D", [1, 10, 784])
def test_bernoulli_reference_numbers(D):
    x = (torch.rand(20, D, generator=_gen(D)) < 0.3).float()
    perfect = log_bernoulli(x, 100.0 * (2 * x - 1))
    assert perfect.abs().max() < 1e-6
    coin = log_bernoulli(x, torch.zeros_like(x))
    torch.testing.assert_close(coin, torch.full((20,), -D * math.log(2)), rtol=1e-6, atol=0.0)


@SETTINGS
@given(D=st.integers(1, 50), seed=st.integers(0, 10_000), scale=st.floats(0.1, 30.0))
def test_bernoulli_reconstruction_is_never_positive(D, seed, scale):
    g = _gen(seed)
    x = (torch.rand(5, D, generator=g) < 0.5).float()
    logits = scale * torch.randn(5, D, generator=g)
    assert (log_bernoulli(x, logits) <= 0).all()


@pytest.mark.parametrize("sigma", [0.01, 0.1, 1 / math.sqrt(2 * math.pi), 1.0, 3.0])
@pytest.mark.parametrize("D", [1, 784])
def test_gaussian_perfect_reconstruction(sigma, D):
    x = torch.rand(4, D, generator=_gen(3), dtype=F64)
    value = log_normal(x, x, torch.tensor(2 * math.log(sigma), dtype=F64))
    expected = -D / 2 * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(value, torch.full((4,), expected, dtype=F64), rtol=1e-12, atol=1e-9)
    # a log-density, not a log-probability: positive when sigma^2 < 1 / (2 pi), with no upper bound
    if sigma < 0.99 / math.sqrt(2 * math.pi):
        assert (value > 0).all()
    elif sigma > 1.01 / math.sqrt(2 * math.pi):
        assert (value < 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_best_variance_is_the_mean_squared_error(seed):
    g = _gen(seed)
    D = 50
    x = torch.rand(30, D, generator=g, dtype=F64)
    x_hat = torch.rand(30, D, generator=g, dtype=F64)
    m = (x - x_hat).pow(2).mean().item()
    logvar = torch.tensor(math.log(m), dtype=F64, requires_grad=True)
    value = log_normal(x, x_hat, logvar).mean()
    (grad,) = torch.autograd.grad(value, logvar)
    assert abs(grad.item()) < 1e-9  # stationary at sigma^2 = m
    assert value.item() == pytest.approx(-D / 2 * (math.log(2 * math.pi * m) + 1), rel=1e-12)
    for factor in (0.5, 0.9, 1.1, 2.0):  # and a maximum
        other = log_normal(x, x_hat, torch.tensor(math.log(factor * m), dtype=F64)).mean()
        assert other < value


def test_bce_on_grey_levels_is_not_a_density():
    """int_0^1 pi^x (1 - pi)^(1 - x) dx = (2 pi - 1) / logit(pi) <= 1/2 (exercise ex-bce-grey-levels)."""
    pis = torch.tensor([0.001, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999], dtype=F64)
    xs = torch.linspace(0.0, 1.0, 40_001, dtype=F64)
    numeric = torch.trapezoid(pis[:, None] ** xs * (1 - pis[:, None]) ** (1 - xs), xs, dim=1)
    ell = torch.log(pis) - torch.log1p(-pis)
    closed = torch.where(pis == 0.5, torch.full_like(pis, 0.5), (2 * pis - 1) / ell)
    torch.testing.assert_close(numeric, closed, rtol=1e-7, atol=0.0)
    assert (numeric <= 0.5 + 1e-12).all()
    assert numeric[pis == 0.5].item() == pytest.approx(0.5, abs=1e-12)


# ---- theorem thm-beta-monotone -------------------------------------------------------------------


@SETTINGS
@given(
    points=st.lists(
        st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 300.0)), min_size=1, max_size=20, unique=True
    ),
    betas=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6, unique=True),
)
def test_optimal_rate_and_distortion_are_monotone_in_beta(points, betas):
    """On any finite family of (rate, distortion) pairs, a minimiser of D + beta R has a rate that does
    not grow and a distortion that does not fall as beta grows (ties broken towards the lower rate)."""
    chosen = []
    for beta in sorted(betas):
        best = min(d + beta * r for r, d in points)
        ties = [(r, d) for r, d in points if d + beta * r <= best + 1e-9 * (1 + abs(best))]
        chosen.append(min(ties))
    for (r1, d1), (r2, d2) in zip(chosen, chosen[1:]):
        assert r2 <= r1 + 1e-6
        assert d2 >= d1 - 1e-6 * (1 + abs(d1))


# ---- the chapter's beta experiment with other seeds ----------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    return vaelib.data.load_mnist()


def _sweep(train, x_test, betas, seed, hidden, z_dim, epochs):
    rate, distortion, units = [], [], []
    for beta in betas:
        model = VAE(784, z_dim, hidden=(hidden,), seed=seed)
        vaelib.fit(model, train, epochs=epochs, beta=beta, batch_size=64, lr=5e-3, seed=seed, progress=False)
        with torch.no_grad():
            t = elbo(model, x_test, n_samples=10, generator=_gen(3))
        rate.append(t.kl.mean().item())
        distortion.append(-t.reconstruction.mean().item())
        units.append(active_units(model, x_test))
    return np.array(rate), np.array(distortion), units


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_beta_sweep_small_model(mnist, seed):
    """A small, fast version of the chapter's sweep (784-64-8, 1,000 training digits): the widely spaced
    betas 0, 1, 4 order the rate, the distortion and the active-unit counts for every seed."""
    train, test = mnist
    rate, distortion, units = _sweep(train.subset(slice(0, 1000)), test.images[:500], (0.0, 1.0, 4.0),
                                     seed, hidden=64, z_dim=8, epochs=10)
    assert (np.diff(rate) < 0).all()
    assert (np.diff(distortion) > 0).all()
    counts = [u.count for u in units]
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_beta_sweep_chapter_configuration_other_seed(mnist):
    """The chapter's exact experiment (784-256-16, 10 epochs, betas 0, 0.1, 0.5, 1, 4) with seed 1
    instead of 0: every assertion the chapter makes on its sweep holds again."""
    train, test = mnist
    betas = (0.0, 0.1, 0.5, 1.0, 4.0)
    rate, distortion, units = _sweep(train, test.images, betas, seed=1, hidden=256, z_dim=16, epochs=10)
    assert (np.diff(rate) < 0).all()
    assert (np.diff(distortion) > 0).all()
    assert int(np.argmax(rate)) == 0
    counts = [u.count for u in units]
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    for beta, u, r in zip(betas, units, rate):
        assert math.isclose(u.kl.sum().item(), r, rel_tol=1e-4)
        if beta <= 0.5:
            assert (u.kl > 0.5).all()
    assert int((units[-1].kl < 0.05).sum()) >= 4
