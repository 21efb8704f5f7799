"""vaelib: the small PyTorch library behind *The ELBO Book*.

One module per idea of the book:

=============================  ======================================================================  ========
module                         what it holds                                                           chapter
=============================  ======================================================================  ========
:mod:`vaelib.toy`              the tractable linear-Gaussian model; probabilistic PCA                  1, 3
:mod:`vaelib.densities`        Gaussian and Bernoulli log-densities                                    2, 4
:mod:`vaelib.kl`               closed-form KL between Gaussians                                        2, 4
:mod:`vaelib.distributions`    the model's prior, likelihood and posterior as objects                  2, 4, 6
:mod:`vaelib.elbo`             the ELBO and its two terms                                              3, 4
:mod:`vaelib.sampling`         the reparameterisation trick                                            5
:mod:`vaelib.gradients`        score-function and pathwise gradient estimators                         5
:mod:`vaelib.backprop`         the ELBO's gradient by hand (the built-in MLP's fast path)              5, 6
:mod:`vaelib.model`            the VAE: three distributions (defaults: the built-in MLP)               4, 6
:mod:`vaelib.objectives`       what fit maximises: the ELBO (beta, warm-up, free bits), IWAE, DReG     4, 6
:mod:`vaelib.train`            fitting a VAE by maximising the ELBO (or a tighter bound)               3, 4, 6
:mod:`vaelib.cache`            training once for several chapters (a memo of ``fit``)                  6, 7
:mod:`vaelib.iwae`             the importance-weighted bound and log-likelihood estimates              6, 7
:mod:`vaelib.folding`          the folded decoder (log_likelihood's fast path for the built-in MLP)    6, 7
:mod:`vaelib.inference_gap`    the best Gaussian for each image (the inference gap)                    7-11
:mod:`vaelib.evaluate`         one row of Part II's table: a model measured as in chapter 7            8-11
:mod:`vaelib.flows`            inverse autoregressive flows (MADE, one IAF step as a Transform)        8
:mod:`vaelib.posteriors`       richer encoders: full covariance, IAF                                   8
:mod:`vaelib.priors`           learned priors (mixture, VampPrior), ELBO surgery                       10
:mod:`vaelib.hierarchy`        the two-level VAE, z2 -> z1 -> x, and its per-layer KL                  11
:mod:`vaelib.diffusion`        diffusion models: a fixed encoder, their ELBO, training, sampling       12
:mod:`vaelib.generate`         sampling from the prior, interpolation                                  6
:mod:`vaelib.data`             bundled real digits, IDX reader                                         4, 6
:mod:`vaelib.checkpoint`       safe save/load                                                          6
:mod:`vaelib.plot`             image grids, latent scatter, manifold                                   4, 6
:mod:`vaelib.explorer`         live figures: the latent explorer, the in-page diffusion sampler        6, 12
:mod:`vaelib.checks`           the chapters' self-checks, one line each (assert and record)            all
:mod:`vaelib.exercises`        exercises that check themselves (``check(name, answer)``)               all
=============================  ======================================================================  ========
"""

from __future__ import annotations

from ._version import __version__

from . import data, diffusion, distributions, evaluate, flows, folding, hierarchy, inference_gap, objectives, plot, posteriors, priors, toy
from .backprop import elbo_backward
from .checkpoint import load, save
from .densities import log_bernoulli, log_normal
from .elbo import ActiveUnits, ELBOTerms, active_units, elbo
from .generate import interpolate, sample
from .gradients import GradientSamples, pathwise_grad, score_function_grad
from .iwae import iwae_bound, log_likelihood
from .kl import gaussian_kl, kl_normal
from .model import VAE
from .sampling import reparameterize
from .cache import fit_cached
from .train import FitState, History, TrainingDivergedError, fit

__all__ = [
    "ActiveUnits",
    "ELBOTerms",
    "FitState",
    "GradientSamples",
    "History",
    "TrainingDivergedError",
    "VAE",
    "active_units",
    "elbo",
    "elbo_backward",
    "fit",
    "fit_cached",
    "gaussian_kl",
    "interpolate",
    "iwae_bound",
    "kl_normal",
    "load",
    "log_bernoulli",
    "log_likelihood",
    "log_normal",
    "pathwise_grad",
    "reparameterize",
    "sample",
    "save",
    "score_function_grad",
    "data",
    "plot",
    "distributions",
    "evaluate",
    "flows",
    "folding",
    "hierarchy",
    "diffusion",
    "posteriors",
    "priors",
    "inference_gap",
    "objectives",
    "toy",
]
