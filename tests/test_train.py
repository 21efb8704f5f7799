"""vaelib.train: fit's history, schedules, early stopping, binarisation and divergence handling.

Every problem is tiny (tens of examples, 12 pixels), so a fit takes milliseconds.
"""

from __future__ import annotations

import math

import pytest
import torch

import vaelib
import vaelib.train
from vaelib import VAE, History, TrainingDivergedError, elbo, fit
from vaelib.data import Digits


def _params(model: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recording(VAE):
    """A learner's subclass that records every batch its encoder is given during training.

    It overrides the public ``encode`` (so ``fit`` trains it with autograd, through the same loop as any
    model) and observes what ``fit`` feeds it: public behaviour only.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[torch.Tensor] = []

    def encode(self, x):
        if self.training:
            self.batches.append(x.detach().clone())
        return super().encode(x)


def _reference_fit(model, x, epochs, *, batch_size, lr=1e-3, beta=1.0, warmup_epochs=0.0, cosine=False,
                   n_samples=1, seed=0, steps=None):
    """fit written as the plain PyTorch loop of chapter 5 (binary data: no binarisation)."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total, warm = epochs * per_epoch, warmup_epochs * per_epoch
    step = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            if steps is not None and step == steps:
                return model
            beta_t = beta if warm == 0 else beta * min(1.0, (step + 1) / warm)
            opt.param_groups[0]["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total)) if cosine else lr
            terms = elbo(model, x[perm[start : start + batch_size]], n_samples, beta_t, g)
            opt.zero_grad()
            (-terms.objective.mean()).backward()
            opt.step()
            step += 1
    return model


def _close(a: VAE, b: VAE, tol: float = 1e-12) -> None:
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, rtol=tol, atol=tol, msg=name)


def test_history_lengths_and_improvement(binary_data):
    x = binary_data(96, 12)
    model = VAE(12, 2, hidden=(16,), seed=0)
    before = float(elbo(model, x, n_samples=20, generator=torch.Generator().manual_seed(0)).elbo.mean().detach())
    h = fit(model, x[:64], 12, valid=x[64:], batch_size=16, lr=1e-2, progress=False)
    assert isinstance(h, History) and h.epochs == 12
    for name in ("train_elbo", "train_kl", "valid_elbo", "lr", "beta", "seconds"):
        assert len(getattr(h, name)) == 12, name
    assert all(math.isfinite(v) for v in h.train_elbo + h.valid_elbo + h.train_kl)
    assert all(s >= 0 for s in h.seconds)
    assert h.lr == [1e-2] * 12 and h.beta == [1.0] * 12
    assert h.train_elbo[-1] > h.train_elbo[0] + 1.0
    after = float(elbo(model, x, n_samples=20, generator=torch.Generator().manual_seed(0)).elbo.mean().detach())
    assert after > before + 1.0
    assert h.best_epoch == 1 + max(range(12), key=h.valid_elbo.__getitem__)
    assert not h.stopped_early
    assert not model.training  # fit leaves the model in evaluation mode


def test_no_validation_data(binary_data):
    h = fit(VAE(12, 2, hidden=(), seed=0), binary_data(32, 12), 2, progress=False)
    assert h.valid_elbo == [] and h.best_epoch is None


def test_an_epoch_visits_every_example_once_and_reports_mean_terms(binary_data):
    x = binary_data(40, 12)
    model = Recording(12, 2, hidden=(), seed=0)
    h = fit(model, x, 2, batch_size=16, progress=False)
    assert [xb.shape[0] for xb in model.batches] == [16, 16, 8] * 2
    for epoch in range(2):
        seen = torch.cat(model.batches[3 * epoch : 3 * epoch + 3])
        assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, x.tolist()))
    first = torch.cat(model.batches[:3])
    assert not torch.equal(first, torch.cat(model.batches[3:]))  # reshuffled
    # History holds the mean over the epoch's examples (not the mean of the batch means): replay the
    # last epoch's batches with the plain loop's noise, at the parameters each step saw.
    replay = Recording(12, 2, hidden=(), seed=0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(replay.parameters(), lr=1e-3)
    sums = [0.0, 0.0]
    for epoch in range(2):
        torch.randperm(40, generator=g)  # fit's shuffle draws first
        elbo_sum = kl_sum = 0.0
        for xb in model.batches[3 * epoch : 3 * epoch + 3]:
            t = elbo(replay, xb, 1, 1.0, g)
            elbo_sum, kl_sum = elbo_sum + float(t.elbo.detach().sum()), kl_sum + float(t.kl.detach().sum())
            opt.zero_grad()
            (-t.objective.mean()).backward()
            opt.step()
        assert h.train_elbo[epoch] == pytest.approx(elbo_sum / 40, rel=1e-5)
        assert h.train_kl[epoch] == pytest.approx(kl_sum / 40, rel=1e-5)


def test_early_stopping_restores_the_best_parameters(binary_data):
    # Validation data unlike the training data: fitting the training set makes the validation ELBO fall.
    train = binary_data(64, 12)
    valid = 1 - train[:32]
    model = VAE(12, 2, hidden=(16,), seed=0)
    h = fit(model, train, 30, valid=valid, patience=2, batch_size=16, lr=1e-2, seed=1, progress=False)
    assert h.stopped_early and h.epochs < 30
    assert h.epochs == h.best_epoch + 2
    assert h.valid_elbo[h.best_epoch - 1] == max(h.valid_elbo)
    # The restored parameters reproduce the best epoch's validation ELBO (same noise: seed + 1).
    g = torch.Generator().manual_seed(1 + 1)
    v = float(elbo(model, valid, generator=g).elbo.mean().detach())
    assert v == pytest.approx(h.valid_elbo[h.best_epoch - 1], rel=1e-5, abs=1e-5)
    # ... and they are the parameters after the best epoch's last step (the same training, stopped
    # there), not the final ones.
    again = VAE(12, 2, hidden=(16,), seed=0)
    fit(again, train, h.best_epoch, valid=valid, batch_size=16, lr=1e-2, seed=1, progress=False)
    assert _same(_params(model), _params(again))
    longer = VAE(12, 2, hidden=(16,), seed=0)
    fit(longer, train, h.epochs, valid=valid, batch_size=16, lr=1e-2, seed=1, progress=False)
    assert not _same(_params(model), _params(longer))


def test_patience_needs_validation_data(binary_data):
    with pytest.raises(ValueError, match="patience .* needs validation data"):
        fit(VAE(12, 2, hidden=()), binary_data(8, 12), 2, patience=1, progress=False)


def test_kl_warmup_schedule(binary_data):
    x = binary_data(32, 12)
    model = VAE(12, 2, hidden=(5,), seed=0).double()
    h = fit(model, x.double(), 6, batch_size=8, beta=2.0, warmup_epochs=4, progress=False)
    assert h.beta == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rel=1e-12)
    # beta_t = beta * min(1, step / warmup_steps), steps counted from 1: the plain loop with that schedule
    # gives the same parameters.
    ref = _reference_fit(VAE(12, 2, hidden=(5,), seed=0).double(), x.double(), 6, batch_size=8, beta=2.0,
                         warmup_epochs=4)
    _close(model, ref)


