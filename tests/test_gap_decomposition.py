"""vaelib.inference_gap: moment_gaussian, GapReport and gap_decomposition (chapter 7's decomposition).

The reference model is a small MLP VAE trained briefly on 300 binarised digits. Its report is checked
against the bounds' order (ELBO <= best Gaussian <= log p, within Monte Carlo error), against each field
recomputed here from reproduced draws, and for reproducibility; moment_gaussian against a known
full-covariance Gaussian encoder.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

import vaelib
import vaelib.inference_gap as gap_module
from vaelib.inference_gap import (
    Gaussian,
    GapReport,
    encoder_gaussian,
    fit_gaussian,
    gap_decomposition,
    gaussian_elbo,
    gaussian_log_likelihood,
    moment_gaussian,
)
from vaelib.posteriors import IAFEncoder

F64 = torch.float64
STEPS, K, S = 60, 200, 200
N_IMAGES = 12


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    train, _ = vaelib.data.load_mnist()
    return train.images[:300].bernoulli(generator=_gen(0))


@pytest.fixture(scope="module")
def trained(digits) -> vaelib.VAE:
    model = vaelib.VAE(784, 4, hidden=(50,), seed=0)
    vaelib.fit(model, digits, 2, batch_size=32, lr=3e-3, progress=False)
    return model


@pytest.fixture(scope="module")
def x(digits) -> torch.Tensor:
    return digits[:N_IMAGES]


@pytest.fixture(scope="module")
def report(trained, x) -> GapReport:
    return gap_decomposition(trained, x, steps=STEPS, k=K, n_samples=S)


@pytest.fixture(scope="module")
def report_full(trained, x) -> GapReport:
    return gap_decomposition(trained, x, family="full", steps=STEPS, k=K, n_samples=S)


# --- the report ---------------------------------------------------------------------------------------


def test_report_fields(report):
    assert isinstance(report, GapReport)
    for name in ("elbo", "elbo_se", "best", "best_se", "log_p", "log_p_se"):
        value = getattr(report, name)
        assert isinstance(value, torch.Tensor) and value.shape == (N_IMAGES,), name
        assert torch.isfinite(value).all(), name
        assert not value.requires_grad, name
    for name in ("elbo_se", "best_se", "log_p_se"):
        assert torch.all(getattr(report, name) > 0), name
    assert report.family == "diagonal" and report.k == K
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.k = 3


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return v.mean().item(), (v.std(unbiased=True) / math.sqrt(v.numel())).item()


def test_amortisation_approximation_total(report):
    amortisation, approximation, total = report.amortisation, report.approximation, report.total
    for got, want in ((amortisation, _mean_se(report.best - report.elbo)),
                      (approximation, _mean_se(report.log_p - report.best)),
                      (total, _mean_se(report.log_p - report.elbo))):
        assert got[0] == pytest.approx(want[0], abs=1e-4)
        assert got[1] == pytest.approx(want[1], rel=1e-4)
    assert total[0] == pytest.approx(amortisation[0] + approximation[0], abs=1e-3)


def test_gap_report_properties_on_known_numbers():
    t = torch.tensor
    r = GapReport(elbo=t([-10.0, -12.0, -11.0]), elbo_se=t([0.1, 0.1, 0.1]), best=t([-9.0, -10.0, -10.0]),
                  best_se=t([0.1, 0.1, 0.1]), log_p=t([-8.0, -9.0, -7.0]), log_p_se=t([0.1, 0.1, 0.1]),
                  family="diagonal", k=10)
    # best - elbo = (1, 2, 1): mean 4/3, sd sqrt(1/3); log_p - best = (1, 1, 3): mean 5/3, sd sqrt(4/3);
    # log_p - elbo = (2, 3, 4): mean 3, sd 1
    assert r.amortisation[0] == pytest.approx(4 / 3) and r.amortisation[1] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert r.approximation[0] == pytest.approx(5 / 3) and r.approximation[1] == pytest.approx(math.sqrt(4 / 3) / math.sqrt(3))
    assert r.total[0] == pytest.approx(3.0) and r.total[1] == pytest.approx(1 / math.sqrt(3))


def test_elbo_below_best_below_log_p(report):
    tol_amort = 4 * (report.elbo_se**2 + report.best_se**2).sqrt()
    tol_approx = 4 * (report.best_se**2 + report.log_p_se**2).sqrt()
    assert (report.best >= report.elbo - tol_amort).float().mean() >= 0.75
    assert (report.log_p >= report.best - tol_approx).float().mean() >= 0.75
    assert report.amortisation[0] > 0 and report.approximation[0] > 0
    # the means over images, beyond their Monte Carlo error (each image's combined SE, averaged, over sqrt(n))
    assert (report.best - report.elbo).mean() > tol_amort.mean() / math.sqrt(N_IMAGES)
    assert (report.log_p - report.best).mean() > tol_approx.mean() / math.sqrt(N_IMAGES)


def test_full_family_is_at_least_as_good_and_changes_only_best(report, report_full):
    assert report_full.family == "full"
    se = (report.best_se**2 + report_full.best_se**2).sqrt()
    assert (report_full.best - report.best).mean() >= -4 * se.mean() / math.sqrt(N_IMAGES)
    assert (report_full.best >= report.best - 4 * se).float().mean() >= 0.75
    # the same seed: the encoder's ELBO and the log p estimate (from the full fit in both cases) coincide
    assert torch.equal(report.elbo, report_full.elbo) and torch.equal(report.elbo_se, report_full.elbo_se)
    assert torch.equal(report.log_p, report_full.log_p)
    # with family="full" the approximation gap is measured against the same proposal as log p
    assert report_full.approximation[0] < report.approximation[0]


def test_every_field_recomputed_from_the_same_draws(trained, x, report, report_full):
    """gap_decomposition = an encoder ELBO on draws of q_phi, then gaussian_elbo of the diagonal fit, then
    gaussian_log_likelihood of the full fit, all from one generator seeded with ``seed``."""
    model = trained
    start = encoder_gaussian(model, x)
    q_diag = fit_gaussian(model, x, init=Gaussian(start.mu, start.log_std), steps=STEPS, seed=1)
    q_full = fit_gaussian(model, x, covariance="full", init=q_diag, steps=2 * STEPS, seed=2)
    g = _gen(0)
    eps = torch.randn((S, N_IMAGES, 4), generator=g)          # the encoder's draws (a DiagonalNormal)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = model.decoder(z.reshape(-1, 4)).reshape(S, N_IMAGES, 784)
        log_lik = (x * logits - nn.functional.softplus(logits)).sum(-1)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        values = log_lik + log_prior - log_q
        torch.testing.assert_close(report.elbo, values.mean(0), rtol=0, atol=1e-3)
        torch.testing.assert_close(report.elbo_se, values.std(0) / math.sqrt(S), rtol=1e-3, atol=1e-4)
        state = g.get_state()
        best, best_se = gaussian_elbo(model, x, q_diag, n_samples=S, generator=g)
        log_p, log_p_se = gaussian_log_likelihood(model, x, q_full, k=K, generator=g)
        torch.testing.assert_close(report.best, best, rtol=0, atol=1e-3)
        torch.testing.assert_close(report.best_se, best_se, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(report.log_p, log_p, rtol=0, atol=1e-3)
        torch.testing.assert_close(report.log_p_se, log_p_se, rtol=1e-4, atol=1e-5)
        g.set_state(state)
        best_full, _ = gaussian_elbo(model, x, q_full, n_samples=S, generator=g)
        torch.testing.assert_close(report_full.best, best_full, rtol=0, atol=1e-3)


def test_encoder_elbo_agrees_with_vaelib_elbo(trained, x, report):
    """The report's ELBO (log p(x, z) - log q on draws) and vaelib.elbo (closed-form KL) estimate one number."""
    with torch.no_grad():
        e = vaelib.elbo(trained, x, n_samples=4000, generator=_gen(5)).elbo
    assert torch.all((report.elbo - e).abs() < 5 * report.elbo_se + 0.05), (report.elbo - e) / report.elbo_se


