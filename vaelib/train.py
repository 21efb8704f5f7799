r"""Training a VAE by stochastic gradient ascent on the ELBO (or a tighter bound): the loop of chapter 5.

Every step of :func:`fit` is the minibatch algorithm of Kingma & Welling (2014):

.. code-block:: python

    xb = x_epoch[perm[start : start + batch_size]]       # a minibatch, freshly binarised each epoch
    step = objective(model, xb, c, g, t, steps_per_epoch) # e.g. ELBO: z ~ model.posterior(xb), ...
    optimizer.zero_grad(); step.loss.backward(); optimizer.step()   # torch.optim.Adam

for any model (the built-in MLP, a subclass, your own modules, prior, posterior and likelihood) and any
objective of :mod:`vaelib.objectives` (the ELBO with beta, warm-up and free bits; IWAE; DReG). One exact
economy: for the built-in MLP with the plain ELBO (:func:`vaelib.model.is_builtin_mlp`), the gradient
comes from :func:`vaelib.elbo_backward`, the same chain rule written out by hand (the same numbers,
tested against autograd); the benchmark shows what it saves. The loop slices a pre-loaded tensor (no
per-sample ``DataLoader``, though it accepts one) and is seeded end to end: the same ``seed`` gives the
same parameters, whatever the caller did to PyTorch's global generator (which a model's dropout draws
from: :func:`epoch_seed`), and a second call continues the run (:class:`FitState`). An error or
``KeyboardInterrupt`` part-way leaves the model at a documented point, from which the run goes on to the
same parameters (see :func:`fit`).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from ._validate import check_float, check_int, check_tensor, in_unit_interval
from .backprop import _elbo_backward
from .data import Digits, _Binarizer
from .elbo import _elbo
from .model import (VAE, _check_device, _forked_global_rng, check_data_support, is_builtin_mlp,
                    probe_likelihood)
from .objectives import DReG, ELBO, IWAE, Objective, Step

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


@dataclass
class FitState:
    """Where a training run stands, kept on the model by :func:`vaelib.fit` (``model.fit_state``) so that the
    next call continues it, and saved with it by :func:`vaelib.save`.

    Attributes:
        epoch: epochs completed.
        step: updates made (the position of the learning-rate schedule and of the KL warm-up).
        optimizer: ``torch.optim.Adam``'s ``state_dict()`` (its moments and step counts).
        generator: the state of the run's random generator (data order, binarisation, noise).
        settings: what the run was started with; a continuing call must repeat it (``restart=True`` starts
            a new run instead).
    """

    epoch: int
    step: int
    optimizer: dict[str, Any]
    generator: Tensor
    settings: dict[str, Any]


def fit(
    model: VAE,
    train: Any,
    epochs: int,
    *,
    valid: Any = None,
    objective: Objective | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_schedule: Schedule = "constant",
    total_epochs: int | None = None,
    beta: float | None = None,
    warmup_epochs: float | None = None,
    n_samples: int | None = None,
    binarize: bool | None = None,
    patience: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    device: torch.device | str | None = None,
    restart: bool = False,
) -> History:
    r"""Train ``model`` by maximising an objective (by default the ELBO) with Adam; return the :class:`History`.

    Each step takes a minibatch :math:`x_{1..B}` and makes one ``torch.optim.Adam`` step (default betas and
    eps, ``lr``) on the gradient of the objective's loss, for the ELBO
    :math:`-\frac1B\sum_i \bigl[\log p_\theta(x_i|z_i) - \beta_t\, D_{\mathrm{KL}}(q_\phi(z|x_i)\|p(z))\bigr]`,
    :math:`z_i \sim q_\phi(z|x_i)` reparameterised, as ``loss.backward()`` computes it through the model's
    ``posterior``, ``prior`` and ``likelihood``. Exactly the parameters with ``requires_grad=True`` are
    trained (a learned prior's included); the others stay bit-identical. The built-in MLP with the plain
    ELBO gets the same gradient from :func:`vaelib.elbo_backward`.

    **A second call continues the run.** The model keeps a :class:`FitState` (``model.fit_state``; also in
    a checkpoint written by :func:`vaelib.save`): the next ``fit`` on it resumes Adam's moments, the
    schedule and warm-up at the update reached, and the random stream, so ``fit(m, x, 10)`` twice gives the
    parameters of ``fit(m, x, 20)``, bit for bit (with tensor data and the same settings). A continuing
    call must repeat the run's settings; ``restart=True`` starts a new run from the current parameters. A
    call with ``patience`` ends its run (the best parameters are restored, not the last ones), and so does
    a divergence: the next call starts a new run. The :class:`FitState` a call continues is never altered
    (the call works on a copy of Adam's state and leaves a new one).

    **Randomness.** Data order, binarisation and the objective's noise come from the run's own generator
    (seeded with ``seed``). What a model draws from PyTorch's *global* generators itself (``nn.Dropout``,
    ``torch.randn`` without a generator, a ``DataLoader`` that shuffles without its own generator) comes
    from them seeded with :func:`epoch_seed` ``(seed, epoch)`` at the start of every epoch of the run
    (the CPU's, and that of the CUDA device the model is on; another accelerator's, e.g. MPS, is neither
    seeded nor forked). So the parameters depend on ``seed`` alone, never on the
    caller's global generators, which ``fit`` leaves exactly as it found them (it forks them, also on an
    error), and a continued run with dropout equals the long run bit for bit. ``fit`` holds
    :data:`vaelib.model.GLOBAL_RNG_LOCK` while it trains, so that fits and seeded constructions in other
    threads wait rather than share those generators (fits in several threads run one at a time).

    **Grad and inference modes.** ``fit`` trains with autograd on, also when called inside
    ``torch.no_grad()`` or ``torch.inference_mode()`` (data made in inference mode are copied), and
    leaves the caller's modes as they were. It leaves the model in evaluation mode.

    **An error part-way** (an exception from your module or your ``DataLoader`` at some batch or in the
    validation, ``KeyboardInterrupt``, or a divergence) propagates, and the model is left as follows
    (the exception carries a note, ``err.__notes__``, saying which case it is and where the call stopped):

    * every module in the train/eval mode it had before the call; no ``.grad`` left; the caller's grad
      mode, inference mode and global generators as before the call;
    * without ``patience``: the model as after the **last complete epoch** of this call (parameters and
      buffers; the updates of the interrupted epoch are undone), with ``model.fit_state`` holding the run
      at that point, so that a call for the remaining epochs with the same settings gives exactly the
      parameters of the uninterrupted call (with tensor data; an iterable of batches must give the
      interrupted epoch's batches again). If no epoch was complete, the model is **as before the call**
      (parameters, buffers, and the ``model.fit_state`` it carried, unchanged);
    * with ``patience``: the parameters of the **best epoch so far** (those early stopping would have
      restored; as before the call if no epoch was scored yet), and ``model.fit_state`` is ``None``;
    * a divergence (:class:`TrainingDivergedError`) keeps the parameters its message names (below; the
      best epoch's with ``patience``), and ``model.fit_state`` is ``None``.

    Args:
        model: the :class:`vaelib.VAE` to train (in place).
        train: training data: a tensor ``(n, x_dim)``, a :class:`vaelib.data.Digits`, a pair ``(x, c)`` whose
            context ``c`` (a tensor, one row per example: labels, for a conditional VAE) is passed to the
            model's three methods, or any iterable of batches (a ``torch.utils.data.DataLoader``), each a
            tensor or a pair ``(x, c)``. An iterable is used in its own order (seed its generator for a
            reproducible run; one without a generator draws its order from the global generator, seeded
            by :func:`epoch_seed`).
        epochs: passes over ``train`` in this call (``>= 1``).
        valid: held-out data in the same forms, scored with the ELBO after every epoch (in the likelihood's
            support: binary for a Bernoulli model).
        objective: :class:`vaelib.objectives.ELBO` (default), :class:`~vaelib.objectives.IWAE` or
            :class:`~vaelib.objectives.DReG`.
        batch_size: examples per step (for tensors; an iterable brings its own batches).
        lr: Adam's learning rate.
        lr_schedule: ``"constant"``, or ``"cosine"`` (anneal from ``lr`` to 0 over ``total_epochs``).
        total_epochs: the length of the cosine schedule (default: ``epochs`` of the call that starts the
            run); a run cannot continue past it.
        beta, warmup_epochs, n_samples: shorthand for ``objective=ELBO(beta, warmup_epochs, n_samples=...)``
            (defaults 1, 0 and 1); not together with ``objective``.
        binarize: draw a fresh binarisation of ``train`` every epoch. ``None`` (default) does so when the
            likelihood is a Bernoulli (its support is {0, 1}) and the data are not already binary.
        patience: stop when the validation ELBO has not improved for this many epochs, and restore the
            best parameters (needs ``valid``).
        seed: seeds data order, binarisation and sampling noise of a new run, and the model's own draws
            from the global generators (:func:`epoch_seed`); the built-in model's initialisation is seeded
            by ``VAE(..., seed=...)``.
        progress: show a progress bar; ``None`` shows one unless ``VAELIB_PROGRESS=0`` is set.
        device: move the model and data there first (default: the model's device).
        restart: start a new run even if the model carries one (fresh Adam, step 0, the stream of ``seed``).

    Raises:
        ValueError: a bad argument; a continuing call with other settings than its run's; a trainable
            parameter that gets no gradient from the objective at the first step (named; nothing is
            updated), e.g. ``obs_logvar`` of a ``likelihood="gaussian"`` model whose decoder returns its own
            distribution. A model whose parameters or buffers were made inside ``torch.inference_mode()``
            (they can never be trained).
        TrainingDivergedError: the loss or a gradient became NaN/inf; says which epoch and batch. The model
            keeps parameters at which the loss was found finite: with ``patience``, those of the best
            epoch so far; otherwise a failing update is never applied, and after a non-finite loss the
            model goes back to the parameters saved at most :data:`SNAPSHOT_EVERY` updates earlier (the
            error says from which epoch and batch). The run cannot be continued (``model.fit_state`` is
            cleared).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    epochs, batch_size = check_int("epochs", epochs), check_int("batch_size", batch_size)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    seed = check_int("seed", seed, minimum=0)
    objective = _objective(objective, beta, warmup_epochs, n_samples)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if total_epochs is not None:
        total_epochs = check_int("total_epochs", total_epochs)
        if lr_schedule != "cosine":
            raise ValueError("total_epochs is the length of the cosine schedule: pass lr_schedule='cosine'")
    if patience is not None:
        patience = check_int("patience", patience)
        if valid is None:
            raise ValueError("patience (early stopping) needs validation data: pass valid=")
    if not isinstance(restart, bool):
        raise TypeError(f"restart must be True or False, got {type(restart).__name__}")
    device = model.device if device is None else _check_device(device)
    data = _Data(model, train, "train", binarize, batch_size)
    valid_data = None if valid is None else _Data(model, valid, "valid", False, 1000)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires a gradient: nothing to train")
    made_in_inference = [k for k, v in model.state_dict().items() if isinstance(v, Tensor) and v.is_inference()]
    if made_in_inference:
        raise ValueError(
            f"{', '.join(made_in_inference)} of {type(model).__name__} were made inside torch.inference_mode(), and "
            "such tensors can never be trained or updated: build (or load) the model outside inference mode"
        )
    steps_per_epoch = data.steps_per_epoch
    if steps_per_epoch is None and (lr_schedule == "cosine" or _needs_steps(objective)):
        raise ValueError("train has no len(): a cosine schedule or a KL warm-up needs the number of batches "
                         "per epoch (a DataLoader has it)")
    settings = {"batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule, "objective": repr(objective),
                "seed": seed, "steps_per_epoch": steps_per_epoch,
                "trainable": [name for name, p in model.named_parameters() if p.requires_grad]}
    state = None if restart else getattr(model, "fit_state", None)
    if state is not None and not isinstance(state, FitState):
        raise TypeError(f"model.fit_state must be a vaelib.FitState or None, got {type(state).__name__}")
    if state is not None:
        _check_continuation(state, settings)
        horizon = state.settings["horizon"]
    else:
        horizon = None if lr_schedule != "cosine" else (total_epochs or epochs) * steps_per_epoch
    if state is not None and total_epochs is not None and total_epochs * steps_per_epoch != horizon:
        raise ValueError(f"this run's cosine schedule lasts {horizon // steps_per_epoch} epochs; total_epochs "
                         f"cannot change it to {total_epochs} (restart=True starts a new run)")
    first_step = 0 if state is None else state.step
    if horizon is not None and first_step + epochs * steps_per_epoch > horizon:
        raise ValueError(
            f"the cosine schedule ends after {horizon // steps_per_epoch} epochs and this run has done "
            f"{first_step // steps_per_epoch}: {epochs} more would go past its end. Pass total_epochs= when "
            "the run starts, or restart=True"
        )

    # Everything is checked: only now is anything moved or changed. From here on, an error (or
    # KeyboardInterrupt) leaves the model as the docstring says (_Recovery), and the caller's grad mode,
    # inference mode and global generators as they were (the three contexts restore them on any exit).
    # inference_mode(False) and enable_grad: training needs autograd, also inside the caller's
    # torch.inference_mode() or torch.no_grad(). The fork: a model's own draws from the global generators
    # (dropout) come from epoch_seed(seed, epoch), under GLOBAL_RNG_LOCK (one such block at a time).
    with torch.inference_mode(False), torch.enable_grad(), _forked_global_rng(device) as reseed:
        recovery = _Recovery(model, tensor_data=data.x is not None)
        history, best, best_state, since_best = History(), -math.inf, None, 0
        bar = None
        try:
            model.to(device)
            data.to(device)
            if valid_data is not None:
                valid_data.to(device)
            gradient = (_HandWritten(params, objective)
                        if is_builtin_mlp(model) and type(objective) is ELBO and objective.free_bits == 0
                        and not data.has_context else _Autograd(objective))
            optimizer = torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, fused=device.type in ("cpu", "cuda"))
            g = torch.Generator(device=device).manual_seed(seed)
            first_epoch = 0
            if state is not None:
                optimizer.load_state_dict(_copy_optimizer_state(state.optimizer))  # the run given stays as it is
                g.set_state(state.generator)
                first_epoch = state.epoch
            run_settings = {**settings, "horizon": horizon}
            last_good = _LastGood(params)  # parameters at which the loss was finite, saved every SNAPSHOT_EVERY steps
            step = first_step
            show = _progress_default() if progress is None else bool(progress)
            bar = tqdm(range(first_epoch + 1, first_epoch + epochs + 1), desc="fit", unit="epoch", disable=not show,
                       file=sys.stderr)
            model.fit_state = None  # until the run reaches a point it can be continued from
            model.train()
            checked_gradients = False
            for epoch in bar:
                reseed(epoch_seed(seed, epoch))  # the model's own draws: the same in every call and process
                t0 = time.perf_counter()
                sum_bound = sum_kl = 0.0
                n_seen = 0
                recovery.where = f"at epoch {epoch}, batch 1"
                for b, (xb, cb) in enumerate(data.batches(g), start=1):
                    lr_t = lr if horizon is None else 0.5 * lr * (1 + math.cos(math.pi * step / horizon))
                    result = gradient(model, xb, cb, g, step, steps_per_epoch or 1)  # the gradient is now in p.grad
                    if not checked_gradients:
                        _check_every_parameter_learns(model)
                        checked_gradients = True
                    loss, bound_sum, kl_sum, grad_norm = _read(result, gradient.squared_norm(params))
                    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                        recovery.diverged = True
                        raise _diverged("loss" if not math.isfinite(loss) else "gradient", epoch, b,
                                        steps_per_epoch, history, last_good, model, data, seed, best_state)
                    if step % SNAPSHOT_EVERY == 0:
                        last_good.save(epoch, b)
                    optimizer.param_groups[0]["lr"] = lr_t
                    optimizer.step()
                    step += 1
                    sum_bound += bound_sum
                    sum_kl += kl_sum
                    n_seen += xb.shape[0]
                    recovery.where = f"at epoch {epoch}, batch {b + 1}"  # (set before the next batch is fetched)
                if n_seen == 0:
                    raise ValueError("train yielded no batch")
                history.train_elbo.append(sum_bound / n_seen)
                history.train_kl.append(sum_kl / n_seen)
                history.lr.append(lr_t)
                history.beta.append(objective.beta_at(step - 1, steps_per_epoch or 1) if type(objective) is ELBO else 1.0)
                postfix = {"train": f"{history.train_elbo[-1]:.2f}"}
                if valid_data is not None:
                    recovery.where = f"in the validation after epoch {epoch}"
                    history.valid_elbo.append(_mean_elbo(model, valid_data, seed + 1))  # same noise every epoch
                    model.train()
                    postfix["valid_elbo"] = f"{history.valid_elbo[-1]:.2f}"
                    if history.valid_elbo[-1] > best:
                        best, since_best, history.best_epoch = history.valid_elbo[-1], 0, epoch - first_epoch
                        if patience is not None:
                            best_state = _Best(history.best_epoch, best, _copy_tensors(model.state_dict()))
                    else:
                        since_best += 1
                history.seconds.append(time.perf_counter() - t0)
                bar.set_postfix(postfix)
                if patience is None:  # the run can be continued from here
                    recovery.epoch_done(epoch, step, optimizer, g, run_settings, first_epoch + epochs - epoch)
                if patience is not None and since_best >= patience:
                    history.stopped_early = True
                    break
            # The last update has not been scored yet: score it on the last batch (unless the best is restored).
            recovery.where = "in the check of the last update"
            if best_state is None and not math.isfinite(_mean_elbo(model, _Data.single(model, xb, cb), seed + 2)):
                recovery.diverged = True
                raise _diverged("loss after the last update", epoch, b, steps_per_epoch, history, last_good,
                                model, data, seed, best_state)
        except BaseException as err:
            recovery.give_back(err, best_state)
            raise
        finally:  # also on an error: no gradient outlives fit
            if bar is not None:
                bar.close()
            for p in params:
                p.grad = None
        model.eval()
        if best_state is not None:
            model.load_state_dict(best_state.values)
        else:
            model.fit_state = FitState(epoch=epoch, step=step, optimizer=optimizer.state_dict(),
                                       generator=g.get_state(), settings=run_settings)
    return history


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed that :func:`fit` gives PyTorch's global generators at the start of epoch ``epoch`` (1-based,
    counted over the whole run, so the same in a continuing call) of a run started with ``seed``.

    It is what a model's own draws from the global generator come from: ``nn.Dropout``, ``torch.randn``
    without a generator, a ``DataLoader`` that shuffles without its own. A plain loop reproduces
    :func:`fit` on such a model by calling ``torch.manual_seed(epoch_seed(seed, epoch))`` before each
    epoch. The number is the first 63 bits of a SHA-256 of ``seed`` and ``epoch``: independent streams
    for every epoch and seed, the same on every machine.
    """
    seed = check_int("seed", seed, minimum=0)
    epoch = check_int("epoch", epoch)
    digest = hashlib.sha256(f"vaelib.fit global generators: seed {seed}, epoch {epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class _Best:
    """The best epoch of a call with ``patience``: its number in the call, validation ELBO and values."""

    epoch: int
    elbo: float
    values: dict[str, Any]


def _copy_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``state_dict``: every tensor cloned (a module's extra state is kept as it is)."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}


def _copy_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an optimizer's ``state_dict`` that shares no tensor with it. (``load_state_dict`` keeps the
    tensors it is given when their dtype and device fit, and Adam then updates them in place: the run a
    model carried, or one kept by the caller, would change under a continuing call.)"""
    return {
        "state": {index: {k: v.clone() if isinstance(v, Tensor) else v for k, v in slots.items()}
                  for index, slots in state["state"].items()},
        "param_groups": [{**group, "params": list(group["params"])} for group in state["param_groups"]],
    }


class _Recovery:
    """What :func:`fit` gives back when the call fails part-way (see its docstring): each module's mode and
    the model's values before the call, the run it carried, the run at the end of the last complete epoch."""

    def __init__(self, model: VAE, tensor_data: bool) -> None:
        self.model, self.tensor_data = model, tensor_data
        self.modes = [(module, module.training) for module in model.modules()]
        self.carried = getattr(model, "fit_state", None)
        self.initial = _copy_tensors(model.state_dict())
        self.done: FitState | None = None  # the run after the last complete epoch (without patience)
        self.done_values: dict[str, Any] | None = None
        self.epochs_left = 0
        self.where = "in its preparation"  # where the call is, for the note
        self.diverged = False  # TrainingDivergedError: _diverged chose the parameters

    def epoch_done(self, epoch: int, step: int, optimizer: torch.optim.Optimizer, g: torch.Generator,
                   settings: dict[str, Any], epochs_left: int) -> None:
        self.done_values = _copy_tensors(self.model.state_dict())
        self.done = FitState(epoch=epoch, step=step, optimizer=_copy_optimizer_state(optimizer.state_dict()),
                             generator=g.get_state(), settings=settings)
        self.epochs_left = epochs_left

    def give_back(self, err: BaseException, best: _Best | None) -> None:
        """Put the model in the documented state and say so in a note on ``err``."""
        model = self.model
        modes = "its modules are back in the train/eval modes they had before the call"
        if self.diverged:
            model.fit_state = None
            note = (f"vaelib.fit: the model keeps the parameters the error names; {modes}; model.fit_state is "
                    "None (this run cannot be continued: the next call starts a new one).")
        elif best is not None:
            model.load_state_dict(best.values)
            model.fit_state = None
            note = (f"vaelib.fit stopped {self.where} by this exception. The model keeps the parameters of its best "
                    f"epoch so far (epoch {best.epoch} of this call, validation ELBO {best.elbo:.4f} nats per "
                    "example), as early stopping would have left it; its run has ended (model.fit_state is "
                    f"None), as every call with patience ends it; {modes}.")
        elif self.done is not None:
            model.load_state_dict(self.done_values)
            model.fit_state = self.done
            exactly = ("to exactly the parameters this call would have given" if self.tensor_data else
                       "as this call would have (exactly so if the iterable of batches gives the epoch's batches "
                       "again: a DataLoader with its own generator has moved on)")
            goes_on = (f"fit(model, train, {self.epochs_left}, ...) with this call's other arguments continues it "
                       f"{exactly}" if self.epochs_left
                       else "this call's epochs were all complete, and a further call continues the run")
            note = (f"vaelib.fit stopped {self.where} by this exception. The model is left as after epoch "
                    f"{self.done.epoch}, the last complete one (its parameters and buffers; later updates are "
                    f"undone), and model.fit_state holds the run at that point: {goes_on}; {modes}.")
        else:
            model.load_state_dict(self.initial)
            model.fit_state = self.carried
            note = (f"vaelib.fit stopped {self.where} by this exception, before completing an epoch: the model is left "
                    "as it was before the call (its parameters, buffers and model.fit_state, which is unchanged), "
                    f"and {modes}.")
        for module, training in self.modes:
            module.training = training
        err.add_note(note)


def _objective(objective: object, beta: object, warmup_epochs: object, n_samples: object) -> Objective:
    shorthand = {"beta": beta, "warmup_epochs": warmup_epochs, "n_samples": n_samples}
    given = [k for k, v in shorthand.items() if v is not None]
    if objective is None:
        return ELBO(beta=1.0 if beta is None else beta, warmup_epochs=0.0 if warmup_epochs is None else warmup_epochs,
                    n_samples=1 if n_samples is None else n_samples)
    if type(objective) not in (ELBO, IWAE, DReG):
        raise TypeError("objective must be vaelib.objectives.ELBO, IWAE or DReG, got "
                        f"{type(objective).__name__}")
    if given:
        raise ValueError(f"{', '.join(given)} belong to the objective: pass objective=ELBO(...) alone")
    return objective  # type: ignore[return-value]


def _needs_steps(objective: Objective) -> bool:
    return type(objective) is ELBO and objective.warmup_epochs > 0


def _check_continuation(state: FitState, settings: dict[str, Any]) -> None:
    differ = [f"{k}={settings[k]!r} (the run has {state.settings.get(k)!r})" for k in settings
              if _plain(state.settings.get(k)) != _plain(settings[k])]
    if differ:
        raise ValueError(
            f"the model carries a training run ({state.epoch} epochs) that this call would continue, but "
            f"{'; '.join(differ)}: pass the run's settings to continue it, or restart=True to start a new run "
            "from the current parameters"
        )


def _plain(value: Any) -> Any:
    """Tuples as lists (a setting read back from a checkpoint compares equal to the one given)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _check_every_parameter_learns(model: VAE) -> None:
    """Raise if a trainable parameter got no gradient at the first step (the objective never reaches it)."""
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} of {type(model).__name__} get no gradient from the objective, so training "
            "would never change them: the loss does not depend on them (a prior, likelihood or posterior that "
            "vaelib does not reach? an obs_logvar that a decoder returning its own distribution ignores?). "
            "Use them in the model's posterior, prior or likelihood, or freeze them (requires_grad_(False))"
        )


# --- the two ways to the gradient ----------------------------------------------------------------
class _Autograd:
    """Any model and objective: the batch's loss through the model's three distributions, then
    ``loss.backward()``."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def __call__(self, model: VAE, xb: Tensor, cb: Any, g: torch.Generator, step: int, steps_per_epoch: int) -> Step:
        result = self.objective(model, xb, cb, g, step, steps_per_epoch)
        model.zero_grad(set_to_none=True)
        result.loss.backward()
        return Step(result.loss.detach(), result.bound, result.kl)

    @staticmethod
    def squared_norm(params: list[Tensor]) -> Tensor:
        """The gradient's squared 2-norm (NaN or inf if an entry is, or if it overflows)."""
        grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
        return torch.stack([torch.dot(v, v) for v in grads]).sum() if grads else torch.zeros(())


class _HandWritten:
    """The built-in MLP with the plain ELBO only: the same gradient from :func:`vaelib.elbo_backward` (same
    noise, same terms), written in place into views of one buffer, so that its norm is a single dot product."""

    def __init__(self, params: list[Tensor], objective: ELBO) -> None:
        self.objective = objective
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for p in params:
            p.grad = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def __call__(self, model: VAE, xb: Tensor, cb: Any, g: torch.Generator, step: int, steps_per_epoch: int) -> Step:
        beta = self.objective.beta_at(step, steps_per_epoch)
        terms = _elbo_backward(model, xb, self.objective.n_samples, beta, g)
        return Step(-terms.objective.mean(), terms.elbo, terms.kl)

    def squared_norm(self, params: list[Tensor]) -> Tensor:
        return torch.dot(self.buffer, self.buffer)


def _read(result: Step, squared_norm: Tensor) -> tuple[float, float, float, float]:
    """The batch's loss, bound sum, KL sum and gradient norm (NaN or inf if any entry is), read at once."""
    dtype = result.bound.dtype
    loss, bound_sum, kl_sum, norm_sq = torch.stack(
        [result.loss.to(dtype), result.bound.sum(), result.kl.sum(), squared_norm.to(dtype)]
    ).tolist()
    return loss, bound_sum, kl_sum, math.sqrt(norm_sq) if norm_sq >= 0 else norm_sq


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


def _diverged(what: str, epoch: int, b: int, steps_per_epoch: int | None, history: History,
              last_good: _LastGood, model: VAE, data: "_Data", seed: int,
              best: "_Best | None") -> TrainingDivergedError:
    """Go back to the best epoch's parameters (with patience), or to the saved ones if the loss is what
    failed (the current ones are bad); the error, which says whether the ELBO of the training data is
    finite at the parameters kept."""
    if best is not None:
        model.load_state_dict(best.values)
        kept = (f"the parameters of its best epoch so far, epoch {best.epoch} of this call (validation ELBO "
                f"{best.elbo:.2f}), as early stopping would have left it")
    elif what.startswith("loss") and last_good.where is not None:
        last_good.restore()
        kept = (f"the parameters it had at epoch {last_good.where[0]}, batch {last_good.where[1]}, where the "
                "loss was finite (the latest saved)")
    elif what.startswith("loss"):
        kept = "its initial parameters, at which the loss is not finite"
    else:
        kept = "the parameters at which this loss was computed (finite; the update was not applied)"
    train_elbo = _mean_elbo(model, data, seed + 3)
    verdict = (f"its ELBO on the training data is {train_elbo:.2f} nats per example" if math.isfinite(train_elbo)
               else "its ELBO on the training data is NOT finite either: these parameters are no usable model")
    return TrainingDivergedError(
        f"training diverged: the {what} is not finite at epoch {epoch}, batch {b} (of {steps_per_epoch or '?'}); "
        f"the model keeps {kept}, and {verdict}. Try a smaller lr, or check the data and the model for "
        "extreme values.",
        epoch, b, history, train_elbo,
    )


# --- data and scores ----------------------------------------------------------------------------
class _Data:
    """Training or validation data in any of the forms :func:`fit` takes, checked once, served as batches
    ``(x, c)`` (``c`` ``None`` without a context)."""

    def __init__(self, model: VAE, data: Any, name: str, binarize: bool | None, batch_size: int) -> None:
        self.model, self.name, self.batch_size = model, name, batch_size
        if binarize is not None and not isinstance(binarize, bool):
            raise TypeError(f"binarize must be True, False or None, got {type(binarize).__name__}")
        self.binarize = binarize
        self.loader: Iterable[Any] | None = None
        self.x: Tensor | None = None
        self.c: Any = None
        self.binarizer: _Binarizer | None = None
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (Tensor, Digits)):
            x, c = _as_tensor(data[0]), data[1]
            if not isinstance(c, Tensor) or c.dim() == 0 or c.shape[0] != x.shape[0]:
                raise ValueError(f"{name}'s context must be a tensor with one row per example ({x.shape[0]})")
            self.x, self.c = self._check(x), c
        elif isinstance(data, (Tensor, Digits)):
            self.x = self._check(_as_tensor(data))
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
            self.loader = data
        else:
            raise TypeError(f"{name} must be a tensor, a Digits, a pair (x, c) or an iterable of batches, "
                            f"got {type(data).__name__}")
        self.bernoulli: bool | None = None  # whether the likelihood is a Bernoulli (probed with the first context)
        if self.x is not None:
            self.bernoulli = self._probe(self.c)
            self.binarizer = self._binarizer(self.x, self.c)

    def _probe(self, c: Any) -> bool:
        """Whether the likelihood is a Bernoulli; a model that cannot take the context fails here, named."""
        try:
            return _bernoulli(self.model, c)
        except TypeError as err:
            if c is None:
                raise
            raise TypeError(f"{self.name} holds a context c that the model cannot take: {err}") from err

    @classmethod
    def single(cls, model: VAE, x: Tensor, c: Any) -> "_Data":
        """One batch, as it is."""
        return cls(model, x if c is None else (x, c), "the last batch", False, x.shape[0])

    def _check(self, x: object) -> Tensor:
        x = check_tensor(self.name, x, ndim=2, last_dim=self.model.x_dim)
        self.model._check_dtype(self.name, x)
        return x

    def _binarizer(self, x: Tensor, c: Any) -> _Binarizer | None:
        """The binariser that draws ``x`` afresh every epoch (``None``: no binarisation); checks the support."""
        grey_ok = in_unit_interval(x)
        binarizer = _Binarizer(x) if (self.bernoulli or self.binarize) and grey_ok else None
        is_binary = binarizer is not None and binarizer.is_binary
        binarize = self.bernoulli and not is_binary if self.binarize is None else self.binarize
        if binarize and binarizer is None:
            raise ValueError(f"{self.name} must hold grey levels in [0, 1] to be binarised")
        if not binarize:
            if self.bernoulli and not is_binary:
                raise ValueError(f"{self.name} must be binary for a Bernoulli model when binarize=False")
            check_data_support(self.model, x, c if isinstance(c, Tensor) else None, self.name)
        return binarizer if binarize and not is_binary else None

    @property
    def has_context(self) -> bool:
        return self.c is not None or self.loader is not None

    @property
    def steps_per_epoch(self) -> int | None:
        if self.x is not None:
            return math.ceil(self.x.shape[0] / self.batch_size)
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def to(self, device: torch.device) -> None:
        """Move the data to ``device`` (and copy tensors made in inference mode, which autograd cannot use)."""
        if self.x is not None and (self.x.device != device or self.x.is_inference()):
            self.x = _usable(self.x.to(device))
            self.binarizer = None if self.binarizer is None else _Binarizer(self.x)
        if isinstance(self.c, Tensor):
            self.c = _usable(self.c.to(device))
        self.device = device

    def batches(self, g: torch.Generator, shuffle: bool = True) -> Iterator[tuple[Tensor, Any]]:
        """One epoch's batches: a fresh order and binarisation drawn from ``g`` (tensors), or the iterable's."""
        if self.x is None:
            for batch in self.loader:  # type: ignore[union-attr]
                yield self._loaded(batch, g)
            return
        n = self.x.shape[0]
        perm = torch.randperm(n, generator=g, device=self.x.device) if shuffle else None
        x_epoch = self.x
        if self.binarizer is not None:  # a fresh binarisation, drawn into the same tensor every epoch
            x_epoch = self._epoch = self.binarizer(g, previous=getattr(self, "_epoch", None))
        for start in range(0, n, self.batch_size):
            if perm is None:
                index = slice(start, start + self.batch_size)
                yield x_epoch[index], None if self.c is None else self.c[index]
            else:
                rows = perm[start : start + self.batch_size]
                yield x_epoch.index_select(0, rows), None if self.c is None else self.c[rows]

    def _loaded(self, batch: Any, g: torch.Generator) -> tuple[Tensor, Any]:
        if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
            xb, cb = batch[0], (batch[1] if len(batch) == 2 else None)
        else:
            xb, cb = batch, None
        xb = _usable(self._check(_as_tensor(xb)).to(getattr(self, "device", xb.device)))
        if isinstance(cb, Tensor):
            cb = _usable(cb.to(xb.device))
        if self.bernoulli is None:
            self.bernoulli = self._probe(cb)
        binarizer = self._binarizer(xb, cb)  # each batch as the whole tensor would be
        return (xb if binarizer is None else binarizer(g)), cb