def test_cosine_schedule_anneals_the_learning_rate_to_zero(binary_data):
    x = binary_data(32, 12)
    h = fit(VAE(12, 2, hidden=(), seed=0), x, 5, batch_size=4, lr=0.01, lr_schedule="cosine", progress=False)
    total = 5 * 8
    # The last step of epoch e is step 8e - 1 (0-based): lr = lr0 (1 + cos(pi t / T)) / 2.
    expected = [0.005 * (1 + math.cos(math.pi * (8 * e - 1) / total)) for e in range(1, 6)]
    assert h.lr == pytest.approx(expected, rel=1e-12)
    assert all(a > b for a, b in zip(h.lr, h.lr[1:]))
    assert h.lr[-1] < 1e-4  # ~0 at the end (0.0015 % of lr0)


def _is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def test_binarize_default_for_a_bernoulli_model_on_grey_data():
    grey = torch.rand(24, 12, generator=torch.Generator().manual_seed(0))
    grey[:, 0], grey[:, 1] = 0.0, 1.0
    recorder = Recording(12, 2, hidden=(), seed=0)
    fit(recorder, grey, 3, batch_size=8, progress=False)
    batches = recorder.batches
    assert all(_is_binary(xb) for xb in batches)
    assert all(bool((xb[:, 0] == 0).all() and (xb[:, 1] == 1).all()) for xb in batches)
    # A fresh binarisation every epoch: an epoch's images differ from the previous epoch's.
    epochs = [torch.cat(batches[i : i + 3]).sum(0) for i in (0, 3, 6)]
    assert not torch.equal(epochs[0], epochs[1])
    # binarize=None is binarize=True here: bit-identical parameters.
    a = VAE(12, 2, hidden=(), seed=0)
    fit(a, grey, 3, batch_size=8, progress=False)
    b = VAE(12, 2, hidden=(), seed=0)
    fit(b, grey, 3, batch_size=8, binarize=True, progress=False)
    assert _same(_params(a), _params(b))


def test_binary_data_is_not_binarised_again(binary_data):
    x = binary_data(24, 12)
    recorder = Recording(12, 2, hidden=(), seed=0)
    fit(recorder, x, 1, batch_size=8, progress=False)
    seen = torch.cat(recorder.batches)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen, x[perm])


