r"""Inverse autoregressive flows (chapter 8): an invertible map whose Jacobian is triangular.

Chapter 5's change of variables says that if :math:`z' = f(z)` with :math:`f` invertible,
:math:`\log q(z') = \log q(z) - \log\lvert\det \partial f/\partial z\rvert`. A flow is useful when that
determinant is cheap. An *autoregressive* map computes coordinate :math:`i` of its output from coordinates
:math:`< i` of its input only,

.. math:: z'_i = \sigma_i(z_{<i})\, z_i + \bigl(1 - \sigma_i(z_{<i})\bigr)\, m_i(z_{<i}),
          \qquad \sigma_i \in (0, 1),

so :math:`\partial z'_i / \partial z_j = 0` for :math:`j > i`: the Jacobian is lower triangular, with
diagonal :math:`\sigma_i`, and :math:`\log\lvert\det\rvert = \sum_i \log\sigma_i`. This is one step of the
inverse autoregressive flow (IAF) of Kingma et al. (2016), in their numerically stable form (a convex
combination of :math:`z_i` and :math:`m_i`). The vectors :math:`m` and :math:`\log\sigma` come from one
pass of a :class:`MADE`, a network whose weights are masked so that output :math:`i` sees inputs
:math:`< i` only (Germain et al. 2015); the forward map (sampling) is one pass, the inverse (scoring a
point the flow did not produce) takes one pass per coordinate.

:class:`IAFTransform` is that step as a ``torch.distributions.Transform``: a posterior built with it is a
``TransformedDistribution`` of a Gaussian, which every function of :mod:`vaelib` accepts
(:class:`vaelib.posteriors.IAFEncoder` builds it from an image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from ._validate import check_int


class MaskedLinear(nn.Linear):
    r"""A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` ``(out_features, in_features)``:
    output :math:`o` depends on input :math:`i` only where ``mask[o, i] = 1``."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"mask must have shape {(out_features, in_features)}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""A masked autoencoder (Germain et al. 2015): ``z`` ``(..., dim)`` → ``(m, s)``, each ``(..., dim)``,
    where output :math:`i` depends only on the inputs that come before :math:`i` in the order.

    Each unit gets a *degree*: input :math:`i` has degree :math:`\pi(i) \in \{1..d\}` (its position in the
    order), hidden units degrees in :math:`\{1..d-1\}` (cycled), and a connection from degree :math:`a` to
    a hidden unit of degree :math:`b` exists when :math:`b \ge a`, to an output of degree :math:`b` when
    :math:`b > a`. Output :math:`i` therefore sees inputs of degree :math:`< \pi(i)` only; the first in the
    order sees none (its :math:`m, s` are functions of the context only). A ``context`` ``h``
    (from the encoder) enters every hidden unit and, through a direct linear path, every output, unmasked:
    it may depend on ``x`` freely.

    Args:
        dim: the dimension :math:`d` of ``z`` (``>= 2``).
        hidden: widths of the hidden layers (each ``>= dim - 1``, so that every degree is present).
        context_dim: dimension of the context (0: none).
        reverse: order the coordinates last-to-first (stack steps with alternating orders, so that each
            coordinate depends on every other after two steps).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (128,), context_dim: int = 0, reverse: bool = False) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=2)
        hidden = tuple(check_int("hidden width", h, minimum=dim - 1) for h in hidden)
        if not hidden:
            raise ValueError("hidden must have at least one layer")
        self.context_dim = check_int("context_dim", context_dim, minimum=0)
        self.reverse = bool(reverse)
        order = torch.arange(1, dim + 1)
        self.register_buffer("degrees", order.flip(0) if reverse else order)
        degrees = [self.degrees]
        for width in hidden:
            degrees.append(torch.arange(width) % (dim - 1) + 1)
        layers = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layers.append(MaskedLinear(len(d_in), len(d_out), (d_out[:, None] >= d_in[None, :])))
        self.layers = nn.ModuleList(layers)
        out_mask = (self.degrees[:, None] > degrees[-1][None, :]).repeat(2, 1)
        self.to_ms = MaskedLinear(len(degrees[-1]), 2 * dim, out_mask)
        self.from_context = nn.Linear(context_dim, hidden[0]) if context_dim else None
        # The first output in the order sees no hidden unit; a direct path gives it the context (starts at 0).
        self.context_to_ms = nn.Linear(context_dim, 2 * dim) if context_dim else None
        if self.context_to_ms is not None:
            nn.init.zeros_(self.context_to_ms.weight)
            nn.init.zeros_(self.context_to_ms.bias)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.layers[0](z)
        if self.from_context is not None:
            if context is None:
                raise ValueError(f"this MADE takes a context of dimension {self.context_dim}; got none")
            h = h + self.from_context(context)
        h = F.relu(h)
        for layer in self.layers[1:]:
            h = F.relu(layer(h))
        out = self.to_ms(h)
        if self.context_to_ms is not None:  # unmasked: the context does not depend on z
            out = out + self.context_to_ms(context)
        m, s = out.chunk(2, dim=-1)
        return m, s


class IAFTransform(Transform):
    r"""One IAF step, :math:`z' = \sigma \odot z + (1 - \sigma) \odot m` with
    :math:`(m, s) = \text{MADE}(z, h)`, :math:`\sigma = \operatorname{sigmoid}(s + \text{shift})`.

    :math:`\log\lvert\det \partial z'/\partial z\rvert = \sum_i \log\sigma_i` (the Jacobian is triangular in
    the MADE's order). ``shift`` (1.5 by default, as Kingma et al.) starts :math:`\sigma` near 0.8, so that
    an untrained step is close to the identity. The inverse solves for one more coordinate per pass, in
    the MADE's order (``dim`` passes); a point the flow has just produced is scored without it (the
    transform caches its last input and output).

    Args:
        made: the :class:`MADE` computing :math:`(m, s)`.
        context: ``h`` ``(batch, context_dim)`` or ``None``; it broadcasts against the leading dimensions of ``z``.
        shift: added to :math:`s` before the sigmoid.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, made: MADE, context: Tensor | None = None, shift: float = 1.5, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        if not isinstance(made, MADE):
            raise TypeError(f"made must be a vaelib.flows.MADE, got {type(made).__name__}")
        self.made = made
        self.context = context
        self.shift = float(shift)
        self._last: tuple[Tensor, Tensor] | None = None  # (z, log sigma) of the last forward call

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def _params(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.made(z, self.context)
        return m, F.logsigmoid(s + self.shift)

    def _call(self, z: Tensor) -> Tensor:
        m, log_sigma = self._params(z)
        self._last = (z, log_sigma)
        sigma = log_sigma.exp()
        return sigma * z + (1 - sigma) * m

    def _inverse(self, y: Tensor) -> Tensor:
        # Coordinate i of z needs z_{<i} only: after pass k the first k coordinates in the order are exact.
        z = torch.zeros_like(y)
        for _ in range(self.made.dim):
            m, log_sigma = self._params(z)
            sigma = log_sigma.exp()
            z = (y - (1 - sigma) * m) / sigma
        return z

    def log_abs_det_jacobian(self, z: Tensor, y: Tensor) -> Tensor:
        if self._last is not None and self._last[0] is z:
            log_sigma = self._last[1]
        else:
            log_sigma = self._params(z)[1]
        return log_sigma.sum(-1)
