"""vaelib.hierarchy: the Chain distribution and the two-level VAE, against densities written out by hand.

The Chain is checked against ``torch.distributions`` (a linear-Gaussian chain is a bivariate normal);
the two-level VAE's per-layer KL against the layers' conditionals evaluated here on reproduced draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

import vaelib
from vaelib.distributions import DiagonalNormal, StandardNormal
from vaelib.hierarchy import Chain, LowerDecoder, TwoLevelEncoder, TwoLevelPrior, layer_kl, two_level_vae

F64 = torch.float64


from test_priors import _binary, _gen  # noqa: E402  (the same small data and seeds)


def _log_normal(v: torch.Tensor, loc: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(v; loc, diag exp(logvar)) with torch.distributions.Normal, summed over the last dimension."""
    return Normal(loc, torch.exp(0.5 * logvar)).log_prob(v).sum(-1)


class _Affine:
    """then(a) = N(W a + c, diag exp(logvar)): a conditional whose parameters are known."""

    def __init__(self, d_in: int, d_out: int, seed: int = 0) -> None:
        g = _gen(seed)
        self.w = torch.randn(d_out, d_in, generator=g, dtype=F64)
        self.c = torch.randn(d_out, generator=g, dtype=F64)
        self.logvar = 0.5 * torch.randn(d_out, generator=g, dtype=F64)

    def loc(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.w.T + self.c

    def __call__(self, a: torch.Tensor) -> DiagonalNormal:
        return DiagonalNormal(self.loc(a), self.logvar.expand(*a.shape[:-1], -1))


def _chain(first_last: bool, batch: int = 4) -> tuple[Chain, DiagonalNormal, _Affine]:
    g = _gen(1)
    first = DiagonalNormal(torch.randn(batch, 2, generator=g, dtype=F64), 0.3 * torch.randn(batch, 2, generator=g, dtype=F64))
    then = _Affine(2, 3)
    return Chain(first, then, (2, 3), first_last=first_last), first, then


# --- Chain --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_last", [False, True])
def test_chain_log_prob_is_first_plus_then(first_last):
    chain, first, then = _chain(first_last)
    assert chain.batch_shape == (4,) and chain.event_shape == (5,)
    z = torch.randn(6, 4, 5, generator=_gen(2), dtype=F64)
    if first_last:
        b, a = z[..., :3], z[..., 3:]
    else:
        a, b = z[..., :2], z[..., 2:]
    want = _log_normal(a, first.loc, first.logvar) + _log_normal(b, then.loc(a), then.logvar)
    got = chain.log_prob(z)
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    la, lb = chain.layer_log_probs(z)
    torch.testing.assert_close(la, _log_normal(a, first.loc, first.logvar), rtol=0, atol=1e-12)
    torch.testing.assert_close(lb, _log_normal(b, then.loc(a), then.logvar), rtol=0, atol=1e-12)
    sa, sb = chain.split(z)
    assert torch.equal(sa, a) and torch.equal(sb, b)


@pytest.mark.parametrize("first_last", [False, True])
def test_chain_rsample_layout(first_last):
    chain, first, then = _chain(first_last)
    torch.manual_seed(5)
    z = chain.rsample((7,))
    assert z.shape == (7, 4, 5)
    torch.manual_seed(5)  # the same stream: a first, then b given a
    a = first.rsample((7,))
    b = then(a).rsample()
    want = torch.cat([b, a] if first_last else [a, b], -1)
    torch.testing.assert_close(z, want, rtol=0, atol=0)
    # where the first variable is stored: last with first_last=True
    stored_a = z[..., 3:] if first_last else z[..., :2]
    assert torch.equal(stored_a, a)
    torch.manual_seed(5)
    s = chain.sample((7,))
    assert not s.requires_grad and torch.equal(s, z.detach())


def test_chain_rsample_is_reparameterised():
    loc = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    chain = Chain(DiagonalNormal(loc, torch.zeros(3, 2, dtype=F64)), _Affine(2, 3), (2, 3))
    assert chain.has_rsample
    z = chain.rsample((4,))
    z.sum().backward()
    # d/d loc of sum(a) + sum(W a + c + noise) = 4 draws * (1 + column sums of W)
    want = 4 * (1 + _Affine(2, 3).w.sum(0)).expand(3, 2)
    torch.testing.assert_close(loc.grad, want, rtol=0, atol=1e-12)


def _linear_gaussian_chain(first_last: bool = False) -> Chain:
    """a ~ N(0, 1), b | a ~ N(2a, 1): (a, b) ~ N(0, [[1, 2], [2, 5]])."""
    first = DiagonalNormal(torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64))
    return Chain(first, lambda a: DiagonalNormal(2 * a, torch.zeros_like(a)), (1, 1), first_last=first_last)


