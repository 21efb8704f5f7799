"""Chapter 9's self-checking exercises: normalised importance weights and their effective sample
size, and the signal-to-noise ratio of a gradient estimate."""

from __future__ import annotations

import math

import torch

from ._checker import Case, Exercise, register


def _weights_cases() -> list[Case]:
    """w~_k = w_k / sum_l w_l (eq. iwae-gradient) and ESS = 1 / sum_k w~_k^2.

    Reference: each row in float64 with Python's exact-rounding math.fsum, shifted by the row's
    largest log-weight, and the ESS as (sum w)^2 / sum w^2 rather than from the normalised weights.
    """
    gen = torch.Generator().manual_seed(2009)
    cases = []
    for batch, k, dtype, centre, spread, what in [
        (1, 5, torch.float64, 0.0, 1.0, "one image, K = 5 log-weights near 0, float64"),
        (4, 64, torch.float64, -100.0, 3.0,
         "a batch of 4 images, K = 64 log-weights near -100 nats, float64"),
        (3, 16, torch.float32, -600.0, 2.0,
         "a batch of 3 images, K = 16 log-weights near -600 nats, float32"),
        (2, 10, torch.float64, -90.0, 25.0,
         "a batch of 2 images, K = 10 log-weights spread over tens of nats (one draw dominates), "
         "float64"),
    ]:
        log_w = (centre + spread * torch.randn(batch, k, generator=gen, dtype=torch.float64))
        log_w = log_w.to(dtype).double()  # score the values the learner is given
        w_tilde, ess = torch.empty(batch, k, dtype=torch.float64), torch.empty(batch, dtype=torch.float64)
        for b, row in enumerate(log_w.tolist()):
            top = max(row)
            w = [math.exp(v - top) for v in row]
            total, total_sq = math.fsum(w), math.fsum(v * v for v in w)
            w_tilde[b] = torch.tensor([v / total for v in w], dtype=torch.float64)
            ess[b] = total * total / total_sq
        cases.append(Case(what, (log_w.to(dtype),), (w_tilde.to(dtype), ess.to(dtype))))
    return cases


register(Exercise(
    name="ch9-weights-ess",
    title="the normalised importance weights of K draws and their effective sample size",
    answer="a function normalised_weights(log_w) that returns (w_tilde, ess), of shapes (batch, K) "
           "and (batch,)",
    kind="function",
    cases=_weights_cases,
    atol=1e-5,
    rtol=1e-5,
))


def _snr_cases() -> list[Case]:
    """SNR = |mean| / std per coordinate (eq. snr), with the unbiased (n - 1) standard deviation.

    Reference: the variance from the pairwise-difference identity
    Var = sum_{i<j} (g_i - g_j)^2 / (n (n - 1)), in float64, which never forms the mean.
    """
    gen = torch.Generator().manual_seed(2019)
    cases = []
    for reps, n, dtype, scale, what in [
        (100, 5, torch.float64, 1.0, "100 draws of a 5-coordinate gradient, float64"),
        (10, 3, torch.float64, 1.0, "10 draws of a 3-coordinate gradient, float64"),
        (50, 20, torch.float32, 1e-3,
         "50 draws of a 20-coordinate gradient of size about 1e-3, float32, some means negative"),
    ]:
        mean = scale * torch.randn(n, generator=gen, dtype=torch.float64)
        std = scale * (0.2 + 2 * torch.rand(n, generator=gen, dtype=torch.float64))
        draws = (mean + std * torch.randn(reps, n, generator=gen, dtype=torch.float64)).to(dtype)
        g = draws.double()
        pair = (g.unsqueeze(0) - g.unsqueeze(1)).pow(2).sum((0, 1)) / 2  # sum over i < j
        var = pair / (reps * (reps - 1))
        snr = g.mean(0).abs() / var.sqrt()
        cases.append(Case(what, (draws,), snr.to(dtype)))
    return cases


register(Exercise(
    name="ch9-snr",
    title="the signal-to-noise ratio of each coordinate of a stochastic gradient, from its draws",
    answer="a function gradient_snr(draws) that returns a tensor of shape (n,)",
    kind="function",
    cases=_snr_cases,
    atol=1e-6,
    rtol=1e-4,
))
