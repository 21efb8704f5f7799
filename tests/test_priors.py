"""vaelib.priors: learned priors (mixture, VampPrior) and ELBO surgery, against computations written out here.

Every density is recomputed by hand in float64 (log weights plus Gaussian log densities, a logsumexp over
components); the Monte Carlo quantities are compared with quadrature on a grid or with draws reproduced
from the same seeded generator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, MixtureSameFamily, MultivariateNormal, Normal

import vaelib
from vaelib.model import MLPEncoder
from vaelib.priors import MixturePrior, Surgery, VampPrior, elbo_surgery

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary(n: int, x_dim: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = _gen(seed)
    protos = (torch.rand(4, x_dim, generator=g) < 0.5).to(dtype)
    idx = torch.randint(0, 4, (n,), generator=g)
    flips = (torch.rand(n, x_dim, generator=g) < 0.1).to(dtype)
    return (protos[idx] + flips) % 2


def _np_log_normal_diag(z: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log N(z; mu, diag var), summed over the last axis (numpy, float64)."""
    return -0.5 * (((z - mu) ** 2) / var + np.log(var) + LOG_2PI).sum(-1)


def _np_logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_mixture_log_prob(z: np.ndarray, log_w: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(z; mu_k, diag var_k) for z (..., d); mu, var (K, d); log_w (K,)."""
    comp = _np_log_normal_diag(z[..., None, :], mu, var)          # (..., K)
    return _np_logsumexp(log_w + comp, -1)


def _randomised_mixture(z_dim: int = 3, k: int = 4, seed: int = 0) -> MixturePrior:
    prior = MixturePrior(z_dim, k, seed=seed).double()
    g = _gen(seed + 100)
    with torch.no_grad():
        prior.means.copy_(2 * torch.randn(k, z_dim, generator=g, dtype=F64))
        prior.logvars.copy_(torch.randn(k, z_dim, generator=g, dtype=F64))
        prior.logits.copy_(torch.randn(k, generator=g, dtype=F64))
    return prior


# --- MixturePrior --------------------------------------------------------------------------------------


def test_mixture_prior_log_prob_is_a_logsumexp_over_its_components():
    prior = _randomised_mixture()
    p = prior()
    assert isinstance(p, MixtureSameFamily)
    assert p.batch_shape == () and p.event_shape == (3,)
    z = torch.randn(7, 5, 3, generator=_gen(1), dtype=F64) * 3
    mu = prior.means.detach().numpy()
    var = np.exp(prior.logvars.detach().numpy())
    logits = prior.logits.detach().numpy()
    log_w = logits - _np_logsumexp(logits, 0)
    want = _np_mixture_log_prob(z.numpy(), log_w, mu, var)
    got = p.log_prob(z)
    assert got.shape == (7, 5)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=1e-10)


def test_mixture_prior_initialisation():
    prior = MixturePrior(5, 7, seed=3)
    assert prior.means.shape == (7, 5) and prior.logvars.shape == (7, 5) and prior.logits.shape == (7,)
    torch.testing.assert_close(prior.means.detach(), torch.randn(7, 5, generator=_gen(3)), rtol=0, atol=0)
    assert torch.all(prior.logvars == 0) and torch.all(prior.logits == 0)
    assert torch.equal(MixturePrior(5, 7, seed=3).means, prior.means)
    assert not torch.equal(MixturePrior(5, 7, seed=4).means, prior.means)
    # equal weights: the mixture's weights are 1/K
    torch.testing.assert_close(prior().mixture_distribution.probs, torch.full((7,), 1 / 7))


@pytest.mark.parametrize("seed", [1.5, -1, True])
def test_prior_seeds_are_validated(seed):
    """As everywhere else in vaelib (VAE(seed=...), fit, gap_decomposition: check_int("seed", seed, minimum=0)),
    a seed that is not an integer >= 0 is refused, not truncated or wrapped around."""
    with pytest.raises((TypeError, ValueError)):
        MixturePrior(2, 3, seed=seed)
    with pytest.raises((TypeError, ValueError)):
        VampPrior(nn.Linear(3, 4), 3, 2, seed=seed)


def test_mixture_prior_seed_does_not_touch_the_global_generator():
    state = torch.get_rng_state()
    MixturePrior(4, 3, seed=11)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("bad", [0, -1])
def test_mixture_prior_refuses_bad_sizes(bad):
    with pytest.raises(ValueError):
        MixturePrior(bad, 3)
    with pytest.raises(ValueError):
        MixturePrior(3, bad)
    with pytest.raises(TypeError):
        MixturePrior(2.5, 3)


def test_mixture_prior_is_trained_by_fit_and_survives_save_and_load(tmp_path):
    x = _binary(64, 12)
    model = vaelib.VAE(12, 2, hidden=(8,), prior=MixturePrior(2, 3, seed=0), seed=0)
    before = {k: v.detach().clone() for k, v in model.prior_module.named_parameters()}
    vaelib.fit(model, x, 1, batch_size=16, lr=1e-2, progress=False)
    after = dict(model.prior_module.named_parameters())
    assert set(before) == {"means", "logvars", "logits"}
    for name in before:
        assert not torch.equal(before[name], after[name].detach()), f"{name} was not trained"
        assert torch.isfinite(after[name]).all()

    path = tmp_path / "mixture.pt"
    vaelib.save(model, path)
    with pytest.raises(ValueError):  # a model with its own prior cannot be rebuilt from the file alone
        vaelib.load(path)
    fresh = vaelib.VAE(12, 2, hidden=(8,), prior=MixturePrior(2, 3, seed=5), seed=1)
    loaded = vaelib.load(path, model=fresh)
    assert loaded is fresh
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
    z = torch.randn(10, 2, generator=_gen(2))
    assert torch.equal(model.prior().log_prob(z), loaded.prior().log_prob(z))


def _kl_by_quadrature(mu: torch.Tensor, logvar: torch.Tensor, prior: MixturePrior) -> tuple[np.ndarray, np.ndarray]:
    """KL(q || p) and Var_q[log q - log p] for each row of a 2-d diagonal Gaussian q, on a dense grid."""
    mu, var = mu.detach().double().numpy(), np.exp(logvar.detach().double().numpy())
    m = prior.means.detach().double().numpy()
    v = np.exp(prior.logvars.detach().double().numpy())
    logits = prior.logits.detach().double().numpy()
    log_w = logits - _np_logsumexp(logits, 0)
    kls, variances = [], []
    for mu_n, var_n in zip(mu, var):
        sd = np.sqrt(var_n)
        axes = [np.linspace(mu_n[j] - 9 * sd[j], mu_n[j] + 9 * sd[j], 801) for j in range(2)]
        zz = np.stack(np.meshgrid(*axes, indexing="ij"), -1)              # (801, 801, 2)
        log_q = _np_log_normal_diag(zz, mu_n, var_n)
        diff = log_q - _np_mixture_log_prob(zz, log_w, m, v)
        q = np.exp(log_q)
        cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
        mass = q.sum() * cell
        assert abs(mass - 1) < 1e-6
        kl = (q * diff).sum() * cell
        kls.append(kl)
        variances.append((q * (diff - kl) ** 2).sum() * cell)
    return np.array(kls), np.array(variances)


def test_elbo_with_a_mixture_prior_estimates_the_kl_by_monte_carlo():
    torch.manual_seed(0)
    model = vaelib.VAE(12, 2, hidden=(8,), prior=MixturePrior(2, 3, seed=0), seed=0).double()
    with torch.no_grad():
        model.prior_module.logvars.add_(torch.tensor([[-0.5, 0.3], [0.2, 0.0], [0.4, -0.6]], dtype=F64))
        model.prior_module.logits.copy_(torch.tensor([0.5, -0.2, 0.1], dtype=F64))
        model.encoder.to_logvar.bias.fill_(-1.0)
    x = _binary(4, 12, dtype=F64)
    s = 20000
    terms = vaelib.elbo(model, x, n_samples=s, generator=_gen(3))
    assert terms.kl_closed_form is False
    mu, logvar = model.encoder(x)
    kl, var = _kl_by_quadrature(mu, logvar, model.prior_module)
    se = np.sqrt(var / s)
    got = terms.kl.detach().numpy()
    assert np.all(np.abs(got - kl) < 4 * se + 1e-9), (got, kl, se)
    assert np.all(kl > 0)


def test_elbo_mixture_kl_is_computed_from_the_same_draws():
    """elbo's Monte Carlo KL is log q(z) - log p(z) averaged over the very draws of the reconstruction."""
    model = vaelib.VAE(12, 2, hidden=(8,), prior=_randomised_mixture(2, 3), seed=0).double()
    x = _binary(5, 12, dtype=F64)
    terms = vaelib.elbo(model, x, n_samples=6, generator=_gen(7))
    mu, logvar = (t.detach() for t in model.encoder(x))
    eps = torch.randn((6, 5, 2), generator=_gen(7), dtype=F64)  # DiagonalNormal draws with the generator directly
    z = mu + torch.exp(0.5 * logvar) * eps
    prior = model.prior_module
    log_w = torch.log_softmax(prior.logits.detach(), 0).numpy()
    log_p = _np_mixture_log_prob(z.numpy(), log_w, prior.means.detach().numpy(), np.exp(prior.logvars.detach().numpy()))
    log_q = _np_log_normal_diag(z.numpy(), mu.numpy(), np.exp(logvar.numpy()))
    np.testing.assert_allclose(terms.kl.detach().numpy(), (log_q - log_p).mean(0), rtol=0, atol=1e-10)


# --- VampPrior ----------------------------------------------------------------------------------------


def _vamp(seed: int = 0, n_pseudo: int = 5) -> tuple[MLPEncoder, VampPrior]:
    torch.manual_seed(seed)
    enc = MLPEncoder(784, (50,), 4).double()
    return enc, VampPrior(enc, 784, n_pseudo, seed=seed).double()


def test_vamp_prior_is_the_uniform_mixture_of_the_encoders_gaussians_at_the_pseudo_inputs():
    enc, vamp = _vamp()
    p = vamp()
    assert isinstance(p, MixtureSameFamily) and p.batch_shape == () and p.event_shape == (4,)
    u = torch.sigmoid(vamp.pseudo_logits.detach())
    with torch.no_grad():
        mu, logvar = enc(u)
    z = torch.randn(6, 3, 4, generator=_gen(1), dtype=F64) * 2
    log_w = np.full(5, -math.log(5))
    want = _np_mixture_log_prob(z.numpy(), log_w, mu.numpy(), np.exp(logvar.numpy()))
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), want, rtol=0, atol=1e-10)
    # the same, as an explicit average of densities
    dens = np.exp(_np_log_normal_diag(z.numpy()[..., None, :], mu.numpy(), np.exp(logvar.numpy()))).mean(-1)
    np.testing.assert_allclose(np.exp(p.log_prob(z).detach().numpy()), dens, rtol=1e-10, atol=0)


