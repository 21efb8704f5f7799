"""Determinism: the same seeds give bit-identical parameters after fit, identical samples and identical
log-likelihood estimates, twice in one process, and in a second, fresh process.

The experiment is one source string, run here with ``exec`` and in fresh interpreters with
``python -c``: the fingerprints (SHA-256 of the raw bytes of every result) must all agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import vaelib

EXPERIMENT = r'''
import hashlib, json
import torch
import vaelib


def _digest(t):
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def experiment():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every process
    try:
        g = torch.Generator().manual_seed(123)
        protos = (torch.rand(3, 16, generator=g) < 0.5).float()
        grey = (0.8 * protos[torch.randint(0, 3, (96,), generator=g)] + 0.1).clamp(0, 1)
        train, valid = grey[:64], (grey[64:] > 0.5).float()
        model = vaelib.VAE(16, 2, hidden=(8,), seed=7)
        history = vaelib.fit(model, train, 3, valid=valid, batch_size=16, lr=3e-3, warmup_epochs=1,
                             lr_schedule="cosine", seed=11, progress=False)
        gaussian = vaelib.VAE(16, 2, hidden=(), likelihood="gaussian", seed=8)
        vaelib.fit(gaussian, train, 2, batch_size=32, n_samples=2, seed=12, progress=False)
        return {
            "params": {k: _digest(v) for k, v in model.state_dict().items()},
            "gaussian_params": _digest(torch.cat([p.reshape(-1) for p in gaussian.parameters()])),
            "history": [history.train_elbo, history.valid_elbo, history.train_kl, history.lr, history.beta],
            "sample": _digest(vaelib.sample(model, 5, torch.Generator().manual_seed(1), mean=False)),
            "gaussian_sample": _digest(vaelib.sample(gaussian, 5, torch.Generator().manual_seed(1), mean=False)),
            "log_likelihood": _digest(vaelib.log_likelihood(model, valid, k=50,
                                      generator=torch.Generator().manual_seed(2), max_elements=2000)),
            "elbo": _digest(vaelib.elbo(model, valid, n_samples=3, generator=torch.Generator().manual_seed(3)).elbo),
            "iwae": _digest(vaelib.iwae_bound(model, valid, 7, generator=torch.Generator().manual_seed(4))),
            "reparameterize": _digest(vaelib.reparameterize(torch.zeros(3, 2), torch.zeros(3, 2), 4,
                                      torch.Generator().manual_seed(5))),
        }
    finally:
        torch.set_num_threads(threads)
'''


def _run_here() -> dict:
    namespace: dict = {}
    exec(EXPERIMENT, namespace)
    return json.loads(json.dumps(namespace["experiment"]()))  # the same floats a subprocess prints


def test_same_seed_same_results_in_one_process():
    first = _run_here()
    torch.manual_seed(999)  # disturbing the global generator changes nothing: every draw is seeded
    torch.rand(1000)
    second = _run_here()
    assert first == second


def test_different_seeds_differ():
    a = vaelib.VAE(16, 2, hidden=(8,), seed=7)
    b = vaelib.VAE(16, 2, hidden=(8,), seed=8)
    assert not torch.equal(a.encoder.to_mu.weight, b.encoder.to_mu.weight)
    x = (torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    vaelib.fit(a, x, 1, seed=1, progress=False)
    c = vaelib.VAE(16, 2, hidden=(8,), seed=7)
    vaelib.fit(c, x, 1, seed=2, progress=False)
    assert not torch.equal(a.encoder.to_mu.weight, c.encoder.to_mu.weight)  # fit's seed matters too


def test_same_seed_same_results_across_processes():
    """A fresh interpreter (its own hash seed, allocator and import order) reproduces this one's results."""
    script = EXPERIMENT + "\nprint(json.dumps(experiment()))\n"
    env = {**os.environ, "VAELIB_PROGRESS": "0", "PYTHONHASHSEED": "random"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout.strip().splitlines()[-1])
    here = _run_here()
    assert set(other) == set(here)
    for key in here:
        assert other[key] == here[key], key
