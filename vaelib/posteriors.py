r"""Richer amortised posteriors (chapter 8): a full-covariance Gaussian and an inverse autoregressive flow.

Both are encoders in the sense of :class:`vaelib.VAE`: a module that maps ``x`` ``(batch, x_dim)`` to a
``torch.distributions.Distribution`` over ``z`` with batch shape ``(batch,)`` and event shape ``(z_dim,)``.
Pass one as ``VAE(x_dim, z_dim, encoder=...)``; the ELBO, the importance-weighted bound, training and the
gap measurements of chapter 7 then use it unchanged.

* :class:`FullCovarianceEncoder`: :math:`z = \mu + L\epsilon` (chapter 5), :math:`L` lower triangular with
  a positive diagonal, all of it computed from ``x``: ``MultivariateNormal(mu, scale_tril=L)``. Its KL to
  :math:`\mathcal{N}(0, I)` has a closed form (registered in :mod:`vaelib.distributions`).
* :class:`IAFEncoder`: the diagonal Gaussian of the book's encoder, followed by ``steps`` inverse
  autoregressive steps (:class:`vaelib.flows.IAFTransform`) that see a context vector ``h`` computed from
  ``x`` (Kingma et al. 2016): a ``TransformedDistribution``. Its KL has no closed form, and :func:`vaelib.elbo`
  estimates it from the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution

from ._validate import check_int
from .flows import MADE, IAFTransform
from .model import _relu_mlp, seeded

LOWER_SCALE = 0.1


class FullCovarianceEncoder(nn.Module):
    r"""``x`` → :math:`\mathcal{N}(\mu(x), L(x)L(x)^\top)`, a ``MultivariateNormal`` with ``scale_tril`` :math:`L`.

    The MLP body (``x_dim → hidden…``, ReLU) is the book's; three heads give :math:`\mu` ``(batch, d)``,
    :math:`\log\sigma^2` ``(batch, d)`` (as the book's encoder), and the :math:`d(d-1)/2` entries of a
    strictly lower triangular :math:`M`; then :math:`L = (I + M)\operatorname{diag}\sigma`, so that
    :math:`\Sigma = (I + M)\operatorname{diag}\sigma^2 (I + M)^\top` and column :math:`j` of :math:`L` scales
    with :math:`\sigma_j` (a precise coordinate spreads little noise into the others). The last head starts
    at zero, so an untrained encoder is the diagonal one.

    Args:
        x_dim: data dimension.
        z_dim: latent dimension :math:`d`.
        hidden: hidden widths of the body.
        seed: seeds the initial weights (without touching PyTorch's global generator); ``None`` draws them
            from the global generator.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (400,), seed: int | None = 0) -> None:
        super().__init__()
        self.x_dim, self.z_dim = check_int("x_dim", x_dim), check_int("z_dim", z_dim)
        with seeded(seed):
            self._build(hidden)

    def _build(self, hidden: Sequence[int]) -> None:
        z_dim = self.z_dim
        sizes = (self.x_dim, *hidden)
        self.body = _relu_mlp(sizes)
        self.to_mu = nn.Linear(sizes[-1], z_dim)
        self.to_logvar = nn.Linear(sizes[-1], z_dim)
        self.to_lower = nn.Linear(sizes[-1], z_dim * (z_dim - 1) // 2)
        nn.init.zeros_(self.to_lower.weight)
        nn.init.zeros_(self.to_lower.bias)
        self.register_buffer("rows", torch.tril_indices(z_dim, z_dim, offset=-1)[0], persistent=False)
        self.register_buffer("cols", torch.tril_indices(z_dim, z_dim, offset=-1)[1], persistent=False)

    def forward(self, x: Tensor) -> MultivariateNormal:
        h = self.body(x)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        unit_lower = mu.new_zeros(*mu.shape, self.z_dim)              # M, strictly lower triangular
        unit_lower[..., self.rows, self.cols] = LOWER_SCALE * self.to_lower(h)
        std = (0.5 * logvar).exp()
        scale_tril = unit_lower * std.unsqueeze(-2) + torch.diag_embed(std)   # L = (I + M) diag(sigma)
        return MultivariateNormal(mu, scale_tril=scale_tril)


class IAFEncoder(nn.Module):
    r"""``x`` → a diagonal Gaussian pushed through ``steps`` IAF steps: :math:`z_0 = \mu + \sigma\odot\epsilon`,
    :math:`z_t = \sigma_t \odot z_{t-1} + (1 - \sigma_t) \odot m_t`, with :math:`(m_t, \log\sigma_t)` from a
    :class:`vaelib.flows.MADE` of :math:`z_{t-1}` and a context :math:`h(x)`.

    .. math:: \log q(z_T|x) = \log \mathcal{N}(z_0; \mu, \operatorname{diag}\sigma^2) - \sum_{t=1}^T \sum_i \log\sigma_{t,i}

    (chapter 5's change of variables, each step's Jacobian triangular). The steps alternate their order so
    that after two of them every coordinate depends on every other.

    Args:
        x_dim: data dimension.
        z_dim: latent dimension (``>= 2``).
        hidden: hidden widths of the body (the book's encoder).
        steps: IAF steps (``>= 1``).
        made_hidden: hidden widths of each step's MADE.
        context_dim: dimension of the context :math:`h(x)`.
        seed: seeds the initial weights (as :class:`FullCovarianceEncoder`).
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (400,), steps: int = 2,
                 made_hidden: Sequence[int] = (128,), context_dim: int = 64, seed: int | None = 0) -> None:
        super().__init__()
        self.x_dim, self.z_dim = check_int("x_dim", x_dim), check_int("z_dim", z_dim, minimum=2)
        check_int("steps", steps)
        with seeded(seed):
            self._build(hidden, steps, made_hidden, context_dim)

    def _build(self, hidden: Sequence[int], steps: int, made_hidden: Sequence[int], context_dim: int) -> None:
        z_dim = self.z_dim
        sizes = (self.x_dim, *hidden)
        self.body = _relu_mlp(sizes)
        self.to_mu = nn.Linear(sizes[-1], z_dim)
        self.to_logvar = nn.Linear(sizes[-1], z_dim)
        self.to_context = nn.Linear(sizes[-1], context_dim)
        self.mades = nn.ModuleList(
            MADE(z_dim, made_hidden, context_dim=context_dim, reverse=bool(t % 2)) for t in range(steps)
        )

    def forward(self, x: Tensor) -> TransformedDistribution:
        h = self.body(x)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        context = torch.relu(self.to_context(h))
        base = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
        return TransformedDistribution(base, [IAFTransform(made, context) for made in self.mades])
