r"""Training a VAE by stochastic gradient ascent on the ELBO: the loop of chapter 5.

Every step of :func:`fit` is the minibatch algorithm of Kingma & Welling (2014):

.. code-block:: python

    xb = x_epoch[perm[start : start + batch_size]]         # a minibatch, freshly binarised each epoch
    terms = vaelib.elbo(model, xb, n_samples, beta_t, g)   # z = mu + sigma * eps, per example
    loss = -terms.objective.mean()                         # the negative (beta-weighted) ELBO
    optimizer.zero_grad(); loss.backward(); optimizer.step()   # torch.optim.Adam

for any model: the built-in MLP, a subclass, or a VAE built from your own modules. One exact economy:
for the built-in MLP itself (:func:`vaelib.model.is_builtin_mlp`), the gradient comes from
:func:`vaelib.elbo_backward`, the same chain rule written out by hand (the same numbers, tested against
autograd); the benchmark shows what it saves. The loop slices a pre-loaded tensor (no per-sample
``DataLoader``) and is seeded end to end: the same ``seed`` gives the same parameters.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from tqdm import tqdm

from ._validate import check_count, check_float, check_int, check_tensor, in_unit_interval
from .backprop import _elbo_backward
from .data import Digits, _Binarizer
from .elbo import ELBOTerms, _elbo
from .model import VAE, _check_device, is_builtin_mlp

Schedule = Literal["constant", "cosine"]

#: Adam's default ``(beta1, beta2)``, which :func:`fit` uses.
ADAM_BETAS: tuple[float, float] = (0.9, 0.999)

#: Every this many updates, :func:`fit` copies the parameters at which the loss was just found finite, to
#: go back to if training diverges. A copy of the book's model (650,000 numbers, out of cache after the
#: backward pass) costs about 5% of a training step on a CPU; every 16 steps it costs 0.3%.
SNAPSHOT_EVERY = 16


class TrainingDivergedError(FloatingPointError):
    """Raised by :func:`fit` when the loss or a gradient stops being finite.

    The model keeps parameters at which the loss was found finite (see :func:`fit`).

    Attributes:
        epoch: 1-based epoch of the failing batch.
        batch: 1-based index of the failing batch within that epoch.
        history: the :class:`History` up to the last complete epoch.
        train_elbo: the ELBO per example of the training data (one draw of ``z``) at the parameters the
            model kept; the message says whether it is finite.
    """

    def __init__(self, message: str, epoch: int, batch: int, history: "History", train_elbo: float) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.history, self.train_elbo = epoch, batch, history, train_elbo


@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch (all ELBOs in nats per example).

    Attributes:
        train_elbo: mean ELBO (``beta``-free) over the epoch's training batches.
        train_kl: mean KL term over the epoch's training batches.
        valid_elbo: ELBO on the validation data after the epoch (empty without ``valid``).
        lr: learning rate at the end of the epoch.
        beta: KL weight at the end of the epoch.
        seconds: wall-clock time of each epoch (training and validation).
        best_epoch: 1-based epoch with the best validation ELBO (``None`` without ``valid``).
        stopped_early: whether early stopping ended training before ``epochs``.
        from_cache: whether :func:`vaelib.fit_cached` read this training from its cache instead of running it.
    """

    train_elbo: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    valid_elbo: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    from_cache: bool = False

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.train_elbo)


