"""Chapter 2's self-checking exercises: the KL divergence between diagonal Gaussians, and the
variances of the mean-field reverse-KL fit."""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal, kl_divergence

from ._checker import Case, Exercise, register


def _kl_cases() -> list[Case]:
    """Reference: torch.distributions' own closed form, from standard deviations."""
    gen = torch.Generator().manual_seed(2002)
    cases = []
    for shape, dtype, what in [((3,), torch.float64, "one 3-dimensional pair, float64"),
                               ((5, 2), torch.float64, "a batch of 5 pairs in 2 dimensions, float64"),
                               ((4, 8), torch.float32, "a batch of 4 pairs in 8 dimensions, float32")]:
        mu_q, mu_p = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        logvar_q, logvar_p = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        args = tuple(t.to(dtype) for t in (mu_q, logvar_q, mu_p, logvar_p))
        mu_q, logvar_q, mu_p, logvar_p = (t.double() for t in args)
        exact = kl_divergence(Independent(Normal(mu_q, (0.5 * logvar_q).exp()), 1),
                              Independent(Normal(mu_p, (0.5 * logvar_p).exp()), 1))
        cases.append(Case(what, args, exact))
    return cases


register(Exercise(
    name="ch2-gaussian-kl",
    title="the KL divergence between two diagonal Gaussians, summed over the last dimension, "
          "eq. (2.4)",
    answer="a function kl_gaussians(mu_q, logvar_q, mu_p, logvar_p)",
    kind="function",
    cases=_kl_cases,
    atol=1e-5,
    rtol=1e-5,
))


def _conditional_variances(Sigma: torch.Tensor) -> torch.Tensor:
    """Var(z_i | z_-i) = Sigma_ii - Sigma_i,-i Sigma_-i,-i^-1 Sigma_-i,i for each i (a Schur complement;
    no inverse of the whole matrix), float64."""
    S = Sigma.double()
    d = S.shape[0]
    out = torch.empty(d, dtype=torch.float64)
    for i in range(d):
        rest = [j for j in range(d) if j != i]
        if not rest:
            out[i] = S[i, i]
            continue
        c = S[rest, i]
        out[i] = S[i, i] - c @ torch.linalg.solve(S[rest][:, rest], c)
    return out


def _mean_field_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(2003)
    sd = torch.tensor([1.5, 0.8], dtype=torch.float64)
    corr = torch.tensor([[1.0, -0.7], [-0.7, 1.0]], dtype=torch.float64)
    cases = [Case("a 2 x 2 covariance with correlation -0.7, float64", (torch.outer(sd, sd) * corr,))]
    for d, dtype, what in [(5, torch.float64, "a random 5 x 5 covariance, float64"),
                           (3, torch.float32, "a random 3 x 3 covariance, float32")]:
        L = torch.randn(d, d, generator=gen, dtype=torch.float64)
        cases.append(Case(what, ((L @ L.T + 0.5 * torch.eye(d, dtype=torch.float64)).to(dtype),)))
    cases.append(Case("a diagonal 4 x 4 covariance (uncorrelated coordinates), float64",
                      (torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)),)))
    return [Case(c.description, c.args, _conditional_variances(c.args[0])) for c in cases]


register(Exercise(
    name="ch2-mean-field-variances",
    title="the variances s_i^2 of the mean-field Gaussian closest to N(mu, Sigma) in reverse KL, "
          "eq. (2.6)",
    answer="a function mean_field_variances(Sigma)",
    kind="function",
    cases=_mean_field_cases,
    atol=1e-5,
    rtol=1e-5,
))
