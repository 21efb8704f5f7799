r"""A two-level hierarchical VAE (chapter 11): :math:`z_2 \to z_1 \to x`, read as one VAE over :math:`z = (z_1, z_2)`.

The generative model is top-down, :math:`p(z_2)\,p_\theta(z_1|z_2)\,p_\theta(x|z_1)` with
:math:`p(z_2) = \mathcal{N}(0, I)`; the posterior is bottom-up, :math:`q_\phi(z_1|x)\,q_\phi(z_2|z_1)`, both
conditionals diagonal Gaussians computed by small MLPs. Concatenating the two layers,
:math:`z = (z_1, z_2)`, each of the two is one distribution over :math:`z` (a :class:`Chain`), so the model
is a :class:`vaelib.VAE` with its own prior, posterior and a decoder that reads :math:`z_1`: the ELBO,
training, the importance-weighted bound and chapter 7's gaps apply unchanged. Its KL term splits by layer
(:func:`layer_kl`),

.. math:: D_{\mathrm{KL}}\bigl(q(z|x) \,\|\, p(z)\bigr)
          = \underbrace{\mathbb{E}_q\bigl[\log q(z_1|x) - \log p(z_1|z_2)\bigr]}_{\text{layer 1}}
          + \underbrace{\mathbb{E}_q\bigl[\log q(z_2|z_1) - \log p(z_2)\bigr]}_{\text{layer 2}},

and a layer whose KL is near zero for every image carries no information: it has *collapsed*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ._validate import check_count, check_generator, check_int
from .distributions import DiagonalNormal, StandardNormal, draw, log_prob
from .model import VAE, MLPEncoder, _relu_mlp, seeded, check_data_support, run_posterior, run_prior


class Chain(Distribution):
    r"""The joint of :math:`a \sim` ``first`` and :math:`b \sim` ``then(a)``, over the concatenation of the two.

    ``log_prob(z) = first.log_prob(a) + then(a).log_prob(b)``; ``rsample`` draws :math:`a`, then :math:`b`
    given it (reparameterised when both are). The value is ``cat([a, b])``, or ``cat([b, a])`` with
    ``first_last=True`` (a top-down prior that draws the upper layer first but stores it last).

    Args:
        first: distribution of :math:`a`, event shape ``(dims[0],)``.
        then: maps :math:`a` ``(..., dims[0])`` to the distribution of :math:`b`, event shape ``(dims[1],)``.
        dims: the two event sizes.
        first_last: store :math:`a` after :math:`b`.
    """

    arg_constraints: dict[str, Any] = {}
    support = constraints.real_vector

    def __init__(self, first: Distribution, then: Callable[[Tensor], Distribution], dims: tuple[int, int],
                 first_last: bool = False) -> None:
        if not isinstance(first, Distribution):
            raise TypeError(f"first must be a Distribution, got {type(first).__name__}")
        self.first, self.then = first, then
        self.dims = (check_int("dims[0]", dims[0]), check_int("dims[1]", dims[1]))
        self.first_last = bool(first_last)
        if tuple(first.event_shape) != (self.dims[0],):
            raise ValueError(f"first has event shape {tuple(first.event_shape)}, expected ({self.dims[0]},)")
        super().__init__(first.batch_shape, torch.Size([sum(self.dims)]), validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return bool(self.first.has_rsample)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` from a value ``z`` ``(..., dims[0] + dims[1])``."""
        if self.first_last:
            b, a = z.split([self.dims[1], self.dims[0]], -1)
        else:
            a, b = z.split(list(self.dims), -1)
        return a, b

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([b, a] if self.first_last else [a, b], -1)

    def _then(self, a: Tensor) -> Distribution:
        d = self.then(a)
        if not isinstance(d, Distribution) or tuple(d.event_shape) != (self.dims[1],):
            raise ValueError(f"then(a) must return a Distribution of event shape ({self.dims[1]},)")
        return d

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        a = self.first.rsample(sample_shape)
        return self._join(a, self._then(a).rsample())

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            a = self.first.sample(sample_shape)
            return self._join(a, self._then(a).sample())

    def log_prob(self, value: Tensor) -> Tensor:
        a, b = self.split(value)
        return self.first.log_prob(a) + self._then(a).log_prob(b)

    def layer_log_probs(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """``(log first(a), log then(a)(b))``: the two terms of ``log_prob``, one per layer."""
        a, b = self.split(value)
        return self.first.log_prob(a), self._then(a).log_prob(b)


class _GaussianHead(MLPEncoder):
    """The book's encoder (:class:`vaelib.model.MLPEncoder`) from ``n_in`` to a diagonal Gaussian over ``n_out``."""

    def forward(self, h: Tensor) -> DiagonalNormal:  # type: ignore[override]
        mu, logvar = super().forward(h)
        return DiagonalNormal(mu, logvar, validate_args=False)


class TwoLevelEncoder(nn.Module):
    r"""``x`` → :math:`q_\phi(z_1|x)\,q_\phi(z_2|z_1)`, a :class:`Chain` over :math:`z = (z_1, z_2)`."""

    def __init__(self, x_dim: int, z1_dim: int, z2_dim: int, hidden: Sequence[int] = (400,),
                 hidden2: Sequence[int] = (128,)) -> None:
        super().__init__()
        self.dims = (check_int("z1_dim", z1_dim), check_int("z2_dim", z2_dim))
        self.q_z1 = _GaussianHead(check_int("x_dim", x_dim), hidden, z1_dim)
        self.q_z2 = _GaussianHead(z1_dim, hidden2, z2_dim)

    def forward(self, x: Tensor) -> Chain:
        return Chain(self.q_z1(x), self.q_z2, self.dims)


class TwoLevelPrior(nn.Module):
    r""":math:`p(z_2)\,p_\theta(z_1|z_2)` with :math:`p(z_2) = \mathcal{N}(0, I)`: a :class:`Chain` that draws
    :math:`z_2` first and stores it last, :math:`z = (z_1, z_2)`."""

    def __init__(self, z1_dim: int, z2_dim: int, hidden2: Sequence[int] = (128,)) -> None:
        super().__init__()
        self.dims = (check_int("z1_dim", z1_dim), check_int("z2_dim", z2_dim))
        self.p_z1 = _GaussianHead(z2_dim, hidden2, z1_dim)

    def forward(self, c: Any = None) -> Chain:
        top = StandardNormal(self.dims[1], dtype=self.p_z1.to_mu.weight.dtype, device=self.p_z1.to_mu.weight.device)
        return Chain(top, self.p_z1, (self.dims[1], self.dims[0]), first_last=True)


class LowerDecoder(nn.Module):
    r"""``z = (z_1, z_2)`` → the logits of :math:`p_\theta(x|z_1)`: the book's MLP decoder on :math:`z_1` only."""

    def __init__(self, z1_dim: int, z2_dim: int, x_dim: int, hidden: Sequence[int] = (400,)) -> None:
        super().__init__()
        self.z1_dim = check_int("z1_dim", z1_dim)
        self.z2_dim = check_int("z2_dim", z2_dim)
        sizes = (z1_dim, *hidden)
        self.body = _relu_mlp(sizes)
        self.to_x = nn.Linear(sizes[-1], check_int("x_dim", x_dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.to_x(self.body(z[..., : self.z1_dim]))


def two_level_vae(x_dim: int, z1_dim: int, z2_dim: int, hidden: Sequence[int] = (400,),
                  hidden2: Sequence[int] = (128,), seed: int | None = 0) -> VAE:
    r"""A Bernoulli :class:`vaelib.VAE` over :math:`z = (z_1, z_2)` with :class:`TwoLevelEncoder`,
    :class:`TwoLevelPrior` and :class:`LowerDecoder`; ``seed`` seeds the initial parameters (without touching
    PyTorch's global generator)."""
    with seeded(seed):
        encoder = TwoLevelEncoder(x_dim, z1_dim, z2_dim, hidden, hidden2)
        prior = TwoLevelPrior(z1_dim, z2_dim, hidden2)
        decoder = LowerDecoder(z1_dim, z2_dim, x_dim, hidden)
    return VAE(x_dim, z1_dim + z2_dim, encoder=encoder, decoder=decoder, prior=prior)


@torch.no_grad()
def layer_kl(model: VAE, x: Tensor, n_samples: int = 10, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor]:
    r"""The KL term of each image split by layer, ``(kl_1, kl_2)``, each ``(batch,)`` in nats (Monte Carlo,
    ``n_samples`` draws of :math:`z \sim q(z|x)` per image; the two add up to the ELBO's KL estimate).

    The model's posterior and prior must be :class:`Chain` s over :math:`(z_1, z_2)` (a :func:`two_level_vae`).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x = model.check_x(x)
    n_samples = check_count("n_samples", n_samples, per_item=x.shape[0] * model.z_dim)
    check_generator("generator", generator)
    check_data_support(model, x)
    q, p = run_posterior(model, x), run_prior(model, None, x.shape[0])
    if not (isinstance(q, Chain) and isinstance(p, Chain)):
        raise TypeError("layer_kl needs a two-level model: its posterior and prior must be vaelib.hierarchy.Chain")
    z = draw(q, (n_samples,), generator)
    q1, q2 = q.layer_log_probs(z)        # log q(z1|x), log q(z2|z1)
    p2, p1 = p.layer_log_probs(z)        # log p(z2), log p(z1|z2)
    return (q1 - p1).mean(0), (q2 - p2).mean(0)
