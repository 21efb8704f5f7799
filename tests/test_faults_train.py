"""Faults in training, found by a fault-injection pass: fit and seeded construction under the global
generator, threads, grad and inference modes, and errors raised part-way through a run.

1. The global generator. A learner's module may draw from PyTorch's global generator (``nn.Dropout``,
   ``torch.randn`` without a generator, a ``DataLoader`` that shuffles without one). ``fit(seed=...)``
   must give the same parameters whatever the caller did to that generator, leave it exactly as it was
   (also on an error), and a run continued by a second call (or from a checkpoint) must equal the long
   run bit for bit. fit seeds the global generators at the start of every epoch with
   ``vaelib.train.epoch_seed(seed, epoch)``: a plain loop that does the same reproduces fit.
2. Threads. ``VAE(..., seed=0)`` built in several threads at once must be the same model every time
   (vaelib's seeded blocks share one lock, :data:`vaelib.model.GLOBAL_RNG_LOCK`), also while another
   thread runs ``fit`` on a model with dropout.
3. Grad modes. fit trains any model inside ``torch.no_grad()``, ``torch.set_grad_enabled(False)`` and
   ``torch.inference_mode()``, with the same result as outside, and leaves the caller's mode as it was.
4. An error part-way (an exception or ``KeyboardInterrupt`` from the learner's module at some batch or
   in the validation, or a divergence) leaves a documented model: without ``patience``, the model as
   after the last complete epoch, with ``model.fit_state`` at that point, so that a call for the
   remaining epochs gives exactly the uninterrupted run (no complete epoch: the model as before the
   call, its previous ``fit_state`` included); with ``patience``, the best epoch's parameters. Every
   module's train/eval mode, grad mode and the global generator are as before the call, and a note on the
   exception says what was kept.

Every model is tiny (12 pixels, 32 examples): the file runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading

import pytest
import torch
from torch import nn

import vaelib
import vaelib.train
from vaelib import VAE, FitState, TrainingDivergedError, elbo, fit, load, save
from vaelib.model import seeded

X_DIM, Z_DIM = 12, 2


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _data(n: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, X_DIM, generator=g) < 0.5).float()
    flips = (torch.rand(n, X_DIM, generator=g) < 0.1).float()
    return (protos[torch.randint(0, 4, (n,), generator=g)] + flips) % 2


X = _data()
VALID = 1 - X[:16]  # unlike the training data: its ELBO rises, then falls as the model fits X


class DropoutEncoder(nn.Module):
    """A learner's encoder with batch norm (buffers that training updates) and dropout (masks drawn from the
    global generator)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        # (No bias before the batch norm: its gradient would be rounding noise, which Adam scales up to lr.)
        self.net = nn.Sequential(nn.Linear(X_DIM, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(p),
                                 nn.Linear(8, 2 * Z_DIM))

    def forward(self, x):
        return tuple(self.net(x).chunk(2, dim=-1))


class Learner(VAE):
    """A learner's subclass (overriding ``encode``) with the dropout encoder. ``fail_at=n`` raises ``error``
    from its ``n``-th call in training mode (one per batch), ``fail_in_eval=n`` from its ``n``-th call in
    evaluation mode (one per validation after an epoch; the last one checks the last update)."""

    def __init__(self, fail_at: int | None = None, error: type[BaseException] = RuntimeError,
                 fail_in_eval: int | None = None) -> None:
        with seeded(0):
            encoder = DropoutEncoder()
        super().__init__(X_DIM, Z_DIM, hidden=(8,), encoder=encoder, seed=0)
        self.fail_at, self.fail_in_eval, self.error = fail_at, fail_in_eval, error
        self.calls = {True: 0, False: 0}

    def encode(self, x, c=None):
        self.calls[self.training] += 1
        if self.calls[self.training] == (self.fail_at if self.training else self.fail_in_eval):
            raise self.error(f"the learner's encoder fails at its call {self.calls[self.training]}")
        return super().encode(x, c)


def _all_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# --- 1. the global generator ------------------------------------------------------------------------------


def test_fit_of_a_model_with_dropout_does_not_depend_on_the_callers_global_generator():
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = Learner()
        fit(model, X, 3, batch_size=8, seed=0, progress=False)
        results.append(_params(model))
    assert _same(*results)
    other = Learner()
    fit(other, X, 3, batch_size=8, seed=1, progress=False)  # fit's seed does choose the masks
    assert not _same(results[0], _params(other))


class _Shuffled(torch.utils.data.Dataset):
    def __len__(self):
        return X.shape[0]

    def __getitem__(self, i):
        return X[i]


@pytest.mark.parametrize("what", ["built-in", "dropout", "Normal posterior", "shuffling DataLoader", "patience"])
def test_fit_leaves_the_global_generator_as_it_was(what):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    if what == "built-in":
        fit(VAE(X_DIM, Z_DIM, hidden=(8,), seed=0), X, 2, batch_size=8, progress=False)
    elif what == "dropout":
        fit(Learner(), X, 2, batch_size=8, progress=False)
    elif what == "Normal posterior":
        class NormalPosterior(VAE):
            def posterior(self, x, c=None):
                mu, logvar = self.encode(x)
                return torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * logvar).exp()), 1)

        fit(NormalPosterior(X_DIM, Z_DIM, hidden=(8,), seed=0), X, 2, batch_size=8, progress=False)
    elif what == "shuffling DataLoader":  # a DataLoader without a generator draws its order from the global one
        fit(Learner(), torch.utils.data.DataLoader(_Shuffled(), batch_size=8, shuffle=True), 2, progress=False)
    else:
        fit(Learner(), X, 3, valid=VALID, patience=1, batch_size=8, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_shuffling_dataloader_without_a_generator_gives_the_same_run_whatever_the_global_generator():
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = VAE(X_DIM, Z_DIM, hidden=(8,), seed=0)
        fit(model, torch.utils.data.DataLoader(_Shuffled(), batch_size=8, shuffle=True), 2, seed=3, progress=False)
        results.append(_params(model))
    assert _same(*results)


def test_a_continued_run_with_dropout_is_the_long_run_bit_for_bit(tmp_path):
    long = Learner()
    torch.manual_seed(1)
    fit(long, X, 4, valid=VALID, batch_size=8, seed=2, progress=False)
    twice = Learner()
    torch.manual_seed(2)
    fit(twice, X, 2, valid=VALID, batch_size=8, seed=2, progress=False)
    torch.manual_seed(3)  # whatever the caller does between the calls
    torch.rand(17)
    fit(twice, X, 2, valid=VALID, batch_size=8, seed=2, progress=False)
    assert _same(_params(long), _params(twice))
    # ... and through a checkpoint, into a fresh model in a fresh global state.
    first = Learner()
    fit(first, X, 2, valid=VALID, batch_size=8, seed=2, progress=False)
    save(first, tmp_path / "half.pt")
    torch.manual_seed(4)
    resumed = load(tmp_path / "half.pt", model=Learner())
    fit(resumed, X, 2, valid=VALID, batch_size=8, seed=2, progress=False)
    assert _same(_params(long), _params(resumed))


class RecordsGlobalDraws(VAE):
    """Records one draw of the global generator per training batch (what dropout would see)."""

    def __init__(self) -> None:
        super().__init__(X_DIM, Z_DIM, hidden=(4,), seed=0)
        self.draws: list[torch.Tensor] = []

    def encode(self, x, c=None):
        if self.training:
            self.draws.append(torch.rand(3))
        return super().encode(x, c)


def test_the_global_generator_is_seeded_with_epoch_seed_at_the_start_of_every_epoch():
    epoch_seed = vaelib.train.epoch_seed
    a, b = RecordsGlobalDraws(), RecordsGlobalDraws()
    fit(a, X, 2, batch_size=16, seed=7, progress=False)  # 2 batches per epoch
    fit(b, X, 2, batch_size=16, seed=8, progress=False)
    for epoch in (1, 2):
        torch.manual_seed(epoch_seed(7, epoch))
        expected = [torch.rand(3), torch.rand(3)]
        assert all(torch.equal(d, e) for d, e in zip(a.draws[2 * epoch - 2 : 2 * epoch], expected))
    assert not torch.equal(a.draws[0], a.draws[2])  # fresh masks every epoch
    assert not torch.equal(a.draws[0], b.draws[0])  # and for every seed
    assert len({epoch_seed(s, e) for s in range(20) for e in range(1, 21)}) == 400
    assert all(0 <= epoch_seed(s, e) < 2**63 for s in (0, 2**62) for e in (1, 10**6))
    with pytest.raises(ValueError, match="epoch must be >= 1"):
        epoch_seed(0, 0)


def test_a_plain_loop_that_seeds_every_epoch_with_epoch_seed_reproduces_a_dropout_fit():
    # The plain loop of chapter 5 (as in test_train), plus the one rule for the global generator.
    model = Learner().double()
    x = X.double()
    fit(model, x, 3, batch_size=8, lr=1e-2, seed=3, progress=False)
    reference = Learner().double()
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    reference.train()
    for epoch in range(1, 4):
        torch.manual_seed(vaelib.train.epoch_seed(3, epoch))
        perm = torch.randperm(32, generator=g)
        for start in range(0, 32, 8):
            loss = -elbo(reference, x[perm[start : start + 8]], 1, 1.0, g).objective.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_fit_leaves_both_global_generators_and_does_not_depend_on_them():
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # CPU and every GPU
        cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
        model = Learner().cuda()
        fit(model, X.cuda(), 3, batch_size=8, seed=0, progress=False)
        assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), gpu)
        results.append(_params(model))
    assert _same(*results)
    gpu = torch.cuda.get_rng_state()
    VAE(X_DIM, Z_DIM, hidden=(8,), seed=0)
    with seeded(3):
        nn.Linear(4, 4)
    assert torch.equal(torch.cuda.get_rng_state(), gpu)  # seeding never touches a GPU it does not use


