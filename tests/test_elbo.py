"""vaelib.elbo: the ELBO's decomposition, its Monte Carlo estimate, and the exact identity
log p(x) = ELBO + KL(q || p(z|x)) on the linear Gaussian VAE."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import vaelib
from vaelib import VAE, ELBOTerms, elbo, gaussian_kl, reparameterize

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def bernoulli_model(binary_data):
    model = VAE(12, 3, hidden=(8,), seed=0)
    return model, binary_data(16, 12)


def test_elbo_is_reconstruction_minus_kl_exactly(bernoulli_model):
    model, x = bernoulli_model
    terms = elbo(model, x, n_samples=3, beta=0.25, generator=_gen(0))
    assert isinstance(terms, ELBOTerms)
    assert terms.elbo.shape == terms.reconstruction.shape == terms.kl.shape == (16,)
    assert torch.equal(terms.elbo, terms.reconstruction - terms.kl)
    assert torch.equal(terms.objective, terms.reconstruction - 0.25 * terms.kl)
    assert terms.beta == 0.25


def test_beta_changes_the_objective_only(bernoulli_model):
    model, x = bernoulli_model
    one = elbo(model, x, generator=_gen(0))
    four = elbo(model, x, beta=4.0, generator=_gen(0))
    zero = elbo(model, x, beta=0.0, generator=_gen(0))
    assert torch.equal(one.objective, one.elbo)
    assert torch.equal(four.elbo, one.elbo)
    assert torch.equal(zero.objective, zero.reconstruction)
    torch.testing.assert_close(four.objective, one.elbo - 3 * one.kl)


def test_kl_term_is_the_closed_form_kl_of_the_encoder(bernoulli_model):
    model, x = bernoulli_model
    mu, logvar = model.encode(x)
    assert torch.equal(elbo(model, x).kl, gaussian_kl(mu, logvar))


@pytest.mark.parametrize("n_samples", [1, 5])
def test_matches_a_hand_computation_with_the_same_generator(bernoulli_model, n_samples):
    model, x = bernoulli_model
    terms = elbo(model, x, n_samples=n_samples, generator=_gen(3))
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar, n_samples, generator=_gen(3))
    log_px_z = model.log_px_z(x, z)  # (n_samples, batch): one reconstruction per draw
    torch.testing.assert_close(terms.reconstruction, log_px_z.mean(0), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(terms.elbo, log_px_z.mean(0) - gaussian_kl(mu, logvar), rtol=1e-6, atol=1e-5)


def test_n_samples_averages_draws(bernoulli_model):
    """More samples: the same expectation, and the variance divided by n_samples."""
    model, x = bernoulli_model
    reps = 2000
    xr = x[:2].repeat(reps, 1)  # every row gets its own independent draws
    one = elbo(model, xr, n_samples=1, generator=_gen(1)).reconstruction.detach().reshape(reps, 2)
    many = elbo(model, xr, n_samples=16, generator=_gen(2)).reconstruction.detach().reshape(reps, 2)
    se = torch.sqrt(one.var(0) / reps + many.var(0) / reps)
    assert bool(((one.mean(0) - many.mean(0)).abs() < 4 * se).all())
    ratio = one.var(0) / many.var(0)
    # The ratio of two sample variances of 2000 draws each has a relative spread of about 4.5 %.
    assert bool(((ratio > 16 * 0.75) & (ratio < 16 / 0.75)).all()), ratio


def test_elbo_is_differentiable_in_every_parameter(bernoulli_model):
    model, x = bernoulli_model
    elbo(model, x, generator=_gen(0)).elbo.mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def _exact_terms(model: VAE, lg, x: torch.Tensor):
    mu, logvar = model.encode(x)
    q = MultivariateNormal(mu, covariance_matrix=torch.diag_embed(logvar.exp()))
    exact_elbo = lg.elbo(x, mu, q.covariance_matrix)
    kl_to_posterior = kl_divergence(q, lg.posterior(x))
    return mu, logvar, q, exact_elbo, kl_to_posterior


@torch.no_grad()
@pytest.mark.parametrize("encoder", ["random", "near"])
def test_linear_gaussian_vae_identity_against_the_exact_evidence(linear_vae, encoder):
    """ELBO + KL(q || p(z|x)) = log p(x), with the equivalent LinearGaussian's exact evidence."""
    model, lg = linear_vae(x_dim=5, z_dim=2, sigma=0.7, seed=1, encoder=encoder)
    x, _ = lg.sample(6, generator=_gen(2))
    mu, logvar, q, exact_elbo, kl_post = _exact_terms(model, lg, x)
    log_px = lg.log_evidence(x)
    # The exact identity (no sampling): holds to float64 rounding for whatever q the encoder gives.
    torch.testing.assert_close(exact_elbo + kl_post, log_px, rtol=0, atol=1e-10)
    # vaelib's KL term is KL(q || N(0, I)), exactly.
    prior = MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    n = 20_000
    terms = elbo(model, x, n_samples=n, generator=_gen(4))
    torch.testing.assert_close(terms.kl, kl_divergence(q, prior), rtol=1e-12, atol=1e-12)
    # The Monte Carlo reconstruction term: within standard errors of the exact expectation.
    z = reparameterize(mu, logvar, n, generator=_gen(4))  # the same draws (same generator)
    log_px_z = model.log_px_z(x, z)
    se = log_px_z.std(0) / math.sqrt(n)
    assert bool(((terms.elbo - exact_elbo).abs() < 4 * se).all()), (terms.elbo - exact_elbo) / se
    assert bool(((terms.elbo + kl_post - log_px).abs() < 4 * se).all())
    # And the ELBO is a lower bound, strictly below the evidence for an inexact posterior.
    assert bool((exact_elbo < log_px).all())


