"""Chapter 10's self-checking exercises: a mixture prior's log-density, and the mutual information of
ELBO surgery."""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from ._checker import Case, Exercise, register


def _mixture_cases() -> list[Case]:
    """log p(z) = log sum_k pi_k N(z; m_k, diag s_k^2), pi = softmax(logits).

    Reference: torch.distributions.MixtureSameFamily, in float64.
    """
    gen = torch.Generator().manual_seed(2010)
    cases = []
    for batch, d, k, dtype, far, what in [
        (4, 2, 3, torch.float64, 0.0, "a batch of 4 codes in 2 dimensions, 3 components, float64"),
        (8, 32, 10, torch.float32, 0.0,
         "a batch of 8 codes in 32 dimensions, 10 components (the book's prior), float32"),
        (3, 5, 4, torch.float64, 60.0,
         "a batch of 3 codes in 5 dimensions, 4 components, float64, codes far from every component"),
        (5, 3, 1, torch.float64, 0.0, "a batch of 5 codes in 3 dimensions, a single component, float64"),
    ]:
        z = far + torch.randn(batch, d, generator=gen, dtype=torch.float64)
        logits = 2 * torch.randn(k, generator=gen, dtype=torch.float64)  # not normalised
        means = torch.randn(k, d, generator=gen, dtype=torch.float64)
        logvars = torch.randn(k, d, generator=gen, dtype=torch.float64) - 0.5
        z, logits, means, logvars = (t.to(dtype).double() for t in (z, logits, means, logvars))
        prior = MixtureSameFamily(Categorical(logits=logits),
                                  Independent(Normal(means, (0.5 * logvars).exp()), 1))
        args = tuple(t.to(dtype) for t in (z, logits, means, logvars))
        cases.append(Case(what, args, prior.log_prob(z).to(dtype)))
    return cases


register(Exercise(
    name="ch10-mixture-log-prob",
    title="the log-density of a mixture-of-Gaussians prior at a batch of codes",
    answer="a function mixture_log_prob(z, logits, means, logvars) that returns a tensor of shape "
           "(batch,)",
    kind="function",
    cases=_mixture_cases,
    atol=1e-4,
    rtol=1e-5,
))


def _mi_cases() -> list[Case]:
    """I_q = mean over n and draws j of log q(z_nj | x_n) - log q(z_nj), with
    log q(z) = log (1/N) sum_m q(z | x_m), eq. (10.1).

    Reference: a loop over codes in float64 with math.fsum, shifted by each code's largest
    log-density.
    """
    gen = torch.Generator().manual_seed(2020)
    cases = []
    for n, s, dtype, centre, what in [
        (3, 2, torch.float64, 0.0, "3 images, 2 codes each, float64, well-separated posteriors"),
        (10, 5, torch.float64, 0.0, "10 images, 5 codes each, float64, overlapping posteriors"),
        (20, 4, torch.float32, -150.0,
         "20 images, 4 codes each, float32, log-densities near -150 nats"),
    ]:
        own = centre + torch.randn(n, s, generator=gen, dtype=torch.float64)
        spread = 20.0 if n == 3 else 2.0
        log_q = own.unsqueeze(1) - spread * torch.rand(n, n, s, generator=gen, dtype=torch.float64)
        eye = torch.eye(n, dtype=torch.bool).unsqueeze(-1)
        log_q = torch.where(eye, own.unsqueeze(1), log_q)  # a code is likeliest under its own image
        log_q = log_q.to(dtype).double()
        total = []
        for i in range(n):
            for j in range(s):
                row = log_q[i, :, j].tolist()
                top = max(row)
                log_agg = top + math.log(math.fsum(math.exp(v - top) for v in row)) - math.log(n)
                total.append(row[i] - log_agg)
        expected = torch.tensor(math.fsum(total) / len(total), dtype=dtype)
        cases.append(Case(what, (log_q.to(dtype),), expected))
    return cases


register(Exercise(
    name="ch10-mutual-information",
    title="the mutual information I_q(n; z) of ELBO surgery from a table of posterior log-densities",
    answer="a function mutual_information(log_q) that returns one number (a 0-dimensional tensor)",
    kind="function",
    cases=_mi_cases,
    atol=1e-5,
    rtol=1e-5,
))
