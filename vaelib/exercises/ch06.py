"""Chapter 6's self-checking exercises: a path between two codes, and the gain of matching the prior's moments.

The path's reference is :func:`torch.lerp`. The gain's reference does not use the formula the chapter
proves: it evaluates the KL term itself, with :func:`torch.distributions.kl_divergence`, before and after
the change of parameters of the proof (``mu -> a mu + b``, ``sigma -> a sigma`` with the best ``a`` and
``b``), and takes the difference.
"""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from ._checker import Case, Exercise, register


def _path_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(6006)
    cases = []
    for d, steps, dtype, what in [
        (2, 5, torch.float64, "two 2-dimensional codes, 5 steps, float64"),
        (32, 10, torch.float32, "two 32-dimensional codes, 10 steps, float32"),
        (3, 2, torch.float64, "two 3-dimensional codes, 2 steps (the two ends only), float64"),
    ]:
        mu_a, mu_b = (torch.randn(d, generator=gen, dtype=dtype) * 1.5 for _ in range(2))
        t = torch.linspace(0, 1, steps, dtype=torch.float64).unsqueeze(1)
        path = torch.lerp(mu_a.double().expand(steps, d), mu_b.double().expand(steps, d), t)
        cases.append(Case(what, (mu_a, mu_b, steps), path))
    return cases


register(Exercise(
    name="ch6-latent-path",
    title="the straight line z_t = (1 - t) mu_a + t mu_b between two codes, at steps equally spaced t",
    answer="a function latent_path(mu_a, mu_b, steps) returning a (steps, d) tensor",
    kind="function",
    cases=_path_cases,
    atol=1e-6,
    rtol=1e-6,
))


def _kl_per_dimension(mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """The KL term's part in each dimension, averaged over the data: (n, d) -> (d,)."""
    return kl_divergence(Normal(mu, sd), Normal(torch.zeros_like(mu), torch.ones_like(sd))).mean(0)


def _gain_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(6007)
    cases = []
    for n, d, dtype, shift, what in [
        (50, 3, torch.float64, 0.4, "50 codes in 3 dimensions, float64"),
        (5, 2, torch.float64, 0.8, "5 codes in 2 dimensions, float64"),
        (200, 16, torch.float32, 0.3, "200 codes in 16 dimensions, float32"),
        (100, 4, torch.float64, 0.0,
         "100 codes in 4 dimensions, float64, close to a stationary point"),
    ]:
        mu = torch.randn((n, d), generator=gen, dtype=dtype) * 1.2 + shift
        logvar = torch.rand((n, d), generator=gen, dtype=dtype) * 3 - 3
        if shift == 0.0:  # rescale so that the moments are nearly the prior's
            mu64, var64 = mu.double(), logvar.double().exp()
            mu64 = mu64 - mu64.mean(0)
            scale = 1 / (mu64.pow(2) + var64).mean(0).sqrt() * 1.01
            mu, logvar = (mu64 * scale).to(dtype), (var64.log() + 2 * scale.log()).to(dtype)
        mu64, sd64 = mu.double(), (0.5 * logvar.double()).exp()
        mu_bar = mu64.mean(0)
        spread = (mu64 - mu_bar).pow(2).mean(0) + sd64.pow(2).mean(0)  # Var of the aggregate
        a = spread.rsqrt()  # the best scale, and the best shift -a * mu_bar
        gain = _kl_per_dimension(mu64, sd64) - _kl_per_dimension(a * (mu64 - mu_bar), a * sd64)
        cases.append(Case(what, (mu, logvar), gain))
    return cases


register(Exercise(
    name="ch6-moment-gain",
    title="the gain Delta_j of moving the aggregate posterior's mean and variance to the prior's, "
          "for each latent dimension",
    answer="a function moment_gain(mu, logvar) returning a (d,) tensor",
    kind="function",
    cases=_gain_cases,
    atol=1e-6,
    rtol=1e-5,
))
