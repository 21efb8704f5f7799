"""Benchmark vaelib against a plain PyTorch VAE, on the same data, model and thread count, in one run.

Usage (from the repository root, in the project's venv)::

    python benchmarks/bench.py                 # throughput, log-likelihood, equal-epoch quality
    python benchmarks/bench.py --book          # ... and the book's cold/warm build times
    python benchmarks/bench.py --json out.json # also write the results as JSON

Throughputs are medians of repeats that alternate peer and vaelib, so drift of the machine (other
processes, frequency scaling) affects both alike; the report gives their ratio, which is what to compare
across machines, not the absolute numbers. See the book's appendix "Performance".
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vaelib  # noqa: E402
from peer import PeerVAE, peer_test_elbo, peer_train_epoch, reference_log_likelihood  # noqa: E402
from torch import nn  # noqa: E402
from vaelib.data import load_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
X_DIM, HIDDEN, Z_DIM, BATCH, LR = 784, 400, 20, 128, 1e-3


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Best float32 GFLOP/s of an n×n matmul on this machine (all threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def train_flops_per_example() -> float:
    """Matmul FLOPs of one training example (forward ×3 for forward + backward)."""
    macs = X_DIM * HIDDEN + 2 * HIDDEN * Z_DIM + Z_DIM * HIDDEN + HIDDEN * X_DIM
    return 3 * 2 * macs


class _Encoder(nn.Module):
    """The peer's encoder as a learner would write it for vaelib: x -> (mu, logvar)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.ReLU())
        self.mu, self.logvar = nn.Linear(HIDDEN, Z_DIM), nn.Linear(HIDDEN, Z_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return self.mu(h), self.logvar(h)


class LearnersVAE(vaelib.VAE):
    """A custom model: a subclass with its own modules (the same 784-400-20 MLP, so the FLOPs are equal).

    Not the built-in architecture (vaelib.model.is_builtin_mlp is False), so fit trains it with autograd
    and log_likelihood evaluates its decoder plainly: the general path, measured beside the fast one.
    """

    def __init__(self) -> None:
        super().__init__(X_DIM, Z_DIM, encoder=_Encoder(),
                         decoder=nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, X_DIM)))


def time_throughput(x_train: torch.Tensor, repeats: int, epochs: int) -> dict:
    """Samples/s of the peer, of vaelib.fit on the built-in model and on a custom one, measured
    alternately; medians over repeats (ratios within each repeat)."""
    torch.manual_seed(0)
    peer = PeerVAE(X_DIM, HIDDEN, Z_DIM)
    opt = torch.optim.Adam(peer.parameters(), lr=LR)
    ours = vaelib.VAE(X_DIM, Z_DIM, hidden=(HIDDEN,), seed=0)
    custom = LearnersVAE()
    assert vaelib.model.is_builtin_mlp(ours) and not vaelib.model.is_builtin_mlp(custom)
    n = x_train.shape[0] * epochs
    peer_train_epoch(peer, opt, x_train)  # warm-up all three
    iwae = vaelib.objectives.IWAE(k=5)
    for model in (ours, custom):
        vaelib.fit(model, x_train, 1, batch_size=BATCH, lr=LR, progress=False, restart=True)
    vaelib.fit(custom, x_train, 1, batch_size=BATCH, lr=LR, progress=False, restart=True, objective=iwae)
    rates: dict[str, list[float]] = {"peer": [], "vaelib": [], "custom": [], "custom_iwae5": []}
    for r in range(repeats):
        t = time.perf_counter()
        for _ in range(epochs):
            peer_train_epoch(peer, opt, x_train)
        rates["peer"].append(n / (time.perf_counter() - t))
        for name, model, objective in (("vaelib", ours, None), ("custom", custom, None),
                                       ("custom_iwae5", custom, iwae)):
            t = time.perf_counter()
            # restart=True: each repeat is a new run (a second fit would otherwise continue the first)
            vaelib.fit(model, x_train, epochs, batch_size=BATCH, lr=LR, seed=r + 1, progress=False, restart=True,
                       objective=objective)
            rates[name].append(n / (time.perf_counter() - t))
    ratios = {name: [o / p for o, p in zip(rates[name], rates["peer"])] for name in ("vaelib", "custom")}
    # An IWAE(k=5) epoch against an ELBO epoch of the same model on the same (general) path: time ratio.
    iwae_cost = [c / i for c, i in zip(rates["custom"], rates["custom_iwae5"])]
    return {
        "peer_samples_per_s": statistics.median(rates["peer"]),
        "vaelib_samples_per_s": statistics.median(rates["vaelib"]),
        "custom_samples_per_s": statistics.median(rates["custom"]),
        "ratio": statistics.median(ratios["vaelib"]),
        "ratios": ratios["vaelib"],
        "custom_ratio": statistics.median(ratios["custom"]),
        "custom_ratios": ratios["custom"],
        "iwae5_samples_per_s": statistics.median(rates["custom_iwae5"]),
        "iwae5_epoch_cost": statistics.median(iwae_cost),
        "iwae5_epoch_costs": iwae_cost,
        "repeats": repeats,
        "epochs_per_repeat": epochs,
    }


