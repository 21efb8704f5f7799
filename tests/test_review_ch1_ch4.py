"""Claims added to chapters 1-4 in review, checked beyond the chapters' own runs.

* Chapter 1, proposition prop-relvar-gaussian (eq-relvar-gaussian): the relative variance of the
  prior-as-proposal importance weights for a Gaussian prior N(0, I) and Gaussian posterior N(m, Sigma),
  against eq-mc-relvar (a formula in the likelihood), quadrature and Monte Carlo.
* Chapter 1, the Poisson-summation paragraph (in the quadrature tolerance box): for a correlated posterior the trapezoid rule's error is
  set by the diagonal dual-lattice vectors (e_i - e_j)/h, not by the axis vectors.
* The chapters' Markdown: no line inside inline math starts like a list item, and every footnote
  reference has a definition.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelib.toy import LinearGaussian, log_evidence_quadrature

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def log1p_relvar(mean: torch.Tensor, cov: torch.Tensor) -> float:
    """log(1 + Var[w]/p(x)^2) by eq-relvar-gaussian, for prior N(0, I) and posterior N(mean, cov)."""
    two_minus = 2 * torch.eye(len(mean), dtype=F64) - cov
    log_det_factor = -0.5 * (torch.logdet(cov) + torch.logdet(two_minus))
    return float(log_det_factor + mean @ torch.linalg.solve(two_minus, mean))


def log1p_relvar_likelihood(model: LinearGaussian, x: torch.Tensor) -> float:
    """log(1 + relative variance) by eq-mc-relvar: the evidence of the model with noise sigma_x / sqrt 2."""
    half = LinearGaussian(model.W, model.b, model.sigma / math.sqrt(2))
    const = -model.x_dim / 2 * math.log(4 * math.pi * model.sigma**2)
    return const + float(half.log_evidence(x) - 2 * model.log_evidence(x))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), x_dim=st.integers(1, 8), z_dim=st.integers(1, 4), sigma=st.floats(0.2, 3.0))
def test_relvar_closed_form_equals_likelihood_formula(seed: int, x_dim: int, z_dim: int, sigma: float) -> None:
    """eq-relvar-gaussian (in the posterior) = eq-mc-relvar (in the likelihood), for any linear-Gaussian model."""
    g = torch.Generator().manual_seed(seed)
    model = LinearGaussian.random(x_dim, z_dim, sigma=sigma, generator=g)
    x = model.sample(1, generator=g)[0]
    post = model.posterior(x)
    assert float(torch.linalg.eigvalsh(post.covariance_matrix[0]).max()) <= 1 + 1e-12  # the condition holds
    closed = log1p_relvar(post.mean[0], post.covariance_matrix[0])
    assert closed >= -1e-12  # 1 + relative variance >= 1
    assert math.isclose(closed, log1p_relvar_likelihood(model, x), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("mean, var", [(0.0, 0.05), (1.5, 0.3), (-2.0, 1.0), (0.7, 1.5), (3.0, 0.01)])
def test_relvar_closed_form_against_quadrature_1d(mean: float, var: float) -> None:
    """1-D: the integral of N(z; m, s^2)^2 / N(z; 0, 1), by fine trapezoid quadrature. Variances up to 1.5
    (wider than the prior) are covered: the proposition only needs every eigenvalue below 2."""
    z = torch.linspace(-40, 40, 400_001, dtype=F64)
    log_post = -0.5 * (math.log(2 * math.pi * var) + (z - mean) ** 2 / var)
    log_prior = -0.5 * (math.log(2 * math.pi) + z**2)
    integrand = (2 * log_post - log_prior).exp()
    quad = float(torch.trapezoid(integrand, z))
    closed = log1p_relvar(torch.tensor([mean], dtype=F64), torch.tensor([[var]], dtype=F64))
    assert math.isclose(math.log(quad), closed, rel_tol=0, abs_tol=1e-9)


def test_relvar_diverges_at_eigenvalue_two() -> None:
    """At a posterior variance of 2 the integrand stops decaying: its quadrature grows with the box."""
    var = 2.0
    values = []
    for half_width in (20.0, 40.0):
        z = torch.linspace(-half_width, half_width, 200_001, dtype=F64)
        log_integrand = -(math.log(2 * math.pi * var) + z**2 / var) + 0.5 * (math.log(2 * math.pi) + z**2)
        values.append(float(torch.trapezoid(log_integrand.exp(), z)))
    assert values[1] > 1.9 * values[0]  # proportional to the box: the integral is infinite


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relvar_against_monte_carlo_from_the_posterior(seed: int) -> None:
    """1 + relative variance = E_posterior[p(z|x)/p(z)], estimated from posterior draws (within 4 SE)."""
    g = torch.Generator().manual_seed(seed)
    base = LinearGaussian.random(2, 2, sigma=0.7, generator=g)
    model = LinearGaussian(base.W.repeat(5, 1), base.b.repeat(5), base.sigma)  # five observations, one z
    x = model.sample(1, generator=g)[0]
    post = model.posterior(x)
    mean, cov = post.mean[0], post.covariance_matrix[0]
    eps = torch.randn(200_000, 2, generator=g, dtype=F64)
    z = mean + eps @ torch.linalg.cholesky(cov).T
    ratio = (post.log_prob(z[:, None]) - model.log_prior(z[:, None])).exp()[:, 0]
    mc, se = float(ratio.mean()), float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(mc - math.exp(log1p_relvar(mean, cov))) < 4 * se


def test_trapezoid_error_of_a_correlated_posterior_comes_from_diagonal_lattice_vectors() -> None:
    """The Poisson-summation paragraph of chapter 1 (quadrature tolerance box). Posterior covariance 0.5 [[1, 0.9], [0.9, 1]], centred on a grid node:
    every Poisson term has phase 0, so the relative error of the library's quadrature is the sum of
    exp(-2 pi^2 k^T Sigma k / h^2) over k != 0. The k = +-(e_1 - e_2) terms carry it; the axis terms the
    chapter's main formula keeps are 20 orders of magnitude smaller."""
    sigma = 0.5
    cov = 0.5 * torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)
    eigval, eigvec = torch.linalg.eigh(torch.linalg.inv(cov) - torch.eye(2, dtype=F64))
    W = sigma * eigvec @ torch.diag(eigval.sqrt()) @ eigvec.T  # I + W^T W / sigma^2 = cov^{-1}
    model = LinearGaussian(W, torch.zeros(2, dtype=F64), sigma)
    x = torch.zeros(1, 2, dtype=F64)  # posterior mean 0, a node of the symmetric grid
    post = model.posterior(x)
    torch.testing.assert_close(post.covariance_matrix[0], cov, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(post.mean[0], torch.zeros(2, dtype=F64), rtol=0, atol=1e-14)

    n_points, bound = 37, 8.0
    h = 2 * bound / (n_points - 1)
    quad = log_evidence_quadrature(model, x, n_points=n_points, bound=bound)
    rel_err = math.expm1(float(quad - model.log_evidence(x)))

    def term(k: tuple[float, ...]) -> float:
        kv = torch.tensor(k, dtype=F64)
        return math.exp(-2 * math.pi**2 * float(kv @ cov @ kv) / h**2)

    axes = sum(term(k) for k in [(1, 0), (-1, 0), (0, 1), (0, -1)])
    full = sum(term(k) for k in itertools.product((-2, -1, 0, 1, 2), repeat=2) if any(k))
    diagonal = term((1, -1)) + term((-1, 1))
    assert 1e-5 < rel_err  # far above rounding: the error is measurable
    assert math.isclose(rel_err, full, rel_tol=1e-6)
    assert math.isclose(full, diagonal, rel_tol=1e-3)
    assert axes < 1e-15 * rel_err


CHAPTERS = [
    "book/ch1_evidence.md",
    "book/ch2_vi_kl.md",
    "book/ch3_elbo.md",
    "book/ch4_reconstruction_regularisation.md",
    "book/notation.md",
    "book/intro.md",
]


def _prose_lines(text: str):
    """Markdown lines that are read as prose (not code cells, {math} directives or $$ display blocks), each
    with whether an inline $...$ is open when the line starts."""
    skip_until, in_display, inline_open = None, False, False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if skip_until is not None:  # inside a code cell or a {math} directive
            if stripped == skip_until:
                skip_until = None
            continue
        fence = re.match(r"(`{3,})\{(code-cell|math)\}", stripped)
        if fence:
            skip_until, inline_open = fence.group(1), False
            continue
        if stripped.startswith("$$"):
            in_display = not in_display
            inline_open = False
            if stripped.count("$$") == 2:  # $$ ... $$ on one line
                in_display = False
            continue
        if in_display:
            continue
        if not stripped or stripped.startswith("`"):
            inline_open = False
            continue
        yield number, line, inline_open
        dollars = len(re.findall(r"(?<!\\)\$", line))
        inline_open ^= dollars % 2 == 1


@pytest.mark.parametrize("path", CHAPTERS)
def test_no_list_marker_inside_inline_math(path: str) -> None:
    """A line inside $...$ that starts with '+ ' or '- ' would be read by Markdown as a list item."""
    text = (ROOT / path).read_text(encoding="utf-8")
    bad = [(n, line) for n, line, open_ in _prose_lines(text) if open_ and re.match(r"\s*[-+*] ", line)]
    assert not bad, f"{path}: lines inside inline math start like list items: {bad}"


@pytest.mark.parametrize("path", CHAPTERS)
def test_footnotes_are_defined(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    refs = set(re.findall(r"\[\^([\w-]+)\](?!:)", text))
    defs = set(re.findall(r"^\[\^([\w-]+)\]:", text, flags=re.M))
    assert refs == defs, f"{path}: footnote references {sorted(refs)} vs definitions {sorted(defs)}"
