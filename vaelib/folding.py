r"""The folded decoder: :func:`vaelib.log_likelihood`'s exact fast path for the built-in MLP.

Estimating :math:`\log p_\theta(x)` with :math:`K = 1000` importance samples decodes a thousand codes per
image. For the book's own MLP with one hidden layer (:func:`vaelib.model.is_builtin_mlp`, one hidden layer:
:meth:`FoldedDecoder.applies`), most hidden units keep one sign for nearly all the samples of one image,
and their part of the decoder folds into one small matrix (:class:`FoldedDecoder`). The result is the
general path's, up to floating-point rounding (``tests/test_iwae.py`` checks it against
``model.likelihood``); :func:`vaelib.log_likelihood` chooses it by one check and nothing else uses it.
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributions import log_prob
from ._validate import check_binary, check_generator, check_int, check_tensor
from .model import VAE, check_data_support, is_builtin_mlp, run_likelihood, run_posterior

#: :class:`FoldedDecoder` keeps a hidden unit in its dense product when the share of samples expected on the other
#: side of zero from its centre exceeds this; the other units fold, their exceptions multiply as a sparse
#: matrix. A dense column costs ``k`` multiply-adds per pixel, an exception one, but several times more per
#: multiply-add, and the exceptions must be searched for. On the book's MNIST model the time is flat
#: between 0.1 and 0.2 (within this machine's noise), and 5-10% longer at 0.05 or 0.3.
DENSE_FLIP_FRACTION = 0.15

#: :class:`FoldedDecoder` takes a hidden unit as settled when the share of samples expected on the other side of
#: zero from its centre is below this (fewer than one sample in a million): its exceptions are looked for
#: with one maximum over all settled units, and only searched for one by one if there are any.
SETTLED_SHARE = 1e-6

#: Examples :func:`vaelib.log_likelihood` encodes and plans together when it folds the decoder.
_FOLD_BLOCK = 256

_LOG2_E = 1 / math.log(2)  # exp(u) = 2**(u * _LOG2_E)

#: Dtypes for which :class:`FoldedDecoder` multiplies the exceptions as a sparse matrix (those of MKL's sparse
#: product on the CPU); for others it multiplies them as a dense one.
_SPARSE_DTYPES = (torch.float32, torch.float64)

#: Columns whose factors ``1 + 2**t`` ``_sum_log1p_exp2_`` multiplies before taking one logarithm.
_COLUMNS_PER_LOG = 16


#: Examples :func:`folded_log_likelihood` encodes and plans together.
_FOLD_BLOCK = 256

_LOG2_E = 1 / math.log(2)  # exp(u) = 2**(u * _LOG2_E)

class Plan(NamedTuple):
    """How :class:`FoldedDecoder` handles each hidden unit for one example: the units in the order
    dense | off | on | on and settled | off and settled, and how many there are of the first four."""

    order: Tensor
    n_dense: int
    n_off: int
    n_on: int
    n_on_settled: int


class FoldedDecoder:
    r"""The decoder, for many samples of one example's :math:`z`, with most hidden units folded away.

    For a decoder with one hidden layer, :math:`h = \operatorname{relu}(a)` with :math:`a = Wz + b`, and
    output :math:`o = Vh + c`. The :math:`k` samples of :math:`z` come from one
    :math:`q_\phi(z|x) = \mathcal{N}(\mu, \operatorname{diag}\sigma^2)`, so each pre-activation :math:`a_j`
    is Gaussian across them, with centre :math:`m_j = w_j^\top\mu + b_j` and spread
    :math:`s_j = \lVert w_j \odot \sigma\rVert`: most units keep the sign of their centre for nearly every
    sample. Each unit is handled according to its expected share of samples on the other side of zero,
    :math:`\Phi(-|m_j|/s_j)` (its :class:`Plan`):

    * **dense** units (share above :data:`DENSE_FLIP_FRACTION`): :math:`\operatorname{relu}(a_j)` is a
      column of one dense matrix product, as in the plain decoder;
    * **on** units (centre positive): :math:`\operatorname{relu}(a_j) = a_j + \operatorname{relu}(-a_j)`.
      The linear part folds, with all the other on units, into one ``(1 + z_dim, x_dim)`` matrix
      :math:`F = [V_\text{on} b_\text{on} + c \mid V_\text{on} W_\text{on}]^\top` applied to
      :math:`[1 \mid z]`; :math:`\operatorname{relu}(-a_j)` is zero except for the samples where the unit
      is off;
    * **off** units (centre not positive): :math:`\operatorname{relu}(a_j)` is zero except for the samples
      where the unit is on.

    So, exactly, :math:`o = [1 \mid z]\,F + \operatorname{relu}(a_\text{dense})\,V_\text{dense}^\top +
    E\,V_\text{rest}^\top`, where the exceptions :math:`E` (``k`` rows, one column per on or off unit) are
    mostly zeros and multiply as a sparse (CSR) matrix. Units whose share is below :data:`SETTLED_SHARE`
    are checked for exceptions with one sum and searched only if it is positive. For the book's MNIST
    model at :math:`K = 1000` this turns the ``k × 400`` dense product into ``k × 111`` (on average
    90 dense units) and about 6,200 sparse entries. The split only decides the cost: any unit in any group
    gives the exact result, up to floating-point rounding (the sums run in another order). Used where it
    saves work: one example at a time (:func:`vaelib.log_likelihood` at large ``k``), and only for the built-in
    MLP with exactly one hidden layer (:meth:`applies`); any other decoder (another activation, more
    layers, a subclass, your own module) is evaluated through ``model.decode``.
    """

    def __init__(self, model: VAE) -> None:
        if not isinstance(model, VAE):
            raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
        if not self.applies(model):
            raise ValueError("model must be the built-in MLP with one hidden layer and its three default "
                             "distributions (FoldedDecoder.applies): any other decoder is evaluated by model.likelihood")
        self.model = model
        (hidden,) = [layer for layer in model.decoder.body if isinstance(layer, torch.nn.Linear)]
        # Detached: folding serves estimates without gradients (log_likelihood).
        self.weight, self.bias = hidden.weight.detach(), hidden.bias.detach()  # W (hidden, z_dim), b
        self.b_w = torch.cat([self.bias.unsqueeze(1), self.weight], 1)  # (hidden, 1 + z_dim): [b | W]
        self.out_t = model.decoder.to_x.weight.detach().t().contiguous()  # (hidden, x_dim): V transposed
        self.out_bias = model.decoder.to_x.bias.detach()
        # |m|/s below which a unit is dense, and above which it is settled (the shares, as Gaussian quantiles).
        self.dense_below = statistics.NormalDist().inv_cdf(1 - DENSE_FLIP_FRACTION)
        self.settled_above = statistics.NormalDist().inv_cdf(1 - SETTLED_SHARE)

    @staticmethod
    def applies(model: VAE) -> bool:
        """Whether this computes exactly what ``model.decode`` does: the built-in MLP
        (:func:`vaelib.model.is_builtin_mlp`) with one hidden layer."""
        return is_builtin_mlp(model) and len(model.hidden) == 1

    def plans(self, mu: Tensor, logvar: Tensor) -> list[Plan]:
        """Each example's :class:`Plan`, from its posterior's ``mu`` and ``logvar`` (each ``(n, z_dim)``)."""
        for name, t in (("mu", mu), ("logvar", logvar)):
            check_tensor(name, t, ndim=2, last_dim=self.model.z_dim)
        if mu.shape != logvar.shape:
            raise ValueError(f"mu must have logvar's shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
        return self._plans(mu, logvar)

    def _plans(self, mu: Tensor, logvar: Tensor) -> list[Plan]:
        center = torch.addmm(self.bias, mu, self.weight.t())  # (n, hidden): m_j
        spread = (torch.exp(logvar) @ self.weight.square().t()).sqrt_()  # s_j = |w_j * sigma|
        on = (center > 0).long()
        ratio = center.abs_().div_(spread)
        group = torch.where(ratio > self.settled_above, 4 - on, 1 + on).masked_fill_(ratio < self.dense_below, 0)
        counts = torch.stack([(group == g).sum(1) for g in range(4)], 1).tolist()
        orders = torch.argsort(group, dim=1, stable=True)
        return [Plan(order, *count) for order, count in zip(orders, counts)]

    def log_px_z(self, x: Tensor, z: Tensor, plan: Plan) -> Tensor:
        r""":math:`\log p_\theta(x|z)` ``(k,)`` for one example ``x`` ``(1, x_dim)``, its samples ``z``
        ``(k, z_dim)`` and its :class:`Plan`.

        For a Bernoulli decoder the output's columns are multiplied by :math:`(1 - 2x)\log_2 e` inside the
        product. With :math:`u = (1 - 2x) \odot o`, :math:`\log p(x|z) = -\sum_j \operatorname{softplus}(u_j)`:
        a sum of terms of one sign, more accurate in float32 than :math:`x \cdot o - \sum_j
        \operatorname{softplus}(o_j)` (two large sums that nearly cancel), taken in base 2 by
        ``_sum_log1p_exp2_``. Rows where that overflows (a term above about 5.5 nats in float32: a
        confidently wrong pixel) are recomputed with the plain decoder.
        """
        check_tensor("x", x, ndim=2, last_dim=self.model.x_dim)
        if x.shape[0] != 1:
            raise ValueError(f"x must be one example (1, {self.model.x_dim}), got {tuple(x.shape)}")
        if self.model.likelihood_name == "bernoulli":
            check_binary("x", x)
        self._check_z_plan(z, plan)
        return self._log_px_z(x, z, plan)

    def _log_px_z(self, x: Tensor, z: Tensor, plan: Plan) -> Tensor:
        if self.model.likelihood_name != "bernoulli":
            return log_prob(self.model.tensor_likelihood(self._decode(z, plan)), x)
        log_px_z = _sum_log1p_exp2_(self._decode(z, plan, (1 - 2 * x[0]) * _LOG2_E)).neg_()
        if not math.isfinite(log_px_z.detach().sum()):  # -inf in a row, or nan
            overflowed = (~torch.isfinite(log_px_z)).nonzero().squeeze(1)
            plain = run_likelihood(self.model, z[overflowed])
            log_px_z[overflowed] = log_prob(plain, x)
        return log_px_z

    def decode(self, z: Tensor, plan: Plan, scale: Tensor | None = None) -> Tensor:
        """The decoder's output ``(k, x_dim)`` for ``z`` ``(k, z_dim)``, times ``scale`` ``(x_dim,)`` if given."""
        self._check_z_plan(z, plan)
        if scale is not None:
            check_tensor("scale", scale, ndim=1, last_dim=self.model.x_dim)
        return self._decode(z, plan, scale)

    def _check_z_plan(self, z: object, plan: object) -> None:
        check_tensor("z", z, ndim=2, last_dim=self.model.z_dim)
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a plan of FoldedDecoder.plans, got {type(plan).__name__}")

    def _decode(self, z: Tensor, plan: Plan, scale: Tensor | None = None) -> Tensor:
        n_dense, n_off, n_on, n_on_settled = plan.n_dense, plan.n_off, plan.n_on, plan.n_on_settled
        top = z.shape[1] + 1  # rows of the folded matrix, the bias row first
        ons = slice(n_dense + n_off, n_dense + n_off + n_on + n_on_settled)
        w = self.b_w.index_select(0, plan.order)  # (hidden, 1 + z_dim): [b | W], rows in the plan's order
        # weights: the folded matrix [V_on b_on + c | V_on W_on]^T on top of V's rows in the same order.
        weights = z.new_empty(top + w.shape[0], self.out_t.shape[1])
        v = torch.index_select(self.out_t, 0, plan.order, out=weights[top:])
        torch.mm(w[ons].t(), v[ons], out=weights[:top])
        weights[0] += self.out_bias
        if scale is not None:
            weights.mul_(scale)
        w[ons].neg_()  # relu(-a) for the on units: nonzero where they are off
        w_t = w.t().contiguous()  # (1 + z_dim, hidden): contiguous for the product below
        pre = torch.addmm(w_t[0], z, w_t[1:]).relu_()  # (k, hidden): dense activations, then exceptions
        out = torch.addmm(weights[0], torch.cat([z, pre[:, :n_dense]], 1), weights[1 : top + n_dense])
        # The settled units' exceptions are looked for only if there are any: a sum of the (non-negative)
        # candidates is one pass, cheaper than a search.
        end = n_dense + n_off + n_on
        if end < pre.shape[1] and bool(pre[:, end:].sum() > 0):
            end = pre.shape[1]
        exceptions, v_rest = pre[:, n_dense:end], weights[top + n_dense : top + end]
        if exceptions.device.type != "cpu" or exceptions.dtype not in _SPARSE_DTYPES:
            return out.addmm_(exceptions, v_rest)  # measured faster only on the CPU; MKL's dtypes only
        sparse = _sparse_rows(exceptions)
        return out if sparse is None else out.addmm_(sparse, v_rest)