@torch.no_grad()
def float64_log_likelihood(model: vaelib.VAE, x: torch.Tensor, k: int, seed: int, batch: int, k_chunk: int) -> torch.Tensor:
    """The K-sample estimate on the same random draws as the other two, in float64 arithmetic.

    The encoder runs in float32 (as in both implementations), the noise is drawn in float32 in the same
    order, and everything after it (decoder, likelihood, weights, log-sum-exp) runs in float64: the
    yardstick for the float32 rounding error of each implementation.
    """
    g = torch.Generator().manual_seed(seed)
    wide = copy.deepcopy(model).double()
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        mu, logvar = model.encode(xb)
        log_w = []
        for s in range(0, k, k_chunk):
            eps = torch.randn((min(k_chunk, k - s), *mu.shape), generator=g)
            z = mu + torch.exp(0.5 * logvar) * eps  # as in both implementations, then widened
            zd, epsd, lvd, xd = z.double(), eps.double(), logvar.double(), xb.double()
            logits = wide.decode(zd.reshape(-1, model.z_dim)).view(*zd.shape[:-1], model.x_dim)
            log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, xd.expand_as(logits), reduction="none").sum(-1)
            log_w.append(log_px_z - 0.5 * (zd.pow(2) - epsd.pow(2) - lvd).sum(-1))
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.cat(out)


def time_log_likelihood(model: vaelib.VAE, x_test: torch.Tensor, k: int, repeats: int) -> dict:
    """vaelib.log_likelihood vs the straightforward reference on the same samples (both through the
    model's own encode and decode)."""
    from vaelib.iwae import _chunks

    batch, k_chunk = _chunks(model, x_test.shape[0], k)

    def ref() -> torch.Tensor:
        g = torch.Generator().manual_seed(123)
        return reference_log_likelihood(
            model.encode, lambda z: model.decode(z.reshape(-1, model.z_dim)).view(*z.shape[:-1], model.x_dim),
            x_test, k, g, batch, k_chunk
        )

    def ours() -> torch.Tensor:
        return vaelib.log_likelihood(model, x_test, k=k, generator=torch.Generator().manual_seed(123))

    exact = float64_log_likelihood(model, x_test, k, 123, batch, k_chunk)
    ref(), ours()  # warm-up
    ref_t, our_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a = ref()
        ref_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = ours()
        our_t.append(time.perf_counter() - t)
    ratios = [o / r for o, r in zip(our_t, ref_t)]
    return {
        "k": k,
        "reference_s": statistics.median(ref_t),
        "vaelib_s": statistics.median(our_t),
        "time_ratio": statistics.median(ratios),
        "time_ratios": ratios,
        "max_abs_diff_nats": float((a - b).abs().max()),
        "reference_error_vs_float64": float((a.double() - exact).abs().max()),
        "vaelib_error_vs_float64": float((b.double() - exact).abs().max()),
        "mean_nll": float(-b.mean()),
    }