@torch.no_grad()
def test_elbo_equals_the_evidence_when_the_encoder_is_the_exact_posterior(linear_vae):
    model, lg = linear_vae(x_dim=4, z_dim=2, sigma=0.5, seed=3, encoder="exact")
    x, _ = lg.sample(5, generator=_gen(0))
    _, _, _, exact_elbo, kl_post = _exact_terms(model, lg, x)
    torch.testing.assert_close(kl_post, torch.zeros(5, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(exact_elbo, lg.log_evidence(x), rtol=0, atol=1e-10)
    n = 20_000
    terms = elbo(model, x, n_samples=n, generator=_gen(1))
    mu, logvar = model.encode(x)
    se = model.log_px_z(x, reparameterize(mu, logvar, n, generator=_gen(1))).std(0) / math.sqrt(n)
    assert bool(((terms.elbo - lg.log_evidence(x)).abs() < 4 * se).all())


def test_rejects_bad_arguments(bernoulli_model):
    model, x = bernoulli_model
    with pytest.raises(ValueError, match="beta must be >= 0"):
        elbo(model, x, beta=-0.1)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        elbo(model, x, n_samples=0)
    with pytest.raises(ValueError, match="x must be binary"):
        elbo(model, torch.full_like(x, 0.5))
    with pytest.raises(TypeError, match="model must be a vaelib.VAE"):
        elbo(torch.nn.Linear(2, 2), x)
    assert vaelib.elbo is elbo


def test_active_units_against_a_direct_computation(bernoulli_model):
    model, x = bernoulli_model
    with torch.no_grad():
        model.encoder.to_mu.weight[1].zero_()  # unit 1's mean no longer depends on x: inactive
    units = vaelib.active_units(model, x, threshold=0.01, batch_size=5)
    mu, logvar = model.encode(x)
    mu, logvar = mu.detach().double(), logvar.detach().double()
    torch.testing.assert_close(units.variance.double(), mu.var(0, unbiased=False), rtol=1e-5, atol=1e-7)
    per_unit = 0.5 * (mu**2 + logvar.exp() - logvar - 1)
    torch.testing.assert_close(units.kl.double(), per_unit.mean(0), rtol=1e-5, atol=1e-7)
    # The per-unit KL adds up to the ELBO's KL term.
    assert float(units.kl.sum()) == pytest.approx(float(elbo(model, x).kl.detach().mean()), rel=1e-5)
    assert float(units.variance[1]) == 0.0 and not bool(units.active[1])
    assert units.count == int((units.variance > 0.01).sum())