def test_vamp_prior_shares_the_vaes_encoder():
    torch.manual_seed(0)
    enc = MLPEncoder(784, (50,), 4)
    model = vaelib.VAE(784, 4, encoder=enc, prior=VampPrior(enc, 784, 5))
    assert model.prior_module.encoder is model.encoder is enc
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids))  # shared, not copied: each parameter once
    assert {id(p) for p in enc.parameters()} <= set(ids)
    z = torch.randn(8, 4, generator=_gen(0))
    before = model.prior().log_prob(z).detach().clone()
    with torch.no_grad():
        enc.to_mu.bias.add_(0.7)
    after = model.prior().log_prob(z).detach()
    assert not torch.allclose(before, after)
    # the shift of every component's mean is exactly the prior shifted: p_new(z) = p_old(z - 0.7)
    torch.testing.assert_close(model.prior().log_prob(z + 0.7), before, rtol=1e-5, atol=1e-5)


def test_vamp_prior_gradient_reaches_encoder_and_pseudo_inputs():
    enc, vamp = _vamp()
    z = torch.randn(3, 4, generator=_gen(0), dtype=F64)
    vamp().log_prob(z).sum().backward()
    assert vamp.pseudo_logits.grad is not None and vamp.pseudo_logits.grad.abs().sum() > 0
    assert enc.to_mu.weight.grad is not None and enc.to_mu.weight.grad.abs().sum() > 0


