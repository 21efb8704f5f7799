"""The closing table of issue #20: each model of tests/test_model_zoo.py, vaelib's number beside an independent one.

Usage (from the repository root, in the project's venv)::

    python benchmarks/model_zoo_table.py

For each of the nine models (float64, 32 examples of 12 pixels): vaelib.fit for 3 epochs against the plain
autograd + Adam loop of the test module (largest parameter difference), then on the trained model
``vaelib.elbo`` (S = 64 draws) and ``vaelib.log_likelihood`` (K = 500) against the same quantities computed
by the test module from the model's posterior, prior and likelihood with torch.distributions' own densities
and KL formulas, on the same draws. Prints a Markdown table (the means over the 32 examples, and the largest
difference of any one example).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_model_zoo as zoo  # noqa: E402

import vaelib  # noqa: E402


def main() -> None:
    rows = ["| model | KL | fit vs plain loop (max abs param diff) | mean ELBO, vaelib | independent | max diff "
            "per image | mean log p(x) K=500, vaelib | independent | max diff per image |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, case in zoo.CASES.items():
        x, c = case.data()
        model, ref = case.build(), case.build()
        vaelib.fit(model, zoo._fit_data(x, c), 3, batch_size=zoo.BATCH, lr=zoo.LR, seed=5, progress=False)
        zoo.reference_fit(ref, x, c, 3, zoo.elbo_loss(), seed=5)
        fit_diff = max(float((a - b).abs().max()) for a, b in zip(zoo._state(model).values(), zoo._state(ref).values()))
        with torch.no_grad():
            terms = vaelib.elbo(model, x, n_samples=64, generator=zoo.G(1), c=c)
            reconstruction, kl, closed = zoo._elbo_terms(model, x, c, zoo.G(1), 64)
            theirs = reconstruction - kl
            ours_elbo, their_elbo = float(terms.elbo.mean()), float(theirs.mean())
            elbo_diff = float((terms.elbo - theirs).abs().max())  # the largest per-image difference
            ll = vaelib.log_likelihood(model, x, k=500, generator=zoo.G(2), c=c)
            log_w = zoo._log_weights(model, x, c, zoo.G(2), 500)
            their = torch.logsumexp(log_w, 0) - math.log(500)
            ours_ll, their_ll, ll_diff = float(ll.mean()), float(their.mean()), float((ll - their).abs().max())
        kind = "closed form" if terms.kl_closed_form else "Monte Carlo"
        assert terms.kl_closed_form == closed
        rows.append(f"| {name} | {kind} | {fit_diff:.1e} | {ours_elbo:.6f} | {their_elbo:.6f} | "
                    f"{elbo_diff:.1e} | {ours_ll:.6f} | {their_ll:.6f} | {ll_diff:.1e} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
