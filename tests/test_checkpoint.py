"""vaelib.checkpoint: round trips, what is recorded, atomic saves, and a loader that never runs code."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

import vaelib
import vaelib.checkpoint
from vaelib import VAE, elbo, load, save


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(model: VAE, n: int = 5) -> torch.Tensor:
    x = torch.rand(n, model.x_dim, generator=_gen(0), dtype=model.dtype)
    return (x < 0.5).to(x.dtype) if model.likelihood_name == "bernoulli" else x


@pytest.fixture
def trained():
    model = VAE(6, 2, hidden=(5,), likelihood="gaussian", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # not the seeded initialisation: the file must carry the parameters
    return model


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("hidden", [(), (5,), (7, 3)])
def test_round_trip_gives_identical_outputs(tmp_path, likelihood, hidden):
    model = VAE(6, 2, hidden=hidden, likelihood=likelihood, seed=0)
    with torch.no_grad():
        model.encoder.to_logvar.bias.fill_(-0.3)
        if likelihood == "gaussian":
            model.obs_logvar.fill_(-1.2)
    path = tmp_path / "model.pt"
    save(model, path)
    loaded = load(path)
    assert isinstance(loaded, VAE) and loaded.config == model.config
    assert not loaded.training
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and torch.equal(a, b)
    x = _x(model)
    for a, b in zip(model.encode(x), loaded.encode(x)):
        assert torch.equal(a, b)
    assert torch.equal(elbo(model, x, generator=_gen(1)).elbo, elbo(loaded, x, generator=_gen(1)).elbo)
    assert torch.equal(vaelib.sample(model, 3, _gen(2)), vaelib.sample(loaded, 3, _gen(2)))


def test_round_trip_keeps_float64(tmp_path, linear_vae):
    model, _ = linear_vae()
    save(model, tmp_path / "m.pt")
    loaded = load(str(tmp_path / "m.pt"), device="cpu")
    assert loaded.encoder.to_mu.weight.dtype == torch.float64
    x = _x(model)
    assert torch.equal(elbo(model, x, generator=_gen(0)).elbo, elbo(loaded, x, generator=_gen(0)).elbo)


def test_checkpoint_records_format_version_and_config(tmp_path, trained):
    path = tmp_path / "m.pt"
    save(trained, path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "vaelib-checkpoint" and payload["format_version"] == 3
    assert payload["class"] == "vaelib.model.VAE" and payload["builtin"] is True
    assert payload["vaelib_version"] == vaelib.__version__
    assert payload["config"] == {"x_dim": 6, "z_dim": 2, "hidden": [5], "likelihood": "gaussian"}
    assert set(payload["state_dict"]) == set(trained.state_dict())
    # A SHA-256 of everything else, which load verifies (tests/test_edges_files.py damages files).
    assert payload["sha256"] == vaelib.checkpoint._digest(payload) and len(payload["sha256"]) == 64


def test_save_overwrites_and_leaves_no_temporary_file(tmp_path, trained):
    path = tmp_path / "m.pt"
    save(VAE(6, 2, hidden=(5,), likelihood="gaussian"), path)
    save(trained, path)
    assert torch.equal(load(path).decoder.to_x.weight, trained.decoder.to_x.weight)
    assert os.listdir(tmp_path) == ["m.pt"]


@pytest.mark.parametrize("interruption", [OSError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, trained, monkeypatch, interruption):
    path = tmp_path / "m.pt"
    save(trained, path)
    before = path.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # a partly written file ...
        raise interruption  # ... and then the process is interrupted

    monkeypatch.setattr(torch, "save", half_save)
    other = VAE(6, 2, hidden=(5,), likelihood="gaussian", seed=1)
    with pytest.raises(type(interruption)):
        save(other, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(load(path).decoder.to_x.weight, trained.decoder.to_x.weight)
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind


def test_save_into_a_missing_folder(tmp_path, trained):
    with pytest.raises(ValueError, match="folder does not exist"):
        save(trained, tmp_path / "nope" / "m.pt")
    assert os.listdir(tmp_path) == []


class _Marker:
    """Unpickling this calls open(path, "w"): it creates a file, as any code execution could."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_payloads_really_run_code_when_unpickled_unsafely(tmp_path):
    # The control: with the plain unpickler, these payloads do create their marker file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Marker(control))).close()
    assert control.exists()
    control.unlink()
    torch.save({"format": "vaelib-checkpoint", "state_dict": _Marker(control)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)["state_dict"].close()
    assert control.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["raw pickle", "torch zip"])
