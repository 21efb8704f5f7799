"""Training a VAE by stochastic gradient ascent on the ELBO.

The loop slices a pre-loaded tensor (no per-sample ``DataLoader``), binarises each epoch's images
afresh for a Bernoulli decoder, and is seeded end to end: the same ``seed`` gives the same parameters.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from tqdm import tqdm

from ._validate import check_float, check_int, check_tensor
from .data import Digits, _binarize
from .elbo import _elbo
from .model import VAE

Schedule = Literal["constant", "cosine"]


class TrainingDivergedError(FloatingPointError):
    """Raised by :func:`fit` when the loss or a gradient stops being finite.

    The model keeps the last good parameters (the failing step is never applied).

    Attributes:
        epoch: 1-based epoch of the failing batch.
        batch: 1-based index of the failing batch within that epoch.
        history: the :class:`History` up to the last complete epoch.
    """

    def __init__(self, message: str, epoch: int, batch: int, history: "History") -> None:
        super().__init__(message)
        self.epoch, self.batch, self.history = epoch, batch, history


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
    """

    train_elbo: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    valid_elbo: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.train_elbo)


def _progress_default() -> bool:
    """Progress bars are on unless the environment sets ``VAELIB_PROGRESS=0`` (as the book build does)."""
    return os.environ.get("VAELIB_PROGRESS", "1") not in ("0", "false", "False", "")


def _as_tensor(data: Tensor | Digits) -> Tensor:
    return data.images if isinstance(data, Digits) else data


@torch.no_grad()
def _mean_elbo(model: VAE, x: Tensor, generator: torch.Generator, chunk: int = 1000) -> float:
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        total += float(_elbo(model, x[start : start + chunk], 1, 1.0, generator).elbo.sum())
    return total / x.shape[0]


@torch.no_grad()
def _restore_if_not_finite(params: list[Tensor], backup: list[Tensor]) -> bool:
    """Copy ``backup`` into ``params`` if a parameter is NaN or infinite; return whether it did."""
    if all(bool(torch.isfinite(p).all()) for p in params):
        return False
    for p, saved in zip(params, backup):
        p.copy_(saved)
    return True


