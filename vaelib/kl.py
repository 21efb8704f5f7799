r"""The Kullback-Leibler divergence between Gaussians, in closed form.

Chapter 2 derives :math:`D_{\mathrm{KL}}` between two Gaussians; chapter 4 specialises it to the
regulariser of the ELBO, the KL from :math:`q_\phi(z|x)=\mathcal{N}(\mu, \operatorname{diag}\sigma^2)`
to the prior :math:`p(z)=\mathcal{N}(0, I)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_same_shape, check_tensor


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    r"""KL from a diagonal Gaussian to the standard normal, per example, in nats.

    .. math:: D_{\mathrm{KL}}\bigl(\mathcal{N}(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal{N}(0, I)\bigr)
              = \tfrac12 \sum_{j=1}^{d} \bigl(\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1\bigr)

    Implements eq. ``kl-standard-normal`` of chapter 4.

    Args:
        mu: posterior means, ``(batch, d)`` (or ``(d,)``).
        logvar: posterior log-variances :math:`\log\sigma^2`, same shape as ``mu``.

    Returns:
        ``(batch,)`` (or a scalar): the KL summed over the ``d`` latent dimensions.
    """
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    check_same_shape("mu", mu, "logvar", logvar)
    if mu.dim() == 0:
        raise ValueError("mu must have at least one dimension (the last one is summed over)")
    return _gaussian_kl(mu, logvar)


def _gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """:func:`gaussian_kl` without input checks, for the training hot path."""
    # expm1(logvar) - logvar = sigma^2 - 1 - log sigma^2, accurate when sigma^2 is close to 1.
    return 0.5 * (mu.pow(2) + logvar.expm1() - logvar).sum(-1)


def kl_normal(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    r"""KL between two diagonal Gaussians :math:`q=\mathcal{N}(\mu_q,\sigma_q^2)`, :math:`p=\mathcal{N}(\mu_p,\sigma_p^2)`.

    .. math:: D_{\mathrm{KL}}(q\,\|\,p) = \tfrac12 \sum_j \Bigl[\log\frac{\sigma_{p,j}^2}{\sigma_{q,j}^2}
              + \frac{\sigma_{q,j}^2 + (\mu_{q,j}-\mu_{p,j})^2}{\sigma_{p,j}^2} - 1\Bigr]

    Implements eq. ``kl-gaussians`` of chapter 2. With ``mu_p = 0`` and ``logvar_p = 0`` it equals
    :func:`gaussian_kl`.

    Args:
        mu_q, logvar_q: parameters of ``q``, ``(..., d)``.
        mu_p, logvar_p: parameters of ``p``, broadcastable to ``(..., d)``.

    Returns:
        ``(...)``: the KL in nats, summed over the last dimension.
    """
    for name, t in (("mu_q", mu_q), ("logvar_q", logvar_q), ("mu_p", mu_p), ("logvar_p", logvar_p)):
        check_tensor(name, t)
    check_same_shape("mu_q", mu_q, "logvar_q", logvar_q)
    if mu_q.dim() == 0:
        raise ValueError("mu_q must have at least one dimension (the last one is summed over)")
    try:
        torch.broadcast_shapes(mu_q.shape, mu_p.shape, logvar_p.shape)
    except RuntimeError as err:
        raise ValueError(
            f"mu_p and logvar_p must broadcast to mu_q's shape {tuple(mu_q.shape)}, got "
            f"{tuple(mu_p.shape)} and {tuple(logvar_p.shape)}"
        ) from err
    ratio = logvar_q - logvar_p
    return 0.5 * ((mu_q - mu_p).pow(2) * (-logvar_p).exp() + ratio.expm1() - ratio).sum(-1)
