r"""The VAE as a generative model: decode draws from the prior, and walk between two codes.

Chapter 6: discard the encoder, draw :math:`z \sim p(z)` (``model.prior()``), and decode with
``model.likelihood(z)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._validate import check_count, check_generator, check_tensor
from .distributions import draw, mean as distribution_mean
from .model import VAE, run_likelihood, run_posterior, run_prior


@torch.no_grad()
def sample(
    model: VAE, n: int, generator: torch.Generator | None = None, mean: bool = True, *, c: Any = None
) -> Tensor:
    r"""Generate ``n`` new data points: :math:`z \sim p(z)`, then :math:`x \sim p_\theta(x|z)`.

    Args:
        model: a trained :class:`vaelib.VAE`; ``z`` is drawn from ``model.prior()`` (any family, a mixture
            included: nothing is differentiated here).
        n: how many samples (``>= 1``); with a context, the number of its rows.
        generator: seeded ``torch.Generator`` (on the model's device).
        mean: return the likelihood's mean (pixel probabilities for a Bernoulli decoder), which is what
            one usually shows; ``False`` draws ``x`` from :math:`p_\theta(x|z)` as well.
        c: context, one row per sample (``model.prior(c)``, ``model.likelihood(z, c)``), or ``None``.

    Returns:
        ``(n, x_dim)``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    n = check_count("n", n, per_item=model.x_dim + model.z_dim)
    check_generator("generator", generator)
    if c is not None and getattr(c, "shape", (n,))[0] != n:
        raise ValueError(f"c must have one row per sample, {n}, got {getattr(c, 'shape', None)}")
    prior = run_prior(model, c, n)
    z = draw(prior, (n,) if prior.batch_shape == () else (), generator, reparameterized=False)
    likelihood = run_likelihood(model, z, c)
    if mean:
        return distribution_mean(likelihood, generator)
    return draw(likelihood, (), generator, reparameterized=False).to(z.dtype)  # (a categorical draws integers)


@torch.no_grad()
def interpolate(model: VAE, x_a: Tensor, x_b: Tensor, steps: int, *, c: Any = None) -> Tensor:
    r"""Decode the straight line between the posterior means of ``x_a`` and ``x_b``.

    .. math:: z_t = (1-t)\,\mathbb{E}_{q}[z|x_a] + t\,\mathbb{E}_{q}[z|x_b], \qquad t = 0, \tfrac{1}{steps-1}, \dots, 1

    Args:
        model: a trained :class:`vaelib.VAE`.
        x_a, x_b: two data points, each ``(x_dim,)`` or ``(1, x_dim)``.
        steps: number of points on the path including both ends (``>= 2``).
        c: one context for the whole path (``(1, ...)``), or ``None``.

    Returns:
        ``(steps, x_dim)``: the likelihood's mean along the path.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    steps = check_count("steps", steps, per_item=model.x_dim + model.z_dim, minimum=2)
    ends = []
    for name, x in (("x_a", x_a), ("x_b", x_b)):
        if isinstance(x, Tensor) and x.dim() == 1:
            x = x.unsqueeze(0)
        if isinstance(x, Tensor) and x.dim() == 2 and x.shape[0] != 1:
            raise ValueError(f"{name} must be a single data point, got shape {tuple(x.shape)}")
        ends.append(check_tensor(name, x, ndim=2, last_dim=model.x_dim))
    model.check_data(ends[0], "x_a")
    model.check_data(ends[1], "x_b")
    mu_a = distribution_mean(run_posterior(model, ends[0], c))
    mu_b = distribution_mean(run_posterior(model, ends[1], c))
    t = torch.linspace(0.0, 1.0, steps, device=mu_a.device, dtype=mu_a.dtype).unsqueeze(1)
    path = (1 - t) * mu_a + t * mu_b
    path_c = c if c is None or not isinstance(c, Tensor) else c.expand(steps, *c.shape[1:])
    return distribution_mean(run_likelihood(model, path, path_c))