def _sparse_rows(m: Tensor) -> Tensor | None:
    """``m`` ``(rows, cols)`` as a sparse CSR matrix (``None`` if it is all zeros)."""
    rows, cols = m.nonzero().unbind(1)  # row by row, as CSR stores them
    if rows.numel() == 0:
        return None
    row_starts = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=m.shape[0]), 0, out=row_starts[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(row_starts, cols, m[rows, cols], m.shape, check_invariants=False)


def _sum_log1p_exp2_(t: Tensor) -> Tensor:
    r""":math:`\sum_j \log(1 + 2^{t_j})` over the last dimension of ``t`` ``(k, n)``: ``(k,)``. Overwrites ``t``.

    With :math:`t = u \log_2 e` this is :math:`\sum_j \operatorname{softplus}(u_j)`; :class:`FoldedDecoder` builds
    the factor :math:`\log_2 e` into its weights, because ``exp2`` costs a third of ``exp``.
    :math:`\sum_j \log(1 + 2^{t_j}) = \log \prod_j (1 + 2^{t_j})`: one logarithm per group of 16 columns
    (``n / 16`` apart) instead of one per column. Each group's product is kept as its excess over one,
    :math:`c = \prod (1 + a_i) - 1`, combined in four halvings by :math:`c_1 + c_2 (1 + c_1)` and finished
    with ``log1p``, so terms far below float32's resolution of one (:math:`2^{t} < 10^{-7}`, most pixels
    of a digit's background) still count in full, as in ``softplus(u).sum(-1)``, which this beats by about
    two to one. A product overflows (giving ``inf``) only if a term exceeds about 5.5 nats in float32.
    """
    n = t.shape[-1] - t.shape[-1] % _COLUMNS_PER_LOG  # columns that form whole groups
    total = F.softplus(t[:, n:] * math.log(2)).sum(-1) if n < t.shape[-1] else None
    excess = t[:, :n].exp2_()
    width = n
    while width > n // _COLUMNS_PER_LOG:
        width //= 2
        first, second = excess[:, :width], excess[:, width : 2 * width]
        first.add_(second.addcmul_(second, first))  # c1 + c2 (1 + c1)
    products = excess[:, :width].log1p_().sum(-1)
    return products if total is None else total.add_(products)


def _folded_log_weights(
    model: VAE, x: Tensor, mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None,
    log_px_z: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    r"""The log importance weights of :func:`vaelib.iwae.log_weights` for the built-in MLP and one example
    (``batch == 1``), with the folded decoder's :math:`\log p_\theta(x|z)` (:class:`FoldedDecoder`): the same
    draws from the same generator state (those of :meth:`vaelib.distributions.DiagonalNormal.rsample`). With
    the default :math:`p(z) = \mathcal{N}(0, I)` and :math:`q = \mathcal{N}(\mu, \operatorname{diag}\sigma^2)`,
    :math:`\log p(z) - \log q(z|x) = -\tfrac12\sum_j (z_j^2 - \epsilon_j^2 - \log\sigma_j^2)`: the
    :math:`\log 2\pi` terms cancel and :math:`z - \mu = \sigma\epsilon` makes :math:`q`'s quadratic term
    :math:`\epsilon^2` exactly."""
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_pz_minus_log_qz = -0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(-1)
    return log_px_z(x, z.view(k, -1)).unsqueeze(1) + log_pz_minus_log_qz


def folded_log_likelihood(
    model: VAE, x: Tensor, k: int, k_chunk: int, generator: torch.Generator | None
) -> Tensor:
    """:func:`vaelib.log_likelihood` for the built-in MLP (:meth:`FoldedDecoder.applies`): examples are
    encoded and planned in blocks, then each is decoded folded, ``k_chunk`` samples at a time."""
    folder = FoldedDecoder(model)
    x = model.check_x(x)
    k, k_chunk = check_int("k", k), check_int("k_chunk", k_chunk)
    check_generator("generator", generator)
    check_data_support(model, x)
    out = []
    for first in range(0, x.shape[0], _FOLD_BLOCK):
        xs = x[first : first + _FOLD_BLOCK]
        q = run_posterior(model, xs)
        mus, logvars = q.loc, q.logvar
        plans = folder._plans(mus, logvars)
        for i in range(xs.shape[0]):
            log_px_z = functools.partial(folder._log_px_z, plan=plans[i])
            total = None
            for s in range(0, k, k_chunk):
                log_w = _folded_log_weights(model, xs[i : i + 1], mus[i : i + 1], logvars[i : i + 1],
                                            min(k_chunk, k - s), generator, log_px_z)
                chunk = torch.logsumexp(log_w, 0)
                total = chunk if total is None else torch.logaddexp(total, chunk)
            out.append(total - math.log(k))
    return torch.cat(out)
