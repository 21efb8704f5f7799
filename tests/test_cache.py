"""vaelib.fit_cached: the same result as vaelib.fit, read back only for exactly the same training."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import vaelib

ARGS = dict(epochs=2, batch_size=16, lr=1e-2, seed=0, progress=False)


def data(seed=0):
    return (torch.rand(40, 12, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def model(seed=0):
    return vaelib.VAE(12, 2, hidden=(8,), seed=seed)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_call_reads_the_first_and_equals_plain_fit(tmp_path):
    x = data()
    first, second, plain = model(), model(), model()
    h1 = vaelib.fit_cached(first, x, cache_dir=tmp_path, **ARGS)
    h2 = vaelib.fit_cached(second, x, cache_dir=tmp_path, **ARGS)
    h3 = vaelib.fit(plain, x, **ARGS)
    assert not h1.from_cache and h2.from_cache and not h3.from_cache
    assert same_state(first, second) and same_state(first, plain)
    assert h2.train_elbo == h1.train_elbo == h3.train_elbo and h2.seconds == h1.seconds
    assert not second.training  # eval mode, as after fit


@pytest.mark.parametrize(
    "change",
    [
        lambda: (model(), data(), {**ARGS, "seed": 1}),
        lambda: (model(), data(), {**ARGS, "lr": 2e-2}),
        lambda: (model(), data(seed=1), ARGS),
        lambda: (model(seed=1), data(), ARGS),
        lambda: (vaelib.VAE(12, 2, hidden=(9,), seed=0), data(), ARGS),
        lambda: (model(), data(), {**ARGS, "valid": data(seed=2)}),
    ],
)
def test_any_change_of_what_training_depends_on_is_a_miss(tmp_path, change):
    vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS)
    m, x, args = change()
    assert not vaelib.fit_cached(m, x, cache_dir=tmp_path, **args).from_cache


def test_environment_variable_names_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELIB_CACHE", str(tmp_path / "here"))
    vaelib.fit_cached(model(), data(), **ARGS)
    assert vaelib.cache.cache_dir() == tmp_path / "here"
    assert len(list((tmp_path / "here").glob("*.pt"))) == 1


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 4)

    def forward(self, x):
        return self.lin(x).chunk(2, dim=-1)


def custom():
    torch.manual_seed(0)
    return vaelib.VAE(12, 2, encoder=Encoder(), decoder=nn.Linear(2, 12))


def test_custom_model_needs_a_key_naming_its_code(tmp_path):
    with pytest.raises(ValueError, match="key="):
        vaelib.fit_cached(custom(), data(), cache_dir=tmp_path, **ARGS)
    a, b = custom(), custom()
    assert not vaelib.fit_cached(a, data(), cache_dir=tmp_path, key="v1", **ARGS).from_cache
    assert vaelib.fit_cached(b, data(), cache_dir=tmp_path, key="v1", **ARGS).from_cache
    assert same_state(a, b)
    assert not vaelib.fit_cached(custom(), data(), cache_dir=tmp_path, key="v2", **ARGS).from_cache


def test_bad_arguments_raise_fits_error_and_store_nothing(tmp_path):
    with pytest.raises(ValueError):
        vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **{**ARGS, "epochs": 0})
    with pytest.raises(TypeError):
        vaelib.fit_cached("model", data(), cache_dir=tmp_path, **ARGS)
    assert not list(tmp_path.glob("*.pt"))


def test_damaged_entry_is_an_error_and_unreadable_record_a_miss(tmp_path):
    vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS)
    (record,) = tmp_path.glob("*.json")
    record.write_text("{not json")
    with pytest.warns(vaelib.cache.CacheWarning, match="not JSON"):
        assert not vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS).from_cache
    assert json.loads(record.read_text())["entry_version"] == vaelib.cache.ENTRY_VERSION
    (checkpoint,) = tmp_path.glob("*.pt")
    raw = bytearray(checkpoint.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        vaelib.fit_cached(model(), data(), cache_dir=tmp_path, **ARGS)
