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


def time_throughput(x_train: torch.Tensor, repeats: int, epochs: int) -> dict:
    """Samples/s of the peer and of vaelib.fit, measured alternately; medians over repeats."""
    torch.manual_seed(0)
    peer = PeerVAE(X_DIM, HIDDEN, Z_DIM)
    opt = torch.optim.Adam(peer.parameters(), lr=LR)
    ours = vaelib.VAE(X_DIM, Z_DIM, hidden=(HIDDEN,), seed=0)
    n = x_train.shape[0] * epochs
    peer_train_epoch(peer, opt, x_train)  # warm-up both
    vaelib.fit(ours, x_train, 1, batch_size=BATCH, lr=LR, progress=False)
    peer_rates, our_rates = [], []
    for r in range(repeats):
        t = time.perf_counter()
        for _ in range(epochs):
            peer_train_epoch(peer, opt, x_train)
        peer_rates.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        vaelib.fit(ours, x_train, epochs, batch_size=BATCH, lr=LR, seed=r + 1, progress=False)
        our_rates.append(n / (time.perf_counter() - t))
    ratios = [o / p for o, p in zip(our_rates, peer_rates)]
    return {
        "peer_samples_per_s": statistics.median(peer_rates),
        "vaelib_samples_per_s": statistics.median(our_rates),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
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
    wide = vaelib.VAE(model.x_dim, model.z_dim, hidden=model.hidden)
    wide.load_state_dict(model.state_dict())
    wide = wide.double()
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        mu, logvar = model.encode(xb)
        log_w = []
        for s in range(0, k, k_chunk):
            eps = torch.randn((min(k_chunk, k - s), *mu.shape), generator=g)
            z = mu + torch.exp(0.5 * logvar) * eps  # as in both implementations, then widened
            zd, epsd, lvd, xd = z.double(), eps.double(), logvar.double(), xb.double()
            logits = wide.to_x(wide.decoder(zd))
            log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, xd.expand_as(logits), reduction="none").sum(-1)
            log_w.append(log_px_z - 0.5 * (zd.pow(2) - epsd.pow(2) - lvd).sum(-1))
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.cat(out)


def time_log_likelihood(model: vaelib.VAE, x_test: torch.Tensor, k: int, repeats: int) -> dict:
    """vaelib.log_likelihood vs the straightforward reference on the same samples."""
    from vaelib.iwae import _chunks

    batch, k_chunk = _chunks(model, x_test.shape[0], k)

    def ref() -> torch.Tensor:
        g = torch.Generator().manual_seed(123)
        return reference_log_likelihood(
            model.encode, lambda z: model.to_x(model.decoder(z)), x_test, k, g, batch, k_chunk
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
    pairs = [("encoder.0", "fc1"), ("to_mu", "fc21"), ("to_logvar", "fc22"), ("decoder.0", "fc3"), ("to_x", "fc4")]
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
    for who in ("peer", "vaelib"):
        gf = res["throughput"][f"{who}_samples_per_s"] * flops / 1e9
        res["throughput"][f"{who}_gflops"] = gf
        res["throughput"][f"{who}_fraction_of_peak"] = gf / res["matmul_peak_gflops"]
    res["quality"], model = equal_epoch_quality(x_train, x_test, args.quality_epochs, args.k)
    res["log_likelihood"] = time_log_likelihood(model, x_test, args.k, repeats=5)
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
    t, q, ll = r["throughput"], r["quality"], r["log_likelihood"]
    spread = f" (repeats {min(t['ratios']):.2f}–{max(t['ratios']):.2f})"
    ll_spread = f", repeats {min(ll['time_ratios']):.2f}–{max(ll['time_ratios']):.2f}" if "time_ratios" in ll else ""
    rows = [
        ("Training throughput (samples/s)", f"{t['peer_samples_per_s']:,.0f}", f"{t['vaelib_samples_per_s']:,.0f}",
         f"{t['ratio']:.2f}×{spread}"),
        ("Achieved GFLOP/s (share of matmul peak)", f"{t['peer_gflops']:.1f} ({t['peer_fraction_of_peak']:.0%})",
         f"{t['vaelib_gflops']:.1f} ({t['vaelib_fraction_of_peak']:.0%})", ""),
        (f"Test −ELBO after {q['epochs']} epochs (nats)", f"{q['peer_test_neg_elbo']:.2f}", f"{q['vaelib_test_neg_elbo']:.2f}", ""),
        (f"Test NLL, K={q['k']}, after {q['epochs']} epochs (nats)", f"{q['peer_test_nll']:.2f}", f"{q['vaelib_test_nll']:.2f}", ""),
        (f"log-likelihood K={ll['k']}, 1,000 images (s)", f"{ll['reference_s']:.2f}", f"{ll['vaelib_s']:.2f}",
         f"{ll['time_ratio']:.2f}× time{ll_spread} (max diff {ll['max_abs_diff_nats']:.1e} nats)"),
        ("log-likelihood: largest error vs float64 (nats)", f"{ll['reference_error_vs_float64']:.1e}",
         f"{ll['vaelib_error_vs_float64']:.1e}", ""),
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
