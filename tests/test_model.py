"""vaelib.model: the VAE's shapes, likelihoods, configuration, seeding and checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import vaelib
from vaelib import VAE

HIDDEN = [(), (5,), (7, 3)]
LIKELIHOODS = ["bernoulli", "gaussian"]


def _data(model: VAE, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.x_dim, generator=g)
    return (x < 0.5).float() if model.likelihood_name == "bernoulli" else x


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_shapes(hidden, likelihood):
    model = VAE(6, 3, hidden=hidden, likelihood=likelihood, seed=0)
    x = _data(model)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 3)
    z = torch.randn(2, 4, 3)
    assert model.decode(z).shape == (2, 4, 6)
    assert model.decode(z[0, 0]).shape == (6,)
    assert model.mean(z).shape == (2, 4, 6)
    assert model.log_px_z(x, z).shape == (2, 4)
    assert model.log_px_z(x, z[0]).shape == (4,)
    assert model(x).shape == (4, 6)


@pytest.mark.parametrize("hidden", HIDDEN)
def test_architecture_follows_hidden_and_mirrors_the_decoder(hidden):
    model = VAE(6, 3, hidden=hidden, seed=0)
    enc = [m.out_features for m in model.encoder.body if isinstance(m, nn.Linear)]
    dec = [m.out_features for m in model.decoder.body if isinstance(m, nn.Linear)]
    assert enc == list(hidden)
    assert dec == list(reversed(hidden))
    assert sum(isinstance(m, nn.ReLU) for m in model.encoder.body) == len(hidden)
    enc_m, dec_m = model.encoder, model.decoder
    assert (enc_m.to_mu.out_features, enc_m.to_logvar.out_features, dec_m.to_x.out_features) == (3, 3, 6)


def test_linear_vae_is_affine():
    model = VAE(5, 2, hidden=(), likelihood="gaussian", seed=0)
    assert len(model.encoder.body) == len(model.decoder.body) == 0
    g = torch.Generator().manual_seed(1)
    x, z = torch.rand(3, 5, generator=g), torch.randn(3, 2, generator=g)
    mu, logvar = model.encode(x)
    torch.testing.assert_close(mu, x @ model.encoder.to_mu.weight.T + model.encoder.to_mu.bias)
    torch.testing.assert_close(logvar, x @ model.encoder.to_logvar.weight.T + model.encoder.to_logvar.bias)
    torch.testing.assert_close(model.decode(z), z @ model.decoder.to_x.weight.T + model.decoder.to_x.bias)
    torch.testing.assert_close(model.mean(z), model.decode(z))


def test_bernoulli_decoder_is_logits_and_its_likelihood_matches_torch():
    model = VAE(6, 2, hidden=(4,), seed=0).double()
    x = _data(model).double()
    z = torch.randn(3, 4, 2, dtype=torch.float64)
    logits = model.decode(z)
    torch.testing.assert_close(model.mean(z), torch.sigmoid(logits))
    ref = Independent(Bernoulli(logits=logits), 1).log_prob(x.expand(3, 4, 6))
    torch.testing.assert_close(model.log_px_z(x, z), ref, rtol=1e-12, atol=1e-12)
    assert not hasattr(model, "obs_logvar")


def test_gaussian_decoder_has_a_learned_scalar_variance_and_its_likelihood_matches_torch():
    model = VAE(6, 2, hidden=(4,), likelihood="gaussian", seed=0).double()
    assert isinstance(model.obs_logvar, nn.Parameter) and model.obs_logvar.shape == ()
    assert float(model.obs_logvar.detach()) == 0.0
    with torch.no_grad():
        model.obs_logvar.fill_(math.log(0.3))
    x = _data(model).double()
    z = torch.randn(3, 4, 2, dtype=torch.float64)
    mean = model.decode(z)
    ref = Independent(Normal(mean, math.sqrt(0.3)), 1).log_prob(x.expand(3, 4, 6))
    torch.testing.assert_close(model.log_px_z(x, z), ref, rtol=1e-12, atol=1e-12)
    # The variance is a parameter: the likelihood's gradient reaches it.
    model.log_px_z(x, z).sum().backward()
    assert model.obs_logvar.grad is not None and float(model.obs_logvar.grad) != 0


def test_forward_is_the_decoder_mean_at_the_posterior_mean():
    model = VAE(6, 2, hidden=(4,), seed=0)
    x = _data(model)
    torch.testing.assert_close(model(x), model.mean(model.encode(x)[0]))
    assert bool(((model(x) > 0) & (model(x) < 1)).all())


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_config_rebuilds_the_same_architecture(likelihood):
    model = VAE(7, 3, hidden=[5, 4], likelihood=likelihood, seed=0)
    assert model.config == {"x_dim": 7, "z_dim": 3, "hidden": [5, 4], "likelihood": likelihood}
    twin = VAE(**model.config)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert "likelihood=" in repr(model)


def test_seed_gives_identical_initialisation_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, b = VAE(6, 2, hidden=(4,), seed=3), VAE(6, 2, hidden=(4,), seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    c = VAE(6, 2, hidden=(4,), seed=4)
    assert not torch.equal(a.encoder.to_mu.weight, c.encoder.to_mu.weight)


def test_no_seed_uses_the_global_generator():
    torch.manual_seed(11)
    a = VAE(6, 2, hidden=(4,))
    torch.manual_seed(11)
    b = VAE(6, 2, hidden=(4,))
    assert torch.equal(a.decoder.to_x.weight, b.decoder.to_x.weight)


def test_device_argument_on_cpu():
    model = VAE(6, 2, hidden=(4,), device="cpu", seed=0)
    assert model.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    model = VAE(6, 2, hidden=(4,), likelihood="gaussian", device=torch.device("cpu"))
    assert model.obs_logvar.device.type == "cpu"


def test_gradients_reach_every_parameter():
    for likelihood in LIKELIHOODS:
        model = VAE(6, 2, hidden=(4,), likelihood=likelihood, seed=0)
        x = _data(model)
        vaelib.elbo(model, x).elbo.sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_bernoulli_model_rejects_grey_data_and_gaussian_accepts_it():
    grey = torch.full((2, 6), 0.5)
    with pytest.raises(ValueError, match="binary"):
        VAE(6, 2, hidden=()).log_px_z(grey, torch.zeros(2, 2))
    gauss = VAE(6, 2, hidden=(), likelihood="gaussian")
    assert gauss.log_px_z(grey, torch.zeros(2, 2)).shape == (2,)
    # Encoding grey levels is allowed for both (e.g. to look at codes of the grey originals).
    assert VAE(6, 2, hidden=()).encode(grey)[0].shape == (2, 2)


def test_checks_name_the_argument():
    model = VAE(6, 2, hidden=(4,), seed=0)
    with pytest.raises(ValueError, match="x must have last dimension 6"):
        model.encode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="z must have last dimension 2"):
        model.decode(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 3, 2\)"):
        model.log_px_z(torch.zeros(3, 6), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="x must have the model's dtype"):
        model.encode(torch.zeros(3, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="hidden must be a sequence"):
        VAE(6, 2, hidden=4)
    with pytest.raises(ValueError, match=r"hidden\[1\] must be >= 1"):
        VAE(6, 2, hidden=(4, 0))
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE(6, 2, likelihood="poisson")


# --- the model is three distributions ----------------------------------------------------------------


class _FixedPrior(torch.nn.Module):
    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(z_dim))

    def forward(self):
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(self.log_scale),
                                                                          self.log_scale.exp()), 1)


def test_the_three_methods_default_to_the_books_model():
    model = VAE(6, 2, hidden=(4,), seed=0)
    x = (torch.rand(3, 6) < 0.5).float()
    q, p = model.posterior(x), model.prior()
    mu, logvar = model.encode(x)
    assert q.batch_shape == (3,) and q.event_shape == (2,) and p.batch_shape == () and p.event_shape == (2,)
    assert torch.equal(q.mean, mu) and torch.equal(q.variance, logvar.exp())
    z = torch.randn(5, 3, 2)
    lik = model.likelihood(z)
    assert lik.batch_shape == (5, 3) and lik.event_shape == (6,)
    assert torch.equal(lik.mean, torch.sigmoid(model.decode(z)))
    assert model.likelihood_name == "bernoulli"


def test_fast_paths_need_all_three_defaults():
    from vaelib.model import is_builtin_mlp

    assert is_builtin_mlp(VAE(6, 2, hidden=(4,)))
    assert not is_builtin_mlp(VAE(6, 2, hidden=(4,), prior=_FixedPrior(2)))
    for name in ("posterior", "prior", "likelihood"):
        model = VAE(6, 2, hidden=(4,))
        setattr(model, name, getattr(model, name))  # the same method, but replaced on the instance
        assert not is_builtin_mlp(model), name


def test_derived_methods_cannot_be_overridden():
    with pytest.raises(TypeError, match="overrides VAE.log_px_z"):
        class Mine(VAE):  # noqa: F841
            def log_px_z(self, x, z, c=None):
                return super().log_px_z(x, z)
    model = VAE(6, 2, hidden=(4,))
    with pytest.raises(TypeError, match="VAE.mean is derived"):
        model.mean = lambda z: z


def test_a_prior_must_be_a_module_returning_a_distribution():
    normal = torch.distributions.Normal(0.0, 1.0)
    with pytest.raises(TypeError, match="wrap a fixed distribution in a module"):
        VAE(6, 2, prior=normal)

    class NotADistribution(torch.nn.Module):
        def forward(self):
            return torch.zeros(2)

    model = VAE(6, 2, hidden=(4,), prior=NotADistribution())
    with pytest.raises(TypeError, match="must return a torch.distributions.Distribution"):
        vaelib.sample(model, 3)


def test_probing_the_likelihood_leaves_each_modules_mode_as_it_was():
    model = VAE(6, 2, hidden=(4,), seed=0)
    model.train()
    model.encoder.eval()  # a learner's deliberate mix of modes
    x = (torch.rand(8, 6) < 0.5).float()
    vaelib.fit(model, x, 1, progress=False)  # fit ends in eval mode
    model.train()
    model.decoder.eval()
    vaelib.elbo(model, x)  # scoring probes nothing but may call the model
    vaelib.log_likelihood(model, x, k=3)  # probes the likelihood's support
    assert model.training and model.encoder.training and not model.decoder.training
