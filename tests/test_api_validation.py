"""The whole public API against bad inputs.

``CASES`` is a table: for every public callable of ``vaelib`` (every name in ``vaelib.__all__``, the
public functions and classes of ``vaelib.toy``, ``vaelib.data`` and ``vaelib.plot``, and the public
methods of their classes), bad inputs of every class that applies to it: wrong type (list, NumPy array,
integer tensor, wrong dtype), wrong rank or size, an empty batch, NaN and inf, zero/negative/non-integer
counts, grey levels for a Bernoulli model, a model and data of different sizes, unknown options. Each must
end in a ``ValueError`` or ``TypeError`` whose message names the offending argument, never in a crash deep
inside PyTorch or a silent wrong number.

``test_every_public_callable_has_bad_input_cases`` walks the API, so a function added later without
entries in the table fails it. ``python tests/test_api_validation.py`` prints the count of bad inputs
tried and how each class of them ended (``test_summary`` checks the same tally).
"""

from __future__ import annotations

import inspect
import math
import os
import struct
import sys
import tempfile
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import vaelib
from vaelib import toy
from vaelib.data import Digits

# --- good arguments, built once ---------------------------------------------------------------------

_g = torch.Generator().manual_seed(0)
BERN = vaelib.VAE(6, 2, hidden=(4,), seed=0)
GAUSS = vaelib.VAE(6, 2, hidden=(), likelihood="gaussian", seed=0)
XB = (torch.rand(5, 6, generator=_g) < 0.5).float()  # binary data for BERN
XG = torch.rand(5, 6, generator=_g)  # grey levels
MU = torch.randn(5, 2, generator=_g)
LV = 0.1 * torch.randn(5, 2, generator=_g)
LG = toy.LinearGaussian.random(4, 2, generator=_g)  # float64
XL, _ = LG.sample(3, generator=_g)
QM = torch.zeros(3, 2, dtype=torch.float64)
QC = torch.eye(2, dtype=torch.float64)
DIGITS = Digits(torch.rand(10, 4, generator=_g), torch.arange(10) % 2, (2, 2))
_TMP = tempfile.TemporaryDirectory(prefix="vaelib-api-")
TMP = _TMP.name


def _idx(name: str, array: np.ndarray) -> str:
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape) + array.tobytes())
    return path


IMAGES_IDX = _idx("images.idx", np.zeros((3, 2, 2), dtype=np.uint8))
LABELS_IDX = _idx("labels.idx", np.zeros(3, dtype=np.uint8))


# --- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    api: str  # qualified public name, e.g. "elbo", "VAE.encode", "toy.ppca"
    arg: str  # the argument the message must name
    kind: str  # the class of bad input
    call: Callable[[], object]
    expected: type[Exception]

    @property
    def id(self) -> str:
        return f"{self.api}-{self.arg}-{self.kind}".replace(" ", "_")


CASES: list[Case] = []


def _add(api: str, arg: str, kind: str, expected: type[Exception], call: Callable[[], object]) -> None:
    CASES.append(Case(api, arg, kind, call, expected))


def bad_tensors(good: torch.Tensor, *, rank: bool = True, size: bool = True, empty: bool = True,
                finite: bool = True, scalar: bool = False):
    """(kind, value, expected exception) for the classes of bad tensor that apply to an argument."""
    yield "list", good.tolist(), TypeError
    yield "numpy array", good.numpy(), TypeError
    yield "int tensor", good.long(), TypeError
    if rank:
        yield "wrong rank", good.unsqueeze(0), ValueError
    if scalar:
        yield "scalar", good.reshape(-1)[0].clone(), ValueError
    if size:
        yield "wrong size", good[..., :-1], ValueError
    if empty:
        yield "empty batch", good[:0], ValueError
    if finite:
        for name, v in (("NaN", math.nan), ("inf", math.inf)):
            t = good.clone()
            t.view(-1)[0] = v
            yield name, t, ValueError
    yield "float8 tensor", good.to(torch.float8_e4m3fn), TypeError
    yield "sparse tensor", good.to_sparse(), TypeError
    yield "meta tensor", good.to("meta"), ValueError


def bad_counts(minimum: int = 1, optional: bool = False):
    """Bad values for an integer argument ``>= minimum`` (``optional``: ``None`` is allowed)."""
    if minimum >= 1:
        yield "zero count", 0, ValueError
    yield "negative count", minimum - 2, ValueError
    yield "float count", 2.0, TypeError
    yield "string count", "3", TypeError
    yield "bool count", True, TypeError
    yield "count beyond int64", 2**64, ValueError
    if not optional:
        yield "None count", None, TypeError


def bad_reals(*, negative: bool = True):
    if negative:
        yield "negative number", -1.0, ValueError
    yield "NaN number", math.nan, ValueError
    yield "inf number", math.inf, ValueError
    yield "integer beyond float", 10**400, ValueError
    yield "string number", "1", TypeError
    yield "None number", None, TypeError


def bad_generators():
    yield "int generator", 0, TypeError
    yield "numpy generator", np.random.default_rng(0), TypeError


def bad_models():
    yield "None model", None, TypeError
    yield "torch module model", torch.nn.Linear(6, 2), TypeError


def bad_paths():
    yield "int path", 3, TypeError
    yield "None path", None, TypeError
    yield "bytes path", b"model.pt", TypeError


def _table(api: str, fn: Callable, good: dict, arg: str, values) -> None:
    """One case per bad value of ``arg``, every other argument good."""
    for kind, value, expected in values:
        _add(api, arg, kind, expected, lambda fn=fn, arg=arg, value=value: fn(**{**good, arg: value}))


def _one(api: str, fn: Callable, good: dict, arg: str, kind: str, value, expected: type[Exception]) -> None:
    _table(api, fn, good, arg, [(kind, value, expected)])


