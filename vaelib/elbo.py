r"""The Evidence Lower Bound, the objective a VAE maximises.

.. math:: \mathcal{L}(\phi, \theta; x) = \mathbb{E}_{q_\phi(z|x)}[\log p_\theta(x|z)]
          - D_{\mathrm{KL}}(q_\phi(z|x) \,\|\, p(z))

Chapter 3 derives it; chapter 4 reads its two terms as reconstruction and regularisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._validate import check_count, check_float, check_generator, check_int
from .kl import _gaussian_kl
from .model import VAE, log_px_given, run_decoder, run_encoder
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

    The model is reached through its public :meth:`~vaelib.VAE.encode` and :meth:`~vaelib.VAE.decode`
    only, so a subclass or a model built from your own modules is scored as it computes.
    """
    return _elbo(*_check_elbo_args(model, x, n_samples, beta, generator))


def _check_elbo_args(
    model: object, x: object, n_samples: object, beta: object, generator: object
) -> tuple[VAE, Tensor, int, float, torch.Generator | None]:
    """Validate the arguments of :func:`elbo` (and of :func:`vaelib.elbo_backward`); return them."""
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    n_samples = check_count("n_samples", n_samples, per_item=x.shape[0] * (model.x_dim + model.z_dim))
    beta = check_float("beta", beta, minimum=0.0)
    check_generator("generator", generator)
    return model, x, n_samples, beta, generator  # type: ignore[return-value]


def _elbo(
    model: VAE, x: Tensor, n_samples: int, beta: float, generator: torch.Generator | None
) -> ELBOTerms:
    """:func:`elbo` without input checks, for the training hot path."""
    mu, logvar = run_encoder(model, x)  # model.encode(x), its shapes checked
    z = _reparameterize(mu, logvar, n_samples, generator)  # (n_samples, batch, z_dim)
    log_px_z = log_px_given(model, x, run_decoder(model, z))  # (n_samples, batch), through model.decode
    reconstruction = log_px_z.mean(0)
    kl = _gaussian_kl(mu, logvar)
    return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl, beta=beta)


@dataclass(frozen=True)
class ActiveUnits:
    r"""How much each latent unit is used, over a data set (see :func:`active_units`).

    Attributes:
        variance: ``(z_dim,)`` the activity :math:`A_j = \operatorname{Var}_x\bigl(\mathbb{E}_{q_\phi}[z_j|x]\bigr)`,
            the variance over the data of the posterior mean :math:`\mu_j(x)`.
        kl: ``(z_dim,)`` the mean over the data of each unit's share of the KL term,
            :math:`D_{\mathrm{KL}}(q_\phi(z_j|x) \,\|\, \mathcal{N}(0, 1))`, in nats; ``kl.sum()`` is the
            average KL term of :func:`elbo`.
        threshold: a unit is active when its ``variance`` exceeds this.
    """

    variance: Tensor
    kl: Tensor
    threshold: float

    @property
    def active(self) -> Tensor:
        """``(z_dim,)`` boolean mask of the active units, ``variance > threshold``."""
        return self.variance > self.threshold

    @property
    def count(self) -> int:
        """Number of active units."""
        return int(self.active.sum())


@torch.no_grad()
def active_units(
    model: VAE, x: Tensor, threshold: float = 0.01, batch_size: int = 1000
) -> ActiveUnits:
    r"""Which latent units the encoder uses on ``x``: the active-unit statistic of Burda et al. (2016).

    .. math:: A_j = \operatorname{Var}_{x}\bigl(\mathbb{E}_{q_\phi(z|x)}[z_j]\bigr)
              = \frac1N \sum_{n=1}^{N} \bigl(\mu_j(x^{(n)}) - \bar\mu_j\bigr)^2,
              \qquad \bar\mu_j = \frac1N \sum_{n=1}^{N} \mu_j(x^{(n)}),

    and unit :math:`j` is *active* when :math:`A_j` exceeds ``threshold`` (0.01 in Burda et al.). An
    inactive unit's posterior mean barely depends on :math:`x`: its code carries (almost) no information
    about the data. Alongside, the per-unit terms of eq. ``kl-standard-normal`` of chapter 4,
    :math:`\tfrac1N\sum_n \tfrac12\bigl(\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1\bigr)`, show posterior
    collapse directly: a collapsed unit has :math:`q_\phi(z_j|x) \approx p(z_j)` and a KL near 0.

    Args:
        model: a :class:`vaelib.VAE`.
        x: data, ``(N, x_dim)`` with ``N >= 2``; binary for a Bernoulli decoder.
        threshold: activity threshold (``>= 0``).
        batch_size: examples encoded at a time (memory only; the result does not depend on it).

    Returns:
        :class:`ActiveUnits` with the per-unit ``variance`` and ``kl``, both ``(z_dim,)``.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 examples to measure a variance, got {x.shape[0]}")
    threshold = check_float("threshold", threshold, minimum=0.0)
    batch_size = check_int("batch_size", batch_size)
    mus, kls = [], []
    for start in range(0, x.shape[0], batch_size):
        mu, logvar = run_encoder(model, x[start : start + batch_size])
        mus.append(mu)
        # Per-unit KL: eq. kl-standard-normal with the sum over units left out.
        kls.append(_gaussian_kl(mu.unsqueeze(-1), logvar.unsqueeze(-1)))
    mu_all = torch.cat(mus).double()
    variance = mu_all.var(0, unbiased=False).to(mus[0].dtype)
    kl = torch.cat(kls).double().mean(0).to(mus[0].dtype)
    return ActiveUnits(variance=variance, kl=kl, threshold=threshold)
