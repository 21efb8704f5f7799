r"""The variational autoencoder: an encoder :math:`q_\phi(z|x)` and a decoder :math:`p_\theta(x|z)`.

Chapter 6 trains it; chapter 3 uses its linear special case (``hidden=()``), which is probabilistic PCA
with an amortised Gaussian posterior.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_binary, check_int, check_tensor
from .densities import _log_normal

Likelihood = Literal["bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by a ReLU (an empty ``Sequential`` for one size)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    r"""A VAE with a diagonal-Gaussian encoder and a Bernoulli or Gaussian decoder.

    * Encoder :math:`q_\phi(z|x) = \mathcal{N}(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x))`: an MLP
      ``x_dim → hidden… → (to_mu, to_logvar)``.
    * Prior :math:`p(z) = \mathcal{N}(0, I)`.
    * Decoder :math:`p_\theta(x|z)`: an MLP ``z_dim → reversed(hidden)… → to_x``, whose output is the
      logits of independent Bernoullis (``likelihood="bernoulli"``, for binary pixels), or the mean of an
      isotropic Gaussian :math:`\mathcal{N}(\text{mean}, \sigma_x^2 I)` whose log-variance ``obs_logvar``
      is learned (``likelihood="gaussian"``).

    With ``hidden=()`` encoder and decoder are linear, and the Gaussian VAE is the linear VAE of chapter 3.

    Args:
        x_dim: data dimension ``D`` (784 for 28×28 images).
        z_dim: latent dimension ``d``.
        hidden: hidden-layer widths of the encoder (the decoder mirrors them).
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        device: where to create the parameters (default CPU).
        seed: seeds the initial parameters (``None`` uses PyTorch's global generator).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (400,),
        likelihood: Likelihood = "bernoulli",
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if seed is not None:
            seed = check_int("seed", seed, minimum=0)
        self.x_dim = check_int("x_dim", x_dim)
        self.z_dim = check_int("z_dim", z_dim)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
        self.hidden = tuple(check_int(f"hidden[{i}]", h) for i, h in enumerate(hidden))
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood: Likelihood = likelihood

        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            enc_sizes = (self.x_dim, *self.hidden)
            dec_sizes = (self.z_dim, *reversed(self.hidden))
            self.encoder = _mlp(enc_sizes)
            self.to_mu = nn.Linear(enc_sizes[-1], self.z_dim)
            self.to_logvar = nn.Linear(enc_sizes[-1], self.z_dim)
            self.decoder = _mlp(dec_sizes)
            self.to_x = nn.Linear(dec_sizes[-1], self.x_dim)
        if likelihood == "gaussian":
            self.obs_logvar = nn.Parameter(torch.zeros(()))
        if device is not None:
            self.to(device)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (what :func:`vaelib.save` records to rebuild the model)."""
        return {
            "x_dim": self.x_dim,
            "z_dim": self.z_dim,
            "hidden": list(self.hidden),
            "likelihood": self.likelihood,
        }

    @property
    def device(self) -> torch.device:
        """The device the parameters live on."""
        return self.to_mu.weight.device

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}"

    # --- checked public methods -------------------------------------------------------------
    def _check_dtype(self, name: str, t: Tensor) -> None:
        dtype = self.to_mu.weight.dtype
        if t.dtype != dtype:
            raise TypeError(f"{name} must have the model's dtype {dtype}, got {t.dtype}")

    def check_x(self, x: object, name: str = "x") -> Tensor:
        """Validate data for this model: a finite ``(batch, x_dim)`` tensor in the model's floating dtype,
        binary if Bernoulli."""
        x = check_tensor(name, x, ndim=2, last_dim=self.x_dim)
        self._check_dtype(name, x)
        if self.likelihood == "bernoulli":
            check_binary(name, x)
        return x

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""The parameters of :math:`q_\phi(z|x)`.

        Args:
            x: data, ``(batch, x_dim)``.

        Returns:
            ``(mu, logvar)``, each ``(batch, z_dim)``.
        """
        check_tensor("x", x, ndim=2, last_dim=self.x_dim)
        self._check_dtype("x", x)
        return self._encode(x)

    def decode(self, z: Tensor) -> Tensor:
        r"""The decoder's output for latent codes ``z``: Bernoulli logits, or the Gaussian mean.

        Args:
            z: latent codes, ``(..., z_dim)``.

        Returns:
            ``(..., x_dim)``. For a Bernoulli decoder use :meth:`mean` for pixel probabilities.
        """
        check_tensor("z", z, last_dim=self.z_dim)
        self._check_dtype("z", z)
        return self._decode(z)

    def mean(self, z: Tensor) -> Tensor:
        r"""The mean of :math:`p_\theta(x|z)`: pixel probabilities (Bernoulli) or the Gaussian mean."""
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_px_z(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p_\theta(x|z)` in nats, summed over the ``x_dim`` pixels.

        Args:
            x: data, ``(batch, x_dim)``.
            z: latent codes, ``(..., batch, z_dim)`` (leading sample dimensions broadcast over ``x``).

        Returns:
            ``(..., batch)``.
        """
        x = self.check_x(x)
        check_tensor("z", z, last_dim=self.z_dim)
        self._check_dtype("z", z)
        if z.dim() < 2 or z.shape[-2] != x.shape[0]:
            raise ValueError(
                f"z must have shape (..., {x.shape[0]}, {self.z_dim}) to match x, got {tuple(z.shape)}"
            )
        return self._log_px_z(x, z)

    def forward(self, x: Tensor) -> Tensor:
        r"""Reconstruct ``x``: the decoder's mean at the posterior mean, :math:`\mathbb{E}[x|z=\mu_\phi(x)]`."""
        mu, _ = self.encode(x)
        return self.mean(mu)

    # --- unchecked internals (the training hot path) ----------------------------------------
    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def _decode(self, z: Tensor) -> Tensor:
        return self.to_x(self.decoder(z))

    def _log_px_z(self, x: Tensor, z: Tensor) -> Tensor:
        return self._log_px_given(x, self._decode(z))

    def _log_px_given(self, x: Tensor, out: Tensor) -> Tensor:
        r""":math:`\log p(x|z)` from the decoder's output ``out`` ``(..., batch, x_dim)`` for ``z``."""
        if self.likelihood == "bernoulli":
            # log p(x|z) = x . logits - sum softplus(logits) (see densities._log_bernoulli). The dot
            # product never materialises x * logits: with many samples of z (importance sampling) a
            # batched matrix-vector product is fastest, with one (training) a row-wise vecdot.
            if out.dim() > 2 and out.shape[0] > 1:
                x_dot_logits = torch.einsum("...bj,bj->...b", out, x)
            else:
                x_dot_logits = torch.linalg.vecdot(out, x)
            return x_dot_logits - F.softplus(out, threshold=40.0).sum(-1)
        return _log_normal(x, out, self.obs_logvar)
