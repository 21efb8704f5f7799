"""Models a learner builds: every vaelib function trains, scores, samples and saves what the model computes.

Six models, each unlike the built-in MLP in one way (a subclass overriding ``encode``, one overriding
``decode``, a tanh MLP from the learner's modules, a convolutional encoder, a decoder with dropout, a
Gaussian decoder of the learner's), are checked against straightforward computations written here with
plain PyTorch (autograd, ``torch.optim.Adam``, ``torch.distributions``) through their public ``encode`` and
``decode``. Float64 throughout: the two sides do the same arithmetic in another order, so they agree to
~1e-15 relative per operation; 1e-10 leaves room for a few hundred Adam steps' accumulation and still
catches any wrong term (a built-in layer trained instead of the learner's is O(1) off).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

import vaelib
import vaelib.train
from vaelib import VAE, elbo, fit, iwae_bound, load, log_likelihood, save
from vaelib.model import is_builtin_mlp

X_DIM, Z_DIM = 16, 2  # 4x4 images, so that a convolutional encoder is cheap


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TanhEncoder(nn.Module):
    def __init__(self, hidden: int = 7) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(X_DIM, hidden), nn.Tanh(), nn.Linear(hidden, 2 * Z_DIM))

    def forward(self, x):
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


def tanh_decoder(hidden: int = 7) -> nn.Module:
    return nn.Sequential(nn.Linear(Z_DIM, hidden), nn.Tanh(), nn.Linear(hidden, X_DIM))


class ConvEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.SiLU(), nn.Conv2d(3, 4, 2, stride=2), nn.SiLU())
        self.head = nn.Linear(4 * 2 * 2, 2 * Z_DIM)

    def forward(self, x):
        h = self.conv(x.view(-1, 1, 4, 4)).flatten(1)
        return tuple(self.head(h).chunk(2, dim=-1))


class EncodeOverride(VAE):
    """A subclass overriding the public encode with its own modules (the built-in encoder is unused)."""

    def __init__(self) -> None:
        super().__init__(X_DIM, Z_DIM, hidden=(5,), seed=0)
        self.encoder.requires_grad_(False)  # the built-in encoder is replaced: fit refuses unused trainables
        self.mine = TanhEncoder()

    def encode(self, x):
        return self.mine(x)


class DecodeOverride(VAE):
    """A subclass overriding the public decode: a softsign MLP of its own."""

    def __init__(self) -> None:
        super().__init__(X_DIM, Z_DIM, hidden=(5,), seed=0)
        self.decoder.requires_grad_(False)  # replaced by `mine`
        self.mine = nn.Sequential(nn.Linear(Z_DIM, 6), nn.Softsign(), nn.Linear(6, X_DIM))

    def decode(self, z):
        return self.mine(z)


def _models() -> dict[str, VAE]:
    torch.manual_seed(0)  # the learner's modules are initialised from the global generator
    return {
        "subclass overriding encode": EncodeOverride(),
        "subclass overriding decode": DecodeOverride(),
        "tanh MLP from modules": VAE(X_DIM, Z_DIM, encoder=TanhEncoder(), decoder=tanh_decoder()),
        "convolutional encoder": VAE(X_DIM, Z_DIM, hidden=(6,), encoder=ConvEncoder(), seed=0),
        "decoder with dropout": VAE(X_DIM, Z_DIM, hidden=(6,), seed=0, decoder=nn.Sequential(
            nn.Linear(Z_DIM, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, X_DIM))),
        "own Gaussian decoder": VAE(X_DIM, Z_DIM, likelihood="gaussian", encoder=TanhEncoder(),
                                    decoder=tanh_decoder()),
    }


NAMES = list(_models())


def _model(name: str) -> VAE:
    return _models()[name].double()


def _data(model: VAE, n: int = 24, seed: int = 0) -> torch.Tensor:
    """Four prototype images with 10% of their pixels flipped (binary), or with noise (grey levels)."""
    g = _gen(seed)
    protos = (torch.rand(4, X_DIM, generator=_gen(100)) < 0.5).double()
    x = protos[torch.randint(0, 4, (n,), generator=g)]
    if model.likelihood_name == "bernoulli":
        return (x + (torch.rand(n, X_DIM, generator=g) < 0.1).double()) % 2
    return x + 0.1 * torch.randn(n, X_DIM, generator=g, dtype=torch.float64)


def _state(model: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _log_px_z(model: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) from model.decode, with torch.distributions (independent of vaelib's formulas)."""
    out = model.decode(z.reshape(-1, Z_DIM)).reshape(*z.shape[:-1], X_DIM)
    if model.likelihood_name == "bernoulli":
        return Bernoulli(logits=out).log_prob(x.expand_as(out)).sum(-1)
    return Normal(out, torch.exp(0.5 * model.obs_logvar)).log_prob(x.expand_as(out)).sum(-1)