def test_linear_gaussian_chain_moments_by_monte_carlo():
    chain = _linear_gaussian_chain()
    torch.manual_seed(0)
    n = 200_000
    z = chain.sample((n,))
    assert z.shape == (n, 2)
    cov = torch.tensor([[1.0, 2.0], [2.0, 5.0]], dtype=F64)
    mean_se = (cov.diagonal() / n).sqrt()
    assert torch.all(z.mean(0).abs() < 4 * mean_se), z.mean(0)
    emp = torch.cov(z.T)
    # standard error of a sample covariance entry: sqrt((s_ii s_jj + s_ij^2) / n)
    cov_se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert torch.all((emp - cov).abs() < 4 * cov_se), emp
    # stored the other way round
    torch.manual_seed(0)
    z_rev = _linear_gaussian_chain(first_last=True).sample((n,))
    torch.testing.assert_close(z_rev, z.flip(-1), rtol=0, atol=0)


@pytest.mark.parametrize("first_last", [False, True])
def test_linear_gaussian_chain_density_is_the_bivariate_normal(first_last):
    chain = _linear_gaussian_chain(first_last)
    cov = torch.tensor([[1.0, 2.0], [2.0, 5.0]], dtype=F64)
    if first_last:
        cov = cov.flip(0).flip(1)  # (b, a)
    ref = MultivariateNormal(torch.zeros(2, dtype=F64), cov)
    z = 3 * torch.randn(50, 2, generator=_gen(0), dtype=F64)
    torch.testing.assert_close(chain.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    # exp(log_prob) integrates to 1 and gives the right covariance (a grid over +-10 sd)
    h = 0.05
    sa, sb = (1.0, math.sqrt(5.0)) if not first_last else (math.sqrt(5.0), 1.0)
    u = torch.arange(-10 * sa, 10 * sa + h / 2, h, dtype=F64)
    v = torch.arange(-10 * sb, 10 * sb + h / 2, h, dtype=F64)
    grid = torch.stack(torch.meshgrid(u, v, indexing="ij"), -1)
    p = chain.log_prob(grid).exp()
    assert (p.sum() * h * h).item() == pytest.approx(1.0, abs=1e-6)
    second = torch.einsum("ij,ijk,ijl->kl", p, grid, grid) * h * h
    torch.testing.assert_close(second, cov, rtol=0, atol=1e-5)


def test_chain_validation():
    first = DiagonalNormal(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="Distribution"):
        Chain(torch.zeros(3, 2), lambda a: first, (2, 2))
    with pytest.raises(ValueError, match="event shape"):
        Chain(first, lambda a: first, (3, 2))
    with pytest.raises(ValueError):
        Chain(first, lambda a: first, (2, 0))
    chain = Chain(first, lambda a: DiagonalNormal(a, a), (2, 3))  # then returns event (2,), not (3,)
    with pytest.raises(ValueError, match="then"):
        chain.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="then"):
        chain.rsample()
    chain = Chain(first, lambda a: a, (2, 2))  # not a distribution
    with pytest.raises(ValueError, match="then"):
        chain.sample()


# --- the two-level model --------------------------------------------------------------------------------

X_DIM, Z1, Z2 = 12, 2, 3


def _model(seed: int | None = 0) -> vaelib.VAE:
    return two_level_vae(X_DIM, Z1, Z2, hidden=(16,), hidden2=(8,), seed=seed)


def test_two_level_vae_is_a_vae_over_both_layers():
    model = _model()
    assert isinstance(model, vaelib.VAE) and model.z_dim == Z1 + Z2 and model.x_dim == X_DIM
    assert isinstance(model.encoder, TwoLevelEncoder)
    assert isinstance(model.prior_module, TwoLevelPrior)
    assert isinstance(model.decoder, LowerDecoder)
    x = _binary(5, X_DIM)
    q, p = model.posterior(x), model.prior()
    assert isinstance(q, Chain) and isinstance(p, Chain)
    assert q.event_shape == (Z1 + Z2,) and q.batch_shape == (5,) and not q.first_last and q.dims == (Z1, Z2)
    assert p.event_shape == (Z1 + Z2,) and p.batch_shape == () and p.first_last and p.dims == (Z2, Z1)
    assert isinstance(p.first, StandardNormal) and p.first.event_shape == (Z2,)
    # the posterior's first layer is q(z1|x) from x; its second q(z2|z1) from z1 only
    torch.testing.assert_close(q.first.loc, model.encoder.q_z1(x).loc)


