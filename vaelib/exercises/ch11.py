"""Chapter 11's self-checking exercises: the KL term of a two-level VAE, layer by layer (eq. layer-kl)."""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from ._checker import Case, Exercise, register

#: (draws S, images B, dimensions, dtype, what the learner is told about the case)
_SHAPES = [
    (1, 1, 3, torch.float64, "one draw for one image, 3 dimensions, float64"),
    (10, 4, 16, torch.float64, "10 draws for each of 4 images, 16 dimensions, float64"),
    (5, 3, 32, torch.float32, "5 draws for each of 3 images, 32 dimensions, float32"),
    (200, 2, 2, torch.float64, "200 draws for each of 2 images, 2 dimensions, float64, "
                               "some variances far from 1"),
]


def _params(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, wide: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A mean and a log-variance of ``shape``; ``wide`` spreads the log-variances over [-6, 4]."""
    mu = torch.randn(shape, generator=gen, dtype=dtype)
    if wide:
        logvar = torch.rand(shape, generator=gen, dtype=dtype) * 10 - 6
    else:
        logvar = torch.randn(shape, generator=gen, dtype=dtype) * 0.7 - 0.3
    return mu, logvar


def _upper_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1101)
    cases = []
    for i, (s, b, d, dtype, what) in enumerate(_SHAPES):
        mu2, logvar2 = _params(gen, (s, b, d), dtype, wide=i == 3)
        # the reference: torch.distributions' KL from N(mu2, exp(logvar2)) to N(0, 1), summed over
        # the dimensions, averaged over the draws of z1
        q = Normal(mu2.double(), (0.5 * logvar2.double()).exp())
        p = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
        kl2 = kl_divergence(q, p).sum(-1).mean(0)
        cases.append(Case(f"mu2, logvar2 of shape ({s}, {b}, {d}): {what}", (mu2, logvar2),
                          kl2.to(dtype)))
    return cases


def _lower_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1102)
    cases = []
    for i, (s, b, d, dtype, what) in enumerate(_SHAPES):
        mu_q, logvar_q = _params(gen, (b, d), dtype, wide=i == 3)
        mu_p, logvar_p = _params(gen, (s, b, d), dtype, wide=i == 3)
        eps = torch.randn((s, b, d), generator=gen, dtype=dtype)
        z1 = mu_q + (0.5 * logvar_q).exp() * eps  # draws of q(z1 | x)
        # the reference: the log-ratio of torch.distributions' densities, in float64
        log_q = Normal(mu_q.double(), (0.5 * logvar_q.double()).exp()).log_prob(z1.double())
        log_p = Normal(mu_p.double(), (0.5 * logvar_p.double()).exp()).log_prob(z1.double())
        kl1 = (log_q - log_p).sum(-1).mean(0)
        cases.append(Case(f"z1 and mu_p, logvar_p of shape ({s}, {b}, {d}), mu_q, logvar_q of "
                          f"shape ({b}, {d}): {what}",
                          (z1, mu_q, logvar_q, mu_p, logvar_p), kl1.to(dtype)))
    return cases


register(Exercise(
    name="ch11-upper-kl",
    title="the upper layer's KL term KL_2 in closed form, averaged over the draws of z1",
    answer="a function upper_kl(mu2, logvar2) that returns a tensor of shape (B,)",
    kind="function",
    cases=_upper_cases,
    atol=1e-5,
    rtol=1e-5,
))

register(Exercise(
    name="ch11-lower-kl",
    title="the lower layer's KL term KL_1 by Monte Carlo, from draws of q(z1|x)",
    answer="a function lower_kl(z1, mu_q, logvar_q, mu_p, logvar_p) that returns a tensor of shape (B,)",
    kind="function",
    cases=_lower_cases,
    atol=1e-4,
    rtol=1e-5,
))
