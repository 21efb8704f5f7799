r"""What :func:`vaelib.fit` maximises: the ELBO (with a KL weight, warm-up, free bits) or a tighter bound.

Each objective turns a minibatch into a loss whose gradient :func:`vaelib.fit` follows, written against
the model's three distributions (:class:`vaelib.VAE`) only:

* :class:`ELBO`: :math:`\frac1B\sum_b \bigl[\frac1S\sum_s \log p_\theta(x_b|z_{sb}) - \beta_t\,
  D_{\mathrm{KL}}(q_\phi(z|x_b)\,\|\,p(z))\bigr]` (chapters 3 to 5), with the KL weight :math:`\beta`
  (Higgins et al. 2017), a linear *warm-up* of :math:`\beta_t` from 0 (Bowman et al. 2016; Sønderby et al.
  2016) and *free bits* (Kingma et al. 2016), which stop charging each latent unit for its first
  :math:`\lambda` nats: :math:`\sum_j \max\bigl(\lambda, \frac1B\sum_b D_{\mathrm{KL},j}(x_b)\bigr)`;
* :class:`IWAE`: the importance-weighted bound :math:`\mathcal{L}_K` (Burda, Grosse & Salakhutdinov 2016)
  with its plain reparameterised gradient;
* :class:`DReG`: the same bound, its encoder gradient *doubly reparameterised* (Tucker, Lawson, Gu &
  Maddison 2019): the score-function term of :math:`q_\phi` is replaced by a second pathwise term, which
  keeps the encoder's gradient informative as :math:`K` grows (its signal-to-noise ratio otherwise falls
  like :math:`1/\sqrt K`, Rainforth et al. 2018).

Each equals a plain autograd loop on the same batch and noise (``tests/test_objectives.py`` checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._validate import check_count, check_float, check_int
from .distributions import draw, kl, kl_per_dimension, log_prob
from .elbo import _elbo
from .iwae import log_weights
from .model import VAE, run_likelihood, run_posterior, run_prior


class Step(NamedTuple):
    """One minibatch's loss (a scalar to minimise) and what :class:`vaelib.History` records of it.

    Attributes:
        loss: the negative objective, averaged over the batch (the quantity whose gradient is followed).
        bound: ``(batch,)`` the bound on :math:`\\log p(x)` each example reached (the ELBO, or
            :math:`\\mathcal{L}_K`), without gradient.
        kl: ``(batch,)`` the KL term (exact or estimated), without gradient.
    """

    loss: Tensor
    bound: Tensor
    kl: Tensor


@dataclass(frozen=True)
class ELBO:
    r"""The (β-weighted) ELBO, the objective of chapters 3 to 6.

    Args:
        beta: final KL weight :math:`\beta` (``>= 0``; 1 gives the ELBO).
        warmup_epochs: epochs over which :math:`\beta_t` rises linearly from 0 to ``beta`` (0: none).
        free_bits: :math:`\lambda`, nats per latent unit below which the KL is not charged (0: none).
            Needs a KL that splits over units (a diagonal Gaussian posterior and prior).
        n_samples: reparameterised draws of :math:`z` per example.
    """

    beta: float = 1.0
    warmup_epochs: float = 0.0
    free_bits: float = 0.0
    n_samples: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", check_float("beta", self.beta, minimum=0.0))
        object.__setattr__(self, "warmup_epochs", check_float("warmup_epochs", self.warmup_epochs, minimum=0.0))
        object.__setattr__(self, "free_bits", check_float("free_bits", self.free_bits, minimum=0.0))
        object.__setattr__(self, "n_samples", check_count("n_samples", self.n_samples, per_item=1))

    def beta_at(self, step: int, steps_per_epoch: int) -> float:
        r""":math:`\beta_t` at 0-based update ``step``: ``beta * min(1, (step + 1) / warm-up steps)``."""
        step = check_int("step", step, minimum=0)
        steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch)
        warmup_steps = self.warmup_epochs * steps_per_epoch
        return self.beta if warmup_steps == 0 else self.beta * min(1.0, (step + 1) / warmup_steps)

    def __call__(self, model: VAE, x: Tensor, c: Any, generator: torch.Generator | None, step: int,
                 steps_per_epoch: int) -> Step:
        beta = self.beta_at(step, steps_per_epoch)
        if self.free_bits == 0:
            terms = _elbo(model, x, self.n_samples, beta, generator, c=c, checked=True)
            return Step(-terms.objective.mean(), terms.elbo.detach(), terms.kl.detach())
        q = run_posterior(model, x, c)
        z = draw(q, (self.n_samples,), generator)
        reconstruction = log_prob(run_likelihood(model, z, c), x).mean(0)
        prior = run_prior(model, c, x.shape[0])
        per_unit = kl_per_dimension(q, prior)  # (batch, z_dim)
        if per_unit is None:
            raise ValueError(
                f"free bits charge each latent unit separately, but the KL from this {type(q).__name__} to this "
                f"{type(prior).__name__} does not split over units: use free_bits=0, or diagonal Gaussians"
            )
        charged = per_unit.mean(0).clamp_min(self.free_bits).sum()  # sum_j max(lambda, batch mean of KL_j)
        kl_value = per_unit.sum(-1)
        loss = -reconstruction.mean() + beta * charged
        return Step(loss, (reconstruction - kl_value).detach(), kl_value.detach())


@dataclass(frozen=True)
class IWAE:
    r"""The importance-weighted bound :math:`\mathcal{L}_K` as the training objective (Burda et al. 2016).

    :math:`\mathcal{L}_K = \log \frac1K \sum_k p_\theta(x, z_k)/q_\phi(z_k|x)`, :math:`z_k \sim q_\phi(z|x)`
    reparameterised; :math:`K = 1` is the ELBO (with the KL estimated, not exact).

    Args:
        k: importance samples per example (``>= 1``).
    """

    k: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_count("k", self.k, per_item=1))

    def __call__(self, model: VAE, x: Tensor, c: Any, generator: torch.Generator | None, step: int,
                 steps_per_epoch: int) -> Step:
        q = run_posterior(model, x, c)
        z = draw(q, (self.k,), generator)
        log_w = log_weights(model, x, q, self.k, generator, c, checked=True, z=z)
        bound = torch.logsumexp(log_w, 0) - math.log(self.k)
        return Step(-bound.mean(), bound.detach(), _kl_estimate(model, q, z, c))  # z itself: a flow's cache


@dataclass(frozen=True)
class DReG(IWAE):
    r"""The importance-weighted bound with the doubly reparameterised gradient (Tucker et al. 2019).

    With :math:`w_k = p_\theta(x, z_k)/q_\phi(z_k|x)` and normalised weights
    :math:`\tilde w_k = w_k / \sum_l w_l`, the gradient followed is

    .. math:: \nabla_\theta: \ \sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k), \qquad
              \nabla_\phi: \ \sum_k \tilde w_k^{\,2}\, \frac{\partial \log w_k}{\partial z_k}
              \frac{\partial z_k}{\partial \phi},

    where :math:`\partial\log w_k/\partial z_k` differentiates :math:`\log q_\phi` in :math:`z` only (its
    parameters held fixed). The first is the IWAE gradient of the decoder and prior; the second has the
    same expectation as the IWAE gradient of the encoder (Tucker et al., eq. 5) without its
    score-function term. It is computed as the gradient of one surrogate loss,
    :math:`-\sum_k \tilde w_k \log p_\theta(x, \bar z_k) - g \cdot z` (:math:`\bar z` the draws detached,
    :math:`g` the gradient in :math:`z` above), so a parameter shared by the encoder and the decoder gets
    both parts. The value it reports is :math:`\mathcal{L}_K`.

    Args:
        k: importance samples per example (``>= 2`` to differ from the ELBO's gradient).
    """

    def __call__(self, model: VAE, x: Tensor, c: Any, generator: torch.Generator | None, step: int,
                 steps_per_epoch: int) -> Step:
        q = run_posterior(model, x, c)
        z = draw(q, (self.k,), generator)                    # (k, batch, z_dim): carries the encoder's graph
        z_fixed = z.detach().requires_grad_(True)            # the same draws, as a leaf
        likelihood, prior = run_likelihood(model, z_fixed, c), run_prior(model, c, x.shape[0])
        log_joint = log_prob(likelihood, x) + log_prob(prior, z_fixed)   # log p(x, z), (k, batch)
        try:
            log_q = log_prob(q, z_fixed)
        except NotImplementedError as err:
            raise TypeError(
                f"DReG scores the draws detached from q, and this {type(q).__name__} cannot score a point it did not "
                "draw itself (a flow without an inverse): use IWAE, or a flow whose transforms invert"
            ) from err
        log_w = log_joint - log_q
        weights = torch.softmax(log_w.detach(), 0)           # normalised weights w~, without gradient
        # g = d/dz sum_k w~_k^2 log w_k, with q's parameters held fixed (the gradient is in z_fixed only).
        (grad_z,) = torch.autograd.grad((weights.pow(2) * log_w).sum(), z_fixed, retain_graph=True)
        batch = x.shape[0]
        loss = -(weights * log_joint).sum() / batch - (grad_z * z).sum() / batch
        bound = torch.logsumexp(log_w.detach(), 0) - math.log(self.k)
        return Step(loss, bound, _kl_estimate(model, q, z.detach(), c))


def _kl_estimate(model: VAE, q: Any, z: Tensor, c: Any) -> Tensor:
    """The KL from ``q`` to the prior: exact where a formula is registered, else the mean over the draws ``z``."""
    with torch.no_grad():
        prior = run_prior(model, c, q.batch_shape[0])
        exact = kl(q, prior)
        return exact if exact is not None else (log_prob(q, z) - log_prob(prior, z)).mean(0)


Objective = ELBO | IWAE | DReG