def test_vamp_prior_pseudo_inputs_lie_in_the_open_unit_interval():
    _, vamp = _vamp()
    u = vamp.pseudo_inputs
    assert u.shape == (5, 784)
    assert bool((u > 0).all() and (u < 1).all())
    assert abs(u.mean().item() - 0.5) < 0.01  # noise around grey 0.5
    # an init with 0 and 1 is accepted (grey images include black and white) and still lands inside (0, 1)
    init = torch.tensor([[0.0, 1.0, 0.3], [0.5, 1.0, 0.0]])
    vamp = VampPrior(nn.Linear(3, 4), 3, 2, init=init)
    u = vamp.pseudo_inputs.detach()
    assert bool((u > 0).all() and (u < 1).all())
    torch.testing.assert_close(u[0, 2], torch.tensor(0.3), rtol=0, atol=1e-6)
    torch.testing.assert_close(u[1, 0], torch.tensor(0.5), rtol=0, atol=1e-6)


def test_vamp_prior_from_training_images():
    x = _binary(5, 784).clamp(0.2, 0.8)
    enc = MLPEncoder(784, (50,), 4)
    vamp = VampPrior(enc, 784, 5, init=x)
    torch.testing.assert_close(vamp.pseudo_inputs.detach(), x, rtol=0, atol=1e-6)