def _overflow_error(where: tuple[int, int], steps_per_epoch: int, history: History) -> TrainingDivergedError:
    epoch, b = where
    return TrainingDivergedError(
        f"training diverged: the update at epoch {epoch}, batch {b} (of {steps_per_epoch}) made the "
        "parameters non-finite; the model keeps the parameters from before that step. Try a smaller lr.",
        epoch,
        b,
        history,
    )


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

    Each step takes a minibatch :math:`x_{1..B}`, draws :math:`z = \mu + \sigma\odot\epsilon`, and ascends
    :math:`\frac1B\sum_i \bigl[\log p_\theta(x_i|z_i) - \beta_t\, D_{\mathrm{KL}}(q_\phi(z|x_i)\|p(z))\bigr]`.

    Args:
        model: the :class:`vaelib.VAE` to train (in place).
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
        seed: seeds data order, binarisation and sampling noise (the model's initialisation is seeded
            by ``VAE(..., seed=...)``).
        progress: show a progress bar; ``None`` shows one unless ``VAELIB_PROGRESS=0`` is set.
        device: move the model and data there first (default: the model's device).

    Raises:
        TrainingDivergedError: the loss or a gradient became NaN/inf; says which epoch and batch, and
            leaves the last good parameters in the model.
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    beta = check_float("beta", beta, minimum=0.0)
    warmup_epochs = check_float("warmup_epochs", warmup_epochs, minimum=0.0)
    n_samples = check_int("n_samples", n_samples)
    seed = check_int("seed", seed, minimum=0)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if patience is not None:
        patience = check_int("patience", patience)
        if valid is None:
            raise ValueError("patience (early stopping) needs validation data: pass valid=")
    if device is not None:
        model.to(device)
    device = model.device

    x = check_tensor("train", _as_tensor(train), ndim=2, last_dim=model.x_dim)
    model._check_dtype("train", x)
    x = x.to(device)
    if binarize is not None and not isinstance(binarize, bool):
        raise TypeError(f"binarize must be True, False or None, got {type(binarize).__name__}")
    is_binary = bool(((x == 0) | (x == 1)).all())
    if binarize is None:
        binarize = model.likelihood == "bernoulli" and not is_binary
    if binarize and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError("train must hold grey levels in [0, 1] to be binarised")
    if model.likelihood == "bernoulli" and not binarize and not is_binary:
        raise ValueError("train must be binary for a Bernoulli model when binarize=False")
    x_valid = None
    if valid is not None:
        x_valid = model.check_x(_as_tensor(valid), "valid").to(device)

    show = _progress_default() if progress is None else bool(progress)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    g = torch.Generator(device=device).manual_seed(seed)
    g_valid = torch.Generator(device=device)
    # The fused Adam updates every parameter in one kernel instead of a Python-level loop of small
    # tensor operations per parameter: same algorithm, a large share of a small model's step time.
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))
    history = History()
    best, best_state, since_best = -math.inf, None, 0
    step = 0
    params = list(model.parameters())
    # The parameters before the latest step, and where that step was: a step can itself overflow the
    # parameters (a huge lr), which the loss only shows at the next step.
    backup, last_step = [p.detach().clone() for p in params], (1, 1)
    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not show, file=sys.stderr)
    model.train()
    for epoch in bar:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g, device=device)
        x_epoch = x[perm]
        if binarize:
            x_epoch = _binarize(x_epoch, g)
        sum_elbo = torch.zeros((), device=device)
        sum_kl = torch.zeros((), device=device)
        for b, start in enumerate(range(0, n, batch_size), start=1):
            xb = x_epoch[start : start + batch_size]
            beta_t = beta if warmup_steps == 0 else beta * min(1.0, (step + 1) / warmup_steps)
            if lr_schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))
            terms = _elbo(model, xb, n_samples, beta_t, g)
            loss = -terms.objective.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in model.parameters() if p.grad is not None]
            )
            if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
                bar.close()
                what = "loss" if not bool(torch.isfinite(loss)) else "gradient"
                if _restore_if_not_finite(params, backup):
                    raise _overflow_error(last_step, steps_per_epoch, history)
                raise TrainingDivergedError(
                    f"training diverged: the {what} is not finite at epoch {epoch}, batch {b} "
                    f"(of {steps_per_epoch}); the model keeps the parameters from before this step. "
                    "Try a smaller lr, or check the data for extreme values.",
                    epoch,
                    b,
                    history,
                )
            with torch.no_grad():
                torch._foreach_copy_(backup, params)  # one call for all tensors
            optimizer.step()
            last_step = (epoch, b)
            step += 1
            sum_elbo += terms.elbo.detach().sum()
            sum_kl += terms.kl.detach().sum()
        if _restore_if_not_finite(params, backup):
            bar.close()
            raise _overflow_error(last_step, steps_per_epoch, history)
        history.train_elbo.append(float(sum_elbo) / n)
        history.train_kl.append(float(sum_kl) / n)
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.beta.append(beta_t)
        postfix = {"train_elbo": f"{history.train_elbo[-1]:.2f}"}
        if x_valid is not None:
            model.eval()
            g_valid.manual_seed(seed + 1)  # the same noise every epoch: curves compare like with like
            v = _mean_elbo(model, x_valid, g_valid)
            model.train()
            history.valid_elbo.append(v)
            postfix["valid_elbo"] = f"{v:.2f}"
            if v > best:
                best, since_best, history.best_epoch = v, 0, epoch
                if patience is not None:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        history.seconds.append(time.perf_counter() - t0)
        bar.set_postfix(postfix)
        if patience is not None and since_best >= patience:
            history.stopped_early = True
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