def _model_data(api: str, fn: Callable, good: dict, model_arg: str = "model", x_arg: str = "x") -> None:
    """The classes of bad data that every model-and-data function must refuse."""
    _table(api, fn, good, model_arg, bad_models())
    _table(api, fn, good, x_arg, bad_tensors(good[x_arg]))
    _one(api, fn, good, x_arg, "grey levels for a Bernoulli model", XG, ValueError)
    _one(api, fn, good, x_arg, "float64 data for a float32 model", good[x_arg].double(), TypeError)
    _one(api, fn, good, x_arg, "data wider than the model", torch.cat([good[x_arg], good[x_arg]], 1), ValueError)


# Densities and KL.
good = {"x": torch.randn(5, 6), "mu": torch.zeros(5, 6), "logvar": torch.zeros(5, 6)}
_table("log_normal", vaelib.log_normal, good, "x", bad_tensors(good["x"], rank=False, size=False, empty=False,
                                                             finite=False, scalar=True))
for a in ("mu", "logvar"):
    _table("log_normal", vaelib.log_normal, good, a, bad_tensors(good[a], rank=False, size=False, empty=False))
_one("log_normal", vaelib.log_normal, good, "mu", "shapes that do not broadcast", torch.zeros(5, 4), ValueError)
_one("log_normal", vaelib.log_normal, good, "x", "shapes that broadcast too far", torch.randn(5, 1), ValueError)

good = {"x": XB, "logits": torch.zeros(5, 6)}
_table("log_bernoulli", vaelib.log_bernoulli, good, "x", bad_tensors(XB, rank=False, size=False, empty=False,
                                                                   scalar=True))
_one("log_bernoulli", vaelib.log_bernoulli, good, "x", "grey levels for a Bernoulli model", XG, ValueError)
_one("log_bernoulli", vaelib.log_bernoulli, good, "x", "shapes that broadcast too far", XB[:, :1], ValueError)
_table("log_bernoulli", vaelib.log_bernoulli, good, "logits", bad_tensors(good["logits"], rank=False, size=False,
                                                                        empty=False))
_one("log_bernoulli", vaelib.log_bernoulli, good, "logits", "shapes that do not broadcast", torch.zeros(5, 4),
     ValueError)

good = {"mu": MU, "logvar": LV}
for a in ("mu", "logvar"):
    _table("gaussian_kl", vaelib.gaussian_kl, good, a, bad_tensors(good[a], rank=False, empty=False, scalar=True))

good = {"mu_q": MU, "logvar_q": LV, "mu_p": torch.zeros(2), "logvar_p": torch.zeros(2)}
for a in ("mu_q", "logvar_q", "mu_p", "logvar_p"):
    _table("kl_normal", vaelib.kl_normal, good, a, bad_tensors(good[a], rank=False, empty=False, size=a.endswith("q")))
_one("kl_normal", vaelib.kl_normal, good, "mu_p", "shapes that do not broadcast", torch.zeros(3), ValueError)
for a in ("mu_p", "logvar_p"):
    _one("kl_normal", vaelib.kl_normal, good, a, "shapes that broadcast too far", torch.zeros(3, 5, 2), ValueError)

# Sampling.
good = {"mu": MU, "logvar": LV, "n_samples": 2, "generator": None}
for a in ("mu", "logvar"):
    _table("reparameterize", vaelib.reparameterize, good, a, bad_tensors(good[a], rank=False, empty=False))
_table("reparameterize", vaelib.reparameterize, good, "n_samples", bad_counts())
_table("reparameterize", vaelib.reparameterize, good, "generator", bad_generators())

# The model.
good = {"x_dim": 6, "z_dim": 2, "hidden": (4,), "likelihood": "bernoulli", "seed": 0}
for a in ("x_dim", "z_dim"):
    _table("VAE", vaelib.VAE, good, a, bad_counts())
_table("VAE", vaelib.VAE, good, "seed", bad_counts(minimum=0, optional=True))
_table("VAE", vaelib.VAE, good, "hidden", [
    ("int hidden", 400, TypeError), ("string hidden", "400", TypeError), ("zero width", (4, 0), ValueError),
    ("negative width", (-4,), ValueError), ("float width", (4.5,), TypeError),
])
_one("VAE", vaelib.VAE, {**good, "encoder": torch.nn.Linear(6, 4), "decoder": torch.nn.Linear(2, 6)}, "hidden",
     "hidden with both modules given", (4,), ValueError)
for a in ("encoder", "decoder"):
    _table("VAE", vaelib.VAE, good, a, [("function module", lambda t: t, TypeError), ("int module", 3, TypeError)])
BAD_DEVICES = [("dtype device", torch.float64, TypeError), ("unknown option", "nowhere", ValueError),
               ("meta device", "meta", ValueError),
               *([] if torch.cuda.is_available() else [("unavailable device", "cuda", ValueError)])]
_table("VAE", vaelib.VAE, good, "device", BAD_DEVICES)
_table("VAE", vaelib.VAE, good, "likelihood", [("unknown option", "poisson", ValueError), ("None option", None,
                                                                                           ValueError)])

