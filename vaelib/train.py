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

from ._validate import check_float, check_int, check_tensor, in_unit_interval
from .data import Digits, _Binarizer
from .backprop import _elbo_backward
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


#: Adam's default ``(beta1, beta2)``, which :func:`fit` uses.
ADAM_BETAS: tuple[float, float] = (0.9, 0.999)


def adam_max_step(beta1: float = ADAM_BETAS[0], beta2: float = ADAM_BETAS[1]) -> float:
    r"""The most one Adam step can move a parameter, in units of the learning rate.

    Adam moves each parameter by :math:`\alpha\,\hat m_t / (\sqrt{\hat v_t} + \epsilon)`, with
    :math:`\hat m_t = \sum_i a_i g_i` and :math:`\hat v_t = \sum_i b_i g_i^2` weighted sums of the past
    gradients (:math:`a_i \propto (1-\beta_1)\beta_1^{t-i}`, :math:`b_i \propto (1-\beta_2)\beta_2^{t-i}`,
    each divided by its bias correction). By Cauchy-Schwarz,
    :math:`|\hat m_t| \le \sqrt{\sum_i a_i^2/b_i}\,\sqrt{\hat v_t}`, and summing the geometric series
    for every :math:`t` gives

    .. math:: \frac{|\hat m_t|}{\sqrt{\hat v_t}} \le \frac{1-\beta_1}{\sqrt{(1-\beta_2)(1-\beta_1^2/\beta_2)}}

    (Kingma & Ba 2015, sec. 2.1, state the looser :math:`(1-\beta_1)/\sqrt{1-\beta_2}` for the
    uncorrected case). For the defaults it is 7.27: however large or wild the gradients, one step moves a
    parameter by at most :math:`7.27\,\alpha`. :func:`fit` uses this to know in advance that a step cannot
    overflow the parameters. Needs :math:`\beta_1^2 < \beta_2`.
    """
    if not 0 <= beta1 < 1 or not 0 < beta2 < 1 or beta1**2 >= beta2:
        raise ValueError(f"need 0 <= beta1 < 1, 0 < beta2 < 1 and beta1**2 < beta2, got {beta1}, {beta2}")
    return (1 - beta1) / math.sqrt((1 - beta2) * (1 - beta1**2 / beta2))


class _OverflowGuard:
    r"""Keeps a copy of the parameters before an Adam step only when that step could overflow them.

    A step that makes a parameter infinite must be undone, which needs the parameters from before it.
    Copying them before every step costs a pass over all parameters per step; instead the guard proves,
    before each step, that it cannot overflow, and copies only when the proof fails (a learning rate
    near the largest float, or astronomically large gradients). The proof bounds every number the
    fused Adam kernel forms: :math:`|p| \le |p_0| + \sum_t 7.27\,\alpha_t` (:func:`adam_max_step`),
    and the kernel's intermediate :math:`\alpha_t/(1-\beta_1^t)\cdot|m_t| \le 10\,\alpha_t\,G` with
    :math:`G` the largest gradient entry seen so far (:math:`|m_t| \le G`). Both must stay below a
    quarter of the dtype's largest number.
    """

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.limit = torch.finfo(params[0].dtype).max / 4
        with torch.no_grad():
            self.param_bound = max(float(p.abs().max()) for p in params if p.numel())
        self.grad_max = 0.0
        self.max_step = adam_max_step()
        self.backup: list[Tensor] | None = None  # the parameters before the latest step, if copied

    def before_step(self, lr: float, grad_max: float) -> None:
        """Call just before ``optimizer.step()``; ``grad_max`` bounds this step's ``|gradient|`` entries."""
        self.grad_max = max(self.grad_max, grad_max)
        self.param_bound += self.max_step * lr
        risky = self.param_bound >= self.limit or lr / (1 - ADAM_BETAS[0]) * self.grad_max >= self.limit
        if not risky:
            self.backup = None
            return
        with torch.no_grad():
            if self.backup is None:
                self.backup = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_copy_(self.backup, self.params)  # one call for all tensors

    @torch.no_grad()
    def undo_if_overflowed(self) -> bool:
        """If the latest step left a parameter NaN or infinite, restore the copy; return whether it did."""
        if self.backup is None:  # that step was proven safe
            return False
        if all(bool(torch.isfinite(p).all()) for p in self.params):
            return False
        for p, saved in zip(self.params, self.backup):
            p.copy_(saved)
        return True