def equal_epoch_quality(x_train: torch.Tensor, x_test: torch.Tensor, epochs: int, k: int) -> dict:
    """Train peer and vaelib for the same epochs from seed 0; test -ELBO and NLL (same estimator)."""
    torch.manual_seed(0)
    peer = PeerVAE(X_DIM, HIDDEN, Z_DIM)
    opt = torch.optim.Adam(peer.parameters(), lr=LR)
    for _ in range(epochs):
        peer_train_epoch(peer, opt, x_train)
    ours = vaelib.VAE(X_DIM, Z_DIM, hidden=(HIDDEN,), seed=0)
    vaelib.fit(ours, x_train, epochs, batch_size=BATCH, lr=LR, seed=0, progress=False)
    # Score the peer with the same estimator by copying its weights into a vaelib.VAE.
    as_vae = vaelib.VAE(X_DIM, Z_DIM, hidden=(HIDDEN,))
    pairs = [("encoder.body.0", "fc1"), ("encoder.to_mu", "fc21"), ("encoder.to_logvar", "fc22"),
             ("decoder.body.0", "fc3"), ("decoder.to_x", "fc4")]
    state = {f"{a}.{p}": peer.state_dict()[f"{b}.{p}"] for a, b in pairs for p in ("weight", "bias")}
    as_vae.load_state_dict(state)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    result = {"epochs": epochs, "k": k}
    for name, m in (("peer", as_vae), ("vaelib", ours)):
        with torch.no_grad():
            result[f"{name}_test_neg_elbo"] = -float(vaelib.elbo(m, x_test, generator=g()).elbo.mean())
        result[f"{name}_test_nll"] = -float(vaelib.log_likelihood(m, x_test, k=k, generator=g()).mean())
    result["peer_test_neg_elbo_own_loss"] = -peer_test_elbo(peer, x_test)
    return result, ours


