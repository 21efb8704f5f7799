r"""The reparameterisation trick: :math:`z = \mu + \sigma \odot \epsilon`, :math:`\epsilon \sim \mathcal{N}(0, I)`.

Chapter 5 explains why this lets gradients flow from a sample back to :math:`\mu` and :math:`\sigma`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_count, check_generator, check_same_shape, check_tensor


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Draw ``z ~ N(mu, diag exp(logvar))`` as a differentiable function of ``mu`` and ``logvar``.

    .. math:: z = \mu + \sigma \odot \epsilon, \qquad \sigma = \exp(\tfrac12 \log\sigma^2),
              \qquad \epsilon \sim \mathcal{N}(0, I)

    Implements eq. ``reparameterisation`` of chapter 5. The randomness lives in ``eps`` alone, so
    ``z.backward()`` reaches ``mu`` and ``logvar``.

    Args:
        mu: means, ``(batch, d)``.
        logvar: log-variances, same shape as ``mu``.
        n_samples: how many independent draws per example (``>= 1``).
        generator: a seeded ``torch.Generator`` for reproducible noise (on ``mu``'s device).

    Returns:
        ``(n_samples, batch, d)``: the samples; the leading dimension is always present.
    """
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    check_same_shape("mu", mu, "logvar", logvar)
    n_samples = check_count("n_samples", n_samples, per_item=mu.numel())
    check_generator("generator", generator)
    return _reparameterize(mu, logvar, n_samples, generator)


def _reparameterize(
    mu: Tensor, logvar: Tensor, n_samples: int, generator: torch.Generator | None
) -> Tensor:
    """:func:`reparameterize` without input checks, for the training hot path."""
    eps = torch.randn(
        (n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype
    )
    return mu + torch.exp(0.5 * logvar) * eps
