r"""Monte Carlo estimators of the gradient of an expectation, :math:`\nabla_\phi \mathbb{E}_{q_\phi(z)}[f(z)]`.

Chapter 5 derives both estimators for a diagonal Gaussian
:math:`q_\phi = \mathcal{N}(\mu, \operatorname{diag}\sigma^2)` with parameters :math:`\phi = (\mu, \log\sigma^2)`:

* :func:`score_function_grad`: :math:`f(z)\,\nabla_\phi \log q_\phi(z)` (REINFORCE, the likelihood-ratio
  estimator), eq. ``score-function-estimator``;
* :func:`pathwise_grad`: :math:`\nabla_\phi f(\mu + \sigma\odot\epsilon)` (the reparameterisation
  gradient), eq. ``pathwise-estimator``.

Both return one estimate per draw (not their average), so a caller can average them, and measure
their spread: the two are unbiased, but their variances differ by orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._validate import check_count, check_generator, check_same_shape, check_tensor
from .densities import _log_normal


class GradientSamples(NamedTuple):
    r"""Per-draw gradient estimates, each ``(n_samples, *mu.shape)``; average over dim 0 to estimate.

    A named tuple, so ``g_mu, g_logvar = pathwise_grad(...)`` also works.
    """

    mu: Tensor
    r"""Estimates of :math:`\partial \mathbb{E}_q[f(z)] / \partial\mu`, ``(n_samples, *mu.shape)``."""
    logvar: Tensor
    r"""Estimates of :math:`\partial \mathbb{E}_q[f(z)] / \partial\log\sigma^2`, ``(n_samples, *mu.shape)``."""


def _check_inputs(
    f: object, mu: Tensor, logvar: Tensor, n_samples: int, generator: object
) -> int:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    check_same_shape("mu", mu, "logvar", logvar)
    if mu.dim() == 0:
        raise ValueError("mu must have at least one dimension (the latent dimension d)")
    check_generator("generator", generator)
    return check_count("n_samples", n_samples, per_item=mu.numel())


def _per_draw_copies(mu: Tensor, logvar: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
    """One detached, differentiable copy of ``mu`` and ``logvar`` per draw, ``(n_samples, *mu.shape)``.

    The gradient of a sum over draws with respect to draw ``s``'s copy is draw ``s``'s own gradient.
    """
    shape = (n_samples, *mu.shape)
    mu_s = mu.detach().expand(shape).clone().requires_grad_(True)
    logvar_s = logvar.detach().expand(shape).clone().requires_grad_(True)
    return mu_s, logvar_s


def _evaluate(f: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    fz = f(z)
    if not isinstance(fz, Tensor) or fz.shape != z.shape[:-1]:
        got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
        raise ValueError(
            f"f must map z of shape {tuple(z.shape)} to one value per draw, shape "
            f"{tuple(z.shape[:-1])}; got {got}"
        )
    return fz


def score_function_grad(
    f: Callable[[Tensor], Tensor],
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> GradientSamples:
    r"""Score-function (REINFORCE, likelihood-ratio) estimates of :math:`\nabla_\phi\mathbb{E}_q[f(z)]`.

    For each draw :math:`z^{(s)} \sim q_\phi = \mathcal{N}(\mu, \operatorname{diag}\sigma^2)`, returns

    .. math:: &\hat g^{(s)} = f(z^{(s)})\, \nabla_\phi \log q_\phi(z^{(s)}), \\
              &\nabla_\mu \log q = \frac{z-\mu}{\sigma^2}, \quad
              \nabla_{\log\sigma^2} \log q = \tfrac12\Bigl(\frac{(z-\mu)^2}{\sigma^2} - 1\Bigr),

    the score computed by autograd. Implements eq. ``score-function-estimator`` of chapter 5. ``f`` is
    only evaluated, never differentiated; to subtract a baseline ``b``, pass ``lambda z: f(z) - b``.

    Args:
        f: maps ``z`` of shape ``(n_samples, *mu.shape)`` to ``(n_samples, *mu.shape[:-1])``, one value
            per draw; it must treat draws independently.
        mu: means, ``(..., d)``.
        logvar: log-variances, same shape as ``mu``.
        n_samples: number of draws (``>= 1``).
        generator: seeded ``torch.Generator``; with the same seed the draws are those of
            :func:`vaelib.reparameterize`.

    Returns:
        :class:`GradientSamples` of detached ``(n_samples, *mu.shape)`` tensors.
    """
    n_samples = _check_inputs(f, mu, logvar, n_samples, generator)
    with torch.enable_grad():
        mu_s, logvar_s = _per_draw_copies(mu, logvar, n_samples)
        eps = torch.randn(mu_s.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        with torch.no_grad():
            z = mu_s + torch.exp(0.5 * logvar_s) * eps
            fz = _evaluate(f, z).detach()
        log_q = _log_normal(z, mu_s, logvar_s)  # (n_samples, ...)
        g_mu, g_logvar = torch.autograd.grad((fz * log_q).sum(), (mu_s, logvar_s))
    return GradientSamples(g_mu, g_logvar)


def pathwise_grad(
    f: Callable[[Tensor], Tensor],
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> GradientSamples:
    r"""Pathwise (reparameterisation) estimates of :math:`\nabla_\phi\mathbb{E}_q[f(z)]`.

    For each draw :math:`\epsilon^{(s)} \sim \mathcal{N}(0, I)`, with
    :math:`z^{(s)} = \mu + \sigma\odot\epsilon^{(s)}` (eq. ``reparameterisation``), returns

    .. math:: \hat g^{(s)}_\mu = \nabla_z f(z^{(s)}), \qquad
              \hat g^{(s)}_{\log\sigma^2} = \nabla_z f(z^{(s)}) \odot \tfrac12 \sigma\odot\epsilon^{(s)},

    computed by backpropagating through ``z``. Implements eq. ``pathwise-estimator`` of chapter 5.

    Args:
        f: differentiable; maps ``z`` of shape ``(n_samples, *mu.shape)`` to
            ``(n_samples, *mu.shape[:-1])``, one value per draw; it must treat draws independently.
        mu: means, ``(..., d)``.
        logvar: log-variances, same shape as ``mu``.
        n_samples: number of draws (``>= 1``).
        generator: seeded ``torch.Generator``; with the same seed the draws are those of
            :func:`vaelib.reparameterize`.

    Returns:
        :class:`GradientSamples` of detached ``(n_samples, *mu.shape)`` tensors.
    """
    n_samples = _check_inputs(f, mu, logvar, n_samples, generator)
    with torch.enable_grad():
        mu_s, logvar_s = _per_draw_copies(mu, logvar, n_samples)
        eps = torch.randn(mu_s.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu_s + torch.exp(0.5 * logvar_s) * eps
        fz = _evaluate(f, z)
        if not fz.requires_grad:
            raise ValueError(
                "f(z) does not depend differentiably on z: the pathwise estimator needs its gradient"
            )
        g_mu, g_logvar = torch.autograd.grad(fz.sum(), (mu_s, logvar_s), allow_unused=True)
    g_mu = torch.zeros_like(mu_s) if g_mu is None else g_mu
    g_logvar = torch.zeros_like(logvar_s) if g_logvar is None else g_logvar
    return GradientSamples(g_mu.detach(), g_logvar.detach())
