"""Chapter 4's self-checking exercises: the reconstruction term in nats, for a Bernoulli and for a
Gaussian decoder."""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Normal

from ._checker import Case, Exercise, register

F64 = torch.float64


def _bernoulli_cases() -> list[Case]:
    """Reference: torch.distributions.Bernoulli(logits=...).log_prob, summed over pixels, in float64."""
    gen = torch.Generator().manual_seed(4004)
    cases = []
    for n, D, scale, dtype, what in [
        (4, 784, 3.0, torch.float32, "4 binary images of 784 pixels, moderate logits, float32"),
        (2, 10, 1.0, F64, "2 binary vectors of 10 pixels, logits near 0, float64"),
        (3, 50, 100.0, torch.float32, "3 binary images of 50 pixels from a confident decoder: logits "
                                      "as large as 100 in magnitude, some of them wrong, float32"),
    ]:
        x = (torch.rand(n, D, generator=gen, dtype=F64) < 0.3).to(dtype)
        logits = (scale * (2 * torch.rand(n, D, generator=gen, dtype=F64) - 1)).to(dtype)
        expected = Bernoulli(logits=logits.to(F64)).log_prob(x.to(F64)).sum(-1)
        cases.append(Case(what, (x, logits), expected))
    return cases


register(Exercise(
    name="ch4-bernoulli-reconstruction",
    title="the Bernoulli log-likelihood log p(x | z) of binary images from the decoder's logits, "
          "eq. (4.4)",
    answer="a function bernoulli_log_likelihood(x, logits)",
    kind="function",
    cases=_bernoulli_cases,
    atol=1e-3,
    rtol=1e-5,
))


def _gaussian_cases() -> list[Case]:
    """Reference: torch.distributions.Normal(x_hat, sigma).log_prob, summed over pixels, in float64."""
    gen = torch.Generator().manual_seed(4005)
    cases = []
    for n, D, sigma, dtype, what in [
        (3, 784, 0.1, torch.float32, "3 grey-level images of 784 pixels, sigma_x = 0.1, float32"),
        (5, 10, 2.0, F64, "5 vectors of 10 values, sigma_x = 2, float64"),
        (2, 64, 0.01, F64, "2 images of 64 pixels, nearly perfect reconstructions, sigma_x = 0.01, "
                           "float64"),
    ]:
        x = torch.rand(n, D, generator=gen, dtype=F64)
        x_hat = (x + sigma * torch.randn(n, D, generator=gen, dtype=F64)).to(dtype)
        x = x.to(dtype)
        expected = Normal(x_hat.to(F64), sigma).log_prob(x.to(F64)).sum(-1)
        cases.append(Case(what, (x, x_hat, sigma), expected))
    return cases


register(Exercise(
    name="ch4-gaussian-reconstruction",
    title="the Gaussian log-likelihood log N(x; x_hat, sigma_x^2 I) of images, "
          "eq. (4.5)",
    answer="a function gaussian_log_likelihood(x, x_hat, sigma)",
    kind="function",
    cases=_gaussian_cases,
    atol=1e-3,
    rtol=1e-5,
))
