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


class _Calls(list):
    """(batch, beta) of each step of fit; ``terms`` holds the ELBOTerms each step computed."""

    def __init__(self) -> None:
        super().__init__()
        self.terms: list[vaelib.ELBOTerms] = []


@pytest.fixture
def record_batches(monkeypatch):
    """Replace fit's ELBO-and-gradient step with a wrapper that records each step's batch, beta and terms."""
    calls = _Calls()
    original = vaelib.train._elbo_backward

    def recording(model, xb, n_samples, beta, generator):
        terms = original(model, xb, n_samples, beta, generator)
        calls.append((xb.detach().clone(), beta))
        calls.terms.append(terms)
        return terms

    monkeypatch.setattr(vaelib.train, "_elbo_backward", recording)
    return calls


@pytest.fixture
def record_steps(monkeypatch):
    """Snapshots of fit's parameters after each Adam step."""
    snapshots: list[list[torch.Tensor]] = []
    original = vaelib.train._Adam.step

    def recording(self, lr):
        original(self, lr)
        snapshots.append([p.detach().clone() for p in self.params])

    monkeypatch.setattr(vaelib.train._Adam, "step", recording)
    return snapshots


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


def test_an_epoch_visits_every_example_once_and_reports_mean_terms(binary_data, record_batches):
    x = binary_data(40, 12)
    h = fit(VAE(12, 2, hidden=(), seed=0), x, 2, batch_size=16, progress=False)
    assert [xb.shape[0] for xb, _ in record_batches] == [16, 16, 8] * 2
    for epoch in range(2):
        seen = torch.cat([xb for xb, _ in record_batches[3 * epoch : 3 * epoch + 3]])
        assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, x.tolist()))
        terms = record_batches.terms[3 * epoch : 3 * epoch + 3]
        # History holds the mean over the epoch's examples (not the mean of the batch means).
        assert h.train_elbo[epoch] == pytest.approx(float(sum(t.elbo.detach().sum() for t in terms)) / 40, rel=1e-6)
        assert h.train_kl[epoch] == pytest.approx(float(sum(t.kl.detach().sum() for t in terms)) / 40, rel=1e-6)
    first = torch.cat([xb for xb, _ in record_batches[:3]])
    assert not torch.equal(first, torch.cat([xb for xb, _ in record_batches[3:]]))  # reshuffled


def test_early_stopping_restores_the_best_parameters(binary_data, record_steps):
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
    # ... and they are the parameters after the best epoch's last step, not the final ones.
    steps_per_epoch = 4
    best = record_steps[h.best_epoch * steps_per_epoch - 1]
    final = record_steps[-1]
    got = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, best))
    assert not all(torch.equal(a, b) for a, b in zip(got, final))


def test_patience_needs_validation_data(binary_data):
    with pytest.raises(ValueError, match="patience .* needs validation data"):
        fit(VAE(12, 2, hidden=()), binary_data(8, 12), 2, patience=1, progress=False)


def test_kl_warmup_schedule(binary_data, record_batches):
    x = binary_data(32, 12)
    h = fit(VAE(12, 2, hidden=(), seed=0), x, 6, batch_size=8, beta=2.0, warmup_epochs=4, progress=False)
    # beta_t = beta * min(1, step / warmup_steps), steps counted from 1; 4 steps per epoch.
    betas = [b for _, b in record_batches]
    expected = [2.0 * min(1.0, s / 16) for s in range(1, 25)]
    assert betas == pytest.approx(expected, rel=1e-12)
    assert h.beta == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rel=1e-12)


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


def test_binarize_default_for_a_bernoulli_model_on_grey_data(record_batches):
    grey = torch.rand(24, 12, generator=torch.Generator().manual_seed(0))
    grey[:, 0], grey[:, 1] = 0.0, 1.0
    a = VAE(12, 2, hidden=(), seed=0)
    fit(a, grey, 3, batch_size=8, progress=False)
    batches = [xb for xb, _ in record_batches]
    assert all(_is_binary(xb) for xb in batches)
    assert all(bool((xb[:, 0] == 0).all() and (xb[:, 1] == 1).all()) for xb in batches)
    # A fresh binarisation every epoch: an epoch's images differ from the previous epoch's.
    epochs = [torch.cat(batches[i : i + 3]).sum(0) for i in (0, 3, 6)]
    assert not torch.equal(epochs[0], epochs[1])
    # binarize=None is binarize=True here: bit-identical parameters.
    b = VAE(12, 2, hidden=(), seed=0)
    fit(b, grey, 3, batch_size=8, binarize=True, progress=False)
    assert _same(_params(a), _params(b))