def fit(
    model: VAE,
    train: Tensor | Digits,
    epochs: int,
    *,
    valid: Tensor | Digits | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_schedule: Schedule = "constant",
    beta: float = 1.0,
    warmup_epochs: float = 0.0,
    n_samples: int = 1,
    binarize: bool | None = None,
    patience: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    device: torch.device | str | None = None,
) -> History:
    r"""Train ``model`` by maximising the (β-weighted) ELBO with Adam; return the :class:`History`.

    Each step takes a minibatch :math:`x_{1..B}`, draws :math:`z = \mu + \sigma\odot\epsilon`, and makes
    one ``torch.optim.Adam`` step (default betas and eps, ``lr``) on the gradient of the loss
    :math:`-\frac1B\sum_i \bigl[\log p_\theta(x_i|z_i) - \beta_t\, D_{\mathrm{KL}}(q_\phi(z|x_i)\|p(z))\bigr]`
    (``n_samples > 1`` averages the reconstruction term over that many draws of :math:`z`), as
    ``loss.backward()`` computes it through the model's :meth:`~vaelib.VAE.encode` and
    :meth:`~vaelib.VAE.decode`. Exactly the parameters with ``requires_grad=True`` are trained; the others
    stay bit-identical. The built-in MLP gets the same gradient from :func:`vaelib.elbo_backward`.

    Args:
        model: the :class:`vaelib.VAE` to train (in place): built-in, a subclass, or your own modules.
        train: training data ``(n, x_dim)`` (or :class:`vaelib.data.Digits`).
        epochs: passes over ``train`` (``>= 1``).
        valid: held-out data, scored with the ELBO after every epoch (binary for a Bernoulli model).
        batch_size: examples per step.
        lr: Adam's learning rate.
        lr_schedule: ``"constant"``, or ``"cosine"`` (anneal from ``lr`` to 0 over all steps).
        beta: final KL weight :math:`\beta` (1 gives the ELBO).
        warmup_epochs: epochs over which :math:`\beta_t` rises linearly from 0 to ``beta``
            (KL warm-up; 0 disables it).
        n_samples: reparameterised samples of ``z`` per example and step.
        binarize: draw a fresh binarisation of ``train`` every epoch. ``None`` (default) does so for a
            Bernoulli model whose data are not already binary.
        patience: stop when the validation ELBO has not improved for this many epochs, and restore the
            best parameters (needs ``valid``).
        seed: seeds data order, binarisation and sampling noise (the built-in model's initialisation is
            seeded by ``VAE(..., seed=...)``).
        progress: show a progress bar; ``None`` shows one unless ``VAELIB_PROGRESS=0`` is set.
        device: move the model and data there first (default: the model's device).

    Raises:
        TrainingDivergedError: the loss or a gradient became NaN/inf; says which epoch and batch. The model
            keeps parameters at which the loss was found finite: a failing update is never applied, and
            after a non-finite loss the model goes back to the parameters saved at most
            :data:`SNAPSHOT_EVERY` updates earlier (the error says from which epoch and batch).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    epochs, batch_size = check_int("epochs", epochs), check_int("batch_size", batch_size)
    n_samples = check_count("n_samples", n_samples, per_item=batch_size * (model.x_dim + model.z_dim))
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    beta = check_float("beta", beta, minimum=0.0)
    warmup_epochs = check_float("warmup_epochs", warmup_epochs, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if patience is not None:
        patience = check_int("patience", patience)
        if valid is None:
            raise ValueError("patience (early stopping) needs validation data: pass valid=")
    device = model.device if device is None else _check_device(device)
    x, binarizer = _training_data(model, train, binarize)
    x_valid = None if valid is None else model.check_x(_as_tensor(valid), "valid")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires a gradient: nothing to train")

    # Everything is checked: only now is anything moved or changed.
    model.to(device)
    if x.device != device:
        x = x.to(device)
        binarizer = None if binarizer is None else _Binarizer(x)
    x_valid = None if x_valid is None else x_valid.to(device)
    gradient = _HandWritten(params) if is_builtin_mlp(model) else _Autograd()
    optimizer = torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, fused=device.type in ("cpu", "cuda"))
    last_good = _LastGood(params)  # parameters at which the loss was finite, saved every SNAPSHOT_EVERY steps
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps, warmup_steps = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    g = torch.Generator(device=device).manual_seed(seed)
    history, best, best_state, since_best, step = History(), -math.inf, None, 0, 0
    show = _progress_default() if progress is None else bool(progress)
    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not show, file=sys.stderr)
    x_epoch = x
    model.train()
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=g, device=device)
            if binarizer is not None:  # a fresh binarisation, drawn into the same tensor every epoch
                x_epoch = binarizer(g, previous=None if x_epoch is x else x_epoch)
            sum_elbo = sum_kl = 0.0
            for b, start in enumerate(range(0, n, batch_size), start=1):
                xb = x_epoch.index_select(0, perm[start : start + batch_size])
                beta_t = beta if warmup_steps == 0 else beta * min(1.0, (step + 1) / warmup_steps)
                lr_t = lr if lr_schedule == "constant" else 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))
                terms = gradient(model, xb, n_samples, beta_t, g)  # the loss's gradient is now in p.grad
                loss, elbo_sum, kl_sum, grad_norm = _read(terms, gradient.squared_norm(params))
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    raise _diverged("loss" if not math.isfinite(loss) else "gradient", epoch, b,
                                    steps_per_epoch, history, last_good, model, x_epoch, seed)
                if step % SNAPSHOT_EVERY == 0:
                    last_good.save(epoch, b)
                optimizer.param_groups[0]["lr"] = lr_t
                optimizer.step()
                step += 1
                sum_elbo += elbo_sum
                sum_kl += kl_sum
            history.train_elbo.append(sum_elbo / n)
            history.train_kl.append(sum_kl / n)
            history.lr.append(lr_t)
            history.beta.append(beta_t)
            postfix = {"train_elbo": f"{history.train_elbo[-1]:.2f}"}
            if x_valid is not None:
                history.valid_elbo.append(_mean_elbo(model, x_valid, seed + 1))  # same noise every epoch
                model.train()
                postfix["valid_elbo"] = f"{history.valid_elbo[-1]:.2f}"
                if history.valid_elbo[-1] > best:
                    best, since_best, history.best_epoch = history.valid_elbo[-1], 0, epoch
                    if patience is not None:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since_best += 1
            history.seconds.append(time.perf_counter() - t0)
            bar.set_postfix(postfix)
            if patience is not None and since_best >= patience:
                history.stopped_early = True
                break
        # The last update has not been scored yet: score it on the last batch (unless the best is restored).
        if best_state is None and not math.isfinite(_mean_elbo(model, xb, seed + 2)):
            raise _diverged("loss after the last update", epoch, b, steps_per_epoch, history, last_good,
                            model, x_epoch, seed)
    finally:  # also when training diverges: no gradient outlives fit
        bar.close()
        for p in params:
            p.grad = None
        model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


# --- the two ways to the gradient ----------------------------------------------------------------
class _Autograd:
    """Any model: the batch's ELBO through ``model.encode``/``model.decode``, then ``loss.backward()``."""

    def __call__(self, model: VAE, xb: Tensor, n_samples: int, beta: float, g: torch.Generator) -> ELBOTerms:
        terms = _elbo(model, xb, n_samples, beta, g)
        model.zero_grad(set_to_none=True)
        (-terms.objective.mean()).backward()
        return ELBOTerms(terms.elbo.detach(), terms.reconstruction.detach(), terms.kl.detach(), beta)

    @staticmethod
    def squared_norm(params: list[Tensor]) -> Tensor:
        """The gradient's squared 2-norm (NaN or inf if an entry is, or if it overflows)."""
        grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
        return torch.stack([torch.dot(v, v) for v in grads]).sum() if grads else torch.zeros(())