for model in (BERN, GAUSS):
    name = model.likelihood
    _table("VAE.encode", lambda x, m=model: m.encode(x), {"x": XB}, "x", bad_tensors(XB))
    _one("VAE.encode", lambda x, m=model: m.encode(x), {"x": XB}, "x", f"float64 data ({name})", XB.double(),
         TypeError)
    _table("VAE.forward", lambda x, m=model: m(x), {"x": XB}, "x", bad_tensors(XB))
    _table("VAE.check_x", lambda x, m=model: m.check_x(x), {"x": XB}, "x", bad_tensors(XB))
    _table("VAE.check_data", lambda x, m=model: m.check_data(x), {"x": XB}, "x", bad_tensors(XB))
    _one("VAE.check_data", lambda x, m=model: m.check_data(x), {"x": XB}, "x", f"float64 data ({name})",
         XB.double(), TypeError)
    z = torch.zeros(3, 2)
    # decode passes NaN/inf codes through on purpose (a diverged encoder's loss must come out non-finite).
    _table("VAE.decode", lambda z, m=model: m.decode(z), {"z": z}, "z", bad_tensors(z, rank=False, empty=False,
                                                                                   scalar=True, finite=False))
    _table("VAE.check_z", lambda z, m=model: m.check_z(z), {"z": z}, "z", bad_tensors(z, rank=False, empty=False,
                                                                                     scalar=True))
    _one("VAE.check_z", lambda z, m=model: m.check_z(z), {"z": z}, "z", f"float64 codes ({name})", z.double(),
         TypeError)
    _one("VAE.decode", lambda z, m=model: m.decode(z), {"z": z}, "z", f"float64 codes ({name})", z.double(),
         TypeError)
    _table("VAE.mean", lambda z, m=model: m.mean(z), {"z": z}, "z", bad_tensors(z, rank=False, empty=False))
    good = {"x": XB, "z": torch.zeros(5, 2)}
    fn = model.log_px_z
    _table("VAE.log_px_z", fn, good, "x", bad_tensors(XB))
    _table("VAE.log_px_z", fn, good, "z", bad_tensors(good["z"], rank=False, empty=False))
    _one("VAE.log_px_z", fn, good, "z", f"batch of z unlike x's ({name})", torch.zeros(4, 2), ValueError)
    _one("VAE.log_px_z", fn, good, "z", f"float64 codes ({name})", torch.zeros(5, 2, dtype=torch.float64),
         TypeError)
_one("VAE.check_x", BERN.check_x, {"x": XB}, "x", "grey levels for a Bernoulli model", XG, ValueError)
_table("VAE.linear_gaussian_parameters", lambda model: model.linear_gaussian_parameters(), {"model": GAUSS},
       "model", [("a Bernoulli VAE", vaelib.VAE(6, 2, hidden=(), seed=0), ValueError),
                 ("a nonlinear Gaussian VAE", vaelib.VAE(6, 2, hidden=(4,), likelihood="gaussian", seed=0),
                  ValueError)])
_one("VAE.log_px_z", BERN.log_px_z, {"x": XB, "z": torch.zeros(5, 2)}, "x", "grey levels for a Bernoulli model",
     XG, ValueError)

# Bounds and estimates.
good = {"model": BERN, "x": XB, "n_samples": 2, "beta": 1.0, "generator": None}
for _name, _fn in (("elbo", vaelib.elbo), ("elbo_backward", vaelib.elbo_backward)):
    _model_data(_name, _fn, good)
    _table(_name, _fn, good, "n_samples", bad_counts())
    _table(_name, _fn, good, "beta", bad_reals())
    _table(_name, _fn, good, "generator", bad_generators())

good = {"model": BERN, "x": XB, "k": 3, "generator": None}
_model_data("iwae_bound", vaelib.iwae_bound, good)
_table("iwae_bound", vaelib.iwae_bound, good, "k", [*bad_counts(), ("absurd size", 10**30, ValueError)])
_table("iwae_bound", vaelib.iwae_bound, good, "generator", bad_generators())

good = {"model": BERN, "x": XB, "k": 3, "generator": None, "max_elements": 1000}
_model_data("log_likelihood", vaelib.log_likelihood, good)
_table("log_likelihood", vaelib.log_likelihood, good, "k", [*bad_counts(), ("absurd size", 10**30, ValueError)])
_table("log_likelihood", vaelib.log_likelihood, good, "max_elements", bad_counts())
_table("log_likelihood", vaelib.log_likelihood, good, "generator", bad_generators())

if hasattr(vaelib, "active_units"):
    good = {"model": BERN, "x": XB, "threshold": 0.01, "batch_size": 2}
    _model_data("active_units", vaelib.active_units, good)
    _one("active_units", vaelib.active_units, good, "x", "single example", XB[:1], ValueError)
    _table("active_units", vaelib.active_units, good, "threshold", bad_reals())
    _table("active_units", vaelib.active_units, good, "batch_size", bad_counts())

# Generation.
good = {"model": BERN, "n": 3, "generator": None}
_table("sample", vaelib.sample, good, "model", bad_models())
_table("sample", vaelib.sample, good, "n", [*bad_counts(), ("absurd size", 2**40, ValueError)])
_table("sample", vaelib.sample, good, "generator", bad_generators())

good = {"model": BERN, "x_a": XB[0], "x_b": XB[1], "steps": 3}
_table("interpolate", vaelib.interpolate, good, "model", bad_models())
for a in ("x_a", "x_b"):
    _table("interpolate", vaelib.interpolate, good, a, bad_tensors(XB[0], rank=False, empty=False))
    _one("interpolate", vaelib.interpolate, good, a, "several data points", XB[:2], ValueError)
    _one("interpolate", vaelib.interpolate, good, a, "wrong rank", XB[None], ValueError)
_table("interpolate", vaelib.interpolate, good, "steps", [*bad_counts(), ("one step", 1, ValueError)])

# Training.
good = {"model": BERN, "train": XB, "epochs": 1, "progress": False}
_table("fit", vaelib.fit, good, "model", bad_models())
_table("fit", vaelib.fit, good, "train", bad_tensors(XB))
_one("fit", vaelib.fit, good, "train", "float64 data for a float32 model", XB.double(), TypeError)
_one("fit", vaelib.fit, good, "train", "values outside [0, 1] to binarise", XG * 3, ValueError)
_one("fit", vaelib.fit, good, "valid", "grey levels for a Bernoulli model", XG, ValueError)
_one("fit", vaelib.fit, good, "valid", "data wider than the model", torch.cat([XB, XB], 1), ValueError)
_table("fit", vaelib.fit, good, "valid", bad_tensors(XB))
for a in ("epochs", "batch_size", "n_samples", "patience"):
    _table("fit", vaelib.fit, {**good, "valid": XB}, a, bad_counts(optional=(a == "patience")))