def _plain_loop(model: VAE, x: torch.Tensor, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """The training loop of chapter 5 in plain PyTorch: same shuffles and noise as fit (binary data), and
    dropout's masks from the global generator seeded as fit seeds it at the start of every epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = _gen(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        torch.manual_seed(vaelib.train.epoch_seed(seed, epoch))
        perm = torch.randperm(x.shape[0], generator=g)
        for start in range(0, x.shape[0], batch_size):
            xb = x[perm[start : start + batch_size]]
            mu, logvar = model.encode(xb)
            eps = torch.randn((1, *mu.shape), generator=g, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps
            kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)
            loss = -(_log_px_z(model, xb, z).mean(0) - kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


# --- training -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_none_takes_the_built_in_fast_path(name):
    model = _model(name)
    assert not is_builtin_mlp(model)
    with pytest.raises(TypeError, match="elbo_backward differentiates only the built-in MLP"):
        vaelib.elbo_backward(model, _data(model))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("epochs, batch_size", [(1, 24), (3, 8)])
def test_fit_is_autograd_and_adam_on_the_models_own_modules(name, epochs, batch_size):
    # One step (one epoch of one batch), then 9 steps over 3 epochs: fit's parameters are the plain loop's.
    model, reference = _model(name), _model(name)
    x = _data(model)
    torch.manual_seed(1)  # whatever the global generator holds: fit and the plain loop seed dropout's masks
    fit(model, x, epochs, batch_size=batch_size, lr=1e-2, seed=3, progress=False)
    torch.manual_seed(2)
    _plain_loop(reference, x, epochs, batch_size, lr=1e-2, seed=3)
    before = _model(name)
    changed = 0
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-10, atol=1e-12, msg=key)
        changed += not torch.equal(value, before.state_dict()[key])
    assert changed > 0
    # The learner's modules are what moved: every parameter that the forward pass uses changed.
    used = {k for k in before.state_dict() if not torch.equal(before.state_dict()[k], reference.state_dict()[k])}
    assert any(k.startswith(("mine", "encoder.net", "encoder.conv", "decoder.0", "decoder.3")) for k in used)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_epochs_train_the_model_as_well_as_the_plain_loop(name):
    model, reference = _model(name), _model(name)
    x, x_test = _data(model, 48), _data(model, 32, seed=9)
    untrained = float(elbo(model, x_test, 10, generator=_gen(5)).elbo.detach().mean())
    h = fit(model, x, 30, batch_size=16, lr=2e-2, seed=0, progress=False)
    _plain_loop(reference, x, 30, 16, lr=2e-2, seed=0)
    ours = float(elbo(model, x_test, 10, generator=_gen(5)).elbo.detach().mean())
    theirs = float(elbo(reference, x_test, 10, generator=_gen(5)).elbo.detach().mean())
    assert ours == pytest.approx(theirs, abs=1e-8)
    assert ours > untrained + 0.5 and h.train_elbo[-1] > h.train_elbo[0] + 0.5


def test_frozen_parameters_stay_bit_identical_and_unused_trainable_ones_are_refused():
    model = VAE(X_DIM, Z_DIM, hidden=(6,), seed=0).double()
    model.decoder.to_x.weight.requires_grad_(False)
    model.extra = nn.Parameter(torch.ones(3, dtype=torch.float64))  # used by nothing
    before = _state(model)
    with pytest.raises(ValueError, match="extra of VAE get no gradient"):
        fit(model, _data(model), 3, batch_size=8, lr=1e-2, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())  # nothing was updated
    model.extra.requires_grad_(False)
    assert not is_builtin_mlp(model)
    fit(model, _data(model), 3, batch_size=8, lr=1e-2, progress=False)
    after = _state(model)
    assert torch.equal(after["decoder.to_x.weight"], before["decoder.to_x.weight"])
    assert torch.equal(after["extra"], before["extra"])
    assert not torch.equal(after["encoder.to_mu.weight"], before["encoder.to_mu.weight"])
    assert model.decoder.to_x.weight.grad is None and model.extra.grad is None


def test_a_failed_call_leaves_the_model_untouched():
    model = VAE(X_DIM, Z_DIM, hidden=(6,), seed=0)
    before = _state(model)
    with pytest.raises(TypeError, match="device must be a torch.device"):
        fit(model, _data(model).float(), 1, device=torch.float64, progress=False)
    with pytest.raises(TypeError, match="device must be a torch.device"):
        VAE(X_DIM, Z_DIM, device=torch.float64)
    with pytest.raises(TypeError, match="train must have the model's dtype"):
        fit(model, _data(model), 1, progress=False)  # float64 data for a float32 model
    assert model.dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- scores and generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_elbo_iwae_and_log_likelihood_are_computed_through_encode_and_decode(name):
    model = _model(name).eval()
    x = _data(model, 5)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    # elbo: one draw of eps ~ N(0, I) of shape (S, batch, z_dim) from the generator, KL in closed form
    # (torch.distributions), reconstruction from decode.
    s = 3
    eps = torch.randn((s, *mu.shape), generator=_gen(1), dtype=mu.dtype)
    q, p = Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    want = _log_px_z(model, x, mu + std * eps).mean(0) - torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(elbo(model, x, s, generator=_gen(1)).elbo, want, rtol=1e-12, atol=1e-10)
    # iwae_bound and log_likelihood: log mean of p(x|z) p(z) / q(z|x) over K draws.
    k = 64
    eps = torch.randn((k, *mu.shape), generator=_gen(2), dtype=mu.dtype)
    z = mu + std * eps
    log_w = _log_px_z(model, x, z) + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    want = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(iwae_bound(model, x, k, _gen(2)), want, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(log_likelihood(model, x, k, _gen(2)), want, rtol=1e-12, atol=1e-10)


def test_log_likelihood_of_another_activation_is_exact_where_folding_would_be_wrong():
    # The built-in architecture with its ReLU swapped for a tanh: the folded decoder (which assumes ReLU)
    # must not serve it, at the K and sizes where it serves the built-in MLP.
    model = VAE(X_DIM, Z_DIM, hidden=(6,), seed=0).double()
    model.decoder.body[1] = nn.Tanh()
    x = _data(model, 3)
    k = 400
    got = log_likelihood(model, x, k, _gen(4), max_elements=k * (X_DIM + Z_DIM))  # one example per chunk
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    want = []
    g = _gen(4)
    for i in range(3):  # one example at a time, as the chunks draw them
        z = mu[i] + std[i] * torch.randn((k, 1, Z_DIM), generator=g, dtype=mu.dtype)
        log_w = (_log_px_z(model, x[i : i + 1], z) + Normal(0.0, 1.0).log_prob(z).sum(-1)
                 - Normal(mu[i], std[i]).log_prob(z).sum(-1))
        want.append(torch.logsumexp(log_w, 0) - math.log(k))
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_generation_and_latent_tools_use_the_models_decoder(name):
    model = _model(name).eval()
    x = _data(model, 6)
    z = torch.randn((4, Z_DIM), generator=_gen(3), dtype=torch.float64)
    out = model.decode(z)
    mean = torch.sigmoid(out) if model.likelihood_name == "bernoulli" else out
    torch.testing.assert_close(vaelib.sample(model, 4, _gen(3)), mean, rtol=0, atol=0)
    path = vaelib.interpolate(model, x[0], x[1], 3)
    mu, _ = model.encode(x[:2])
    middle = model.decode(mu.mean(0, keepdim=True))
    middle = torch.sigmoid(middle) if model.likelihood_name == "bernoulli" else middle
    torch.testing.assert_close(path[1:2], middle, rtol=1e-12, atol=1e-12)
    units = vaelib.active_units(model, x)
    torch.testing.assert_close(units.variance, model.encode(x)[0].detach().var(0, unbiased=False))


# --- checkpoints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_fill_the_learners_model_exactly(tmp_path, name):
    model = _model(name)
    fit(model, _data(model), 2, batch_size=8, lr=1e-2, progress=False)
    path = tmp_path / "model.pt"
    save(model, path)
    with pytest.raises(ValueError, match="cannot be rebuilt from data: construct one and pass it"):
        load(path)
    fresh = _model(name)
    loaded = load(path, model=fresh)
    assert loaded is fresh and not loaded.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    x = _data(model, 4)
    torch.testing.assert_close(elbo(loaded, x, generator=_gen(0)).elbo, elbo(model.eval(), x, generator=_gen(0)).elbo,
                               rtol=0, atol=0)


def test_load_refuses_a_model_that_does_not_fit_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    save(VAE(X_DIM, Z_DIM, encoder=TanhEncoder(), decoder=tanh_decoder()), path)
    cases = [
        (VAE(X_DIM, Z_DIM, encoder=TanhEncoder(8), decoder=tanh_decoder()), "shape"),  # other width
        (VAE(X_DIM, Z_DIM, encoder=ConvEncoder(), decoder=tanh_decoder()), "missing"),  # other names
        (VAE(X_DIM, Z_DIM, encoder=TanhEncoder(), decoder=tanh_decoder()).double(), "float64"),  # dtype
        (VAE(X_DIM, Z_DIM, likelihood="gaussian", encoder=TanhEncoder(), decoder=tanh_decoder()), "likelihood"),
        (EncodeOverride(), "holds a vaelib.model.VAE, not a"),  # another class
    ]
    for model, message in cases:
        before = _state(model)
        with pytest.raises(ValueError, match=message):
            load(path, model=model)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="model must be a vaelib.VAE or None"):
        load(path, model=nn.Linear(2, 2))


def test_a_built_in_checkpoint_also_fills_a_model_given(tmp_path):
    model = VAE(X_DIM, Z_DIM, hidden=(5,), seed=1)
    save(model, tmp_path / "m.pt")
    fresh = VAE(X_DIM, Z_DIM, hidden=(5,), seed=2)
    assert load(tmp_path / "m.pt", model=fresh) is fresh
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


# --- which models take the fast paths -------------------------------------------------------------------


def _altered() -> dict[str, VAE]:
    """The built-in MLP changed in one way each: none may take a fast path."""
    def built() -> VAE:
        return VAE(X_DIM, Z_DIM, hidden=(6, 5), seed=0)

    out = {}
    m = built(); m.decoder.body[1] = nn.Tanh(); out["another activation"] = m
    m = built(); m.encoder.body.insert(1, nn.Dropout(0.1)); out["an inserted dropout"] = m
    m = built(); m.decoder.to_x = nn.Linear(5, X_DIM, bias=False); out["a head without bias"] = m
    m = built(); m.encoder.to_mu.weight.requires_grad_(False); out["a frozen parameter"] = m
    m = built(); m.extra = nn.Parameter(torch.zeros(2)); out["an extra parameter"] = m
    m = built(); m.register_buffer("scale", torch.ones(1)); out["a buffer"] = m
    m = built(); m.decoder.body[0].register_forward_hook(lambda mod, i, o: o * 2); out["a forward hook"] = m
    m = built(); m.encoder.body[0].forward = lambda x: x; out["an instance's forward replaced"] = m
    m = built(); m.decode = lambda z: z; out["decode replaced on the instance"] = m
    m = built(); m.decoder.to_x.double(); out["mixed dtypes"] = m
    out["a subclass that changes nothing"] = type("Same", (VAE,), {})(X_DIM, Z_DIM, hidden=(6, 5), seed=0)
    return out


def test_only_the_built_in_mlp_as_built_takes_the_fast_paths():
    for hidden in ((), (6,), (6, 5)):
        for likelihood in ("bernoulli", "gaussian"):
            assert is_builtin_mlp(VAE(X_DIM, Z_DIM, hidden=hidden, likelihood=likelihood).double())
    for what, model in _altered().items():
        assert not is_builtin_mlp(model), what


@pytest.mark.parametrize("what", ["another activation", "an inserted dropout", "a forward hook"])
def test_an_altered_built_in_model_is_trained_as_it_computes(what):
    # Same loop, same noise: fit on the altered model is the plain loop on it, not the built-in gradient.
    model, reference = _altered()[what].double(), _altered()[what].double()
    x = _data(model)
    fit(model, x, 2, batch_size=8, lr=1e-2, seed=3, progress=False)
    _plain_loop(reference, x, 2, 8, lr=1e-2, seed=3)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-10, atol=1e-12, msg=key)