def book_build_times(results: dict) -> dict:
    """Cold and warm strict builds of the book in a scratch copy; per-chapter execution times.

    The copy is a ``git clone`` of the committed state, given this run's ``results`` so far as its
    ``benchmarks/results.json`` (the Performance page displays them).
    """
    jb = str(Path(sys.executable).with_name("jupyter-book"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "book"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(src)], check=True)
        (src / "benchmarks" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        env = {**os.environ, "VAELIB_PROGRESS": "0"}
        for label in ("cold", "warm"):
            t = time.perf_counter()
            subprocess.run([jb, "build", ".", "-W", "-n", "--keep-going", "-q"], cwd=src, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out[f"{label}_build_s"] = time.perf_counter() - t
        from jupyter_cache import get_cache

        cache = get_cache(src / "_build" / ".jupyter_cache")
        out["chapter_exec_s"] = {
            Path(r.uri).stem: round(float(r.data.get("execution_seconds", float("nan"))), 1)
            for r in cache.list_cache_records()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9, help="alternating repeats of the throughput timing")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per throughput repeat")
    ap.add_argument("--quality-epochs", type=int, default=30, help="epochs for the equal-epoch quality check")
    ap.add_argument("--k", type=int, default=1000, help="importance samples for log-likelihood")
    ap.add_argument("--book", action="store_true", help="also time cold and warm book builds")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    train, test = load_mnist()
    x_train, x_test = train.images, test.images
    res: dict = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "vaelib": vaelib.__version__,
        "command": "python " + " ".join(sys.argv),
    }
    res["matmul_peak_gflops"] = matmul_peak_gflops()
    res["throughput"] = time_throughput(x_train, args.repeats, args.epochs)
    flops = train_flops_per_example()
    for who in ("peer", "vaelib", "custom"):
        gf = res["throughput"][f"{who}_samples_per_s"] * flops / 1e9
        res["throughput"][f"{who}_gflops"] = gf
        res["throughput"][f"{who}_fraction_of_peak"] = gf / res["matmul_peak_gflops"]
    res["quality"], model = equal_epoch_quality(x_train, x_test, args.quality_epochs, args.k)
    res["log_likelihood"] = time_log_likelihood(model, x_test, args.k, repeats=5)
    # The same trained weights in the learner's subclass: the general path, which must be exact.
    custom = LearnersVAE()
    custom.load_state_dict({k.replace("encoder.body.0", "encoder.hidden.0").replace("encoder.to_", "encoder.")
                            .replace("decoder.body.0", "decoder.0").replace("decoder.to_x", "decoder.2"): v
                            for k, v in model.state_dict().items()})
    res["log_likelihood_custom"] = time_log_likelihood(custom, x_test, args.k, repeats=3)
    if args.book:
        res["book"] = book_build_times(res)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def report(r: dict) -> str:
    """The results as a Markdown table."""
    t, q, ll, llc = r["throughput"], r["quality"], r["log_likelihood"], r.get("log_likelihood_custom")
    spread = f" (repeats {min(t['ratios']):.2f}–{max(t['ratios']):.2f})"
    ll_spread = f", repeats {min(ll['time_ratios']):.2f}–{max(ll['time_ratios']):.2f}" if "time_ratios" in ll else ""
    rows = [
        ("Training throughput, built-in MLP (samples/s)", f"{t['peer_samples_per_s']:,.0f}",
         f"{t['vaelib_samples_per_s']:,.0f}", f"{t['ratio']:.2f}×{spread}"),
        ("Training throughput, custom subclass (samples/s)", f"{t['peer_samples_per_s']:,.0f}",
         f"{t['custom_samples_per_s']:,.0f}",
         f"{t['custom_ratio']:.2f}× (repeats {min(t['custom_ratios']):.2f}–{max(t['custom_ratios']):.2f})"),
        ("Training throughput, custom subclass, IWAE(k=5) objective (samples/s)", "",
         f"{t['iwae5_samples_per_s']:,.0f}",
         f"an epoch costs {t['iwae5_epoch_cost']:.2f}× the ELBO's (repeats "
         f"{min(t['iwae5_epoch_costs']):.2f}–{max(t['iwae5_epoch_costs']):.2f})"),
        ("Achieved GFLOP/s (share of matmul peak)", f"{t['peer_gflops']:.1f} ({t['peer_fraction_of_peak']:.0%})",
         f"{t['vaelib_gflops']:.1f} ({t['vaelib_fraction_of_peak']:.0%})", ""),
        (f"Test −ELBO after {q['epochs']} epochs (nats)", f"{q['peer_test_neg_elbo']:.2f}", f"{q['vaelib_test_neg_elbo']:.2f}", ""),
        (f"Test NLL, K={q['k']}, after {q['epochs']} epochs (nats)", f"{q['peer_test_nll']:.2f}", f"{q['vaelib_test_nll']:.2f}", ""),
        (f"log-likelihood K={ll['k']}, 1,000 images (s)", f"{ll['reference_s']:.2f}", f"{ll['vaelib_s']:.2f}",
         f"{ll['time_ratio']:.2f}× time{ll_spread} (max diff {ll['max_abs_diff_nats']:.1e} nats)"),
        ("log-likelihood: largest error vs float64 (nats)", f"{ll['reference_error_vs_float64']:.1e}",
         f"{ll['vaelib_error_vs_float64']:.1e}", ""),
    ]
    if llc is not None:
        rows += [
            (f"log-likelihood K={llc['k']}, custom subclass (s)", f"{llc['reference_s']:.2f}", f"{llc['vaelib_s']:.2f}",
             f"{llc['time_ratio']:.2f}× time (max diff {llc['max_abs_diff_nats']:.1e} nats)"),
            ("custom subclass: largest error vs float64 (nats)", f"{llc['reference_error_vs_float64']:.1e}",
             f"{llc['vaelib_error_vs_float64']:.1e}", ""),
        ]
    lines = [
        f"Machine: {r['cpu']} ({r['machine']}), torch {r['torch']}, {r['threads']} threads; "
        f"float32 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s; {r['date']}",
        "",
        "| measure | plain PyTorch (peer / reference) | vaelib | vaelib vs peer |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ]
    if "book" in r:
        b = r["book"]
        lines += ["", f"Book build: cold {b['cold_build_s']:.0f} s, warm {b['warm_build_s']:.1f} s", "",
                  "| chapter | execution (s) |", "|---|---:|",
                  *[f"| {k} | {v} |" for k, v in sorted(b["chapter_exec_s"].items())]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
