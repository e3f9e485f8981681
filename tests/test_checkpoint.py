"""Checkpoint loading and saving: round trips, wrappers, scale inference, clear errors, refusing unsafe pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bcrn_fast.checkpoint import (
    CheckpointError,
    infer_scale,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    state_dict_from_file,
)
from bcrn_fast.evaluate import default_data_dir
from bcrn_fast.model import BCRN
from tests.utils import random_bcrn

DATA_DIR = default_data_dir()


def random_model(scale: int, seed: int = 0) -> BCRN:
    """A BCRN with random weights, biases included (so a lost bias changes the output)."""
    return random_bcrn(scale, seed)


def run(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.rand(1, 3, 17, 19, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("ext", [".pth", ".pt", ".safetensors"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_round_trip(tmp_path: Path, scale: int, ext: str) -> None:
    model = random_model(scale, seed=scale)
    path = save_checkpoint(model, tmp_path / f"w{ext}")
    assert path.exists()
    loaded = load_checkpoint(path)
    assert isinstance(loaded, BCRN)
    assert loaded.scale == scale
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(run(loaded), run(model))
    assert torch.equal(load_checkpoint(path, scale).state_dict()["conv1.pw.weight"], model.conv1.pw.weight)


def test_saved_metadata_names_the_scale(tmp_path: Path) -> None:
    st = save_checkpoint(random_model(3), tmp_path / "w.safetensors")
    with safe_open(str(st), framework="pt") as fh:
        assert fh.metadata()["scale"] == "3"
    pth = save_checkpoint(random_model(3), tmp_path / "w.pth")
    raw = torch.load(pth, map_location="cpu", weights_only=True)
    assert raw["metadata"]["scale"] == "3"
    _, meta = read_checkpoint(pth)
    assert meta["scale"] == "3"


def test_plain_state_dict_and_module_prefix(tmp_path: Path) -> None:
    model = random_model(4)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pth")
    ref = run(model)
    for name in ("plain.pth", "dp.pth"):
        sd = state_dict_from_file(tmp_path / name)
        assert list(sd) == list(model.state_dict())
        assert torch.equal(run(load_checkpoint(tmp_path / name)), ref)


@pytest.mark.parametrize("wrapper", ["state_dict", "params", "params_ema"])
def test_wrappers(tmp_path: Path, wrapper: str) -> None:
    model = random_model(2)
    torch.save({wrapper: model.state_dict(), "epoch": 7, "optimizer": {"lr": 1e-3}}, tmp_path / "w.pth")
    assert torch.equal(run(load_checkpoint(tmp_path / "w.pth")), run(model))


def test_params_ema_is_preferred(tmp_path: Path) -> None:
    plain, ema = random_model(2, seed=1), random_model(2, seed=2)
    for order in (("params", "params_ema"), ("params_ema", "params")):
        blob = {order[0]: None, order[1]: None}
        blob["params"] = plain.state_dict()
        blob["params_ema"] = ema.state_dict()
        torch.save(blob, tmp_path / "w.pth")
        loaded = load_checkpoint(tmp_path / "w.pth")
        assert torch.equal(run(loaded), run(ema))
        assert not torch.equal(run(loaded), run(plain))


def test_infer_scale() -> None:
    for s in (2, 3, 4):
        assert infer_scale(BCRN(s).state_dict()) == s
    assert infer_scale({"conv1.pw.weight": torch.zeros(64, 3, 1, 1)}) is None
    with pytest.raises(CheckpointError, match="3\\*s\\^2"):
        infer_scale({"upsample_block.0.weight": torch.zeros(15, 64, 1, 1)})
    with pytest.raises(CheckpointError, match="3\\*s\\^2"):
        infer_scale({"upsample_block.0.weight": torch.zeros(75, 64, 1, 1)})  # s = 5 is not supported


def test_scale_mismatch(tmp_path: Path) -> None:
    path = save_checkpoint(random_model(4), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"scale x4.*scale x2 was requested"):
        load_checkpoint(path, 2)
    with pytest.raises(CheckpointError, match="scale must be one of"):
        load_checkpoint(path, 5)


def test_metadata_scale_contradicting_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in random_model(4).state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"), metadata={"scale": "2"})
    with pytest.raises(CheckpointError, match="metadata says scale 2"):
        load_checkpoint(tmp_path / "w.safetensors")


def test_not_a_bcrn_file(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "linear.pth")
    msg = str(info.value)
    assert "not a BCRN checkpoint" in msg
    assert "225 missing keys: conv1.pw.weight" in msg
    assert "2 unexpected keys: weight, bias" in msg
    assert "\n" not in msg


def test_missing_key(tmp_path: Path) -> None:
    sd = random_model(4).state_dict()
    del sd["convNext3.esa.conv4.dw.bias"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(
        CheckpointError, match=r"does not match BCRN x4.*1 missing key: convNext3\.esa\.conv4\.dw\.bias"
    ):
        load_checkpoint(tmp_path / "w.pth")


def test_many_missing_keys_are_abbreviated(tmp_path: Path) -> None:
    sd = {k: v for k, v in random_model(4).state_dict().items() if not k.startswith("convNext6.")}
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"36 missing keys: convNext6\.conv\.pw\.weight, .*\(\+31 more\)"):
        load_checkpoint(tmp_path / "w.pth")


def test_unexpected_key(tmp_path: Path) -> None:
    sd = random_model(2).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    save_checkpoint_path = tmp_path / "w.pth"
    torch.save(sd, save_checkpoint_path)
    with pytest.raises(CheckpointError, match=r"1 unexpected key: extra\.weight"):
        load_checkpoint(save_checkpoint_path)


def test_wrong_shape(tmp_path: Path) -> None:
    sd = random_model(4).state_dict()
    sd["conv2.pw.weight"] = torch.zeros(64, 383, 1, 1)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"conv2\.pw\.weight: expected \[64, 384, 1, 1\] got \[64, 383, 1, 1\]"):
        load_checkpoint(tmp_path / "w.pth")


def test_non_tensor_entries(tmp_path: Path) -> None:
    torch.save({"a": 1, "b": "text"}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="2 entries are not tensors: a, b"):
        load_checkpoint(tmp_path / "w.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="got list"):
        load_checkpoint(tmp_path / "list.pth")


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle-protocol-2"])
def test_arbitrary_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "code-ran"
    blob = {"conv1.pw.weight": torch.zeros(64, 3, 1, 1), "evil": _Payload(str(marker))}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(blob, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(blob, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load.*arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "noise.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "noise.pth")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    good = save_checkpoint(random_model(2), tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    model = random_model(2)
    st = save_checkpoint(model, tmp_path / "w.safetensors")
    (tmp_path / "w.weights").write_bytes(st.read_bytes())
    pth = save_checkpoint(model, tmp_path / "w.pth")
    (tmp_path / "w.model").write_bytes(pth.read_bytes())
    for name in ("w.weights", "w.model"):
        assert torch.equal(run(load_checkpoint(tmp_path / name)), run(model))


def test_device_and_dtype(tmp_path: Path) -> None:
    path = save_checkpoint(random_model(2), tmp_path / "w.safetensors")
    model = load_checkpoint(path, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with torch.inference_mode():
        ref = load_checkpoint(path)(x.float())
        torch.testing.assert_close(model(x).float(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DATA_DIR is None, reason="reference data not found (set BCRN_DATA_DIR)")
@pytest.mark.parametrize("scale", [2, 4])
def test_official_files(scale: int, tmp_path: Path) -> None:
    assert DATA_DIR is not None
    path = DATA_DIR / "bcrn_official" / f"best_epoch_x{scale}.pth"
    model = load_checkpoint(path)
    assert model.scale == scale
    assert sum(p.numel() for p in model.parameters()) == 289_232 - 3_552 + 3 * scale * scale * 74
    # converting the official file to safetensors keeps every weight
    converted = load_checkpoint(save_checkpoint(model, tmp_path / "w.safetensors"))
    assert torch.equal(run(converted), run(model))


def test_fused_loads_same_state_dict(tmp_path: Path) -> None:
    pytest.importorskip("bcrn_fast.fused", exc_type=ImportError)  # skip while the package is incomplete too
    try:
        from bcrn_fast.fused import BCRNFused
    except ImportError as exc:  # the package exists but is incomplete
        pytest.skip(f"bcrn_fast.fused.BCRNFused is not importable: {exc}")
    model = random_model(2)
    path = save_checkpoint(model, tmp_path / "w.safetensors")
    fused = load_checkpoint(path, fused=True, backend="auto")
    assert isinstance(fused, BCRNFused)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
