"""Chapter 8's self-checking exercises: a full-covariance encoder's KL, and an IAF's log-density."""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ._checker import Case, Exercise, register


def _full_kl_cases() -> list[Case]:
    """KL(N(mu, L L^T) || N(0, I)) with L = (I + M) diag(sigma), eq. (8.1).

    Reference: torch.distributions' closed form for two MultivariateNormals (float64).
    """
    gen = torch.Generator().manual_seed(2008)
    cases = []
    for batch, d, dtype, spread, what in [
        (1, 2, torch.float64, 0.5, "one image, a 2-dimensional code, float64"),
        (5, 4, torch.float64, 1.0, "a batch of 5 images, 4-dimensional codes, float64"),
        (3, 32, torch.float32, 0.1, "a batch of 3 images, 32-dimensional codes (the book's), float32"),
        (4, 6, torch.float64, 3.0,
         "a batch of 4 images, 6-dimensional codes, float64, large off-diagonal entries"),
    ]:
        mu = torch.randn(batch, d, generator=gen, dtype=torch.float64)
        logvar = 2 * torch.randn(batch, d, generator=gen, dtype=torch.float64) - 1
        lower = (spread * torch.randn(batch, d, d, generator=gen, dtype=torch.float64)).tril(-1)
        scale_tril = (torch.eye(d, dtype=torch.float64) + lower) * (0.5 * logvar).exp().unsqueeze(-2)
        q = MultivariateNormal(mu, scale_tril=scale_tril)
        p = MultivariateNormal(torch.zeros(d, dtype=torch.float64),
                               scale_tril=torch.eye(d, dtype=torch.float64))
        exact = kl_divergence(q, p)
        cases.append(Case(what, (mu.to(dtype), logvar.to(dtype), lower.to(dtype)), exact.to(dtype)))
    return cases


register(Exercise(
    name="ch8-full-kl",
    title="the KL divergence from N(mu, L L^T), L = (I + M) diag(sigma), to N(0, I), per image",
    answer="a function full_kl(mu, logvar, M) that returns a tensor of shape (batch,)",
    kind="function",
    cases=_full_kl_cases,
    atol=1e-4,
    rtol=1e-5,
))


def _iaf_cases() -> list[Case]:
    """log q_T(z_T) = log q_0(z_0) - sum over steps of log |det J_t|, eq. (8.3).

    Reference: each step's Jacobian built as a lower-triangular matrix (diagonal sigmoid(s + shift),
    random entries below it, each column scaled by its diagonal entry, so that LU needs no pivoting
    and the determinant stays accurate even when sigma is 1e-47) and its log-determinant taken by
    brute force with torch.linalg.slogdet, in float64.
    """
    gen = torch.Generator().manual_seed(2018)
    cases = []
    for steps, batch, d, dtype, centre, shift, what in [
        (1, 4, 3, torch.float64, 0.0, 1.5, "one step, a batch of 4 codes in 3 dimensions, float64"),
        (2, 6, 8, torch.float64, 0.0, 1.5, "two steps, a batch of 6 codes in 8 dimensions, float64"),
        (3, 5, 32, torch.float32, 0.0, 0.5,
         "three steps, a batch of 5 codes in 32 dimensions, float32, shift=0.5"),
        (2, 3, 4, torch.float32, -110.0, 1.5,
         "two steps, a batch of 3 codes in 4 dimensions, float32, pre-activations s near -110"),
    ]:
        log_q0 = -d * (1 + torch.rand(batch, generator=gen, dtype=torch.float64))
        s = centre + 2 * torch.randn(steps, batch, d, generator=gen, dtype=torch.float64)
        log_q0, s = log_q0.to(dtype).double(), s.to(dtype).double()  # score what is given
        log_q = log_q0.clone()
        for t in range(steps):
            sigma = torch.sigmoid(s[t] + shift)  # (batch, d); float64 holds 1e-47
            below = 0.9 * (2 * torch.rand(batch, d, d, generator=gen, dtype=torch.float64) - 1)
            jac = (torch.eye(d, dtype=torch.float64) + below.tril(-1)) * sigma.unsqueeze(-2)
            sign, logdet = torch.linalg.slogdet(jac)
            assert bool((sign > 0).all())
            log_q = log_q - logdet
        cases.append(Case(what, (log_q0.to(dtype), s.to(dtype)), log_q.to(dtype),
                          {"shift": shift}))
    return cases


register(Exercise(
    name="ch8-iaf-log-q",
    title="the log-density of a code after T steps of an inverse autoregressive flow",
    answer="a function iaf_log_q(log_q0, s, shift=1.5) that returns a tensor of shape (batch,)",
    kind="function",
    cases=_iaf_cases,
    atol=1e-4,
    rtol=1e-5,
))
