"""ONNX export: the exported graph, run by ONNX Runtime, matches the reference BCRN at sizes not used in export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bcrn_fast import export
from bcrn_fast.checkpoint import load_checkpoint, save_checkpoint
from bcrn_fast.cli import main
from bcrn_fast.evaluate import default_data_dir
from bcrn_fast.imageio import find_images, read_image
from bcrn_fast.model import BCRN
from bcrn_fast.validation import InputError
from tests.utils import random_bcrn, rel_error

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'bcrn_fast[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'bcrn_fast[onnx]'")

DATA = default_data_dir()
OFFICIAL = DATA / "bcrn_official" if DATA is not None else None
# (N, H, W) none of which is the export size (32x32) or a size export_onnx verifies itself
CHECK_SHAPES = ((1, 23, 41), (3, 16, 19))


def random_model(scale: int, seed: int = 0) -> BCRN:
    return random_bcrn(scale, seed)


def natural_image() -> torch.Tensor:
    """A Set5 LR image when the data is there, else the module's smooth synthetic image."""
    if DATA is not None:
        files = find_images(DATA / "Set5" / "LR_bicubic" / "X4")
        if files:
            return read_image(files[-1])[0]
    return export.verification_image(Path("/nonexistent"))[0]


def batch(image: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    return torch.cat([image[:, :, i : i + h, 2 * i : 2 * i + w] for i in range(n)]).contiguous()


def assert_ort_matches(onnx_path: Path, model: BCRN, tol: float = 1e-4) -> list[float]:
    """Run the file in a fresh CPU session on natural crops and compare with PyTorch fp32."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = natural_image()
    errs = []
    for n, h, w in CHECK_SHAPES:
        x = batch(image, n, h, w)
        with torch.inference_mode():
            want = model(x)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        assert got.shape == want.shape
        errs.append(rel_error(got, want))
    assert max(errs) <= tol, f"ONNX Runtime vs PyTorch relative errors {errs} > {tol}"
    return errs


def metadata(onnx_path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}


@pytest.mark.parametrize("scale", [2, 4])
def test_official_weights_match_pytorch(scale: int, tmp_path: Path) -> None:
    weights = OFFICIAL / f"best_epoch_x{scale}.pth" if OFFICIAL is not None else None
    if weights is None or not weights.is_file():
        pytest.skip(f"official x{scale} checkpoint not found (set BCRN_DATA_DIR to the shared data folder)")
    out = tmp_path / f"bcrn_x{scale}.onnx"
    report = export.export_onnx(weights, out)
    assert report.verified and report.checked and report.image.startswith("Set5")
    assert max(report.errors.values()) <= 1e-4
    onnx.checker.check_model(str(out), full_check=True)
    meta = metadata(out)
    assert meta["scale"] == str(scale) and meta["min_size"] == "15"
    assert meta["in_channels"] == meta["out_channels"] == "3" and meta["source_weights"] == weights.name
    assert_ort_matches(out, load_checkpoint(weights))


def test_random_weights_dynamic_shapes(tmp_path: Path) -> None:
    model = random_model(3)
    out = tmp_path / "m.onnx"
    report = export.export_onnx(model, out, opset=13)
    assert report.verified and report.scale == 3 and report.opset == 13
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert metadata(out)["scale"] == "3"
    assert_ort_matches(out, model)


def test_synthetic_verification_image_when_no_data() -> None:
    x, what = export.verification_image(Path("/nonexistent"))
    assert "synthetic" in what and x.shape == (1, 3, 96, 96)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert float((x[..., 1:, :] - x[..., :-1, :]).abs().mean()) < 0.05  # smooth, like a natural image


def test_unsupported_opset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"opset 9 is not supported .* expected 11\.\.21"):
        export.export_onnx(random_model(2), tmp_path / "m.onnx", opset=9)
    assert not (tmp_path / "m.onnx").exists()


def test_failed_verification_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setitem(export.TOLERANCE, "fp32", 0.0)  # no float32 graph matches exactly
    with pytest.raises(export.ExportError, match="does not match PyTorch"):
        export.export_onnx(random_model(2), out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left behind


def test_cli_export_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = save_checkpoint(random_model(2), tmp_path / "w.safetensors")
    out = tmp_path / "sub" / "w.onnx"
    assert main(["export", "--onnx", str(out), "--weights", str(weights), "--fp16"]) == 0
    text = capsys.readouterr().out
    assert "verified on ONNX Runtime" in text and "fp16" in text
    assert metadata(out)["dtype"] == "fp16"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"


@pytest.mark.parametrize(
    ("case", "message"),
    [("opset", "opset 99 is not supported"), ("other-network", "not a BCRN checkpoint"), ("missing", "no such")],
)
def test_cli_errors_are_one_line(case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = save_checkpoint(random_model(2), tmp_path / "good.safetensors")
    extra = ["--opset", "99"] if case == "opset" else []
    if case == "other-network":  # a plain conv's weights, with an upsampler-shaped tensor to pass scale inference
        weights = tmp_path / "other.pth"
        torch.save(
            torch.nn.Conv2d(3, 12, 3).state_dict() | {"upsample_block.0.weight": torch.zeros(12, 64, 1, 1)}, weights
        )
    elif case == "missing":
        weights = tmp_path / "absent.pth"
    out = tmp_path / "m.onnx"
    assert main(["export", "--onnx", str(out), "--weights", str(weights), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bcrn-fast: error: ") and "\n" not in err and message in err
    assert not out.exists()


def test_build_ort_session_matches_model() -> None:
    model = random_model(2, seed=1)
    f = export.build_ort_session(model, torch.rand(1, 3, 20, 20), threads=1)
    image = natural_image()
    for n, h, w in CHECK_SHAPES:
        x = batch(image, n, h, w)
        with torch.inference_mode():
            want = model(x)
        got = f(x)
        assert isinstance(got, torch.Tensor) and got.shape == want.shape
        assert rel_error(got, want) <= 1e-4


def test_build_ort_session_rejects_bad_sample() -> None:
    with pytest.raises(InputError, match=r"expected a \[N, 3, H, W\] tensor"):
        export.build_ort_session(random_model(2), torch.rand(3, 20, 20))


@pytest.mark.slow
def test_dynamo_exporter_matches_pytorch(tmp_path: Path) -> None:
    """The torch.export-based exporter (~20 s here) gives the same graph behaviour at opset 18."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = random_model(4, seed=2)
    out = tmp_path / "d.onnx"
    report = export.export_onnx(model, out, opset=18, exporter="dynamo")
    assert report.verified and report.opset == 18
    assert_ort_matches(out, model)