def test_vamp_prior_default_start_is_seeded():
    enc = MLPEncoder(10, (6,), 2)
    a, b, c = VampPrior(enc, 10, 3, seed=1), VampPrior(enc, 10, 3, seed=1), VampPrior(enc, 10, 3, seed=2)
    assert torch.equal(a.pseudo_logits, b.pseudo_logits)
    assert not torch.equal(a.pseudo_logits, c.pseudo_logits)


def test_vamp_prior_validates_its_init():
    enc = MLPEncoder(784, (50,), 4)
    with pytest.raises(ValueError, match="shape"):
        VampPrior(enc, 784, 5, init=torch.full((4, 784), 0.5))
    with pytest.raises(ValueError, match="shape"):
        VampPrior(enc, 784, 5, init=torch.full((5, 783), 0.5))
    with pytest.raises(ValueError):
        VampPrior(enc, 784, 5, init=torch.full((5 * 784,), 0.5))  # not 2-d
    above = torch.full((5, 784), 0.5)
    above[2, 3] = 1.01
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VampPrior(enc, 784, 5, init=above)
    below = torch.full((5, 784), 0.5)
    below[0, 0] = -0.01
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VampPrior(enc, 784, 5, init=below)
    nan = torch.full((5, 784), 0.5)
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError):
        VampPrior(enc, 784, 5, init=nan)
    with pytest.raises(TypeError):
        VampPrior(enc, 784, 5, init=np.full((5, 784), 0.5))
    with pytest.raises(TypeError):
        VampPrior(lambda x: x, 784, 5)  # not an nn.Module
    with pytest.raises(ValueError):
        VampPrior(enc, 784, 0)
    with pytest.raises(ValueError):
        VampPrior(enc, 0, 5)


class _TensorEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, x):
        return self.lin(x)


class _FullCovarianceEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, x):
        return MultivariateNormal(self.lin(x), scale_tril=torch.eye(2).expand(x.shape[0], 2, 2))


@pytest.mark.parametrize("encoder", [_TensorEncoder, _FullCovarianceEncoder])
def test_vamp_prior_refuses_an_encoder_of_another_family(encoder):
    vamp = VampPrior(encoder(), 6, 3)
    with pytest.raises(TypeError, match="VampPrior"):
        vamp()