class _Adam:
    r"""Adam (Kingma & Ba 2015) over fit's parameters, with the learning rate given at each step.

    .. math:: m \leftarrow \beta_1 m + (1-\beta_1)\,g, \qquad v \leftarrow \beta_2 v + (1-\beta_2)\,g^2,
              \qquad p \leftarrow p - \alpha\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)} + \epsilon}

    This is exactly ``torch.optim.Adam(fused=True)``'s update, made by the same PyTorch kernel
    (``torch._fused_adam_``) for every parameter at once. Calling the kernel directly skips the optimiser's
    per-step Python bookkeeping (hooks, grouping tensors by device and dtype, state look-ups): about 5%
    of a training step of the book's models on a CPU. On a device without the fused kernel it falls back
    to ``torch.optim.Adam``.
    """

    def __init__(self, params: list[Tensor], eps: float = 1e-8) -> None:
        self.params, self.eps = params, eps
        self.fused = params[0].device.type in ("cpu", "cuda")
        if self.fused:
            self.exp_avgs = [torch.zeros_like(p) for p in params]
            self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
            # Every parameter's step count t, as views of one tensor: one increment per step.
            self.step_counts = torch.zeros(len(params), dtype=torch.float32, device=params[0].device)
            self.steps = list(self.step_counts.unbind())
        else:
            self.fallback = torch.optim.Adam(params, betas=ADAM_BETAS, eps=eps)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One update of every parameter from its ``.grad`` with learning rate ``lr``."""
        if not self.fused:
            self.fallback.param_groups[0]["lr"] = lr
            self.fallback.step()
            return
        self.step_counts += 1
        torch._fused_adam_(
            self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, [], self.steps,
            lr=lr, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], weight_decay=0.0, eps=self.eps,
            amsgrad=False, maximize=False,
        )


def _release_grads(params: list[Tensor]) -> None:
    """Drop fit's gradient buffer, so that no gradient outlives training."""
    for p in params:
        p.grad = None


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
    The gradient comes from :func:`vaelib.elbo_backward` (the chain rule written out, equal to autograd's),
    the update from Adam; the book's Performance appendix explains the other economies of the loop.

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
    # Finding the grey pixels (for the binariser) also tells whether the data are binary already.
    binarizer = None
    if (model.likelihood == "bernoulli" or binarize) and in_unit_interval(x):
        binarizer = _Binarizer(x)
    is_binary = binarizer is not None and binarizer.is_binary
    if binarize is None:
        binarize = model.likelihood == "bernoulli" and not is_binary
    if binarize and binarizer is None:
        raise ValueError("train must hold grey levels in [0, 1] to be binarised")
    if model.likelihood == "bernoulli" and not binarize and not is_binary:
        raise ValueError("train must be binary for a Bernoulli model when binarize=False")
    if not binarize:
        binarizer = None
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
    history = History()
    best, best_state, since_best = -math.inf, None, 0
    step = 0
    params = list(model.parameters())
    # One buffer holds every parameter's gradient: _elbo_backward writes into it in place each step,
    # and its norm (the divergence check) is a single pass.
    grad_buffer = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=device)
    offset = 0
    for p in params:
        p.grad = grad_buffer[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    guard = _OverflowGuard(params)
    optimizer = _Adam(params)
    last_step = (1, 1)  # where the latest step was: an overflowing step only shows at the next loss
    lr_t = lr
    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not show, file=sys.stderr)
    model.train()
    x_epoch = None if binarizer is not None else x
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=g, device=device)
            if binarizer is not None:  # a fresh binarisation, drawn into the same tensor every epoch
                x_epoch = binarizer(g, previous=x_epoch)
            sum_elbo = sum_kl = 0.0
            for b, start in enumerate(range(0, n, batch_size), start=1):
                xb = x_epoch.index_select(0, perm[start : start + batch_size])
                beta_t = beta if warmup_steps == 0 else beta * min(1.0, (step + 1) / warmup_steps)
                if lr_schedule == "cosine":
                    lr_t = 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))
                # The ELBO of the batch, and the gradient of the loss -mean(objective) in every p.grad:
                # what `loss.backward()` would give, with the chain rule written out (vaelib.backprop).
                terms = _elbo_backward(model, xb, n_samples, beta_t, g)
                # The batch's sums, and the gradient's squared 2-norm as one dot product (NaN or inf if an
                # entry is, or if it overflows; its root bounds every |entry| for the guard), read in one go.
                objective_sum, elbo_sum, kl_sum, grad_sq = torch.stack(
                    [terms.objective.sum(), terms.elbo.sum(), terms.kl.sum(), torch.dot(grad_buffer, grad_buffer)]
                ).tolist()
                loss_value, grad_value = -objective_sum / xb.shape[0], math.sqrt(grad_sq)
                if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
                    if guard.undo_if_overflowed():
                        raise _overflow_error(last_step, steps_per_epoch, history)
                    what = "loss" if not math.isfinite(loss_value) else "gradient"
                    raise TrainingDivergedError(
                        f"training diverged: the {what} is not finite at epoch {epoch}, batch {b} "
                        f"(of {steps_per_epoch}); the model keeps the parameters from before this step. "
                        "Try a smaller lr, or check the data for extreme values.",
                        epoch,
                        b,
                        history,
                    )
                guard.before_step(lr_t, grad_value)
                optimizer.step(lr_t)
                last_step = (epoch, b)
                step += 1
                sum_elbo += elbo_sum
                sum_kl += kl_sum
            if guard.undo_if_overflowed():
                raise _overflow_error(last_step, steps_per_epoch, history)
            history.train_elbo.append(sum_elbo / n)
            history.train_kl.append(sum_kl / n)
            history.lr.append(lr_t)
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
    finally:  # also when training diverges: no gradient buffer outlives fit
        bar.close()
        _release_grads(params)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
