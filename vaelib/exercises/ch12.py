"""Chapter 12's self-checking exercises: the forward marginal (eq. diffusion-marginal) and one step's KL
(eq. step-kl) of a diffusion model, written with log signal-to-noise ratios (eq. logsnr)."""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal, kl_divergence

from ._checker import Case, Exercise, register


def _alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t and sigma_t from lambda_t, in float64, as (1 + e^-lambda)^-1/2 and (1 + e^lambda)^-1/2."""
    lam = logsnr.double()
    return (1 + torch.exp(-lam)).rsqrt(), (1 + torch.exp(lam)).rsqrt()


def _diffuse_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1201)
    cases = []
    for b, d, lo, hi, dtype, what in [
        (1, 2, -9.0, 7.0, torch.float64, "one point in 2 dimensions, float64"),
        (6, 3, -9.0, 7.0, torch.float64, "a batch of 6 points in 3 dimensions, float64"),
        (5, 64, -9.0, 7.0, torch.float32, "a batch of 5 points in 64 dimensions, float32"),
        (4, 2, -20.0, 20.0, torch.float64,
         "a batch of 4 points in 2 dimensions, float64, some log-SNRs far beyond [-9, 7]"),
    ]:
        x = torch.rand((b, d), generator=gen, dtype=dtype) * 2 - 1
        logsnr = torch.rand((b,), generator=gen, dtype=dtype) * (hi - lo) + lo
        eps = torch.randn((b, d), generator=gen, dtype=dtype)
        alpha, sigma = _alpha_sigma(logsnr)
        z_t = alpha[:, None] * x.double() + sigma[:, None] * eps.double()
        cases.append(Case(f"x and eps of shape ({b}, {d}), logsnr of shape ({b},): {what}",
                          (x, logsnr, eps), z_t.to(dtype)))
    return cases


def _step_kl_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1202)
    cases = []
    for b, d, step, dtype, what in [
        (1, 2, (1.0, 4.0), torch.float64, "one point in 2 dimensions, a large step, float64"),
        (5, 64, (0.1, 2.0), torch.float64, "a batch of 5 points in 64 dimensions, float64"),
        (4, 3, (1e-3, 1e-2), torch.float64,
         "a batch of 4 points in 3 dimensions, tiny steps (of a thousand-step grid), float64"),
        (6, 8, (0.5, 2.0), torch.float32, "a batch of 6 points in 8 dimensions, float32"),
    ]:
        x = torch.rand((b, d), generator=gen, dtype=dtype) * 2 - 1
        x_hat = x + 0.3 * torch.randn((b, d), generator=gen, dtype=dtype)
        lam_t = torch.rand((b,), generator=gen, dtype=dtype) * 12 - 9
        gap = torch.rand((b,), generator=gen, dtype=dtype) * (step[1] - step[0]) + step[0]
        lam_s = (lam_t + gap).to(dtype)  # s < t: less noise at s
        # the reference: chapter 2's generic KL between the forward posterior q(z_s | z_t, x)
        # and the reverse step q(z_s | z_t, x_hat), built from eq. (12.4) in float64
        (a_s, s_s), (a_t, s_t) = _alpha_sigma(lam_s), _alpha_sigma(lam_t)
        var_ts = s_t**2 * -torch.expm1(lam_t.double() - lam_s.double())  # sigma_{t|s}^2
        z_t = a_t[:, None] * x.double() + s_t[:, None] * torch.randn(
            (b, d), generator=gen, dtype=torch.float64)
        c_z = (a_t / a_s * s_s**2 / s_t**2)[:, None]
        c_x = (a_s * var_ts / s_t**2)[:, None]
        scale = (var_ts * s_s**2 / s_t**2).sqrt()[:, None].expand(b, d)
        q = Independent(Normal(c_z * z_t + c_x * x.double(), scale), 1)
        p = Independent(Normal(c_z * z_t + c_x * x_hat.double(), scale), 1)
        cases.append(Case(f"x and x_hat of shape ({b}, {d}), logsnr_s and logsnr_t of shape "
                          f"({b},): {what}", (x, x_hat, lam_s, lam_t),
                          kl_divergence(q, p).to(dtype)))
    return cases


register(Exercise(
    name="ch12-diffuse",
    title="a draw of the forward marginal q(z_t | x) = N(alpha_t x, sigma_t^2 I), from eps",
    answer="a function diffuse(x, logsnr, eps) that returns z_t, a tensor of shape (B, D)",
    kind="function",
    cases=_diffuse_cases,
    atol=1e-6,
    rtol=1e-5,
))

register(Exercise(
    name="ch12-step-kl",
    title="one step's KL, from q(z_s | z_t, x) to p(z_s | z_t), in nats per point",
    answer="a function step_kl(x, x_hat, logsnr_s, logsnr_t) that returns a tensor of shape (B,)",
    kind="function",
    cases=_step_kl_cases,
    atol=1e-10,
    rtol=1e-5,
))