def test_binary_data_is_not_binarised_again(binary_data, record_batches):
    x = binary_data(24, 12)
    fit(VAE(12, 2, hidden=(), seed=0), x, 1, batch_size=8, progress=False)
    seen = torch.cat([xb for xb, _ in record_batches])
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen, x[perm])


def test_gaussian_model_keeps_grey_levels_unless_asked(record_batches):
    grey = torch.rand(16, 12, generator=torch.Generator().manual_seed(0))
    fit(VAE(12, 2, hidden=(), likelihood="gaussian", seed=0), grey, 1, batch_size=8, progress=False)
    assert not any(_is_binary(xb) for xb, _ in record_batches)
    record_batches.clear()
    fit(VAE(12, 2, hidden=(), likelihood="gaussian", seed=0), grey, 1, batch_size=8, binarize=True, progress=False)
    assert all(_is_binary(xb) for xb, _ in record_batches)


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
        model.to_x.bias[0] = math.inf
    before = _params(model)
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch 1") as info:
        fit(model, binary_data(32, 12), 3, batch_size=8, progress=False)
    assert (info.value.epoch, info.value.batch) == (1, 1)
    assert info.value.history.epochs == 0
    assert isinstance(info.value, FloatingPointError)
    assert _same(_params(model), before)  # the failing step was never applied


def test_nan_loss_mid_training_keeps_the_last_good_parameters(binary_data, monkeypatch, record_steps):
    original = vaelib.train._elbo_backward
    calls = [0]

    def poisoned(model, xb, n_samples, beta, generator):
        calls[0] += 1
        terms = original(model, xb, n_samples, beta, generator)
        if calls[0] == 7:  # epoch 2, batch 3 (4 batches per epoch)
            return vaelib.ELBOTerms(terms.elbo, terms.reconstruction + math.nan, terms.kl, beta)
        return terms

    monkeypatch.setattr(vaelib.train, "_elbo_backward", poisoned)
    model = VAE(12, 2, hidden=(4,), seed=0)
    with pytest.raises(TrainingDivergedError, match="loss is not finite at epoch 2, batch 3") as info:
        fit(model, binary_data(32, 12), 3, batch_size=8, progress=False)
    assert (info.value.epoch, info.value.batch) == (2, 3)
    assert info.value.history.epochs == 1
    assert len(record_steps) == 6  # six good steps were taken
    got = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, record_steps[-1]))
    assert all(bool(torch.isfinite(p).all()) for p in got)


def test_nan_gradient_is_caught_too(binary_data, monkeypatch, record_steps):
    original = vaelib.train._elbo_backward

    def nan_gradient(model, xb, n_samples, beta, generator):
        terms = original(model, xb, n_samples, beta, generator)
        model.to_mu.bias.grad[0] = math.nan  # a finite loss, one NaN gradient entry
        return terms

    monkeypatch.setattr(vaelib.train, "_elbo_backward", nan_gradient)
    model = VAE(12, 2, hidden=(4,), seed=0)
    with pytest.raises(TrainingDivergedError, match="gradient is not finite at epoch 1, batch 1"):
        fit(model, binary_data(16, 12), 2, batch_size=8, progress=False)
    assert record_steps == []
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_huge_learning_rate_diverges_cleanly(binary_data, record_steps):
    model = VAE(12, 2, hidden=(8,), seed=0)
    with pytest.raises(TrainingDivergedError) as info:
        fit(model, binary_data(64, 12), 5, batch_size=8, lr=1e30, progress=False)
    assert info.value.epoch >= 1 and info.value.batch >= 1
    assert f"epoch {info.value.epoch}, batch {info.value.batch}" in str(info.value)
    got = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, record_steps[-1]))
    assert all(bool(torch.isfinite(p).all()) for p in got)