class _IndependentEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        mu, log_sd = self.lin(x).chunk(2, -1)
        return Independent(Normal(mu, log_sd.exp()), 1)


def test_vamp_prior_accepts_an_independent_normal_encoder():
    torch.manual_seed(0)
    enc = _IndependentEncoder().double()
    vamp = VampPrior(enc, 6, 3).double()
    u = vamp.pseudo_inputs.detach()
    with torch.no_grad():
        mu, log_sd = enc.lin(u).chunk(2, -1)
    z = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    want = _np_mixture_log_prob(z.numpy(), np.full(3, -math.log(3)), mu.numpy(), np.exp(2 * log_sd.numpy()))
    np.testing.assert_allclose(vamp().log_prob(z).detach().numpy(), want, rtol=0, atol=1e-10)


def test_vae_with_a_vamp_prior_trains():
    torch.manual_seed(0)
    enc = MLPEncoder(784, (50,), 4)
    model = vaelib.VAE(784, 4, encoder=enc, prior=VampPrior(enc, 784, 5))
    x = _binary(32, 784)
    before = model.prior_module.pseudo_logits.detach().clone()
    vaelib.fit(model, x, 1, batch_size=16, progress=False)
    assert not torch.equal(before, model.prior_module.pseudo_logits.detach())
    terms = vaelib.elbo(model, x[:4], n_samples=2, generator=_gen(0))
    assert terms.kl_closed_form is False and torch.isfinite(terms.elbo).all()


# --- elbo_surgery -------------------------------------------------------------------------------------


def _small_model(seed: int = 0, dtype=torch.float32) -> vaelib.VAE:
    model = vaelib.VAE(12, 2, hidden=(8,), seed=seed).to(dtype)
    with torch.no_grad():  # spread the posteriors: an informative, not collapsed, encoder
        model.encoder.to_mu.weight.mul_(3)
        model.encoder.to_logvar.bias.fill_(-1.5)
    return model


def test_surgery_average_kl_is_mutual_information_plus_marginal_kl():
    model = _small_model()
    x = _binary(120, 12)
    s = elbo_surgery(model, x, n_samples=20, generator=_gen(0))
    assert isinstance(s, Surgery) and s.n == 120
    # the identity holds draw by draw: log q(z|x) - log p = (log q(z|x) - log q(z)) + (log q(z) - log p)
    assert s.average_kl == pytest.approx(s.mutual_information + s.marginal_kl, abs=1e-6)
    # and against the closed form KL (standard normal prior), within the Monte Carlo error
    combined_se = math.sqrt(s.mutual_information_se**2 + s.marginal_kl_se**2)
    assert s.average_kl_exact is not None
    assert abs(s.average_kl_exact - (s.mutual_information + s.marginal_kl)) < 4 * combined_se
    assert abs(s.average_kl_exact - s.average_kl) < 4 * s.average_kl_se
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        exact = 0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double()).sum(-1).mean().item()
    assert s.average_kl_exact == pytest.approx(exact, rel=1e-6)
    assert 0 < s.mutual_information <= math.log(120) + 1e-9
    assert s.marginal_kl > -4 * s.marginal_kl_se
    assert s.average_kl_se > 0 and s.mutual_information_se > 0 and s.marginal_kl_se > 0


def test_surgery_mutual_information_never_exceeds_log_n_and_saturates_for_a_sharp_encoder():
    model = _small_model()
    with torch.no_grad():  # codes far apart and very precise: every image is recognised from its code
        model.encoder.to_mu.weight.mul_(30)
        model.encoder.to_mu.bias.zero_()
        model.encoder.to_logvar.weight.zero_()
        model.encoder.to_logvar.bias.fill_(-16.0)
    g = _gen(1)
    x = (torch.rand(60, 12, generator=g) < 0.5).float()
    assert torch.unique(x, dim=0).shape[0] == 60  # distinct images
    s = elbo_surgery(model, x, n_samples=10, generator=_gen(0))
    assert s.mutual_information <= math.log(60) + 1e-6
    assert s.mutual_information == pytest.approx(math.log(60), abs=0.05)


