"""Chapter 7's self-checking exercises: the importance-weighted bound from log-weights, and a paired SE.

The bound's reference works in double precision and shifts by the largest log-weight by hand (no call
to :func:`torch.logsumexp`); the standard error's reference sums squared deviations in double precision.
"""

from __future__ import annotations

import torch

from ._checker import Case, Exercise, register


def _log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w[k]) over dim 0, in float64: (K, n) -> (n,)."""
    log_w = log_w.double()
    top = log_w.max(0).values
    return top + torch.log(torch.exp(log_w - top).sum(0) / log_w.shape[0])


def _bound_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(7007)
    cases = []
    for k, n, dtype, centre, spread, what in [
        (1, 3, torch.float64, -90.0, 5.0, "K = 1 weight for each of 3 images, float64"),
        (10, 4, torch.float64, -100.0, 3.0, "K = 10 weights for each of 4 images, float64"),
        (1000, 5, torch.float32, -90.0, 4.0, "K = 1000 weights for each of 5 images, float32"),
        (50, 2, torch.float64, -800.0, 20.0,
         "K = 50 weights for each of 2 images, float64, log-weights near -800 nats"),
    ]:
        log_w = centre + spread * torch.randn((k, n), generator=gen, dtype=dtype)
        cases.append(Case(what, (log_w,), _log_mean_exp(log_w)))
    return cases


register(Exercise(
    name="ch7-iwae-bound",
    title="one draw of the importance-weighted bound log (1/K) sum_k w_k per image, from the log-weights",
    answer="a function iwae_bound(log_w) returning a (n,) tensor for log_w of shape (K, n)",
    kind="function",
    cases=_bound_cases,
    atol=1e-4,
    rtol=1e-6,
))


def _paired_se_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    diff = b.double() - a.double()
    n = diff.numel()
    squares = (diff - diff.sum() / n).pow(2).sum()
    return torch.sqrt(squares / (n - 1) / n)


def _se_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(7008)
    cases = []
    for n, dtype, what in [
        (1000, torch.float64, "1,000 images, float64"),
        (10, torch.float64, "10 images, float64"),
        (50, torch.float32, "50 images, float32"),
    ]:
        a = -95 + 8 * torch.randn(n, generator=gen, dtype=dtype)  # per-image estimates, nats
        b = a + 2 + 0.5 * torch.randn(n, generator=gen, dtype=dtype)  # the same images, another bound
        cases.append(Case(what, (a, b), _paired_se_reference(a, b)))
    return cases


register(Exercise(
    name="ch7-paired-se",
    title="the standard error of the mean difference between two estimates made on the same images",
    answer="a function paired_se(a, b) returning one number",
    kind="function",
    cases=_se_cases,
    atol=1e-6,
    rtol=1e-5,
))
