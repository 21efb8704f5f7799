r"""The VAE as a generative model: decode draws from the prior, and walk between two codes.

Chapter 6: discard the encoder, draw :math:`z \sim p(z) = \mathcal{N}(0, I)`, and decode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_count, check_generator, check_tensor
from .model import VAE, run_encoder


@torch.no_grad()
def sample(
    model: VAE, n: int, generator: torch.Generator | None = None, mean: bool = True
) -> Tensor:
    r"""Generate ``n`` new data points: :math:`z \sim \mathcal{N}(0, I)`, then :math:`x \sim p_\theta(x|z)`.

    Args:
        model: a trained :class:`vaelib.VAE`.
        n: how many samples (``>= 1``).
        generator: seeded ``torch.Generator`` (on the model's device).
        mean: return the decoder's mean (pixel probabilities for a Bernoulli decoder), which is what
            one usually shows; ``False`` draws ``x`` from :math:`p_\theta(x|z)` as well.

    Returns:
        ``(n, x_dim)``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    n = check_count("n", n, per_item=model.x_dim + model.z_dim)
    check_generator("generator", generator)
    device, dtype = model.device, model.dtype
    z = torch.randn((n, model.z_dim), generator=generator, device=device, dtype=dtype)
    x_mean = model.mean(z)
    if mean:
        return x_mean
    if model.likelihood == "bernoulli":
        return torch.bernoulli(x_mean, generator=generator)
    noise = torch.randn(x_mean.shape, generator=generator, device=device, dtype=dtype)
    return x_mean + torch.exp(0.5 * model.obs_logvar) * noise


@torch.no_grad()
def interpolate(model: VAE, x_a: Tensor, x_b: Tensor, steps: int) -> Tensor:
    r"""Decode the straight line between the posterior means of ``x_a`` and ``x_b``.

    .. math:: z_t = (1-t)\,\mu_\phi(x_a) + t\,\mu_\phi(x_b), \qquad t = 0, \tfrac{1}{steps-1}, \dots, 1

    Args:
        model: a trained :class:`vaelib.VAE`.
        x_a, x_b: two data points, each ``(x_dim,)`` or ``(1, x_dim)``.
        steps: number of points on the path including both ends (``>= 2``).

    Returns:
        ``(steps, x_dim)``: the decoder's mean along the path.
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
    mu_a, _ = run_encoder(model, ends[0])
    mu_b, _ = run_encoder(model, ends[1])
    t = torch.linspace(0.0, 1.0, steps, device=mu_a.device, dtype=mu_a.dtype).unsqueeze(1)
    return model.mean((1 - t) * mu_a + t * mu_b)
