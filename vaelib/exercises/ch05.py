"""Chapter 5's self-checking exercises: a reparameterised draw with its density, and a pathwise gradient.

The references are computed another way than the book's formulas: the draw by
:class:`torch.distributions.transforms.AffineTransform` with the scale ``sqrt(exp(logvar))``, its
log-density by :meth:`torch.distributions.Normal.log_prob` at the draw, and the pathwise gradient by
autograd through the draw.
"""

from __future__ import annotations

import torch
from torch.distributions import Normal
from torch.distributions.transforms import AffineTransform

from ._checker import Case, Exercise, register


def _sample_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(5005)
    cases = []
    for eps_shape, dtype, spread, what in [
        ((3,), torch.float64, 1.0, "one draw in 3 dimensions, float64"),
        ((4, 5, 2), torch.float64, 1.0, "4 draws for each of a batch of 5 in 2 dimensions, float64"),
        ((10, 3, 8), torch.float32, 1.0, "10 draws for each of a batch of 3 in 8 dimensions, float32"),
        ((6, 4), torch.float64, 4.0,
         "6 draws in 4 dimensions, float64, with log-variances from very narrow to very wide"),
    ]:
        shape = eps_shape[1:] if len(eps_shape) > 1 else eps_shape
        mu = torch.randn(shape, generator=gen, dtype=dtype) * 2
        logvar = (torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1.5) * spread
        eps = torch.randn(eps_shape, generator=gen, dtype=dtype)
        scale = logvar.exp().sqrt()
        z = AffineTransform(loc=mu, scale=scale)(eps)
        log_q = Normal(mu, scale).log_prob(z).sum(-1)
        cases.append(Case(what, (mu, logvar, eps), (z, log_q)))
    return cases


register(Exercise(
    name="ch5-reparameterised-sample",
    title="a reparameterised draw z = mu + sigma * eps of a diagonal Gaussian and its log-density log q(z)",
    answer="a function reparameterised_sample(mu, logvar, eps) returning (z, log_q)",
    kind="function",
    cases=_sample_cases,
    atol=1e-5,
    rtol=1e-5,
))


def _pathwise_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(5006)
    cases = []
    for d, n_draws, dtype, what in [
        (1, 5, torch.float64, "5 draws in 1 dimension, float64"),
        (3, 100, torch.float64, "100 draws in 3 dimensions, float64"),
        (8, 50, torch.float32, "50 draws in 8 dimensions, float32"),
        (2, 1, torch.float64, "a single draw in 2 dimensions, float64"),
    ]:
        mu = torch.randn(d, generator=gen, dtype=dtype)
        logvar = torch.rand(d, generator=gen, dtype=dtype) * 2 - 1
        a = torch.randn(d, generator=gen, dtype=dtype) * 2
        eps = torch.randn((n_draws, d), generator=gen, dtype=dtype)
        mu_g, logvar_g = mu.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
        z = AffineTransform(loc=mu_g, scale=logvar_g.exp().sqrt())(eps)  # (S, d)
        f_mean = (z - a).pow(2).sum(-1).mean()  # the S-draw average of f
        grad_mu, grad_logvar = torch.autograd.grad(f_mean, (mu_g, logvar_g))
        cases.append(Case(what, (mu, logvar, a, eps), (grad_mu, grad_logvar)))
    return cases


register(Exercise(
    name="ch5-pathwise-gradient",
    title="the pathwise estimate of the gradient of E_q[||z - a||^2] with respect to mu and log sigma^2",
    answer="a function pathwise_gradient(mu, logvar, a, eps) returning (grad_mu, grad_logvar)",
    kind="function",
    cases=_pathwise_cases,
    atol=1e-5,
    rtol=1e-5,
))
