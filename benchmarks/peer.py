"""The reference ("peer") implementations the benchmark measures ``vaelib`` against.

* :class:`PeerVAE` and :func:`peer_train_epoch`: a plain PyTorch VAE written to the pytorch/examples
  recipe (MLP 784-400-20 with ReLU, Bernoulli decoder as BCE-with-logits summed over pixels, analytic KL,
  Adam lr 1e-3, batch 128), with a loop that slices a pre-loaded tensor and binarises each batch afresh.
* :func:`reference_log_likelihood`: a straightforward vectorised importance-sampling estimate of
  log p(x) with K samples, drawing its noise in the same order as ``vaelib.log_likelihood`` so the two
  give the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PeerVAE(nn.Module):
    """pytorch/examples' VAE (layer names kept as there: fc1, fc21, fc22, fc3, fc4), logits output."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 20) -> None:
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21 = nn.Linear(hidden, z_dim)
        self.fc22 = nn.Linear(hidden, z_dim)
        self.fc3 = nn.Linear(z_dim, hidden)
        self.fc4 = nn.Linear(hidden, x_dim)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: Tensor) -> Tensor:
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def peer_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """pytorch/examples' loss: BCE summed over pixels and batch, plus the analytic KL."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def peer_train_epoch(
    model: PeerVAE, optimizer: torch.optim.Optimizer, x: Tensor, batch_size: int = 128
) -> float:
    """One epoch over the grey-level images ``x``; returns the mean training -ELBO per example."""
    model.train()
    total = 0.0
    perm = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], batch_size):
        xb = torch.bernoulli(x[perm[start : start + batch_size]])
        optimizer.zero_grad()
        logits, mu, logvar = model(xb)
        loss = peer_loss(logits, xb, mu, logvar)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / x.shape[0]


@torch.no_grad()
def peer_test_elbo(model: PeerVAE, x: Tensor) -> float:
    """Mean test ELBO per example (one sample of z), in nats."""
    model.eval()
    logits, mu, logvar = model(x)
    return -float(peer_loss(logits, x, mu, logvar)) / x.shape[0]


@torch.no_grad()
def reference_log_likelihood(
    encode, decode, x: Tensor, k: int, generator: torch.Generator, batch: int, k_chunk: int
) -> Tensor:
    """Straightforward vectorised IWAE estimate of log p(x) (Bernoulli decoder, N(0, I) prior).

    ``encode(x) -> (mu, logvar)`` and ``decode(z) -> logits``. Examples go ``batch`` at a time and the
    ``k`` samples ``k_chunk`` at a time, the draw order ``vaelib.log_likelihood`` uses, so the same
    generator seed gives the same samples.
    """
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        mu, logvar = encode(xb)
        std = torch.exp(0.5 * logvar)
        log_w = []
        for s in range(0, k, k_chunk):
            eps = torch.randn((min(k_chunk, k - s), *mu.shape), generator=generator)
            z = mu + std * eps
            logits = decode(z)
            log_px_z = -F.binary_cross_entropy_with_logits(
                logits, xb.expand_as(logits), reduction="none"
            ).sum(-1)
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_qz = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
            log_w.append(log_px_z + log_pz - log_qz)
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.cat(out)