# --- 2. threads ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _frequent_thread_switches():
    """Make the interpreter switch threads every microsecond, so that races show at once."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _in_threads(*jobs, repeat: int) -> list[list[object]]:
    """Run each job ``repeat`` times in its own thread, all starting together; their results."""
    results: list[list[object]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def work(i):
        try:
            barrier.wait()
            for _ in range(repeat):
                results[i].append(jobs[i]())
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    with _frequent_thread_switches():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results


def test_seeded_construction_from_several_threads_at_once():
    def build():
        return _all_params(VAE(16, 4, hidden=(16,), seed=0))

    reference = build()
    before = torch.get_rng_state()
    results = _in_threads(build, build, build, build, repeat=40)
    distinct = {tuple(t.tolist()) for r in results for t in r}
    assert len(distinct) == 1 and torch.equal(results[0][0], reference)
    assert torch.equal(torch.get_rng_state(), before)


def test_seeded_blocks_and_fit_from_several_threads_at_once():
    def build():
        return _all_params(VAE(16, 4, hidden=(16,), seed=1))

    def block():
        with seeded(3):
            return _all_params(nn.Linear(16, 16))

    def train():
        model = Learner()
        fit(model, X, 2, batch_size=8, seed=0, progress=False)
        return _all_params(model)

    probed = VAE(16, 4, hidden=(16,), seed=2)

    def probe():  # forks the global generator (as fit does before training): must not rewind the others
        for _ in range(20):
            vaelib.model.probe_likelihood(probed)

    references = [build(), block(), train()]
    results = _in_threads(build, block, train, probe, repeat=15)
    for job, (reference, got) in enumerate(zip(references, results)):
        assert all(torch.equal(t, reference) for t in got), ["build", "block", "train"][job]


def test_the_seeding_lock_is_reentrant():
    with seeded(0):
        model = VAE(16, 4, hidden=(16,), seed=0)  # a seeded block inside another
    assert torch.equal(_all_params(model), _all_params(VAE(16, 4, hidden=(16,), seed=0)))


# --- 3. grad and inference modes ------------------------------------------------------------------------


class PosteriorOverride(VAE):
    def posterior(self, x, c=None):
        return super().posterior(x, c)


class LikelihoodOverride(VAE):
    def likelihood(self, z, c=None):
        return super().likelihood(z, c)


CONTEXTS = {
    "no_grad": torch.no_grad,
    "set_grad_enabled(False)": lambda: torch.set_grad_enabled(False),
    "inference_mode": torch.inference_mode,
}


@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("what", ["posterior overridden", "likelihood overridden", "built-in, IWAE", "built-in"])
def test_fit_trains_any_model_inside_a_no_grad_or_inference_mode_block(context, what):
    cls = {"posterior overridden": PosteriorOverride, "likelihood overridden": LikelihoodOverride}.get(what, VAE)
    objective = vaelib.objectives.IWAE(2) if what == "built-in, IWAE" else None
    outside, inside = cls(X_DIM, Z_DIM, hidden=(8,), seed=0), cls(X_DIM, Z_DIM, hidden=(8,), seed=0)
    fit(outside, X, 2, valid=VALID, objective=objective, batch_size=8, progress=False)
    with CONTEXTS[context]():
        fit(inside, X, 2, valid=VALID, objective=objective, batch_size=8, progress=False)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (context == "inference_mode")
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert _same(_params(inside), _params(outside))
    assert not any(p.is_inference() for p in inside.parameters())


def test_a_run_begun_inside_inference_mode_continues_outside_it():
    model = VAE(X_DIM, Z_DIM, hidden=(8,), seed=0)
    with torch.inference_mode():
        fit(model, X, 1, batch_size=8, progress=False)
    fit(model, X, 1, batch_size=8, progress=False)
    long = VAE(X_DIM, Z_DIM, hidden=(8,), seed=0)
    fit(long, X, 2, batch_size=8, progress=False)
    assert _same(_params(model), _params(long))


def test_data_made_inside_inference_mode_trains_a_model_outside_it():
    with torch.inference_mode():
        x = X.clone()
    a, b = PosteriorOverride(X_DIM, Z_DIM, hidden=(8,), seed=0), PosteriorOverride(X_DIM, Z_DIM, hidden=(8,), seed=0)
    fit(a, x, 2, valid=x, batch_size=8, progress=False)
    fit(b, X, 2, valid=X, batch_size=8, progress=False)
    assert _same(_params(a), _params(b))


def test_a_model_built_inside_inference_mode_is_refused_clearly():
    with torch.inference_mode():
        model = VAE(X_DIM, Z_DIM, hidden=(8,), seed=0)
    before = _params(model)
    with pytest.raises(ValueError, match="inside torch.inference_mode"):
        fit(model, X, 1, progress=False)
    assert _same(_params(model), before)


# --- 4. errors part-way through -------------------------------------------------------------------------

BATCHES = 4  # 32 examples in batches of 8


def _notes(err: BaseException) -> str:
    return "\n".join(getattr(err, "__notes__", []))


def _trained(epochs: int, **kwargs) -> Learner:
    model = Learner()
    if epochs:
        fit(model, X, epochs, batch_size=8, seed=0, progress=False, **kwargs)
    return model


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("fail_at", [1, 3, 4, 5, 8, 11])
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_an_error_mid_fit_leaves_the_model_as_after_the_last_complete_epoch(error, fail_at, mode):
    model = Learner(fail_at=fail_at, error=error)
    if mode == "eval":
        model.eval()
    elif mode == "mixed":
        model.encoder.net[1].eval()  # a frozen batch norm, say
    modes, before = _modes(model), _params(model)
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    with torch.no_grad() if mode == "mixed" else contextlib.nullcontext():
        with pytest.raises(error, match="fails at its call") as info:
            fit(model, X, 3, batch_size=8, seed=0, progress=False)
        assert torch.is_grad_enabled() == (mode != "mixed")
    complete, batch = divmod(fail_at - 1, BATCHES)
    assert _modes(model) == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    note = _notes(info.value)
    assert f"vaelib.fit stopped at epoch {complete + 1}, batch {batch + 1}" in note
    assert "the train/eval modes they had before the call" in note
    if complete == 0:
        assert _same(_params(model), before)
        assert model.fit_state is None
        assert "as it was before the call" in note
    else:
        assert _same(_params(model), _params(_trained(complete)))
        assert isinstance(model.fit_state, FitState) and model.fit_state.epoch == complete
        assert f"as after epoch {complete}, the last complete one" in note
        assert f"fit(model, train, {3 - complete}, ...)" in note
    # The run goes on to exactly the uninterrupted one, whatever the global generator does meanwhile.
    model.fail_at = None
    torch.manual_seed(12)
    fit(model, X, 3 - complete, batch_size=8, seed=0, progress=False)
    assert _same(_params(model), _params(_trained(3)))


def test_an_error_in_a_continuing_call_gives_back_the_run_it_continued():
    model = _trained(1)
    run = model.fit_state
    kept = {(i, k): v.clone() for i, s in run.optimizer["state"].items() for k, v in s.items()}
    generator = run.generator.clone()
    model.fail_at = model.calls[True] + 2  # the second batch of the next call
    with pytest.raises(RuntimeError, match="fails at its call") as info:
        fit(model, X, 2, batch_size=8, seed=0, progress=False)
    assert "as it was before the call" in _notes(info.value)
    assert model.fit_state is run  # the same run, untouched
    assert all(torch.equal(v, kept[i, k]) for i, s in run.optimizer["state"].items() for k, v in s.items())
    assert torch.equal(run.generator, generator)
    assert _same(_params(model), _params(_trained(1)))
    model.fail_at = None
    fit(model, X, 2, batch_size=8, seed=0, progress=False)
    assert _same(_params(model), _params(_trained(3)))


def test_a_successful_continuing_call_does_not_alter_the_run_it_was_given():
    model = _trained(1)
    run = model.fit_state
    kept = {(i, k): v.clone() for i, s in run.optimizer["state"].items() for k, v in s.items()}
    fit(model, X, 1, batch_size=8, seed=0, progress=False)
    assert model.fit_state is not run
    assert all(torch.equal(v, kept[i, k]) for i, s in run.optimizer["state"].items() for k, v in s.items())


@pytest.mark.parametrize("fail_in_eval, complete", [(1, 0), (2, 1), (4, 3)])
def test_an_error_in_the_validation_undoes_that_epoch(fail_in_eval, complete):
    # Eval-mode calls: the validation after each epoch, then (call 4) the check of the last update.
    model = Learner(fail_in_eval=fail_in_eval)
    before = _params(model)
    with pytest.raises(RuntimeError, match="fails at its call") as info:
        fit(model, X, 3, valid=VALID, batch_size=8, seed=0, progress=False)
    note = _notes(info.value)
    if complete == 0:
        assert _same(_params(model), before) and model.fit_state is None
    else:
        assert _same(_params(model), _params(_trained(complete, valid=VALID)))
        assert model.fit_state.epoch == complete
    where = "the check of the last update" if complete == 3 else f"the validation after epoch {complete + 1}"
    assert f"vaelib.fit stopped in {where}" in note
    model.fail_in_eval = None
    if complete < 3:
        fit(model, X, 3 - complete, valid=VALID, batch_size=8, seed=0, progress=False)
    assert _same(_params(model), _params(_trained(3, valid=VALID)))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("fail_at", [2, 10, 23, 30])
def test_with_patience_an_error_mid_fit_restores_the_best_epoch(error, fail_at):
    model = Learner(fail_at=fail_at, error=error)
    before, modes = _params(model), _modes(model)
    rng = torch.get_rng_state()
    with pytest.raises(error) as info:
        fit(model, X, 10, valid=VALID, patience=9, batch_size=8, seed=0, progress=False)
    complete = (fail_at - 1) // BATCHES
    note = _notes(info.value)
    assert _modes(model) == modes and torch.equal(torch.get_rng_state(), rng)
    assert model.fit_state is None  # a call with patience ends its run
    if complete == 0:
        assert _same(_params(model), before) and "as it was before the call" in note
        return
    # A call of the completed epochs with patience restores the same best epoch.
    reference = Learner()
    h = fit(reference, X, complete, valid=VALID, patience=9, batch_size=8, seed=0, progress=False)
    assert _same(_params(model), _params(reference))
    assert f"the parameters of its best epoch so far (epoch {h.best_epoch} of this call" in note
    if fail_at == 30:  # the best epoch is not the last complete one: restoring it is what the test checks
        assert h.best_epoch < complete


def test_the_best_epoch_is_not_always_the_last_one_here():
    h = fit(Learner(), X, 7, valid=VALID, batch_size=8, seed=0, progress=False)
    assert h.best_epoch < 7


class Poisoned(Learner):
    """The decoder returns NaN at its ``at``-th training call (a learner's numerical bug)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.decodes = at, 0

    def decode(self, z, c=None):
        out = super().decode(z, c)
        if self.training:
            self.decodes += 1
            if self.decodes == self.at:
                return out + math.nan
        return out


def test_with_patience_a_divergence_restores_the_best_epoch():
    model = Poisoned(at=30)  # epoch 8, batch 2
    modes = _modes(model)
    with pytest.raises(TrainingDivergedError, match="loss is not finite at epoch 8, batch 2") as info:
        fit(model, X, 10, valid=VALID, patience=9, batch_size=8, seed=0, progress=False)
    reference = Learner()
    h = fit(reference, X, 7, valid=VALID, patience=9, batch_size=8, seed=0, progress=False)
    assert h.best_epoch < 7
    assert _same(_params(model), _params(reference))
    assert f"the parameters of its best epoch so far, epoch {h.best_epoch}" in str(info.value)
    assert math.isfinite(info.value.train_elbo)
    assert _modes(model) == modes and model.fit_state is None
    assert "model.fit_state is None" in _notes(info.value)


def test_without_patience_a_divergence_keeps_its_rule_and_restores_the_modes():
    model = Poisoned(at=30)
    model.decoder.eval()  # each module's own mode comes back
    modes = _modes(model)
    with pytest.raises(TrainingDivergedError, match="it had at epoch 5, batch 1"):
        fit(model, X, 10, batch_size=8, seed=0, progress=False)
    assert _modes(model) == modes and model.fit_state is None


def test_a_successful_fit_still_leaves_evaluation_mode():
    model = Learner()
    assert model.training
    fit(model, X, 1, batch_size=8, progress=False)
    assert not any(_modes(model))
