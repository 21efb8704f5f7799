r"""The Evidence Lower Bound, the objective a VAE maximises.

.. math:: \mathcal{L}(\phi, \theta; x) = \mathbb{E}_{q_\phi(z|x)}[\log p_\theta(x|z)]
          - D_{\mathrm{KL}}(q_\phi(z|x) \,\|\, p(z))

Chapter 3 derives it; chapter 4 reads its two terms as reconstruction and regularisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._validate import check_float, check_generator, check_int
from .kl import _gaussian_kl
from .model import VAE
from .sampling import _reparameterize


@dataclass(frozen=True)
class ELBOTerms:
    """The ELBO of each example and its two terms, all ``(batch,)`` tensors in nats.

    Attributes:
        elbo: ``reconstruction - kl``, the lower bound on ``log p(x)``.
        reconstruction: Monte Carlo estimate of ``E_q[log p(x|z)]``.
        kl: ``KL(q(z|x) || p(z))`` in closed form.
        beta: the KL weight of the training objective.
    """

    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    beta: float = 1.0

    @property
    def objective(self) -> Tensor:
        """``reconstruction - beta * kl``: the quantity training maximises (the ELBO when ``beta = 1``)."""
        return self.reconstruction - self.beta * self.kl


def elbo(
    model: VAE,
    x: Tensor,
    n_samples: int = 1,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> ELBOTerms:
    r"""Per-example ELBO of ``model`` on ``x``, with its reconstruction and KL terms.

    The reconstruction term is estimated with ``n_samples`` reparameterised draws
    :math:`z^{(s)} = \mu + \sigma\odot\epsilon^{(s)}`; the KL to :math:`\mathcal{N}(0, I)` is exact.
    Implements eq. ``elbo-decomposition`` of chapter 4.

    Args:
        model: a :class:`vaelib.VAE`.
        x: data, ``(batch, x_dim)``; binary for a Bernoulli decoder.
        n_samples: Monte Carlo samples of ``z`` per example (``>= 1``).
        beta: KL weight used in :attr:`ELBOTerms.objective` (``>= 0``; the ELBO itself is unaffected).
        generator: seeded ``torch.Generator`` for reproducible samples.

    Returns:
        :class:`ELBOTerms` with ``(batch,)`` tensors; differentiable in the model's parameters.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    n_samples = check_int("n_samples", n_samples)
    beta = check_float("beta", beta, minimum=0.0)
    check_generator("generator", generator)
    return _elbo(model, x, n_samples, beta, generator)


def _elbo(
    model: VAE, x: Tensor, n_samples: int, beta: float, generator: torch.Generator | None
) -> ELBOTerms:
    """:func:`elbo` without input checks, for the training hot path."""
    mu, logvar = model._encode(x)
    z = _reparameterize(mu, logvar, n_samples, generator)  # (n_samples, batch, z_dim)
    log_px_z = model._log_px_z(x, z)  # (n_samples, batch)
    reconstruction = log_px_z.mean(0)
    kl = _gaussian_kl(mu, logvar)
    return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl, beta=beta)