@pytest.mark.parametrize("epochs, batch_size", [(1, 64), (3, 8)])
def test_an_update_that_overflows_the_parameters_is_undone(binary_data, epochs, batch_size):
    # lr = 1e39 overflows float32 in the very first update. Whether that was the last step of training
    # (1 epoch of 1 batch) or the next loss shows it, the model goes back to the parameters before it.
    model = VAE(12, 2, hidden=(8,), seed=0)
    before = _params(model)
    message = "the update at epoch 1, batch 1 .* made the parameters non-finite"
    with pytest.raises(TrainingDivergedError, match=message) as info:
        fit(model, binary_data(64, 12), epochs, batch_size=batch_size, lr=1e39, progress=False)
    assert (info.value.epoch, info.value.batch) == (1, 1)
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


# --- the optimiser and the overflow guard ---------------------------------------------------------------


def _adam_steps(grads: list[float], lr: float = 1.0) -> list[float]:
    """|change| of a scalar parameter under torch.optim.Adam for the gradient sequence ``grads``."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr, eps=0.0)
    steps = []
    for g in grads:
        before = float(p.detach())
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        steps.append(abs(float(p.detach()) - before))
    return steps


def test_adam_max_step_bounds_every_step_and_is_tight():
    bound = vaelib.train.adam_max_step()
    assert bound == pytest.approx(7.2703, abs=1e-4)
    b1, b2 = vaelib.train.ADAM_BETAS
    # Cauchy-Schwarz is an equality for g_i proportional to (b1/b2)^(T-i): the last step approaches the bound.
    for t in (1, 10, 100, 1000, 3000):  # (b1/b2)^3000 ~ 1e-136: its square is still a float64
        steps = _adam_steps([(b1 / b2) ** (t - i) for i in range(1, t + 1)])
        assert max(steps) <= bound
    assert steps[-1] > 0.97 * bound  # T = 3000: 7.09; the bound is attained as T grows
    # Wild gradients (random signs and magnitudes over 30 decades) never beat it either.
    g = torch.Generator().manual_seed(0)
    wild = (torch.randn(3000, generator=g, dtype=torch.float64) * 10 ** (30 * torch.rand(3000, generator=g) - 15))
    assert max(_adam_steps(wild.tolist())) <= bound
    with pytest.raises(ValueError, match="beta1\\*\\*2 < beta2"):
        vaelib.train.adam_max_step(0.99, 0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fits_adam_is_torch_adam_exactly(dtype):
    a, b = VAE(12, 2, hidden=(6,), seed=0).to(dtype), VAE(12, 2, hidden=(6,), seed=0).to(dtype)
    ours = vaelib.train._Adam(list(a.parameters()))
    reference = torch.optim.Adam(b.parameters(), lr=1.0, fused=True)
    g = torch.Generator().manual_seed(1)
    for step, lr in enumerate([1e-3, 5e-3, 2e-4, 1e-3, 0.0, 3e-3]):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g, dtype=dtype) * 10.0**step
            pb.grad = pa.grad.clone()
        reference.param_groups[0]["lr"] = lr
        ours.step(lr)
        reference.step()
        assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_no_parameter_copy_is_made_when_no_step_can_overflow(binary_data, monkeypatch):
    copies = []
    original = vaelib.train._OverflowGuard.before_step

    def counting(self, lr, grad_max):
        original(self, lr, grad_max)
        copies.append(self.backup is not None)

    monkeypatch.setattr(vaelib.train._OverflowGuard, "before_step", counting)
    fit(VAE(12, 2, hidden=(8,), seed=0), binary_data(64, 12), 3, batch_size=8, lr=1e-2, progress=False)
    assert len(copies) == 24 and not any(copies)
    copies.clear()
    with pytest.raises(TrainingDivergedError):
        fit(VAE(12, 2, hidden=(8,), seed=0), binary_data(64, 12), 3, batch_size=8, lr=1e39, progress=False)
    assert copies == [True]  # lr alone exceeds a float32: that step is copied, and undone


def test_fit_leaves_no_gradients_behind(binary_data):
    model = VAE(12, 2, hidden=(8,), seed=0)
    fit(model, binary_data(32, 12), 1, batch_size=8, progress=False)
    assert all(p.grad is None for p in model.parameters())