def test_surgery_of_an_encoder_that_ignores_x_has_no_mutual_information():
    model = _small_model(dtype=F64)
    with torch.no_grad():
        model.encoder.to_mu.weight.zero_()
        model.encoder.to_logvar.weight.zero_()
        model.encoder.to_mu.bias.copy_(torch.tensor([0.8, -0.4], dtype=F64))
        model.encoder.to_logvar.bias.copy_(torch.tensor([-0.7, 0.3], dtype=F64))
    x = _binary(80, 12, dtype=F64)
    s = elbo_surgery(model, x, n_samples=50, generator=_gen(0))
    assert abs(s.mutual_information) < 1e-10
    mu, logvar = np.array([0.8, -0.4]), np.array([-0.7, 0.3])
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum()
    assert s.average_kl_exact == pytest.approx(kl, rel=1e-12)
    assert s.marginal_kl == pytest.approx(s.average_kl, abs=1e-10)
    assert abs(s.marginal_kl - kl) < 4 * s.marginal_kl_se


def test_surgery_aggregate_density_by_hand_for_three_images():
    """Reproduce the draws (the posterior is a DiagonalNormal, drawn with the generator directly) and compute
    log q(z) = log (1/3) sum_m q(z|x_m) by hand at every one of them."""
    model = _small_model(seed=2, dtype=F64)
    x = _binary(3, 12, seed=4, dtype=F64)
    assert torch.unique(x, dim=0).shape[0] == 3
    s_draws = 5
    s = elbo_surgery(model, x, n_samples=s_draws, generator=_gen(9))
    with torch.no_grad():
        mu, logvar = (t.numpy() for t in model.encoder(x))
    var = np.exp(logvar)
    eps = torch.randn((s_draws, 3, 2), generator=_gen(9), dtype=F64).numpy()
    z = mu + np.sqrt(var) * eps                                       # (S, 3, 2)
    log_q_own = np.empty((s_draws, 3))
    log_q_agg = np.empty((s_draws, 3))
    for i in range(s_draws):
        for n in range(3):
            dens = [math.exp(_np_log_normal_diag(z[i, n], mu[m], var[m])) for m in range(3)]
            log_q_own[i, n] = math.log(dens[n])
            log_q_agg[i, n] = math.log(sum(dens) / 3)
    log_p = -0.5 * (z**2 + LOG_2PI).sum(-1)
    mi_per_image = (log_q_own - log_q_agg).mean(0)
    marg_per_image = (log_q_agg - log_p).mean(0)
    assert s.mutual_information == pytest.approx(mi_per_image.mean(), abs=1e-10)
    assert s.marginal_kl == pytest.approx(marg_per_image.mean(), abs=1e-10)
    assert s.average_kl == pytest.approx((log_q_own - log_p).mean(), abs=1e-10)
    assert s.mutual_information_se == pytest.approx(mi_per_image.std(ddof=1) / math.sqrt(3), abs=1e-10)
    assert s.marginal_kl_se == pytest.approx(marg_per_image.std(ddof=1) / math.sqrt(3), abs=1e-10)
    assert np.all(log_q_own - log_q_agg <= math.log(3) + 1e-12)


def test_surgery_does_not_depend_on_the_chunk():
    model = _small_model(dtype=F64)
    x = _binary(30, 12, dtype=F64)
    a = elbo_surgery(model, x, n_samples=4, generator=_gen(0), chunk=250)
    b = elbo_surgery(model, x, n_samples=4, generator=_gen(0), chunk=7)
    c = elbo_surgery(model, x, n_samples=4, generator=_gen(0), chunk=1)
    for other in (b, c):
        assert other.mutual_information == pytest.approx(a.mutual_information, abs=1e-12)
        assert other.marginal_kl == pytest.approx(a.marginal_kl, abs=1e-12)
        assert other.average_kl == a.average_kl