def test_gaussian_model_keeps_grey_levels_unless_asked():
    grey = torch.rand(16, 12, generator=torch.Generator().manual_seed(0))
    a = Recording(12, 2, hidden=(), likelihood="gaussian", seed=0)
    fit(a, grey, 1, batch_size=8, progress=False)
    assert a.batches and not any(_is_binary(xb) for xb in a.batches)
    b = Recording(12, 2, hidden=(), likelihood="gaussian", seed=0)
    fit(b, grey, 1, batch_size=8, binarize=True, progress=False)
    assert b.batches and all(_is_binary(xb) for xb in b.batches)


def test_binarize_errors():
    grey = torch.full((8, 12), 0.5)
    with pytest.raises(ValueError, match="train must be binary for a Bernoulli model when binarize=False"):
        fit(VAE(12, 2, hidden=()), grey, 1, binarize=False, progress=False)
    with pytest.raises(ValueError, match=r"grey levels in \[0, 1\] to be binarised"):
        fit(VAE(12, 2, hidden=(), likelihood="gaussian"), grey * 3, 1, binarize=True, progress=False)
    with pytest.raises(ValueError, match="valid must be binary"):
        fit(VAE(12, 2, hidden=()), grey, 1, valid=grey, progress=False)


def test_accepts_digits_and_a_single_large_batch(binary_data):
    x = binary_data(20, 12)
    d = Digits(x, torch.zeros(20, dtype=torch.long), (3, 4))
    h = fit(VAE(12, 2, hidden=(), seed=0), d, 2, valid=d, batch_size=128, n_samples=3, progress=False)
    assert h.epochs == 2 and len(h.valid_elbo) == 2