_table("fit", vaelib.fit, good, "seed", bad_counts(minimum=0))
_table("fit", vaelib.fit, good, "lr", [*bad_reals(), ("zero number", 0.0, ValueError)])
_table("fit", vaelib.fit, good, "beta", bad_reals())
_table("fit", vaelib.fit, good, "warmup_epochs", bad_reals())
_one("fit", vaelib.fit, good, "lr_schedule", "unknown option", "linear", ValueError)
_one("fit", vaelib.fit, good, "patience", "early stopping without validation data", 2, ValueError)
_one("fit", vaelib.fit, good, "binarize", "string option", "yes", TypeError)
_one("fit", vaelib.fit, {**good, "train": XG}, "binarize", "grey levels for a Bernoulli model", False, ValueError)
_table("fit", vaelib.fit, good, "device", BAD_DEVICES)
_one("fit", vaelib.fit, good, "n_samples", "absurd size", 10**15, ValueError)

# Checkpoints.
good = {"model": BERN, "path": os.path.join(TMP, "m.pt")}
_table("save", vaelib.save, good, "model", bad_models())
_table("save", vaelib.save, good, "path", bad_paths())
_one("save", vaelib.save, good, "path", "missing folder", os.path.join(TMP, "no", "m.pt"), ValueError)
_table("load", vaelib.load, {"path": good["path"]}, "path", bad_paths())
vaelib.save(BERN, good["path"])
_table("load", vaelib.load, {"path": good["path"]}, "device", BAD_DEVICES)
_table("load", vaelib.load, {"path": good["path"]}, "model", [("int model", 3, TypeError),
                                                           ("torch module model", torch.nn.Linear(6, 2), TypeError)])

# Gradient estimators.
for api in ("pathwise_grad", "score_function_grad"):
    if not hasattr(vaelib, api):
        continue
    fn = getattr(vaelib, api)
    good = {"f": lambda z: (z**2).sum(-1), "mu": MU, "logvar": LV, "n_samples": 2, "generator": None}
    _table(api, fn, good, "f", [("not callable", 3, TypeError),
                                ("wrong output shape", lambda z: z, ValueError)])
    for a in ("mu", "logvar"):
        _table(api, fn, good, a, bad_tensors(good[a], rank=False, empty=False, scalar=(a == "mu")))
    _table(api, fn, good, "n_samples", bad_counts())
    _table(api, fn, good, "generator", bad_generators())
if hasattr(vaelib, "pathwise_grad"):
    _one("pathwise_grad", vaelib.pathwise_grad, {"f": None, "mu": MU, "logvar": LV}, "f", "not differentiable",
         lambda z: (z.detach() ** 2).sum(-1), ValueError)

# vaelib.data
good = {"images": DIGITS.images, "labels": DIGITS.labels, "image_shape": (2, 2)}
_table("data.Digits", Digits, good, "images", bad_tensors(DIGITS.images, size=False))
_table("data.Digits", Digits, good, "images", [("values above 1", DIGITS.images + 1, ValueError),
                                              ("negative values", DIGITS.images - 1, ValueError)])
_table("data.Digits", Digits, good, "labels", [("list", DIGITS.labels.tolist(), TypeError),
                                              ("numpy array", DIGITS.labels.numpy(), TypeError),
                                              ("wrong size", DIGITS.labels[:-1], ValueError),
                                              ("wrong rank", DIGITS.labels[None], ValueError)])
_table("data.Digits", Digits, good, "image_shape", [("wrong size", (2, 3), ValueError),
                                                   ("wrong rank", (2, 2, 1), ValueError),
                                                   ("negative count", (-2, -2), ValueError),
                                                   ("string option", "ab", ValueError)])
_table("data.Digits.split", lambda **kw: DIGITS.split(**kw), {"n_second": 2, "seed": 0}, "n_second",
       [*bad_counts(), ("as many as the data", len(DIGITS), ValueError)])
_table("data.Digits.split", lambda **kw: DIGITS.split(**kw), {"n_second": 2, "seed": 0}, "seed",
       bad_counts(minimum=0))
_table("data.Digits.binarized", lambda **kw: DIGITS.binarized(**kw), {"generator": None}, "generator",
       bad_generators())
good = {"images": XG, "generator": None}
_table("data.binarize", vaelib.data.binarize, good, "images", bad_tensors(XG, rank=False, size=False))
_table("data.binarize", vaelib.data.binarize, good, "images", [("values above 1", XG + 1, ValueError),
                                                              ("negative values", XG - 1, ValueError)])
_table("data.binarize", vaelib.data.binarize, good, "generator", bad_generators())
_table("data.load_mnist", vaelib.data.load_mnist, {}, "binarize_test", [("string option", "yes", TypeError),
                                                                        ("None option", None, TypeError),
                                                                        ("int option", 1, TypeError)])
_table("data.read_idx", vaelib.data.read_idx, {}, "path", bad_paths())


def _damaged_files() -> dict[str, str]:
    """Files damaged as the review found them: a bit flipped in a checkpoint's tensor, a gzip bomb, bad deflate."""
    import gzip

    out = {}
    path = os.path.join(TMP, "flipped.pt")
    vaelib.save(BERN, path)
    raw = bytearray(open(path, "rb").read())
    weight = BERN.decoder.to_x.weight.detach().numpy().tobytes()
    at = bytes(raw).find(weight[:16])  # the start of a tensor's data inside the zip
    raw[at + 2] ^= 0x40
    open(path, "wb").write(bytes(raw))
    out["flipped"] = path
    header = bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big")
    out["bomb"] = _write(os.path.join(TMP, "bomb.idx.gz"), gzip.compress(header + bytes(4) + bytes(1 << 20)))
    deflate = bytearray(gzip.compress(header + bytes(range(4)) * 64))
    deflate[12] ^= 0xFF
    out["deflate"] = _write(os.path.join(TMP, "bad.idx.gz"), bytes(deflate))
    return out


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