def test_two_level_vae_densities_by_hand():
    model = _model().double()
    x = _binary(4, X_DIM, dtype=F64)
    z = torch.randn(3, 4, Z1 + Z2, generator=_gen(0), dtype=F64)
    z1, z2 = z[..., :Z1], z[..., Z1:]
    with torch.no_grad():
        h = model.encoder.q_z1.body(x)
        q1 = _log_normal(z1, model.encoder.q_z1.to_mu(h), model.encoder.q_z1.to_logvar(h))
        h2 = model.encoder.q_z2.body(z1)
        q2 = _log_normal(z2, model.encoder.q_z2.to_mu(h2), model.encoder.q_z2.to_logvar(h2))
        hp = model.prior_module.p_z1.body(z2)
        p1 = _log_normal(z1, model.prior_module.p_z1.to_mu(hp), model.prior_module.p_z1.to_logvar(hp))
        p2 = Normal(0.0, 1.0).log_prob(z2).sum(-1)
        torch.testing.assert_close(model.posterior(x).log_prob(z), q1 + q2, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.prior().log_prob(z), p1 + p2, rtol=0, atol=1e-12)


def test_likelihood_reads_z1_only():
    model = _model()
    x = _binary(5, X_DIM)
    z = torch.randn(3, 5, Z1 + Z2, generator=_gen(0))
    other_z2 = z.clone()
    other_z2[..., Z1:] = 10 * torch.randn(3, 5, Z2, generator=_gen(1))
    with torch.no_grad():
        base = model.likelihood(z).log_prob(x)
        assert torch.equal(model.likelihood(other_z2).log_prob(x), base)
        assert torch.equal(model.decoder(z), model.decoder(other_z2))
        other_z1 = z.clone()
        other_z1[..., :Z1] += 1.0
        assert not torch.allclose(model.likelihood(other_z1).log_prob(x), base)


def test_layer_kl_adds_up_to_the_elbos_monte_carlo_kl():
    model = _model()
    x = _binary(6, X_DIM)
    kl1, kl2 = layer_kl(model, x, n_samples=50, generator=_gen(4))
    assert kl1.shape == (6,) and kl2.shape == (6,)
    terms = vaelib.elbo(model, x, n_samples=50, generator=_gen(4))
    assert terms.kl_closed_form is False
    torch.testing.assert_close(kl1 + kl2, terms.kl.detach(), rtol=1e-5, atol=1e-5)


def test_layer_kl_matches_an_independent_estimate_with_other_draws():
    model = _model()
    x = _binary(4, X_DIM)
    s = 4000
    kl1, kl2 = layer_kl(model, x, n_samples=s, generator=_gen(1))
    # independent: draws of our own (z1 ~ q(z1|x), z2 ~ q(z2|z1)) with torch.distributions.Normal
    torch.manual_seed(123)
    with torch.no_grad():
        enc, pri = model.encoder, model.prior_module
        h = enc.q_z1.body(x)
        mu1, lv1 = enc.q_z1.to_mu(h), enc.q_z1.to_logvar(h)
        z1 = Normal(mu1, (0.5 * lv1).exp()).sample((s,))
        h2 = enc.q_z2.body(z1)
        mu2, lv2 = enc.q_z2.to_mu(h2), enc.q_z2.to_logvar(h2)
        z2 = Normal(mu2, (0.5 * lv2).exp()).sample()
        hp = pri.p_z1.body(z2)
        d1 = _log_normal(z1, mu1, lv1) - _log_normal(z1, pri.p_z1.to_mu(hp), pri.p_z1.to_logvar(hp))
        d2 = _log_normal(z2, mu2, lv2) - Normal(0.0, 1.0).log_prob(z2).sum(-1)
    for mine, got in ((d1, kl1), (d2, kl2)):
        se = math.sqrt(2) * mine.std(0) / math.sqrt(s)   # both estimates carry this error
        assert torch.all((mine.mean(0) - got).abs() < 4 * se), (mine.mean(0), got, se)
    # layer 2 is a KL of densities given z1: each image's average is positive in expectation
    assert torch.all(kl2 > -4 * math.sqrt(2) * d2.std(0) / math.sqrt(s))