def test_gap_decomposition_is_reproducible_and_leaves_the_model_alone(trained, x):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    a = gap_decomposition(trained, x[:4], steps=10, k=20, n_samples=20, seed=3)
    b = gap_decomposition(trained, x[:4], steps=10, k=20, n_samples=20, seed=3)
    c = gap_decomposition(trained, x[:4], steps=10, k=20, n_samples=20, seed=4)
    assert torch.equal(global_state, torch.get_rng_state())
    for name in ("elbo", "elbo_se", "best", "best_se", "log_p", "log_p_se"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert not torch.equal(getattr(a, name), getattr(c, name)), name
    for k, v in trained.state_dict().items():
        assert torch.equal(before[k], v), k
    assert all(p.requires_grad and p.grad is None for p in trained.parameters())


def test_gap_decomposition_argument_errors(trained, x):
    with pytest.raises(ValueError, match="family"):
        gap_decomposition(trained, x[:3], family="diag", steps=2, k=4, n_samples=4)
    with pytest.raises(ValueError, match="family"):
        gap_decomposition(trained, x[:3], family="Full", steps=2, k=4, n_samples=4)
    with pytest.raises(ValueError, match="at least 2"):
        gap_decomposition(trained, x[:1], steps=2, k=4, n_samples=4)
    with pytest.raises(TypeError, match="VAE"):
        gap_decomposition(trained.decoder, x[:3])
    with pytest.raises(ValueError):
        gap_decomposition(trained, x[:3], steps=0, k=4, n_samples=4)
    with pytest.raises(ValueError):
        gap_decomposition(trained, x[:3], steps=2, k=4, n_samples=4, seed=-1)
    with pytest.raises(ValueError):
        gap_decomposition(trained, x[:3], steps=2, k=1, n_samples=4)
    with pytest.raises(ValueError):
        gap_decomposition(trained, x[:3] * 0.5, steps=2, k=4, n_samples=4)  # grey levels, Bernoulli model
    with pytest.raises(ValueError):
        gap_decomposition(trained, x[:3, :100], steps=2, k=4, n_samples=4)


# --- a non-Gaussian encoder ---------------------------------------------------------------------------


def test_iaf_encoder_starts_from_its_moments(digits, x, monkeypatch):
    torch.manual_seed(0)
    encoder = IAFEncoder(784, 4, hidden=(50,), steps=2, made_hidden=(8,), context_dim=8)
    model = vaelib.VAE(784, 4, encoder=encoder, seed=0)
    vaelib.fit(model, digits, 1, batch_size=64, progress=False)
    with pytest.raises(TypeError):
        encoder_gaussian(model, x)
    calls = []
    real = gap_module.moment_gaussian

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(gap_module, "moment_gaussian", spy)
    r = gap_decomposition(model, x[:6], steps=20, k=50, n_samples=50)
    assert len(calls) == 1 and calls[0].mu.shape == (6, 4) and calls[0].lower.shape == (6, 4, 4)
    for name in ("elbo", "elbo_se", "best", "best_se", "log_p", "log_p_se"):
        value = getattr(r, name)
        assert value.shape == (6,) and torch.isfinite(value).all(), name
    assert r.family == "diagonal" and r.k == 50
    # the encoder's ELBO scores the flow's own density (its inverse, on fresh draws): vaelib.elbo agrees
    with torch.no_grad():
        e = vaelib.elbo(model, x[:6], n_samples=2000, generator=_gen(5))
    assert e.kl_closed_form is False
    assert torch.all((r.elbo - e.elbo).abs() < 5 * r.elbo_se + 0.05), (r.elbo - e.elbo) / r.elbo_se


def test_two_level_model_runs():
    from vaelib.hierarchy import two_level_vae

    model = two_level_vae(12, 2, 3, hidden=(16,), hidden2=(8,), seed=0)
    x = (torch.rand(5, 12, generator=_gen(0)) < 0.5).float()
    r = gap_decomposition(model, x, steps=10, k=30, n_samples=30)
    assert r.best.shape == (5,) and torch.isfinite(r.log_p).all()


# --- moment_gaussian ----------------------------------------------------------------------------------


class _FullGaussianEncoder(nn.Module):
    """x -> N(A x + c, L L^T) with a fixed L: a known full-covariance posterior."""

    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(x_dim, z_dim)
        g = _gen(7)
        tril = torch.randn(z_dim, z_dim, generator=g).tril(-1) + torch.diag(0.5 + torch.rand(z_dim, generator=g))
        self.register_buffer("tril", tril)

    def forward(self, x):
        return MultivariateNormal(self.lin(x), scale_tril=self.tril.expand(x.shape[0], -1, -1))


def _full_model(dtype=F64) -> vaelib.VAE:
    torch.manual_seed(0)
    return vaelib.VAE(10, 3, encoder=_FullGaussianEncoder(10, 3), hidden=(8,), seed=0).to(dtype)


def test_moment_gaussian_recovers_a_known_gaussian():
    model = _full_model()
    x = (torch.rand(4, 10, generator=_gen(1)) < 0.5).to(F64)
    s = 20000
    m = moment_gaussian(model, x, n_samples=s, generator=_gen(2))
    assert isinstance(m, Gaussian) and m.mu.shape == (4, 3) and m.log_std.shape == (4, 3)
    assert m.lower.shape == (4, 3, 3)
    with torch.no_grad():
        true_mu = model.encoder.lin(x)
        tril = model.encoder.tril
        true_cov = tril @ tril.T
    mean_se = (true_cov.diagonal() / s).sqrt()
    assert torch.all((m.mu - true_mu).abs() < 4 * mean_se), (m.mu - true_mu) / mean_se
    cov = m.scale_tril @ m.scale_tril.transpose(-1, -2)
    d = true_cov.diagonal()
    cov_se = ((d[:, None] * d[None, :] + true_cov**2) / s).sqrt()
    assert torch.all((cov - true_cov).abs() < 4 * cov_se), (cov - true_cov) / cov_se


def test_moment_gaussian_is_the_sample_mean_and_covariance_of_reproduced_draws():
    model = _full_model()
    x = (torch.rand(3, 10, generator=_gen(1)) < 0.5).to(F64)
    m = moment_gaussian(model, x, n_samples=50, generator=_gen(4))
    seed = int(torch.randint(0, 2**62, (1,), generator=_gen(4)))  # how vaelib draws from a torch distribution
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = model.posterior(x).rsample((50,))
    for n in range(3):
        zn = z[:, n].numpy()
        torch.testing.assert_close(m.mu[n], torch.from_numpy(zn.mean(0)), rtol=0, atol=1e-12)
        sample_cov = torch.cov(z[:, n].T)  # unbiased
        got = m.scale_tril[n] @ m.scale_tril[n].T
        torch.testing.assert_close(got, sample_cov + 1e-6 * torch.eye(3, dtype=F64), rtol=0, atol=1e-10)
    # lower holds only the strictly lower part; the diagonal is exp(log_std)
    assert torch.equal(m.lower, m.lower.tril(-1))


def test_moment_gaussian_of_a_diagonal_encoder(trained, x):
    s = 20000
    m = moment_gaussian(trained, x[:3], n_samples=s, generator=_gen(0))
    with torch.no_grad():
        mu, logvar = trained.encoder(x[:3])
    sd = torch.exp(0.5 * logvar)
    assert torch.all((m.mu - mu).abs() < 4 * sd / math.sqrt(s))
    cov = m.scale_tril @ m.scale_tril.transpose(-1, -2)
    var = sd**2
    torch.testing.assert_close(cov.diagonal(dim1=-2, dim2=-1), var, rtol=0.06, atol=1e-5)
    off = cov - torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
    bound = 4 * (var[:, :, None] * var[:, None, :] / s).sqrt()
    assert torch.all(off.abs() < bound + 1e-6)


def test_moment_gaussian_is_seeded_and_validates():
    model = _full_model()
    x = (torch.rand(3, 10, generator=_gen(1)) < 0.5).to(F64)
    a = moment_gaussian(model, x, n_samples=30, generator=_gen(0))
    b = moment_gaussian(model, x, n_samples=30, generator=_gen(0))
    assert torch.equal(a.mu, b.mu) and torch.equal(a.log_std, b.log_std) and torch.equal(a.lower, b.lower)
    with pytest.raises(ValueError):
        moment_gaussian(model, x, n_samples=1)
    with pytest.raises(TypeError):
        moment_gaussian(model, x, n_samples=10, generator=3)
    with pytest.raises(TypeError, match="VAE"):
        moment_gaussian(model.encoder, x)
    with pytest.raises(ValueError):
        moment_gaussian(model, x[:, :4])
