"""What the distribution layer costs the general path: vaelib.fit on a learner's model, against an older vaelib.

Usage (from the repository root, in the project's venv)::

    python benchmarks/distribution_layer.py --base 5be5d73      # the commit before the layer (issue #20)

The same 784-400-20 model, written as a learner's subclass (bench.LearnersVAE: the general autograd path;
``--builtin``: the built-in MLP and its fast path),
is trained for ``--epochs`` epochs on the bundled MNIST digits by this working tree's vaelib and by the
vaelib of ``--base`` (exported with ``git archive`` to a temporary folder), each in its own fresh process,
alternating ``--repeats`` times; each process warms up with one epoch and reports samples per second. The
result is the median ratio of the two, with its spread: the fraction of throughput the layer costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, time, json
sys.path.insert(0, {lib!r})
sys.path.insert(1, {bench!r})
import torch, vaelib
from torch import nn
from vaelib.data import load_mnist
X, H, Z = 784, 400, 20
class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(X, H), nn.ReLU())
        self.mu, self.logvar = nn.Linear(H, Z), nn.Linear(H, Z)
    def forward(self, x):
        h = self.hidden(x)
        return self.mu(h), self.logvar(h)
torch.manual_seed(0)
if {builtin!r}:
    model = vaelib.VAE(X, Z, hidden=(H,), seed=0)
    assert vaelib.model.is_builtin_mlp(model)
else:
    model = vaelib.VAE(X, Z, encoder=Enc(), decoder=nn.Sequential(nn.Linear(Z, H), nn.ReLU(), nn.Linear(H, X)))
    assert not vaelib.model.is_builtin_mlp(model)
x = load_mnist()[0].images
kw = dict(batch_size=128, lr=1e-3, progress=False)
if "restart" in vaelib.fit.__code__.co_varnames:
    kw["restart"] = True
vaelib.fit(model, x, 1, **kw)
t = time.perf_counter()
vaelib.fit(model, x, {epochs}, seed=1, **kw)
print(json.dumps({{"samples_per_s": x.shape[0] * {epochs} / (time.perf_counter() - t), "file": vaelib.__file__}}))
"""


def run(lib: Path, epochs: int, builtin: bool) -> float:
    code = CHILD.format(lib=str(lib), bench=str(ROOT / "benchmarks"), epochs=epochs, builtin=builtin)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(lib)), result["file"]
    return result["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision of the vaelib to compare with")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--builtin", action="store_true", help="the built-in MLP (its fast path) instead of the subclass")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.base, "vaelib"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        rates = {"base": [], "now": []}
        for _ in range(args.repeats):
            rates["base"].append(run(base, args.epochs, args.builtin))
            rates["now"].append(run(ROOT, args.epochs, args.builtin))
    ratios = [n / b for n, b in zip(rates["now"], rates["base"])]
    print(json.dumps({"base": args.base, "model": "built-in MLP" if args.builtin else "subclass", "epochs": args.epochs, "repeats": args.repeats,
                      "base_samples_per_s": statistics.median(rates["base"]),
                      "now_samples_per_s": statistics.median(rates["now"]),
                      "ratio_now_over_base": statistics.median(ratios),
                      "ratios": [round(r, 3) for r in ratios]}, indent=2))


if __name__ == "__main__":
    main()
