"""Chapter 3's self-checking exercises: the exact ELBO of a Gaussian q for the linear-Gaussian model,
and the smallest KL divergence a mean-field q can reach."""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ..toy import LinearGaussian
from ._checker import Case, Exercise, register

F64 = torch.float64


def _random_cov(gen: torch.Generator, d: int) -> torch.Tensor:
    A = torch.randn(d, d, generator=gen, dtype=F64)
    return A @ A.T + 0.1 * torch.eye(d, dtype=F64)


def _elbo_cases() -> list[Case]:
    """Reference: the ELBO identity, log p(x) - KL(q || p(z|x)), with the evidence and the posterior of
    LinearGaussian (checked in chapter 1) and torch.distributions' Gaussian KL; not eq.
    (eq-elbo-linear-gaussian) itself."""
    gen = torch.Generator().manual_seed(3003)
    cases = []
    for x_dim, z_dim, sigma, q, dtype, what in [
        (4, 2, 0.7, "random", F64, "4 observed and 2 latent dimensions, noise 0.7, an arbitrary q, "
                                   "float64"),
        (3, 1, 1.2, "random", F64, "3 observed and 1 latent dimension, noise 1.2, an arbitrary q, "
                                   "float64"),
        (10, 3, 0.1, "posterior", F64, "10 observed and 3 latent dimensions, noise 0.1, q equal to "
                                       "the exact posterior, float64"),
        (6, 2, 0.5, "random", torch.float32, "6 observed and 2 latent dimensions, noise 0.5, an "
                                             "arbitrary q, float32"),
    ]:
        W = torch.randn(x_dim, z_dim, generator=gen, dtype=F64).to(dtype).to(F64)
        b = torch.randn(x_dim, generator=gen, dtype=F64).to(dtype).to(F64)
        model = LinearGaussian(W, b, sigma)
        x = model.sample(1, generator=gen)[0].to(dtype).to(F64)  # (1, D)
        if q == "posterior":
            post = model.posterior(x)
            mu, S = post.mean[0], post.covariance_matrix[0]
        else:
            mu, S = torch.randn(z_dim, generator=gen, dtype=F64), _random_cov(gen, z_dim)
        mu, S = mu.to(dtype).to(F64), S.to(dtype).to(F64)
        S = 0.5 * (S + S.T)
        kl = kl_divergence(MultivariateNormal(mu, S), model.posterior(x))[0]
        expected = model.log_evidence(x)[0] - kl
        args = tuple(t.to(dtype) for t in (x[0], W, b)) + (sigma,) + (mu.to(dtype), S.to(dtype))
        cases.append(Case(what, args, expected))
    return cases


register(Exercise(
    name="ch3-linear-gaussian-elbo",
    title="the exact ELBO of q = N(mu, S) for the linear-Gaussian model, eq. (3.6)",
    answer="a function elbo_linear_gaussian(x, W, b, sigma, mu, S)",
    kind="function",
    cases=_elbo_cases,
    atol=1e-4,
    rtol=1e-5,
))


def _gap_cases() -> list[Case]:
    """Reference: torch.distributions' KL from N(0, diag(1 / M_jj)) to N(0, M^-1) (the reverse-KL
    optimum of chapter 2's theorem), not eq. (3.7) itself."""
    gen = torch.Generator().manual_seed(3004)
    W = torch.tensor([[1.0, 0.8], [0.6, 1.0], [1.2, 0.9], [0.5, 0.7]], dtype=F64)
    precisions = [
        ("a 2 x 2 precision matrix of a strongly correlated posterior, float64",
         torch.eye(2, dtype=F64) + W.T @ W / 0.7**2, F64),
        ("a random 4 x 4 precision matrix, float64", _random_cov(gen, 4), F64),
        ("a diagonal 3 x 3 precision matrix (an uncorrelated posterior), float64",
         torch.diag(torch.tensor([2.0, 5.0, 0.5], dtype=F64)), F64),
        ("a random 3 x 3 precision matrix, float32", _random_cov(gen, 3), torch.float32),
    ]
    cases = []
    for what, M, dtype in precisions:
        M = M.to(dtype).to(F64)
        zero = torch.zeros(M.shape[0], dtype=F64)
        best = MultivariateNormal(zero, torch.diag(1 / M.diagonal()))
        gap = kl_divergence(best, MultivariateNormal(zero, precision_matrix=M))
        cases.append(Case(what, (M.to(dtype),), gap))
    return cases


register(Exercise(
    name="ch3-mean-field-gap",
    title="the smallest KL divergence from a mean-field q to a Gaussian posterior of precision M, "
          "eq. (3.7)",
    answer="a function mean_field_gap(M)",
    kind="function",
    cases=_gap_cases,
    atol=1e-5,
    rtol=1e-5,
))