DAMAGED = _damaged_files()
# A damaged file is a bad *content* of the path: the message must name the file.
for api, fn, kind, key in (("load", vaelib.load, "one bit flipped in a tensor", "flipped"),
                           ("data.read_idx", vaelib.data.read_idx, "gzip bomb", "bomb"),
                           ("data.read_idx", vaelib.data.read_idx, "corrupt deflate data", "deflate")):
    _add(api, os.path.basename(DAMAGED[key]), kind, ValueError, lambda fn=fn, path=DAMAGED[key]: fn(path))
good = {"images_path": IMAGES_IDX, "labels_path": LABELS_IDX}
for a in good:
    _table("data.load_idx", vaelib.data.load_idx, good, a, bad_paths())

# vaelib.plot
good = {"images": XG, "image_shape": (2, 3), "nrow": None}
for api, fn in (("plot.tile", vaelib.plot.tile), ("plot.image_grid", vaelib.plot.image_grid)):
    _table(api, fn, good, "images", bad_tensors(XG, size=False))
    _table(api, fn, good, "image_shape", [("wrong size", (2, 2), ValueError), ("wrong rank", (1, 2, 3), ValueError),
                                          ("negative count", (-2, -3), ValueError),
                                          ("string option", "ab", ValueError)])
    _table(api, fn, good, "nrow", bad_counts(optional=True))
_table("plot.tile", vaelib.plot.tile, good, "pad", bad_counts(minimum=0))
good = {"z": MU, "labels": None}
_table("plot.latent_scatter", vaelib.plot.latent_scatter, good, "z", bad_tensors(MU, size=False))
_one("plot.latent_scatter", vaelib.plot.latent_scatter, good, "z", "one latent dimension", MU[:, :1], ValueError)
_table("plot.latent_scatter", vaelib.plot.latent_scatter, good, "labels", [
    ("list", [0] * 5, TypeError), ("numpy array", np.zeros(5), TypeError), ("wrong size", torch.zeros(4), ValueError)])
good = {"model": vaelib.VAE(4, 2, hidden=(), seed=0), "n": 3, "span": 0.9, "image_shape": (2, 2)}
_table("plot.manifold_grid", vaelib.plot.manifold_grid, good, "model", bad_models())
_one("plot.manifold_grid", vaelib.plot.manifold_grid, good, "model", "a model with z_dim=3",
     vaelib.VAE(4, 3, hidden=()), ValueError)
_table("plot.manifold_grid", vaelib.plot.manifold_grid, good, "n", [*bad_counts(), ("one point", 1, ValueError)])
_table("plot.manifold_grid", vaelib.plot.manifold_grid, good, "span", [*bad_reals(), ("zero number", 0.0, ValueError),
                                                                      ("one", 1.0, ValueError)])
_one("plot.manifold_grid", vaelib.plot.manifold_grid, good, "image_shape", "wrong size", (28, 28), ValueError)

# vaelib.toy
LGC = toy.LinearGaussian
good = {"W": LG.W, "b": LG.b, "sigma": 0.5}
_table("toy.LinearGaussian", LGC, good, "W", bad_tensors(LG.W, size=False, empty=False, rank=False))
_one("toy.LinearGaussian", LGC, good, "W", "wrong rank", LG.W[None], ValueError)
_one("toy.LinearGaussian", LGC, good, "W", "empty batch", LG.W[:0], ValueError)
_table("toy.LinearGaussian", LGC, good, "b", bad_tensors(LG.b, size=True, empty=False))
_one("toy.LinearGaussian", LGC, good, "b", "dtype unlike W's", LG.b.float(), TypeError)
_table("toy.LinearGaussian", LGC, good, "sigma", [*bad_reals(), ("zero number", 0.0, ValueError)])
_table("toy.LinearGaussian", LGC, good, "W", [("float16 tensor", LG.W.half(), TypeError),
                                              ("bfloat16 tensor", LG.W.bfloat16(), TypeError)])
_one("toy.LinearGaussian", LGC, good, "b", "float16 tensor", LG.b.half(), TypeError)
good = {"x_dim": 4, "z_dim": 2, "sigma": 0.5, "generator": None, "dtype": torch.float64}
for a in ("x_dim", "z_dim"):
    _table("toy.LinearGaussian.random", LGC.random, good, a, bad_counts())
_table("toy.LinearGaussian.random", LGC.random, good, "sigma", bad_reals())
_table("toy.LinearGaussian.random", LGC.random, good, "generator", bad_generators())
_table("toy.LinearGaussian.random", LGC.random, good, "dtype", [("int dtype", torch.int64, TypeError),
                                                               ("string dtype", "float64", TypeError),
                                                               ("float16 dtype", torch.float16, TypeError),
                                                               ("bfloat16 dtype", torch.bfloat16, TypeError)])
if hasattr(LGC, "from_vae"):
    good = {"model": GAUSS, "dtype": torch.float64}
    _table("toy.LinearGaussian.from_vae", LGC.from_vae, good, "model", bad_models())
    _one("toy.LinearGaussian.from_vae", LGC.from_vae, good, "model", "a Bernoulli VAE", BERN, ValueError)
    _one("toy.LinearGaussian.from_vae", LGC.from_vae, good, "dtype", "int dtype", torch.int64, TypeError)
    _one("toy.LinearGaussian.from_vae", LGC.from_vae, good, "dtype", "float16 dtype", torch.float16, TypeError)
