"""Small plotting helpers the chapters share: image grids, latent scatter plots, decoded manifolds.

Each draws on a given matplotlib ``Axes`` (or a new figure) with an opaque background, so figures read
the same in light and dark themes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor

from ._validate import check_count, check_float, check_int, check_tensor
from .distributions import _diagonal, draw
from .model import VAE, run_likelihood, run_prior


def _axes(ax: Axes | None, size: tuple[float, float] = (4, 4)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size, facecolor="white")
    return ax


def tile(images: Tensor, image_shape: Sequence[int], nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Arrange ``images: (n, H*W)`` into one 2-D array of ``nrow`` rows (white 1-pixel gutters)."""
    check_tensor("images", images, ndim=2)
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, Sequence) or len(image_shape) != 2:
        raise ValueError(f"image_shape must be a pair (H, W), got {image_shape!r}")
    h, w = (check_int(f"image_shape[{i}]", s) for i, s in enumerate(image_shape))
    pad = check_int("pad", pad, minimum=0)
    if h * w != images.shape[1]:
        raise ValueError(f"image_shape {tuple(image_shape)} does not match {images.shape[1]} pixels")
    n = images.shape[0]
    ncol = math.ceil(math.sqrt(n)) if nrow is None else math.ceil(n / check_int("nrow", nrow))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (h + pad) - pad, ncol * (w + pad) - pad), dtype=np.float32)
    imgs = images.detach().cpu().float().reshape(n, h, w).numpy()
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = imgs[i]
    return grid


def image_grid(
    images: Tensor,
    image_shape: Sequence[int] = (28, 28),
    nrow: int | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Show ``images: (n, H*W)`` (values in [0, 1]) as a grid, dark digits on white."""
    check_tensor("images", images, ndim=2)
    # Invert before tiling, so that ink is dark and the gutters and empty cells (1) stay white.
    grid = tile(1.0 - images, image_shape, nrow)  # validates before a figure is made
    ax = _axes(ax)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def latent_scatter(
    z: Tensor, labels: Tensor | None = None, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Scatter the first two coordinates of latent codes ``z: (n, d)``, coloured by ``labels``."""
    check_tensor("z", z, ndim=2)
    if z.shape[1] < 2:
        raise ValueError(f"z must have at least 2 latent dimensions to scatter, got {z.shape[1]}")
    if labels is not None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},) to match z, got {tuple(labels.shape)}")
    # Everything that can fail happens before a figure exists: no figure is left open by an error.
    zz = z.detach().cpu().double().numpy()  # NumPy has no bfloat16
    lab = None if labels is None else labels.detach().cpu()
    lab = None if lab is None else (lab.double() if lab.is_floating_point() else lab).numpy()
    ax = _axes(ax, (5, 4.5))
    if lab is None:
        ax.scatter(zz[:, 0], zz[:, 1], s=4, alpha=0.6)
    else:
        sc = ax.scatter(zz[:, 0], zz[:, 1], c=lab, cmap="tab10", s=4, alpha=0.7, vmin=-0.5, vmax=9.5)
        cbar = ax.figure.colorbar(sc, ax=ax, ticks=range(10))
        cbar.set_label("digit")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax


@torch.no_grad()
def manifold_grid(
    model: VAE,
    n: int = 15,
    span: float = 0.95,
    image_shape: Sequence[int] = (28, 28),
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    r"""Decode an ``n × n`` grid of a 2-D latent space and show the images (the likelihood's means) in place.

    The grid is spaced by quantiles of the prior's marginals from ``(1-span)/2`` to ``(1+span)/2``, so it
    covers where the prior puts its mass (as in Kingma & Welling 2014, fig. 4): exact quantiles for a
    diagonal Gaussian prior (:math:`\mathcal{N}(0, I)` by default), the quantiles of 20,000 seeded draws
    for any other (a mixture).
    """
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.VAE, got {type(model).__name__}")
    if model.z_dim != 2:
        raise ValueError(f"manifold_grid needs a model with z_dim=2, got {model.z_dim}")
    n = check_int("n", n, minimum=2)
    check_count("n", n, per_item=n * model.x_dim, minimum=2)  # the n x n decoded images
    span = check_float("span", span)
    if not 0 < span < 1:
        raise ValueError(f"span must lie in (0, 1), got {span}")
    q = torch.linspace((1 - span) / 2, (1 + span) / 2, n, dtype=torch.float64)
    coords = _prior_quantiles(run_prior(model), q, model.device)  # (n, 2): column j the grid of z_j
    # Row r from the top has the largest z_2, so the picture's axes match a scatter plot's.
    z = torch.stack(torch.meshgrid(coords[:, 1].flip(0), coords[:, 0], indexing="ij"), -1).reshape(-1, 2)[:, [1, 0]]
    images = run_likelihood(model, z.to(device=model.device, dtype=model.dtype)).mean
    grid = tile(images, image_shape, nrow=n, pad=0)  # validates image_shape before a figure is made
    ax = _axes(ax, (6, 6))
    ax.imshow(1.0 - grid, cmap="gray", vmin=0, vmax=1,
              extent=(float(coords[0, 0]), float(coords[-1, 0]), float(coords[0, 1]), float(coords[-1, 1])))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax


def _prior_quantiles(prior: torch.distributions.Distribution, q: Tensor, device: torch.device) -> Tensor:
    """The quantiles ``q`` ``(n,)`` of each marginal of the 2-D ``prior``, ``(n, 2)`` in float32."""
    gaussian = _diagonal(prior)
    standard = torch.distributions.Normal(0.0, 1.0).icdf(q).float()
    if gaussian is not None:
        loc, logvar = (t.detach().cpu().float().expand(2) for t in gaussian)
        return loc + torch.exp(0.5 * logvar) * standard.unsqueeze(1)
    g = torch.Generator(device=device).manual_seed(0)
    draws = draw(prior, (20_000,), g, reparameterized=False).detach().cpu().double()
    return torch.quantile(draws, q, dim=0).float()