def _bernoulli(model: VAE, c: Any) -> bool:
    """Whether the model's likelihood is a Bernoulli: its support is {0, 1} (probed at the code ``z = 0``)."""
    likelihood = probe_likelihood(model, c if isinstance(c, Tensor) else None)
    support = getattr(likelihood.support, "base_constraint", likelihood.support)
    return isinstance(support, type(torch.distributions.constraints.boolean))


def _usable(t: Tensor) -> Tensor:
    """``t``, or a normal copy of it if it was made inside ``torch.inference_mode()`` (autograd cannot save
    such a tensor for the backward pass)."""
    return t.clone() if t.is_inference() else t


def _as_tensor(data: Tensor | Digits) -> Tensor:
    return data.images if isinstance(data, Digits) else data


@torch.no_grad()
def _mean_elbo(model: VAE, data: _Data, seed: int) -> float:
    """The ELBO per example on ``data`` in evaluation mode, with noise seeded by ``seed``."""
    model.eval()
    g = torch.Generator(device=model.device).manual_seed(seed)
    total, n = 0.0, 0
    source = (data.batches(g, shuffle=False) if data.x is not None
              else ((xb, cb) for xb, cb in data.batches(torch.Generator(device=model.device).manual_seed(seed))))
    for xb, cb in source:
        total += float(_elbo(model, xb, 1, 1.0, g, c=cb, checked=True).elbo.sum())
        n += xb.shape[0]
    return total / max(n, 1)


def _progress_default() -> bool:
    """Progress bars are on unless the environment sets ``VAELIB_PROGRESS=0`` (as the book build does)."""
    return os.environ.get("VAELIB_PROGRESS", "1") not in ("0", "false", "False", "")