_table("toy.LinearGaussian.sample", LG.sample, {"n": 3, "generator": None}, "n", bad_counts())
_table("toy.LinearGaussian.sample", LG.sample, {"n": 3, "generator": None}, "generator", bad_generators())
Z = torch.zeros(3, 2, dtype=torch.float64)
_table("toy.LinearGaussian.log_prior", LG.log_prior, {"z": Z}, "z", bad_tensors(Z, rank=False, empty=False))
for api, fn in (("toy.LinearGaussian.log_likelihood", LG.log_likelihood), ("toy.LinearGaussian.log_joint",
                                                                           LG.log_joint)):
    good = {"x": XL, "z": Z}
    _table(api, fn, good, "x", bad_tensors(XL))
    _table(api, fn, good, "z", bad_tensors(Z, rank=False, empty=False))
    _one(api, fn, good, "z", "float32 codes for a float64 model", Z.float(), TypeError)
    _one(api, fn, good, "z", "batch of z unlike x's", torch.zeros(4, 2, dtype=torch.float64), ValueError)
    _one(api, fn, good, "z", "float16 tensor", Z.half(), TypeError)
for api, fn in (("toy.LinearGaussian.log_evidence", LG.log_evidence), ("toy.LinearGaussian.posterior",
                                                                       LG.posterior)):
    _table(api, fn, {"x": XL}, "x", bad_tensors(XL))
good = {"x": XL, "q_mean": QM, "q_cov": QC}
_table("toy.LinearGaussian.elbo", LG.elbo, good, "x", bad_tensors(XL))
_table("toy.LinearGaussian.elbo", LG.elbo, good, "q_mean", bad_tensors(QM))
_one("toy.LinearGaussian.elbo", LG.elbo, good, "q_mean", "rows unlike x's", QM[:2], ValueError)
_one("toy.LinearGaussian.elbo", LG.elbo, good, "q_mean", "float32 for a float64 model", QM.float(), TypeError)
_one("toy.LinearGaussian.elbo", LG.elbo, good, "q_mean", "float16 tensor", QM.half(), TypeError)
_one("toy.LinearGaussian.elbo", LG.elbo, good, "q_cov", "float16 tensor", QC.half(), TypeError)
_table("toy.LinearGaussian.elbo", LG.elbo, good, "q_cov", [*bad_tensors(QC, empty=False),
                                                          ("not positive definite", -QC, ValueError),
                                                          ("not symmetric", QC + torch.triu(QC.new_ones(2, 2), 1),
                                                           ValueError),
                                                          ("rows unlike x's", QC.expand(2, 2, 2), ValueError),
                                                          ("float32 for a float64 model", QC.float(), TypeError)])
X_PPCA = torch.randn(20, 4, generator=_g, dtype=torch.float64)
_table("toy.ppca", toy.ppca, {"x": X_PPCA, "z_dim": 2}, "x", bad_tensors(X_PPCA, size=False))
_one("toy.ppca", toy.ppca, {"x": X_PPCA, "z_dim": 2}, "x", "single example", X_PPCA[:1], ValueError)
_table("toy.ppca", toy.ppca, {"x": X_PPCA, "z_dim": 2}, "x", [
    ("float16 tensor", X_PPCA.half(), TypeError), ("bfloat16 tensor", X_PPCA.bfloat16(), TypeError),
    ("data in an exact subspace", torch.randn(20, 2, generator=_g, dtype=torch.float64)
     @ torch.randn(2, 4, generator=_g, dtype=torch.float64), ValueError)])
_table("toy.ppca", toy.ppca, {"x": X_PPCA, "z_dim": 2}, "z_dim", [*bad_counts(), ("as large as the data", 4,
                                                                                   ValueError)])

for api in ("log_evidence_quadrature", "posterior_moments_quadrature"):
    if not hasattr(toy, api):
        continue
    fn = getattr(toy, api)
    good = {"model": LG, "x": XL, "n_points": 11, "bound": 5.0, "max_points": 10**4}
    _table(f"toy.{api}", fn, good, "model", [*bad_models(), ("a VAE model", GAUSS, TypeError)])
    _table(f"toy.{api}", fn, good, "x", bad_tensors(XL))
    _one(f"toy.{api}", fn, good, "x", "float32 data for a float64 model", XL.float(), TypeError)
    _one(f"toy.{api}", fn, good, "x", "float16 tensor", XL.half(), TypeError)
    _table(f"toy.{api}", fn, good, "n_points", [*bad_counts(), ("one point", 1, ValueError)])
    _table(f"toy.{api}", fn, good, "bound", [*bad_reals(), ("zero number", 0.0, ValueError)])
    _table(f"toy.{api}", fn, good, "max_points", [*bad_counts(), ("grid larger than allowed", 100, ValueError)])
for api in ("log_importance_weights", "log_evidence_importance"):
    if not hasattr(toy, api):
        continue
    fn = getattr(toy, api)
    good = {"model": LG, "x": XL, "n_samples": 4, "proposal": None, "generator": None}
    _table(f"toy.{api}", fn, good, "model", bad_models())
    _table(f"toy.{api}", fn, good, "x", bad_tensors(XL))
    _table(f"toy.{api}", fn, good, "n_samples", bad_counts())
    _table(f"toy.{api}", fn, good, "generator", bad_generators())
    _table(f"toy.{api}", fn, good, "proposal", [
        ("not a distribution", "posterior", TypeError),
        ("wrong event shape", torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64),
                                                                     torch.eye(3, dtype=torch.float64)), ValueError),
        ("float32 proposal for a float64 model",
         torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)), TypeError)])
    _one(f"toy.{api}", fn, good, "x", "float16 tensor", XL.half(), TypeError)
if hasattr(toy, "log_evidence_importance"):
    _one("toy.log_evidence_importance", toy.log_evidence_importance,
         {"model": LG, "x": XL, "n_samples": 4}, "n_samples", "one sample (no standard error)", 1, ValueError)