def test_load_never_executes_code(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = {
        "format": "vaelib-checkpoint",
        "format_version": 2,
        "class": "vaelib.model.VAE",
        "builtin": True,
        "config": {"x_dim": 6, "z_dim": 2, "hidden": [], "likelihood": "bernoulli"},
        "state_dict": _Marker(marker),
    }
    if container == "raw pickle":
        path.write_bytes(pickle.dumps(evil))
    else:
        torch.save(evil, path)
    with pytest.raises(ValueError, match="not a readable vaelib checkpoint"):
        load(path)
    assert not marker.exists()


def test_truncated_files_are_rejected(tmp_path, trained):
    path = tmp_path / "m.pt"
    save(trained, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    # Every cut from the empty file to one byte short, in steps that hit the header, the pickled
    # records, the tensor data and the zip's trailing central directory.
    lengths = sorted(set(range(0, 64)) | set(range(64, len(data), 97)) | set(range(len(data) - 64, len(data))))
    for n in lengths:
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="not a readable vaelib checkpoint"):
            load(cut)


def test_foreign_files_are_rejected(tmp_path):
    path = tmp_path / "f.pt"
    for obj in ({"model": torch.zeros(3)}, torch.zeros(3), [1, 2], {"format": "other"}):
        torch.save(obj, path)
        with pytest.raises(ValueError, match="not a vaelib checkpoint"):
            load(path)
    path.write_text("hello, I am a text file")
    with pytest.raises(ValueError, match="not a readable vaelib checkpoint"):
        load(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.txt", "a zip, but not torch's")
    with pytest.raises(ValueError, match="not a readable vaelib checkpoint"):
        load(path)


def _payload(model: VAE) -> dict:
    return {
        "format": "vaelib-checkpoint",
        "format_version": 2,
        "vaelib_version": vaelib.__version__,
        "class": "vaelib.model.VAE",
        "builtin": True,
        "config": model.config,
        "state_dict": model.state_dict(),
    }


def test_malformed_checkpoints_are_rejected_with_a_reason(tmp_path, trained):
    path = tmp_path / "m.pt"

    def rejected(payload, message):
        torch.save(payload, path)
        with pytest.raises(ValueError, match=message):
            load(path)

    p = _payload(trained)
    rejected({**p, "format_version": 1}, "checkpoint format 1, this vaelib reads 2")
    rejected({**p, "builtin": "yes"}, "does not say what model it holds")
    rejected({**p, "class": None}, "does not say what model it holds")
    rejected({**p, "builtin": False}, "invalid model configuration")  # a custom model records no hidden
    rejected({**p, "config": None}, "lacks a model configuration")
    rejected({**p, "config": {**p["config"], "seed": 3}}, "invalid model configuration")
    rejected({**p, "config": {**p["config"], "device": "cuda:7"}}, "invalid model configuration")
    rejected({**p, "config": {**p["config"], "hidden": "abc"}}, "invalid model configuration")
    rejected({**p, "config": {**p["config"], "likelihood": "poisson"}}, "invalid model configuration")
    state = dict(p["state_dict"])
    del state["encoder.to_mu.bias"]
    rejected({**p, "state_dict": state}, r"missing \['encoder.to_mu.bias'\]")
    rejected({**p, "state_dict": {**p["state_dict"], 7: torch.zeros(1)}}, "unexpected")
    rejected({**p, "state_dict": {**p["state_dict"], "encoder.to_mu.bias": [0.0, 0.0]}}, "encoder.to_mu.bias")


def test_another_architecture_is_rejected(tmp_path, trained):
    # A parameter of another shape than the declared architecture's.
    p = _payload(trained)
    p["state_dict"] = {**p["state_dict"], "decoder.to_x.weight": torch.zeros(6, 7)}
    torch.save(p, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"parameter decoder.to_x.weight has shape torch.Size\(\[6, 7\]\), .*needs \(6, 5\)"):
        load(tmp_path / "m.pt")
    # The parameters of a model with 5 hidden units declared as one with 4: the shapes do not fit.
    p = _payload(trained)
    p["config"] = {**p["config"], "hidden": [4]}
    torch.save(p, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"parameter encoder.body.0.weight has shape .*needs \(4, 6\)"):
        load(tmp_path / "m.pt")
    # A huge declared architecture is refused from the shapes alone, without allocating it.
    p["config"] = {**p["config"], "x_dim": 10**9, "hidden": [10**6]}
    torch.save(p, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="needs"):
        load(tmp_path / "m.pt")


def test_missing_file_and_bad_path_type(tmp_path, trained):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        load(3)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        save(trained, 3)
    with pytest.raises(TypeError, match="model must be a vaelib.VAE"):
        save(torch.nn.Linear(2, 2), tmp_path / "m.pt")
