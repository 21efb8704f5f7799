r"""One row of Part II's table: a trained model measured the way chapter 7 measures the book's model.

Chapters 8 to 11 train several models on the same data with the same recipe, and compare them with one
protocol, :func:`report`:

* the test ELBO (``n_samples`` draws per image) and a test NLL estimate, :math:`-\mathcal{L}_K` over the test
  images (:func:`vaelib.log_likelihood`), each with its standard error over images;
* the number of active units on the test images (:func:`vaelib.active_units`);
* chapter 7's gap decomposition (:func:`vaelib.inference_gap.gap_decomposition`) on a few training and test
  digits;
* the number of parameters and the training time.

The rows of different models are computed with the same seeds, so a paired difference (the same images, the
same draws of the evaluation) has a smaller standard error than the two rows' errors suggest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validate import check_int, check_same_shape, check_tensor
from .elbo import active_units, elbo
from .inference_gap import GapReport, gap_decomposition, _mean_se
from .iwae import log_likelihood
from .model import VAE, check_data_support


@dataclass(frozen=True)
class Report:
    """A model's row (see :func:`report`). Per-image values are kept for paired comparisons.

    Attributes:
        elbo: ``(n_test,)`` the ELBO of each test image.
        log_p: ``(n_nll,)`` :math:`\\mathcal{L}_K` of the first ``n_nll`` test images.
        k: the :math:`K` of ``log_p``.
        active: the number of active units on the test images.
        gaps: ``{"train": GapReport, "test": GapReport}``.
        parameters: trainable parameters.
        seconds: training time (as given).
    """

    elbo: Tensor
    log_p: Tensor
    k: int
    active: int
    gaps: dict[str, GapReport]
    parameters: int
    seconds: float

    @property
    def test_elbo(self) -> tuple[float, float]:
        """Mean test ELBO (nats) and its SE."""
        return _mean_se(self.elbo)

    @property
    def nll(self) -> tuple[float, float]:
        r"""Test NLL estimate :math:`-\overline{\mathcal{L}_K}` (nats, an upper bound in expectation) and its SE."""
        m, s = _mean_se(self.log_p)
        return -m, s


def report(
    model: VAE, x_test: Tensor, gap_train: Tensor | None = None, gap_test: Tensor | None = None, *, seconds: float = math.nan,
    k: int = 200, n_nll: int = 500, n_samples: int = 10, gap_steps: int = 200, gap_k: int = 1000, seed: int = 0,
    family: str = "diagonal",
) -> Report:
    r"""Measure ``model``: the test ELBO on ``x_test``, :math:`\mathcal{L}_K` on its first ``n_nll`` images,
    the active units on ``x_test``, and the gap decomposition on ``gap_train`` and ``gap_test``.

    Args:
        model: a trained :class:`vaelib.VAE`.
        x_test: test images ``(n_test, x_dim)`` in the likelihood's support.
        gap_train, gap_test: the few images of each split for :func:`vaelib.inference_gap.gap_decomposition`
            (``None``: no decomposition, ``gaps`` empty).
        seconds: the training time to record.
        k: importance samples of the NLL estimate.
        n_nll: test images of the NLL estimate (``<= n_test``).
        n_samples: draws per image of the test ELBO.
        gap_steps: ``steps`` of the gap decomposition.
        gap_k: ``k`` of the gap decomposition (its estimate of :math:`\log p_\theta(x)`).
        seed: seeds every draw (use the same for every model).
        family: the Gaussian family of the amortisation gap (``"diagonal"``, or ``"full"`` for a
            full-covariance encoder).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    x_test = model.check_x(x_test, "x_test")
    check_data_support(model, x_test, name="x_test")
    n_nll = check_int("n_nll", n_nll, maximum=x_test.shape[0])
    seed = check_int("seed", seed, minimum=0)
    with torch.no_grad():
        elbos = elbo(model, x_test, n_samples=n_samples, generator=torch.Generator().manual_seed(seed)).elbo
    log_p = log_likelihood(model, x_test[:n_nll], k=k, generator=torch.Generator().manual_seed(seed + 1))
    active = active_units(model, x_test).count
    gaps = {name: gap_decomposition(model, xs, family=family, steps=gap_steps, k=gap_k, n_samples=500,
                                        seed=seed + 2)
            for name, xs in (("train", gap_train), ("test", gap_test)) if xs is not None}
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Report(elbos.detach(), log_p.detach(), k, active, gaps, parameters, float(seconds))


def paired_difference(a: Tensor, b: Tensor) -> tuple[float, float]:
    r"""Mean of ``b - a`` over paired entries (the same images, the same draws) and its standard error,
    :math:`\operatorname{sd}(b_n - a_n)/\sqrt{n}`: the spread of the per-item differences, smaller than the
    two means' errors combined when the items vary together (as the ELBOs of two models on the same images do).

    Args:
        a, b: ``(n,)`` per-item values of two models, ``n >= 2``, in the same order (e.g. two :class:`Report`
            s' ``log_p``).
    """
    a = check_tensor("a", a, ndim=1)
    b = check_tensor("b", b, ndim=1)
    check_same_shape("a", a, "b", b)
    if a.shape[0] < 2:
        raise ValueError(f"a and b must hold at least 2 paired values, got {a.shape[0]}")
    return _mean_se(b - a)
