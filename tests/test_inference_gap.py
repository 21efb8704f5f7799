"""vaelib.inference_gap: per-image Gaussians with the decoder fixed (chapter 7), against exact references.

The reference model is a linear Gaussian decoder, p(x|z) = N(Wz + b, s^2 I) with p(z) = N(0, I): its
posterior is an exact full-covariance Gaussian and its evidence has a closed form, so the best Gaussian,
its ELBO and the importance-weighted bound are all known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vaelib
from vaelib.inference_gap import (
    Gaussian,
    encoder_gaussian,
    fit_gaussian,
    gaussian_elbo,
    gaussian_log_likelihood,
)

X_DIM, Z_DIM = 5, 3


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_params = nn.Linear(X_DIM, 2 * Z_DIM)

    def forward(self, x):
        mu, logvar = self.to_params(x).chunk(2, dim=-1)
        return mu, logvar


def linear_gaussian(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = vaelib.VAE(X_DIM, Z_DIM, likelihood="gaussian", encoder=Encoder(), decoder=nn.Linear(Z_DIM, X_DIM))
    model.to(dtype)
    with torch.no_grad():
        model.obs_logvar.fill_(math.log(0.3))
    return model


def exact(model, x):
    """Evidence log p(x) and the exact posterior (mean, scale_tril) of the linear Gaussian model."""
    w, b = model.decoder.weight.detach(), model.decoder.bias.detach()
    s2 = model.obs_logvar.detach().exp()
    evidence = torch.distributions.MultivariateNormal(b, w @ w.T + s2 * torch.eye(X_DIM, dtype=w.dtype))
    precision = torch.eye(Z_DIM, dtype=w.dtype) + w.T @ w / s2
    cov = torch.linalg.inv(precision)
    mean = (x - b) @ w @ cov.T / s2
    return evidence.log_prob(x), mean, torch.linalg.cholesky(cov)


def exact_gaussian(model, x) -> Gaussian:
    _, mean, tril = exact(model, x)
    n = x.shape[0]
    tril = tril.expand(n, Z_DIM, Z_DIM)
    return Gaussian(mean, tril.diagonal(dim1=-2, dim2=-1).log(), tril.tril(-1).clone())


@pytest.fixture
def data():
    model = linear_gaussian()
    x = torch.randn(6, X_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    return model, x


def test_log_density_and_entropy_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, log_std = torch.randn(4, Z_DIM, generator=g), 0.3 * torch.randn(4, Z_DIM, generator=g)
    lower = torch.randn(4, Z_DIM, Z_DIM, generator=g)
    for q in (Gaussian(mu, log_std), Gaussian(mu, log_std, lower)):
        ref = torch.distributions.MultivariateNormal(q.mu, scale_tril=q.scale_tril)
        eps = torch.randn(7, 4, Z_DIM, generator=g)
        z = q.rsample(eps)
        torch.testing.assert_close(q.log_prob_of(eps), ref.log_prob(z), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q.entropy(), ref.entropy(), rtol=1e-6, atol=1e-6)


def test_exact_posterior_gives_the_evidence_with_zero_variance(data):
    model, x = data
    log_px, _, _ = exact(model, x)
    q = exact_gaussian(model, x)
    estimate, se = gaussian_log_likelihood(model, x, q, k=50, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(estimate, log_px, rtol=0, atol=1e-10)  # every weight equals p(x)
    assert se.max() < 1e-6
    elbo, elbo_se = gaussian_elbo(model, x, q, n_samples=4000, generator=torch.Generator().manual_seed(3))
    assert ((elbo - log_px).abs() < 4 * elbo_se + 1e-9).all()  # ELBO = log p(x) at the posterior


def test_full_fit_reaches_the_evidence_and_diagonal_stays_below(data):
    model, x = data
    log_px, mean, _ = exact(model, x)
    q_diag = fit_gaussian(model, x, steps=1500, n_samples=16, lr=0.05, seed=0)
    q_full = fit_gaussian(model, x, covariance="full", init=q_diag, steps=1500, n_samples=16, lr=0.05, seed=1)
    g = torch.Generator().manual_seed(4)
    e_enc, _ = gaussian_elbo(model, x, encoder_gaussian(model, x), 4000, g)
    e_diag, _ = gaussian_elbo(model, x, q_diag, 4000, g)
    e_full, se_full = gaussian_elbo(model, x, q_full, 4000, g)
    # The full-covariance family contains the posterior, so its best ELBO is log p(x): the estimate is
    # within 4 SE of it, plus 0.01 nats of optimisation left (1,500 noisy Adam steps).
    assert ((log_px - e_full).abs() < 4 * se_full + 0.01).all()
    assert (e_diag < log_px + 0.01).all() and (e_enc < e_diag).all()
    torch.testing.assert_close(q_full.mu, mean, rtol=0, atol=0.05)


def test_fit_leaves_the_model_untouched(data):
    model, x = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    fit_gaussian(model, x, covariance="full", steps=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_seeded_and_float32_bernoulli_builtin():
    model = vaelib.VAE(12, 2, hidden=(8,), seed=0)
    x = (torch.rand(4, 12, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    a = fit_gaussian(model, x, steps=20, seed=3)
    b = fit_gaussian(model, x, steps=20, seed=3)
    assert torch.equal(a.mu, b.mu) and a.mu.dtype == torch.float32
    estimate, se = gaussian_log_likelihood(model, x, a, k=300, generator=torch.Generator().manual_seed(0))
    ref = vaelib.log_likelihood(model, x, k=20000, generator=torch.Generator().manual_seed(1))
    assert (estimate > ref - 0.3).all()  # both estimate log p(x); the fitted proposal is no worse


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m, x: fit_gaussian(m, x, covariance="banded"), ValueError),
        (lambda m, x: fit_gaussian(m, x, steps=0), ValueError),
        (lambda m, x: fit_gaussian(m, x, lr=-1.0), ValueError),
        (lambda m, x: fit_gaussian(m, x, init=Gaussian(torch.zeros(2, Z_DIM), torch.zeros(2, Z_DIM))), ValueError),
        (lambda m, x: gaussian_elbo(m, x, "q"), TypeError),
        (lambda m, x: gaussian_elbo(m, x, encoder_gaussian(m, x), n_samples=1), ValueError),
        (lambda m, x: gaussian_log_likelihood(m, x, Gaussian(torch.zeros(6, Z_DIM), torch.zeros(6, Z_DIM))), TypeError),
        (lambda m, x: gaussian_log_likelihood(m, x, Gaussian(torch.zeros(6, Z_DIM, dtype=torch.float64),
                                                             torch.full((6, Z_DIM), math.nan, dtype=torch.float64))),
         ValueError),
        (lambda m, x: fit_gaussian("model", x), TypeError),
    ],
)
def test_bad_inputs_raise_clear_errors(data, call, error):
    model, x = data
    with pytest.raises(error):
        call(model, x)
