"""vaelib.generate: prior samples (shapes, ranges, distribution) and latent interpolation."""

from __future__ import annotations

import math

import pytest
import torch

from vaelib import VAE, interpolate, sample

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def bernoulli_model():
    return VAE(10, 2, hidden=(6,), seed=0)


def test_bernoulli_sample_shapes_and_ranges(bernoulli_model):
    probs = sample(bernoulli_model, 7, generator=_gen(0))
    assert probs.shape == (7, 10)
    assert bool(((probs > 0) & (probs < 1)).all())
    draws = sample(bernoulli_model, 7, generator=_gen(0), mean=False)
    assert draws.shape == (7, 10)
    assert bool(((draws == 0) | (draws == 1)).all())
    assert not probs.requires_grad and not draws.requires_grad


def test_bernoulli_draws_have_the_decoder_mean(bernoulli_model):
    # Same seed: the same z, so mean=False draws x ~ Bernoulli(probs) around the mean=True output.
    n = 4000
    probs = sample(bernoulli_model, n, generator=_gen(1)).double()
    draws = sample(bernoulli_model, n, generator=_gen(1), mean=False).double()
    se = torch.sqrt((probs * (1 - probs)).sum(0)) / n
    assert bool((((draws - probs).mean(0)).abs() < 4 * se).all())


def test_gaussian_sample_distribution_is_the_linear_gaussian_evidence(linear_vae):
    """For the linear Gaussian VAE, x = Wz + b + sigma*noise has mean b and covariance WW^T + sigma^2 I."""
    model, lg = linear_vae(x_dim=3, z_dim=2, sigma=0.5, seed=1)
    n = 40_000
    x = sample(model, n, generator=_gen(2), mean=False)
    assert x.dtype == F64 and x.shape == (n, 3)
    cov = lg.marginal().covariance_matrix
    mean_se = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - lg.b).abs() < 4 * mean_se).all())
    # Standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n).
    cov_se = torch.sqrt((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov**2) / n)
    assert bool(((torch.cov(x.T) - cov).abs() < 4 * cov_se).all())
    # mean=True decodes the same z without the observation noise: the noise has variance sigma^2.
    x_mean = sample(model, n, generator=_gen(2), mean=True)
    noise = x - x_mean
    assert abs(float(noise.var()) - 0.25) < 4 * 0.25 * math.sqrt(2 / (3 * n))


def test_same_generator_same_samples(bernoulli_model):
    assert torch.equal(sample(bernoulli_model, 5, _gen(3)), sample(bernoulli_model, 5, _gen(3)))
    assert not torch.equal(sample(bernoulli_model, 5, _gen(3)), sample(bernoulli_model, 5, _gen(4)))


def test_interpolation_endpoints_decode_the_posterior_means(bernoulli_model):
    g = _gen(5)
    x_a, x_b = (torch.rand(10, generator=g) < 0.5).float(), (torch.rand(10, generator=g) < 0.5).float()
    path = interpolate(bernoulli_model, x_a, x_b, steps=6)
    assert path.shape == (6, 10)
    mu_a, _ = bernoulli_model.encode(x_a[None])
    mu_b, _ = bernoulli_model.encode(x_b[None])
    torch.testing.assert_close(path[0], bernoulli_model.mean(mu_a)[0].detach())
    torch.testing.assert_close(path[-1], bernoulli_model.mean(mu_b)[0].detach())
    # (x_dim,) and (1, x_dim) inputs are the same data point.
    torch.testing.assert_close(interpolate(bernoulli_model, x_a[None], x_b[None], 6), path)
    # The path is the decoder's mean at z_t = (1 - t) mu_a + t mu_b, t = 0, 1/5, ..., 1.
    t = torch.linspace(0, 1, 6)[:, None]
    torch.testing.assert_close(path, bernoulli_model.mean((1 - t) * mu_a + t * mu_b).detach())
    assert not path.requires_grad


def test_interpolation_is_linear_through_a_linear_decoder(linear_vae):
    model, _ = linear_vae(x_dim=4, z_dim=2, seed=0)
    g = _gen(0)
    x_a, x_b = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    path = interpolate(model, x_a, x_b, steps=5)
    t = torch.linspace(0, 1, 5, dtype=F64)[:, None]
    torch.testing.assert_close(path, (1 - t) * path[0] + t * path[-1], rtol=1e-12, atol=1e-12)
    assert interpolate(model, x_a, x_b, steps=2).shape == (2, 4)


def test_rejects_bad_arguments(bernoulli_model):
    x = torch.zeros(10)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        interpolate(bernoulli_model, x, x, steps=1)
    with pytest.raises(ValueError, match="x_b must be a single data point"):
        interpolate(bernoulli_model, x, torch.zeros(2, 10), steps=3)
    with pytest.raises(ValueError, match="x_a must have last dimension 10"):
        interpolate(bernoulli_model, torch.zeros(9), x, steps=3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample(bernoulli_model, 0)
    with pytest.raises(TypeError, match="model must be a vaelib.VAE"):
        sample("model", 3)
