r"""The evidence lower bound, the objective a VAE maximises.

.. math:: \mathcal{L}(\phi, \theta; x) = \mathbb{E}_{q_\phi(z|x)}[\log p_\theta(x|z)]
          - D_{\mathrm{KL}}(q_\phi(z|x) \,\|\, p(z))

Chapter 3 derives it; chapter 4 reads its two terms as reconstruction and regularisation. The model is
its three distributions (:class:`vaelib.VAE`): :func:`elbo` draws :math:`z` from ``model.posterior(x)``,
scores ``x`` under ``model.likelihood(z)``, and takes the KL to ``model.prior()`` in closed form where
``torch.distributions.kl_divergence`` has one, by Monte Carlo from the same draws otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._validate import check_count, check_float, check_generator, check_int
from .distributions import draw, kl, kl_per_dimension, log_prob, mean
from .model import VAE, check_data_support, check_support, run_likelihood, run_posterior, run_prior


@dataclass(frozen=True)
class ELBOTerms:
    """The ELBO of each example and its two terms, all ``(batch,)`` tensors in nats.

    Attributes:
        elbo: ``reconstruction - kl``, the lower bound on ``log p(x)``.
        reconstruction: Monte Carlo estimate of ``E_q[log p(x|z)]``.
        kl: ``KL(q(z|x) || p(z))``: exact, or a Monte Carlo estimate (see ``kl_closed_form``).
        beta: the KL weight of the training objective.
        kl_closed_form: ``True`` when ``kl`` is exact (``torch.distributions.kl_divergence`` has a formula for
            the pair), ``False`` when it is the Monte Carlo estimate :math:`\\frac1S\\sum_s [\\log q(z_s|x) -
            \\log p(z_s)]` from the same draws as the reconstruction term.
    """

    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    beta: float = 1.0
    kl_closed_form: bool = True

    @property
    def objective(self) -> Tensor:
        """``reconstruction - beta * kl``: the quantity training maximises (the ELBO when ``beta = 1``)."""
        return self.reconstruction - self.beta * self.kl

    def detach(self) -> "ELBOTerms":
        """The same terms without gradient history."""
        return ELBOTerms(self.elbo.detach(), self.reconstruction.detach(), self.kl.detach(), self.beta,
                         self.kl_closed_form)


def elbo(
    model: VAE,
    x: Tensor,
    n_samples: int = 1,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    c: Any = None,
) -> ELBOTerms:
    r"""Per-example ELBO of ``model`` on ``x``, with its reconstruction and KL terms.

    .. math:: \hat{\mathcal{L}} = \frac1S \sum_{s=1}^{S} \log p_\theta(x|z^{(s)})
              - D_{\mathrm{KL}}(q_\phi(z|x) \,\|\, p(z)), \qquad z^{(s)} \sim q_\phi(z|x)\ \text{(reparameterised)}

    Implements eq. ``elbo-decomposition`` of chapter 4. The KL is exact where
    ``torch.distributions.kl_divergence`` knows the pair (the default diagonal Gaussian and
    :math:`\mathcal{N}(0, I)`: eq. ``kl-standard-normal``); otherwise (a mixture prior, a flow posterior)
    it is estimated from the same ``S`` draws, and :attr:`ELBOTerms.kl_closed_form` is ``False``.

    Args:
        model: a :class:`vaelib.VAE`, reached through ``posterior``, ``prior`` and ``likelihood`` only.
        x: data, ``(batch, x_dim)``, in the likelihood's support (binary for a Bernoulli decoder).
        n_samples: Monte Carlo samples of ``z`` per example (``>= 1``).
        beta: KL weight used in :attr:`ELBOTerms.objective` (``>= 0``; the ELBO itself is unaffected).
        generator: seeded ``torch.Generator`` for reproducible samples.
        c: context passed to the model's three methods (a conditional VAE), or ``None``.

    Returns:
        :class:`ELBOTerms` with ``(batch,)`` tensors; differentiable in the model's parameters.
    """
    return _elbo(*_check_elbo_args(model, x, n_samples, beta, generator), c=c)


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
    model: VAE, x: Tensor, n_samples: int, beta: float, generator: torch.Generator | None,
    c: Any = None, checked: bool = False,
) -> ELBOTerms:
    """:func:`elbo` without argument checks; ``checked=True`` also skips the support check of ``x`` (the
    training loop checks its data once)."""
    q = run_posterior(model, x, c)                        # q_phi(z|x)
    z = draw(q, (n_samples,), generator)                  # (n_samples, batch, z_dim), reparameterised
    likelihood = run_likelihood(model, z, c)              # p_theta(x|z)
    if not checked:
        check_support(likelihood, x)
    reconstruction = log_prob(likelihood, x).mean(0)      # (batch,)
    prior = run_prior(model, c, x.shape[0])               # p(z)
    kl_value = kl(q, prior)
    closed_form = kl_value is not None
    if kl_value is None:                                  # Monte Carlo, from the same draws
        kl_value = (log_prob(q, z) - log_prob(prior, z)).mean(0)
    return ELBOTerms(reconstruction - kl_value, reconstruction, kl_value, beta, closed_form)


@dataclass(frozen=True)
class ActiveUnits:
    r"""How much each latent unit is used, over a data set (see :func:`active_units`).

    Attributes:
        variance: ``(z_dim,)`` the activity :math:`A_j = \operatorname{Var}_x\bigl(\mathbb{E}_{q_\phi}[z_j|x]\bigr)`,
            the variance over the data of the posterior mean :math:`\mu_j(x)`.
        kl: ``(z_dim,)`` the mean over the data of each unit's share of the KL term,
            :math:`D_{\mathrm{KL}}(q_\phi(z_j|x) \,\|\, p(z_j))`, in nats; ``kl.sum()`` is the average KL term
            of :func:`elbo`. ``None`` when the KL does not split over units (a posterior or prior that is
            not a diagonal Gaussian: a full covariance, a flow, a mixture).
        threshold: a unit is active when its ``variance`` exceeds this.
    """

    variance: Tensor
    kl: Tensor | None
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
    model: VAE, x: Tensor, threshold: float = 0.01, batch_size: int = 1000, *, c: Any = None
) -> ActiveUnits:
    r"""Which latent units the encoder uses on ``x``: the active-unit statistic of Burda et al. (2016).

    .. math:: A_j = \operatorname{Var}_{x}\bigl(\mathbb{E}_{q_\phi(z|x)}[z_j]\bigr)
              = \frac1N \sum_{n=1}^{N} \bigl(\mu_j(x^{(n)}) - \bar\mu_j\bigr)^2,
              \qquad \bar\mu_j = \frac1N \sum_{n=1}^{N} \mu_j(x^{(n)}),

    and unit :math:`j` is *active* when :math:`A_j` exceeds ``threshold`` (0.01 in Burda et al.). An
    inactive unit's posterior mean barely depends on :math:`x`: its code carries (almost) no information
    about the data. Alongside, for a diagonal Gaussian posterior and prior, the per-unit terms of eq.
    ``kl-standard-normal`` of chapter 4, :math:`\tfrac1N\sum_n \tfrac12\bigl(\mu_j^2 + \sigma_j^2 -
    \log\sigma_j^2 - 1\bigr)` for the :math:`\mathcal{N}(0, I)` prior, show posterior collapse directly: a
    collapsed unit has :math:`q_\phi(z_j|x) \approx p(z_j)` and a KL near 0.

    Args:
        model: a :class:`vaelib.VAE` (the posterior's mean is ``model.posterior(x).mean``, or the average of
            1000 draws for a family without a formula for it).
        x: data, ``(N, x_dim)`` with ``N >= 2``.
        threshold: activity threshold (``>= 0``).
        batch_size: examples encoded at a time (memory only; the result does not depend on it).
        c: context of ``x`` (its rows), or ``None``.

    Returns:
        :class:`ActiveUnits` with the per-unit ``variance`` and ``kl`` (``(z_dim,)``, or ``None``).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 examples to measure a variance, got {x.shape[0]}")
    threshold = check_float("threshold", threshold, minimum=0.0)
    batch_size = check_int("batch_size", batch_size)
    check_data_support(model, x, c)
    g = torch.Generator(device=x.device).manual_seed(0)
    mus, kls = [], []
    for start in range(0, x.shape[0], batch_size):
        cb = None if c is None else c[start : start + batch_size]
        q = run_posterior(model, x[start : start + batch_size], cb)
        mus.append(mean(q, g))
        per_unit = kl_per_dimension(q, run_prior(model, cb, q.batch_shape[0]))
        kls.append(per_unit)
    mu_all = torch.cat(mus).double()
    variance = mu_all.var(0, unbiased=False).to(mus[0].dtype)
    kl_units = None if any(k is None for k in kls) else torch.cat(kls).double().mean(0).to(mus[0].dtype)
    return ActiveUnits(variance=variance, kl=kl_units, threshold=threshold)