def test_surgery_is_reproducible_with_a_seeded_generator():
    model = _small_model()
    x = _binary(40, 12)
    assert elbo_surgery(model, x, 5, _gen(3)) == elbo_surgery(model, x, 5, _gen(3))
    assert elbo_surgery(model, x, 5, _gen(3)) != elbo_surgery(model, x, 5, _gen(4))


def test_surgery_with_a_mixture_prior_has_no_closed_form():
    model = vaelib.VAE(12, 2, hidden=(8,), prior=_randomised_mixture(2, 3), seed=0).double()
    x = _binary(50, 12, dtype=F64)
    s = elbo_surgery(model, x, n_samples=10, generator=_gen(0))
    assert s.average_kl_exact is None
    assert s.average_kl == pytest.approx(s.mutual_information + s.marginal_kl, abs=1e-9)
    assert s.mutual_information <= math.log(50)


def test_surgery_the_aggregate_posterior_as_prior_leaves_only_the_mutual_information():
    """With p(z) = q(z) (a MixturePrior holding the N posteriors, equal weights), the marginal KL is 0."""
    model = _small_model(dtype=F64)
    x = _binary(20, 12, dtype=F64)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
    prior = MixturePrior(2, 20).double()
    with torch.no_grad():
        prior.means.copy_(mu)
        prior.logvars.copy_(logvar)
    model.prior_module = prior
    s = elbo_surgery(model, x, n_samples=10, generator=_gen(0))
    assert abs(s.marginal_kl) < 1e-9
    assert s.average_kl == pytest.approx(s.mutual_information, abs=1e-9)


def test_surgery_argument_errors():
    model = _small_model()
    x = _binary(10, 12)
    with pytest.raises(ValueError, match="at least 2"):
        elbo_surgery(model, x[:1])
    with pytest.raises(ValueError):
        elbo_surgery(model, x, n_samples=0)
    with pytest.raises(TypeError):
        elbo_surgery(model, x, n_samples=2.0)
    with pytest.raises(TypeError):
        elbo_surgery(model, x, n_samples=True)
    with pytest.raises(ValueError):
        elbo_surgery(model, x, n_samples=2**40)
    with pytest.raises(ValueError):
        elbo_surgery(model, x, chunk=0)
    with pytest.raises(TypeError):
        elbo_surgery(model, x, generator=0)
    with pytest.raises(TypeError, match="VAE"):
        elbo_surgery(model.encoder, x)
    with pytest.raises(ValueError):
        elbo_surgery(model, x * 0.5)  # grey levels under a Bernoulli likelihood
    with pytest.raises(ValueError):
        elbo_surgery(model, x[:, :11])
    with pytest.raises(TypeError):
        elbo_surgery(model, x.double())


@pytest.mark.parametrize("encoder", ["list", "normal"])
def test_vamp_prior_accepts_every_gaussian_encoder_the_vae_accepts(encoder):
    """vaelib.VAE reads an encoder returning a list [mu, logvar] or a Pyro-style Normal(loc, scale) (batch
    (n, d), event ()) as a diagonal Gaussian posterior; the VampPrior built on the same encoder must too."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 4)

        def forward(self, x):
            mu, log_sd = self.lin(x).chunk(2, -1)
            return [mu, 2 * log_sd] if encoder == "list" else Normal(mu, log_sd.exp())

    torch.manual_seed(0)
    enc = Encoder().double()
    model = vaelib.VAE(6, 2, encoder=enc, prior=VampPrior(enc, 6, 3)).double()
    model.posterior(torch.zeros(2, 6, dtype=F64))  # the VAE accepts this encoder
    u = model.prior_module.pseudo_inputs.detach()
    with torch.no_grad():
        mu, log_sd = enc.lin(u).chunk(2, -1)
    z = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    want = _np_mixture_log_prob(z.numpy(), np.full(3, -math.log(3)), mu.numpy(), np.exp(2 * log_sd.numpy()))
    np.testing.assert_allclose(model.prior().log_prob(z).detach().numpy(), want, rtol=0, atol=1e-10)