class _HandWritten:
    """The built-in MLP only: the same gradient from :func:`vaelib.elbo_backward` (same noise, same terms),
    written in place into views of one buffer, so that its norm is a single dot product."""

    def __init__(self, params: list[Tensor]) -> None:
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for p in params:
            p.grad = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def __call__(self, model: VAE, xb: Tensor, n_samples: int, beta: float, g: torch.Generator) -> ELBOTerms:
        return _elbo_backward(model, xb, n_samples, beta, g)

    def squared_norm(self, params: list[Tensor]) -> Tensor:
        return torch.dot(self.buffer, self.buffer)


def _read(terms: ELBOTerms, squared_norm: Tensor) -> tuple[float, float, float, float]:
    """The batch's loss, ELBO sum, KL sum and gradient norm (NaN or inf if any entry is), read at once."""
    objective, elbo_sum, kl_sum, norm_sq = torch.stack(
        [terms.objective.sum(), terms.elbo.sum(), terms.kl.sum(), squared_norm.to(terms.elbo.dtype)]
    ).tolist()
    return -objective / terms.elbo.shape[0], elbo_sum, kl_sum, math.sqrt(norm_sq) if norm_sq >= 0 else norm_sq


class _LastGood:
    """A copy of the parameters at which the loss was found finite, and where in training that was."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params, self.copies, self.where = params, [torch.empty_like(p) for p in params], None

    @torch.no_grad()
    def save(self, epoch: int, batch: int) -> None:
        for copy, p in zip(self.copies, self.params):
            copy.copy_(p)
        self.where = (epoch, batch)

    @torch.no_grad()
    def restore(self) -> None:
        for copy, p in zip(self.copies, self.params):
            p.copy_(copy)


def _diverged(what: str, epoch: int, b: int, steps_per_epoch: int, history: History, last_good: _LastGood,
              model: VAE, x: Tensor, seed: int) -> TrainingDivergedError:
    """Go back to the saved parameters if the loss is what failed (the current ones are bad); the error,
    which says whether the ELBO of the training data is finite at the parameters kept."""
    if what.startswith("loss") and last_good.where is not None:
        last_good.restore()
        kept = (f"the parameters it had at epoch {last_good.where[0]}, batch {last_good.where[1]}, where the "
                "loss was finite (the latest saved)")
    elif what.startswith("loss"):
        kept = "its initial parameters, at which the loss is not finite"
    else:
        kept = "the parameters at which this loss was computed (finite; the update was not applied)"
    train_elbo = _mean_elbo(model, x, seed + 3)
    verdict = (f"its ELBO on the training data is {train_elbo:.2f} nats per example" if math.isfinite(train_elbo)
               else "its ELBO on the training data is NOT finite either: these parameters are no usable model")
    return TrainingDivergedError(
        f"training diverged: the {what} is not finite at epoch {epoch}, batch {b} (of {steps_per_epoch}); "
        f"the model keeps {kept}, and {verdict}. Try a smaller lr, or check the data and the model for "
        "extreme values.",
        epoch, b, history, train_elbo,
    )


# --- data and scores ----------------------------------------------------------------------------
def _as_tensor(data: Tensor | Digits) -> Tensor:
    return data.images if isinstance(data, Digits) else data


def _training_data(model: VAE, train: Tensor | Digits, binarize: bool | None) -> tuple[Tensor, _Binarizer | None]:
    """The checked training tensor, and the binariser that draws it afresh every epoch (``None``: no
    binarisation)."""
    x = check_tensor("train", _as_tensor(train), ndim=2, last_dim=model.x_dim)
    model._check_dtype("train", x)
    if binarize is not None and not isinstance(binarize, bool):
        raise TypeError(f"binarize must be True, False or None, got {type(binarize).__name__}")
    # Finding the grey pixels (for the binariser) also tells whether the data are binary already.
    binarizer = _Binarizer(x) if (model.likelihood == "bernoulli" or binarize) and in_unit_interval(x) else None
    is_binary = binarizer is not None and binarizer.is_binary
    if binarize is None:
        binarize = model.likelihood == "bernoulli" and not is_binary
    if binarize and binarizer is None:
        raise ValueError("train must hold grey levels in [0, 1] to be binarised")
    if model.likelihood == "bernoulli" and not binarize and not is_binary:
        raise ValueError("train must be binary for a Bernoulli model when binarize=False")
    return x, binarizer if binarize else None


@torch.no_grad()
def _mean_elbo(model: VAE, x: Tensor, seed: int, chunk: int = 1000) -> float:
    """The ELBO per example on ``x`` in evaluation mode, with noise seeded by ``seed``."""
    model.eval()
    g = torch.Generator(device=x.device).manual_seed(seed)
    total = sum(float(_elbo(model, x[s : s + chunk], 1, 1.0, g).elbo.sum()) for s in range(0, x.shape[0], chunk))
    return total / x.shape[0]


def _progress_default() -> bool:
    """Progress bars are on unless the environment sets ``VAELIB_PROGRESS=0`` (as the book build does)."""
    return os.environ.get("VAELIB_PROGRESS", "1") not in ("0", "false", "False", "")
