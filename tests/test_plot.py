"""vaelib.plot: the tile layout, what each helper draws, and errors on bad input (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from vaelib import VAE  # noqa: E402
from vaelib.plot import image_grid, latent_scatter, manifold_grid, tile  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _numbered(n: int, h: int, w: int) -> torch.Tensor:
    """Image i is filled with the value (i + 1) / (n + 1), so each cell of a tile is identifiable."""
    return ((torch.arange(n) + 1.0) / (n + 1)).repeat_interleave(h * w).reshape(n, h * w)


@pytest.mark.parametrize(
    "n, nrow, pad, rows, cols",
    [(10, None, 1, 3, 4), (9, None, 1, 3, 3), (10, 2, 1, 2, 5), (10, 2, 0, 2, 5), (3, 5, 2, 3, 1), (1, None, 1, 1, 1)],
)
def test_tile_layout(n, nrow, pad, rows, cols):
    h, w = 3, 2
    grid = tile(_numbered(n, h, w), (h, w), nrow=nrow, pad=pad)
    assert grid.shape == (rows * (h + pad) - pad, cols * (w + pad) - pad)
    assert grid.dtype == np.float32
    filled = np.zeros_like(grid, dtype=bool)
    for i in range(n):
        r, c = divmod(i, cols)  # row-major order
        cell = grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w]
        np.testing.assert_allclose(cell, (i + 1) / (n + 1), rtol=1e-6)
        filled[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = True
    assert bool((grid[~filled] == 1).all())  # gutters and empty cells are 1


def test_tile_keeps_the_pixel_order_of_each_image():
    img = torch.arange(6.0).reshape(1, 6) / 6  # rows of a 2x3 image: [0, 1, 2], [3, 4, 5]
    np.testing.assert_allclose(tile(img, (2, 3)), img.reshape(2, 3).numpy())


def test_tile_rejects_bad_input():
    with pytest.raises(ValueError, match="image_shape .* does not match 6 pixels"):
        tile(torch.zeros(2, 6), (2, 2))
    with pytest.raises(ValueError, match="image_shape must be a pair"):
        tile(torch.zeros(2, 6), (1, 2, 3))
    with pytest.raises(ValueError, match="pad must be >= 0"):
        tile(torch.zeros(2, 6), (2, 3), pad=-1)
    with pytest.raises(ValueError, match="nrow must be >= 1"):
        tile(torch.zeros(2, 6), (2, 3), nrow=0)
    with pytest.raises(ValueError, match="images must have 2 dimensions"):
        tile(torch.zeros(6), (2, 3))


def test_image_grid_draws_dark_ink_on_white():
    images = _numbered(5, 2, 2)
    ax = image_grid(images, (2, 2), title="five")
    assert isinstance(ax, Axes) and ax.get_title() == "five" and not ax.axison
    shown = ax.images[0].get_array()
    cols = 3  # ceil(sqrt(5))
    expected = np.ones((2 * 3 - 1, cols * 3 - 1), dtype=np.float32)  # white background
    for i in range(5):
        r, c = divmod(i, cols)
        expected[3 * r : 3 * r + 2, 3 * c : 3 * c + 2] = 1 - (i + 1) / 6  # ink is dark
    np.testing.assert_allclose(shown, expected, rtol=1e-6)
    assert ax.figure.get_facecolor() == (1.0, 1.0, 1.0, 1.0)  # opaque, for light and dark themes


def test_image_grid_draws_on_a_given_axes():
    fig, axes = plt.subplots(1, 2)
    assert image_grid(torch.zeros(4, 4), (2, 2), ax=axes[1]) is axes[1]
    assert len(axes[1].images) == 1 and len(axes[0].images) == 0


def test_latent_scatter_plots_the_first_two_coordinates():
    z = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 10
    ax = latent_scatter(z, labels, title="codes")
    assert isinstance(ax, Axes) and ax.get_title() == "codes"
    assert ax.get_xlabel() == "$z_1$" and ax.get_ylabel() == "$z_2$"
    np.testing.assert_allclose(ax.collections[0].get_offsets(), z[:, :2].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ax.collections[0].get_array(), labels.numpy())
    assert len(ax.figure.axes) == 2  # the colour bar
    ax2 = latent_scatter(z)
    assert len(ax2.figure.axes) == 1


def test_latent_scatter_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 latent dimensions"):
        latent_scatter(torch.zeros(5, 1))
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        latent_scatter(torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        latent_scatter(torch.zeros(5, 2), np.zeros(5))
    assert plt.get_fignums() == []  # no figure was made before the error


def test_manifold_grid_decodes_prior_quantiles_in_place():
    model = VAE(4, 2, hidden=(3,), seed=0)
    n, span = 5, 0.9
    ax = manifold_grid(model, n=n, span=span, image_shape=(2, 2), title="manifold")
    assert isinstance(ax, Axes) and ax.get_title() == "manifold"
    shown = ax.images[0].get_array()
    assert shown.shape == (2 * n, 2 * n)
    q = torch.linspace((1 - span) / 2, (1 + span) / 2, n, dtype=torch.float64)
    coords = torch.distributions.Normal(0.0, 1.0).icdf(q).float()
    # Row r from the top has z_2 = coords[n-1-r]; column c has z_1 = coords[c] (as in a scatter plot).
    for r in range(n):
        for c in range(n):
            z = torch.stack([coords[c], coords[n - 1 - r]])[None]
            cell = shown[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            np.testing.assert_allclose(cell, 1 - model.mean(z).detach().reshape(2, 2).numpy(), rtol=1e-5)
    lo, hi = float(coords[0]), float(coords[-1])
    np.testing.assert_allclose(ax.images[0].get_extent(), (lo, hi, lo, hi), rtol=1e-6)
    assert lo == pytest.approx(-hi) and hi == pytest.approx(1.6449, abs=1e-4)


def test_manifold_grid_rejects_bad_input():
    model = VAE(4, 2, hidden=(), seed=0)
    with pytest.raises(ValueError, match="z_dim=2"):
        manifold_grid(VAE(4, 3, hidden=()), image_shape=(2, 2))
    with pytest.raises(ValueError, match="span must lie in"):
        manifold_grid(model, span=1.0, image_shape=(2, 2))
    with pytest.raises(ValueError, match="span must be finite"):
        manifold_grid(model, span=math.nan, image_shape=(2, 2))
    with pytest.raises(ValueError, match="n must be >= 2"):
        manifold_grid(model, n=1, image_shape=(2, 2))
    with pytest.raises(ValueError, match="does not match 4 pixels"):
        manifold_grid(model, image_shape=(28, 28))
    assert plt.get_fignums() == []  # every error comes before a figure is made


def test_manifold_grid_of_a_float64_model():
    ax = manifold_grid(VAE(4, 2, hidden=(), seed=0).double(), n=3, image_shape=(2, 2))
    assert ax.images[0].get_array().shape == (6, 6)


def test_a_failing_plot_call_leaves_no_figure_open_and_bfloat16_codes_plot():
    import matplotlib.pyplot as plt

    plt.close("all")
    z = torch.randn(20, 2)
    bad_calls = [
        lambda: latent_scatter(z, labels=torch.zeros(3)),  # labels of the wrong length
        lambda: latent_scatter(z.to(torch.float8_e4m3fn)),
        lambda: image_grid(torch.rand(4, 10), image_shape=(3, 3)),
        lambda: manifold_grid(VAE(4, 3, hidden=()), n=3, image_shape=(2, 2)),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            call()
        assert plt.get_fignums() == []
    ax = latent_scatter(z.to(torch.bfloat16), labels=torch.arange(20) % 10)
    assert len(ax.collections[0].get_offsets()) == 20
    plt.close("all")