if hasattr(toy, "fit_gaussian_q"):
    good = {"model": LG, "x": XL, "steps": 2, "lr": 0.05}
    _table("toy.fit_gaussian_q", toy.fit_gaussian_q, good, "model", bad_models())
    _table("toy.fit_gaussian_q", toy.fit_gaussian_q, good, "x", bad_tensors(XL))
    _one("toy.fit_gaussian_q", toy.fit_gaussian_q, good, "x", "float16 tensor", XL.half(), TypeError)
    _table("toy.fit_gaussian_q", toy.fit_gaussian_q, good, "steps", bad_counts())
    _table("toy.fit_gaussian_q", toy.fit_gaussian_q, good, "lr", [*bad_reals(), ("zero number", 0.0, ValueError)])


# Public callables with no bad inputs to try, and why.
# Training once for several chapters, and the best Gaussian per image (chapter 7).
import tempfile as _tempfile  # noqa: E402

from vaelib import inference_gap as _posterior  # noqa: E402

good = {"model": BERN, "train": XB, "epochs": 1, "progress": False, "cache_dir": _tempfile.mkdtemp()}
_table("fit_cached", vaelib.fit_cached, good, "model", bad_models())
_table("fit_cached", vaelib.fit_cached, good, "train", bad_tensors(XB))
_table("fit_cached", vaelib.fit_cached, good, "epochs", bad_counts())
_one("fit_cached", vaelib.fit_cached, good, "key", "not a string", 3, TypeError)

good = {"model": BERN, "x": XB}
_table("posterior.encoder_gaussian", _posterior.encoder_gaussian, good, "model", bad_models())
_table("posterior.encoder_gaussian", _posterior.encoder_gaussian, good, "x", bad_tensors(XB))
good = {"model": BERN, "x": XB, "steps": 2}
_table("posterior.fit_gaussian", _posterior.fit_gaussian, good, "model", bad_models())
_table("posterior.fit_gaussian", _posterior.fit_gaussian, good, "x", bad_tensors(XB))
_table("posterior.fit_gaussian", _posterior.fit_gaussian, good, "steps", bad_counts())
_table("posterior.fit_gaussian", _posterior.fit_gaussian, good, "n_samples", bad_counts())
_table("posterior.fit_gaussian", _posterior.fit_gaussian, good, "lr", [*bad_reals(), ("zero number", 0.0, ValueError)])
_one("posterior.fit_gaussian", _posterior.fit_gaussian, good, "covariance", "unknown family", "banded", ValueError)
_Q = _posterior.encoder_gaussian(BERN, XB)
for _name, _fn in (("posterior.gaussian_elbo", _posterior.gaussian_elbo),
                   ("posterior.gaussian_log_likelihood", _posterior.gaussian_log_likelihood)):
    good = {"model": BERN, "x": XB, "q": _Q}
    _table(_name, _fn, good, "model", bad_models())
    _table(_name, _fn, good, "x", bad_tensors(XB))
    _one(_name, _fn, good, "q", "not a Gaussian", (_Q.mu, _Q.log_std), TypeError)
    _one(_name, _fn, good, "q", "one row too few", _posterior.Gaussian(_Q.mu[1:], _Q.log_std[1:]), ValueError)
    _one(_name, _fn, good, "q", "NaN mean", _posterior.Gaussian(_Q.mu * math.nan, _Q.log_std), ValueError)

EXEMPT = {
    "ActiveUnits": "result container built by active_units()",
    "ELBOTerms": "result container built by elbo()",
    "GradientSamples": "result container (a NamedTuple) built by the gradient estimators",
    "History": "result container built by fit()",
    "TrainingDivergedError": "exception class",
    "VAE.extra_repr": "nn.Module's repr hook, no arguments",
    "data.load_digits_8x8": "no arguments",
    "data.Digits.subset": "indexes like a tensor: a bad index is torch's own IndexError",
    "toy.GaussianFit": "result container built by fit_gaussian_q()",
    "toy.LinearGaussian.marginal": "no arguments",
    "posterior.Gaussian": "result container built by fit_gaussian() and encoder_gaussian()",
    "posterior.Gaussian.detach": "no arguments",
    "posterior.Gaussian.entropy": "no arguments",
    "posterior.Gaussian.log_prob_of": "tensor arithmetic on its own fields; the public scorers validate q",
    "posterior.Gaussian.rsample": "tensor arithmetic on its own fields; the public scorers validate q",
}


def public_callables() -> set[str]:
    """Every public function, class and public method reachable from ``vaelib.__all__``.

    The names of ``vaelib.__all__``; for each module among them (``toy``, ``data``, ``plot``), the public
    callables defined in that module (not those it imports); for each class, its own public methods.
    """
    found: set[str] = set()

    def walk(module: types.ModuleType, prefix: str, names) -> None:
        for name in names:
            obj = getattr(module, name)
            if name.startswith("_"):
                continue
            if isinstance(obj, types.ModuleType):
                if module is vaelib:
                    walk(obj, f"{name}.", dir(obj))
                continue
            owner = getattr(obj, "__module__", None) or ""
            defined_here = owner.startswith("vaelib") if module is vaelib else owner == module.__name__
            if not callable(obj) or not defined_here:
                continue
            found.add(prefix + name)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") and (inspect.isfunction(value) or isinstance(value, classmethod)):
                        found.add(f"{prefix}{name}.{attr}")

    walk(vaelib, "", vaelib.__all__)
    return found


def test_the_api_walk_finds_functions_classes_and_methods():
    public = public_callables()
    for name in ("elbo", "VAE", "VAE.encode", "toy.ppca", "toy.LinearGaussian.elbo", "toy.LinearGaussian.random",
                 "data.read_idx", "data.Digits.split", "plot.tile"):
        assert name in public, name
    assert "toy.MultivariateNormal" not in public and "plot.VAE" not in public  # imported, not defined there