def test_layer_kl_on_reproduced_draws():
    """The posterior is a Chain (a torch Distribution subclass): vaelib draws it with PyTorch's global
    generator seeded from one 62-bit number of the caller's generator; reproduce that and recompute."""
    model = _model().double()
    x = _binary(3, X_DIM, dtype=F64)
    kl1, kl2 = layer_kl(model, x, n_samples=5, generator=_gen(8))
    seed = int(torch.randint(0, 2**62, (1,), generator=_gen(8)))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = model.posterior(x).rsample((5,))
        q1, q2 = model.posterior(x).layer_log_probs(z)
        z1, z2 = z[..., :Z1], z[..., Z1:]
        hp = model.prior_module.p_z1.body(z2)
        p1 = _log_normal(z1, model.prior_module.p_z1.to_mu(hp), model.prior_module.p_z1.to_logvar(hp))
        p2 = Normal(0.0, 1.0).log_prob(z2).sum(-1)
    torch.testing.assert_close(kl1, (q1 - p1).mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(kl2, (q2 - p2).mean(0), rtol=0, atol=1e-12)


def test_seeded_construction_is_reproducible_and_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    assert torch.equal(state, torch.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unseeded_construction_draws_from_the_global_generator():
    """seed=None: as VAE(seed=None), the initial parameters come from PyTorch's global generator, so two
    models built one after the other differ (and a seeded global generator reproduces them)."""
    torch.manual_seed(0)
    a, b = _model(seed=None), _model(seed=None)
    torch.manual_seed(0)
    a_again = _model(seed=None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), a_again.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), (
        "two_level_vae(seed=None) twice gave identical models: the global generator is forked and restored, "
        "so it never advances"
    )


def test_two_level_vae_trains_with_fit():
    model = _model()
    x = _binary(64, X_DIM)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    history = vaelib.fit(model, x, 1, batch_size=16, lr=1e-2, progress=False)  # refuses a parameter without gradient
    assert history.epochs == 1
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} was not trained"
    assert torch.isfinite(vaelib.elbo(model, x, generator=_gen(0)).elbo).all()


def test_two_level_vae_survives_save_and_load(tmp_path):
    model = _model(seed=1)
    vaelib.save(model, tmp_path / "two.pt")
    fresh = vaelib.load(tmp_path / "two.pt", model=_model(seed=2))
    x = _binary(4, X_DIM)
    assert torch.equal(vaelib.elbo(model, x, generator=_gen(0)).elbo, vaelib.elbo(fresh, x, generator=_gen(0)).elbo)


def test_layer_kl_argument_errors():
    x = _binary(4, X_DIM)
    with pytest.raises(TypeError, match="two-level"):
        layer_kl(vaelib.VAE(X_DIM, Z1 + Z2, hidden=(8,)), x)
    model = _model()
    with pytest.raises(TypeError, match="VAE"):
        layer_kl(model.encoder, x)
    with pytest.raises(ValueError):
        layer_kl(model, x, n_samples=0)
    with pytest.raises(TypeError):
        layer_kl(model, x, generator=1)
    with pytest.raises(ValueError):
        layer_kl(model, x * 0.5)  # grey levels: not in a Bernoulli's support
    with pytest.raises(ValueError):
        layer_kl(model, x[:, :5])


def test_layer_kl_sees_a_collapsed_top_layer():
    """Make q(z2|z1) equal to p(z2) = N(0, I) and p(z1|z2) ignore z2: the second layer's KL is exactly 0."""
    model = _model().double()
    with torch.no_grad():
        for layer in (model.encoder.q_z2.to_mu, model.encoder.q_z2.to_logvar):
            layer.weight.zero_()
            layer.bias.zero_()
    x = _binary(5, X_DIM, dtype=F64)
    kl1, kl2 = layer_kl(model, x, n_samples=20, generator=_gen(0))
    torch.testing.assert_close(kl2, torch.zeros(5, dtype=F64), rtol=0, atol=1e-12)
    # all of the KL is then in the first layer
    total = vaelib.elbo(model, x, n_samples=20, generator=_gen(0)).kl.detach()
    torch.testing.assert_close(kl1, total, rtol=0, atol=1e-10)


def test_elbo_surgery_and_the_bound_work_on_a_two_level_model():
    from vaelib.priors import elbo_surgery

    model = _model()
    x = _binary(30, X_DIM)
    s = elbo_surgery(model, x, n_samples=5, generator=_gen(0))
    assert s.average_kl_exact is None
    assert s.average_kl == pytest.approx(s.mutual_information + s.marginal_kl, abs=1e-5)
    assert s.mutual_information <= math.log(30) + 1e-6
    ll = vaelib.log_likelihood(model, x[:3], k=200, generator=_gen(0))
    elbo = vaelib.elbo(model, x[:3], n_samples=200, generator=_gen(1)).elbo.detach()
    assert ll.shape == (3,) and torch.all(ll > elbo - 0.5)
    assert vaelib.sample(model, 4, _gen(0)).shape == (4, X_DIM)
