"""How much training the diffusion model of chapter 12 needs to beat a VAE on the 8x8 digits.

The chapter trains within its minute; this script trains both models for longer, each budget a separate
run with its own cosine schedule, and writes the test bounds (nats per image, with their standard errors)
and the training seconds (on one thread, so that the curve does not depend on what else runs) to a JSON
file that the chapter plots:

    .venv/bin/python benchmarks/diffusion_digits.py --json benchmarks/diffusion_digits.json   # about 25 min

The models, data split and recipes are the chapter's (book/ch12_diffusion.md); only the budgets differ.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import vaelib
from vaelib import diffusion
from vaelib.data import load_digits_8x8
from vaelib.model import GreyLevelDecoder, MLPEncoder, seeded

DIFFUSION_STEPS = (1000, 2000, 4000, 8000, 16000, 32000, 64000)
VAE_EPOCHS = (25, 50, 100, 200, 400)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    train, test = load_digits_8x8().split(360, seed=0)
    return train.images * 2 - 1, test.images * 2 - 1


def summary(nll: torch.Tensor) -> dict[str, float]:
    return {"nats": float(nll.mean()), "se": float(nll.std() / math.sqrt(len(nll))),
            "bits_per_dim": float(nll.mean() / (64 * math.log(2)))}


def diffusion_model() -> diffusion.Diffusion:
    net = diffusion.DenoisingMLP(64, width=256, blocks=2, seed=0)
    return diffusion.Diffusion(net, 64, diffusion.LinearLogSNR(7.0, -9.0), levels=17)


def vae_model() -> vaelib.VAE:
    with seeded(0):
        return vaelib.VAE(64, 16, encoder=MLPEncoder(64, (256, 256), 16), decoder=GreyLevelDecoder(16, (256, 256), 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="the two smallest budgets of each (a smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1, as recorded)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xtr, xte = data()
    out: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                 "torch": torch.__version__, "command": "python benchmarks/diffusion_digits.py --json " + str(args.json),
                 "diffusion": [], "vae": []}
    for steps in DIFFUSION_STEPS[:2] if args.quick else DIFFUSION_STEPS:
        model = diffusion_model()
        start = time.perf_counter()
        diffusion.fit(model, xtr, steps, batch_size=256, lr=2e-3, progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            test = -diffusion.elbo(model, xte, n_t=50, generator=torch.Generator().manual_seed(1)).elbo
            train = -diffusion.elbo(model, xtr, n_t=10, generator=torch.Generator().manual_seed(2)).elbo
        row = {"steps": steps, "seconds": seconds, "test": summary(test), "train": summary(train)}
        out["diffusion"].append(row)
        print("diffusion", json.dumps(row), flush=True)
    for epochs in VAE_EPOCHS[:2] if args.quick else VAE_EPOCHS:
        model = vae_model()
        start = time.perf_counter()
        vaelib.fit(model, xtr, epochs, lr=2e-3, lr_schedule="cosine", batch_size=128, progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            test_elbo = -vaelib.elbo(model, xte, n_samples=100, generator=g).elbo
            test_iwae = -vaelib.log_likelihood(model, xte, k=1000, generator=g)
            train_elbo = -vaelib.elbo(model, xtr, n_samples=10, generator=g).elbo
        row = {"epochs": epochs, "seconds": seconds, "test_elbo": summary(test_elbo),
               "test_iwae": summary(test_iwae), "train_elbo": summary(train_elbo)}
        out["vae"].append(row)
        print("vae", json.dumps(row), flush=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