def test_every_public_callable_has_bad_input_cases():
    public = public_callables()
    covered = {c.api for c in CASES}
    missing = sorted(public - covered - set(EXEMPT))
    assert not missing, f"public callables without bad-input cases in CASES (add them, or to EXEMPT): {missing}"
    stale = sorted(set(EXEMPT) - public)
    assert not stale, f"EXEMPT names that are no longer public: {stale}"
    unknown = sorted(covered - public)
    assert not unknown, f"CASES for names that are not public: {unknown}"


def _outcome(case: Case) -> str:
    """How the call ended: 'ok' when it raised the expected exception naming the argument."""
    try:
        case.call()
    except (ValueError, TypeError) as err:
        if not isinstance(err, case.expected):
            return f"{type(err).__name__} instead of {case.expected.__name__}: {err}"
        if case.arg not in str(err):
            return f"{type(err).__name__} without the argument's name: {err}"
        return "ok"
    except Exception as err:  # noqa: BLE001 - any other exception is the failure being looked for
        return f"crash: {type(err).__name__}: {err}"
    return "no error"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case):
    outcome = _outcome(case)
    assert outcome == "ok", f"{case.api}({case.arg}=<{case.kind}>): {outcome}"


_BROAD = {  # class of bad input -> the kinds of the table it holds
    "wrong type (list, NumPy array, int tensor, str, None, bool, ...)": {
        "list", "numpy array", "int tensor", "float count", "string count", "bool count", "None count",
        "string number", "None number", "None model", "torch module model", "a VAE model", "int generator",
        "numpy generator", "int path", "None path", "bytes path", "not callable", "not a distribution",
        "int hidden", "string hidden", "float width", "int option", "int dtype", "string dtype", "function module", "int model",
        "int module", "dtype device", "not a string", "not a Gaussian"},
    "float32/float64 data unlike the model's dtype": {
        "float64 data for a float32 model", "float64 data (bernoulli)", "float64 data (gaussian)",
        "float64 codes (bernoulli)", "float64 codes (gaussian)", "float32 codes for a float64 model",
        "float32 proposal for a float64 model",
        "float32 for a float64 model", "float32 data for a float64 model", "dtype unlike W's"},
    "NaN or inf": {"NaN", "inf", "NaN number", "inf number", "NaN mean"},
    "wrong rank or shape": {"wrong rank", "wrong size", "scalar", "shapes that do not broadcast",
                            "shapes that broadcast too far",
                            "one latent dimension", "several data points", "wrong output shape", "wrong event shape",
                            "one row too few"},
    "empty batch": {"empty batch"},
    "float8, sparse or meta tensors; a device that holds no data here": {
        "float8 tensor", "sparse tensor", "meta tensor", "meta device", "unavailable device", "float16 tensor",
        "bfloat16 tensor", "float16 dtype", "bfloat16 dtype"},
    "counts and numbers beyond int64, float or any machine's memory": {
        "count beyond int64", "integer beyond float", "absurd size"},
    "zero, negative or too small/large counts and numbers": {
        "zero count", "negative count", "negative number", "zero number", "zero width", "negative width", "one point",
        "one step", "one", "one sample (no standard error)", "single example", "as many as the data",
        "as large as the data", "grid larger than allowed"},
    "grey levels for a Bernoulli model, values outside [0, 1]": {
        "grey levels for a Bernoulli model", "values above 1", "negative values", "values outside [0, 1] to binarise"},
    "a model and data of different sizes": {
        "data wider than the model", "batch of z unlike x's", "batch of z unlike x's (bernoulli)",
        "batch of z unlike x's (gaussian)", "rows unlike x's", "a model with z_dim=3", "a Bernoulli VAE"},
    "unknown option or impossible setting": {
        "unknown option", "None option", "string option", "unknown family", "early stopping without validation data", "missing folder",
        "not differentiable", "not positive definite", "not symmetric", "hidden with both modules given",
        "data in an exact subspace",
        "one bit flipped in a tensor", "gzip bomb", "corrupt deflate data",
        "a nonlinear Gaussian VAE"},
}


def broad_class(kind: str) -> str:
    return next((name for name, kinds in _BROAD.items() if kind in kinds), f"unclassified: {kind}")


def summary(broad: bool = True) -> tuple[int, dict[str, Counter]]:
    """The number of bad inputs tried, and per class of bad input how many ended in which exception."""
    by_kind: dict[str, Counter] = {}
    for case in CASES:
        outcome = _outcome(case)
        ended = case.expected.__name__ if outcome == "ok" else outcome.split(":")[0]
        key = broad_class(case.kind) if broad else case.kind
        by_kind.setdefault(key, Counter())[ended] += 1
    return len(CASES), by_kind


def _report(total: int, by_kind: dict[str, Counter]) -> str:
    lines = [f"{total} bad inputs tried on {len({c.api for c in CASES})} public callables; how each class ended:"]
    for kind, counts in sorted(by_kind.items(), key=lambda kv: -sum(kv[1].values())):
        lines.append(f"  {sum(counts.values()):4d}  {kind:<60} " + ", ".join(
            f"{n} {e}" for e, n in sorted(counts.items())))
    return "\n".join(lines)


@pytest.mark.filterwarnings("ignore")
def test_summary():
    """Every bad input ended in ValueError or TypeError (run with -s, or run this file, to see the tally)."""
    total, by_kind = summary()
    assert total >= 800
    assert all(set(c) <= {"ValueError", "TypeError"} for c in by_kind.values()), by_kind
    assert all(k in _BROAD for k in by_kind), sorted(set(by_kind) - set(_BROAD))
    print("\n" + _report(total, by_kind))


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    print(_report(*summary()))
    print("\nin detail:")
    print(_report(*summary(broad=False)))
    sys.exit(0)