def test_progress_bar_switch(binary_data, capsys, monkeypatch):
    x = binary_data(8, 12)
    fit(VAE(12, 2, hidden=()), x, 1, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("VAELIB_PROGRESS", "0")
    fit(VAE(12, 2, hidden=()), x, 1)
    assert capsys.readouterr().err == ""
    fit(VAE(12, 2, hidden=()), x, 1, progress=True)
    assert "fit" in capsys.readouterr().err


# --- divergence ------------------------------------------------------------------------------------------


def test_an_infinite_parameter_stops_training_before_any_step(binary_data):
    model = VAE(12, 2, hidden=(4,), seed=0)
    with torch.no_grad():
        model.decoder.to_x.bias[0] = math.inf
    before = _params(model)
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch 1") as info:
        fit(model, binary_data(32, 12), 3, batch_size=8, progress=False)
    assert (info.value.epoch, info.value.batch) == (1, 1)
    assert info.value.history.epochs == 0
    assert isinstance(info.value, FloatingPointError)
    assert _same(_params(model), before)  # the failing step was never applied


class Poisoned(VAE):
    """A learner's model whose decoder returns NaN at its ``at``-th training call (a numerical bug)."""

    def __init__(self, at: int, where: str = "loss") -> None:
        super().__init__(12, 2, hidden=(4,), seed=0)
        self.double()
        self.at, self.where, self.calls = at, where, 0

    def decode(self, z):
        out = super().decode(z)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                if self.where == "loss":
                    return out + math.nan
                return _NaNGradient.apply(out)  # a finite loss whose gradient is NaN
        return out


class _NaNGradient(torch.autograd.Function):
    """The identity, whose derivative is NaN."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def _kept_step(error: TrainingDivergedError, steps_per_epoch: int) -> int:
    """How many updates the parameters the error says it kept had seen."""
    import re

    epoch, batch = map(int, re.search(r"it had at epoch (\d+), batch (\d+)", str(error)).groups())
    return (epoch - 1) * steps_per_epoch + batch - 1


def test_nan_loss_mid_training_keeps_parameters_with_a_finite_loss(binary_data):
    x = binary_data(32, 12).double()
    model = Poisoned(at=40)  # epoch 3, batch 8 (16 batches of 2 per epoch)
    with pytest.raises(TrainingDivergedError, match="loss is not finite at epoch 3, batch 8") as info:
        fit(model, x, 4, batch_size=2, progress=False)
    assert (info.value.epoch, info.value.batch) == (3, 8)
    assert info.value.history.epochs == 2
    # The loss was NaN at the parameters after 39 updates: the model goes back to the latest saved ones,
    # after 32 updates (saved every SNAPSHOT_EVERY = 16), where the loss was finite: the plain loop's.
    assert vaelib.train.SNAPSHOT_EVERY == 16
    assert "it had at epoch 3, batch 1" in str(info.value) and _kept_step(info.value, 16) == 32
    reference = _reference_fit(Poisoned(at=0), x, 4, batch_size=2, steps=32)
    _close(model, reference)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_nan_gradient_is_caught_too(binary_data):
    x = binary_data(16, 12).double()
    model = Poisoned(at=1, where="gradient")
    before = _params(model)
    with pytest.raises(TrainingDivergedError, match="gradient is not finite at epoch 1, batch 1"):
        fit(model, x, 2, batch_size=8, progress=False)
    assert _same(_params(model), before)  # the failing update was never applied


@pytest.mark.parametrize("lr", [1e30, 1e39])
def test_a_huge_learning_rate_diverges_cleanly(binary_data, lr):
    # lr = 1e39 overflows float32 in the very first update; 1e30 makes the next loss non-finite.
    x = binary_data(64, 12)
    model = VAE(12, 2, hidden=(8,), seed=0)
    with pytest.raises(TrainingDivergedError) as info:
        fit(model, x, 5, batch_size=8, lr=lr, progress=False)
    assert info.value.epoch >= 1 and info.value.batch >= 1
    assert f"epoch {info.value.epoch}, batch {info.value.batch}" in str(info.value)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    # The kept parameters are the latest saved ones, which had a finite loss: the plain loop's after as
    # many updates.
    again = VAE(12, 2, hidden=(8,), seed=0)
    _reference_fit(again, x, 5, batch_size=8, lr=lr, steps=_kept_step(info.value, 8))
    _close(model, again, tol=1e-5)


@pytest.mark.parametrize("epochs, batch_size", [(1, 64), (3, 8)])
def test_an_update_that_overflows_the_parameters_is_undone(binary_data, epochs, batch_size):
    # lr = 1e39 overflows float32 in the very first update. Whether that was the last step of training
    # (1 epoch of 1 batch) or the next loss shows it, the model goes back to the parameters before it.
    model = VAE(12, 2, hidden=(8,), seed=0)
    before = _params(model)
    with pytest.raises(TrainingDivergedError, match="not finite at epoch 1, batch [12]") as info:
        fit(model, binary_data(64, 12), epochs, batch_size=batch_size, lr=1e39, progress=False)
    assert "it had at epoch 1, batch 1" in str(info.value)
    assert _same(_params(model), before)


def test_rejects_bad_arguments(binary_data):
    x = binary_data(8, 12)
    model = VAE(12, 2, hidden=())
    with pytest.raises(ValueError, match="lr_schedule must be"):
        fit(model, x, 1, lr_schedule="linear", progress=False)
    with pytest.raises(ValueError, match="lr must be > 0"):
        fit(model, x, 1, lr=0.0, progress=False)
    with pytest.raises(ValueError, match="train must have last dimension 12"):
        fit(model, x[:, :5], 1, progress=False)
    with pytest.raises(TypeError, match="train must have the model's dtype"):
        fit(model, x.double(), 1, progress=False)


# --- the optimiser --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fit_is_the_plain_pytorch_loop(binary_data, likelihood, cosine):
    # The built-in MLP (hand-written gradient) and the same model behind a subclass (autograd) both give
    # the parameters of the plain loop: torch.optim.Adam on loss.backward(), same batches and noise.
    x = binary_data(40, 12).double()
    kwargs = dict(batch_size=16, lr=3e-3, n_samples=2, seed=4)
    for cls in (VAE, Recording):
        model = cls(12, 3, hidden=(6, 5), likelihood=likelihood, seed=0).double()
        fit(model, x, 3, lr_schedule="cosine" if cosine else "constant", progress=False, **kwargs)
        ref = _reference_fit(cls(12, 3, hidden=(6, 5), likelihood=likelihood, seed=0).double(), x, 3,
                             cosine=cosine, **kwargs)
        _close(model, ref)


def test_fit_leaves_no_gradients_behind(binary_data):
    model = VAE(12, 2, hidden=(8,), seed=0)
    fit(model, binary_data(32, 12), 1, batch_size=8, progress=False)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr", [1e2, 1e3, 1e5, 1e10, 1e30])
def test_after_divergence_the_model_has_a_finite_training_elbo_or_the_error_says_not(likelihood, dtype, lr):
    # The review's case, VAE(6, 2, hidden=(4,)) at lr = 1e3, and 19 variants of likelihood, dtype and lr.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=g, dtype=dtype)
    if likelihood == "bernoulli":
        x = (x < 0.5).to(dtype)
    model = VAE(6, 2, hidden=(4,), likelihood=likelihood, seed=0).to(dtype)
    try:
        fit(model, x, 5, lr=lr, batch_size=16, progress=False)
    except TrainingDivergedError as err:
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
        ours = float(elbo(model, x, generator=torch.Generator().manual_seed(5)).elbo.detach().mean())
        if math.isfinite(err.train_elbo):
            assert "nats per example" in str(err) and math.isfinite(ours)
        else:
            assert "NOT finite" in str(err)
    else:  # training survived: the model it leaves is usable
        assert math.isfinite(float(elbo(model, x).elbo.detach().mean()))
