"""Chapter 1's self-checking exercises: the evidence of the linear-Gaussian model, exactly and by
Monte Carlo from the prior."""

from __future__ import annotations

import math

import torch

from ..toy import LinearGaussian
from ._checker import Case, Exercise, register

F64 = torch.float64


def _model(gen: torch.Generator, x_dim: int, z_dim: int, dtype: torch.dtype):
    W = torch.randn(x_dim, z_dim, generator=gen, dtype=F64)
    b = torch.randn(x_dim, generator=gen, dtype=F64)
    return W.to(dtype), b.to(dtype)


def _evidence_cases() -> list[Case]:
    """Reference: LinearGaussian.log_evidence (the d x d route of chapter 1, checked there against
    torch.distributions and quadrature), in float64 on the cases' own (possibly float32) numbers."""
    gen = torch.Generator().manual_seed(1001)
    cases = []
    for n, x_dim, z_dim, sigma, dtype, what in [
        (4, 3, 1, 0.5, F64, "4 observations in 3 dimensions, a 1-dimensional latent, noise 0.5, float64"),
        (1, 5, 2, 1.5, F64, "1 observation in 5 dimensions, a 2-dimensional latent, noise 1.5, float64"),
        (6, 8, 3, 0.3, torch.float32,
         "6 observations in 8 dimensions, a 3-dimensional latent, noise 0.3, float32"),
    ]:
        W, b = _model(gen, x_dim, z_dim, dtype)
        model = LinearGaussian(W.to(F64), b.to(F64), sigma)
        x = model.sample(n, generator=gen)[0].to(dtype)
        cases.append(Case(what, (x, W, b, sigma), model.log_evidence(x.to(F64))))
    return cases


register(Exercise(
    name="ch1-lg-evidence",
    title="the exact log-evidence log p(x) of the linear-Gaussian model, eq. (1.6)",
    answer="a function log_evidence_exact(x, W, b, sigma)",
    kind="function",
    cases=_evidence_cases,
    atol=1e-4,
    rtol=1e-5,
))


def _log_mean_exp(a: torch.Tensor) -> torch.Tensor:
    """log(mean(exp(a))) of a 1-D float64 tensor, shifted by its maximum so that nothing underflows."""
    top = a.max()
    return top + torch.log(torch.exp(a - top).sum() / a.numel())


def _monte_carlo_cases() -> list[Case]:
    """Reference: the Gaussian log-likelihood written out, log-mean-exp by a shift, all in float64."""
    gen = torch.Generator().manual_seed(1002)
    cases = []
    for x_dim, z_dim, sigma, tail, n_draws, dtype, what in [
        (3, 1, 0.5, False, 1000, F64, "an observation in 3 dimensions, a 1-dimensional latent, "
                                      "noise 0.5, 1,000 prior draws, float64"),
        (5, 2, 1.0, False, 50, F64, "an observation in 5 dimensions, a 2-dimensional latent, "
                                    "noise 1, 50 prior draws, float64"),
        (40, 2, 0.05, True, 200, F64, "an informative observation in 40 dimensions, noise 0.05, "
                                      "caused by a latent in the prior's tail, 200 prior draws, "
                                      "float64: every likelihood is below the smallest float64"),
        (8, 3, 0.7, False, 100, torch.float32, "an observation in 8 dimensions, a 3-dimensional "
                                               "latent, noise 0.7, 100 prior draws, float32"),
    ]:
        W, b = _model(gen, x_dim, z_dim, dtype)
        model = LinearGaussian(W.to(F64), b.to(F64), sigma)
        if tail:  # z = (3, -3, ...): prior draws land far from it, p(x | z_s) underflows
            z_true = 3.0 * (-1.0) ** torch.arange(z_dim, dtype=F64)
            noise = torch.randn(x_dim, generator=gen, dtype=F64)
            x = (W.to(F64) @ z_true + b.to(F64) + sigma * noise).to(dtype)
        else:
            x = model.sample(1, generator=gen)[0][0].to(dtype)
        z = torch.randn(n_draws, z_dim, generator=gen, dtype=F64).to(dtype)
        r = x.to(F64) - z.to(F64) @ W.to(F64).T - b.to(F64)  # (S, D)
        log_lik = -0.5 * x_dim * math.log(2 * math.pi * sigma**2) - r.pow(2).sum(1) / (2 * sigma**2)
        cases.append(Case(what, (x, W, b, sigma, z), _log_mean_exp(log_lik)))
    return cases


register(Exercise(
    name="ch1-mc-evidence",
    title="the Monte Carlo estimate of log p(x) from prior draws, eq. (1.8)",
    answer="a function log_evidence_mc(x, W, b, sigma, z)",
    kind="function",
    cases=_monte_carlo_cases,
    atol=1e-4,
    rtol=1e-5,
))
