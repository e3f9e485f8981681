"""End-to-end tests of ``bcrn-fast`` on small generated images and a checkpoint with random weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcrn_fast import cli
from bcrn_fast.checkpoint import load_checkpoint, save_checkpoint
from bcrn_fast.cli import main
from bcrn_fast.imageio import read_image, read_rgb_uint8, to_uint8
from bcrn_fast.metrics import evaluate_pair
from tests.utils import random_bcrn

REF = ["--backend", "reference"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An x2 checkpoint with random (seeded) weights."""
    return save_checkpoint(random_bcrn(2), tmp_path_factory.mktemp("ckpt") / "bcrn_x2.safetensors")


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (so bicubic downscaling and SR make sense)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = []
    for _ in range(3):
        fy, fx, ph = r.uniform(0.05, 0.3), r.uniform(0.05, 0.3), r.uniform(0, 6)
        chans.append(128 + 90 * np.sin(fy * yy + ph) * np.cos(fx * xx))
    return np.stack(chans, axis=2).round().clip(0, 255).astype(np.uint8)


def save_rgb(path: Path, h: int = 18, w: int = 21, seed: int = 0) -> Path:
    Image.fromarray(smooth_image(h, w, seed)).save(path)
    return path


def expected_sr(weights: Path, path: Path) -> np.ndarray:
    model = load_checkpoint(weights)
    x, _ = read_image(path)
    with torch.inference_mode():
        return to_uint8(model(x))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("bcrn-fast: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- upscale


def test_upscale_one_file(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_rgb(tmp_path / "pic.png", 18, 21)
    out_dir = tmp_path / "out" / "nested"
    assert main(["upscale", str(src), "-o", str(out_dir), "--weights", str(weights), *REF]) == 0
    out = out_dir / "pic_x2.png"
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (42, 36)
        got = np.array(im)
    assert np.array_equal(got, expected_sr(weights, src))
    assert [p.name for p in out_dir.iterdir()] == ["pic_x2.png"]  # no temp files left behind


def test_upscale_folder(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    save_rgb(src / "a.png", 16, 17, seed=1)
    save_rgb(src / "b.JPG", 20, 16, seed=2)
    save_rgb(src / "c.bmp", 15, 15, seed=3)
    (src / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out_dir), "--weights", str(weights), *REF, "--no-progress"]) == 0
    sizes = {}
    for p in sorted(out_dir.iterdir()):
        with Image.open(p) as im:
            sizes[p.name] = im.size
    assert sizes == {"a_x2.png": (34, 32), "b_x2.png": (32, 40), "c_x2.png": (30, 30)}
    assert np.array_equal(np.array(Image.open(out_dir / "b_x2.png")), expected_sr(weights, src / "b.JPG"))
    assert capsys.readouterr().out.split() == [str(out_dir / n) for n in ("a_x2.png", "b_x2.png", "c_x2.png")]


def test_refuses_to_overwrite(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_rgb(tmp_path / "pic.png")
    out = tmp_path / "pic_x2.png"
    out.write_bytes(b"precious")
    args = ["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights), *REF]
    assert main(args) == 2
    assert "already exists; pass --overwrite" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"precious"
    assert main([*args, "--overwrite"]) == 0
    assert np.array_equal(np.array(Image.open(out)), expected_sr(weights, src))


def test_never_overwrites_an_input(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = save_rgb(tmp_path / "pic.png", seed=1)
    b = save_rgb(tmp_path / "pic_x2.png", seed=2)  # would be the output of pic.png
    before = b.read_bytes()
    args = ["upscale", str(a), str(b), "-o", str(tmp_path), "--weights", str(weights), *REF, "--overwrite"]
    assert main(args) == 2
    assert "is an input image; refusing to overwrite" in one_error_line(capsys.readouterr().err)
    assert b.read_bytes() == before
    assert not (tmp_path / "pic_x2_x2.png").exists()


def test_two_inputs_same_output(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = save_rgb(tmp_path / "pic.png", seed=1)
    b = save_rgb(tmp_path / "pic.bmp", seed=2)
    assert main(["upscale", str(a), str(b), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]) == 2
    assert "would both be written" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("mode", "note"),
    [("L", "converted grayscale (L) image to RGB"), ("RGBA", "converted RGBA image to RGB; alpha dropped")],
)
def test_non_rgb_input_note(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], mode: str, note: str
) -> None:
    src = tmp_path / "img.png"
    Image.fromarray(smooth_image(16, 18)).convert(mode).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]) == 0
    err = capsys.readouterr().err.strip()
    assert err == f"bcrn-fast: note: {src}: {note}"
    with Image.open(tmp_path / "o" / "img_x2.png") as im:
        assert im.mode == "RGB" and im.size == (36, 32)


def test_too_small_image_is_padded(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Below ESA's 15x15 minimum: reflect-padded at the bottom/right, run, cropped back, with a note."""
    src = save_rgb(tmp_path / "tiny.png", 10, 12)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]) == 0
    assert "tiny.png: 12x10 is below 15x15; reflect-padded to run, output cropped back" in capsys.readouterr().err
    got = np.array(Image.open(tmp_path / "o" / "tiny_x2.png")).astype(int)
    assert got.shape == (20, 24, 3)
    x, _ = read_image(src)
    with torch.inference_mode():
        want = to_uint8(
            load_checkpoint(weights)(torch.nn.functional.pad(x, (0, 3, 0, 5), mode="reflect"))[..., :20, :24]
        )
    assert np.abs(got - want.astype(int)).max() <= 1


def test_missing_input(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path), "--weights", str(weights)]) == 2
    assert "nope.png: no such file or folder" in one_error_line(capsys.readouterr().err)


def test_corrupt_input(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    assert main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]) == 2
    assert "bad.png: not a readable image" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()  # header checks come before any work


def test_truncated_input(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = save_rgb(tmp_path / "good.png", 40, 40)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    assert main(["upscale", str(cut), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]) == 2
    assert "cut.png: cannot read image" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half-written


def test_wrong_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_rgb(tmp_path / "pic.png")
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "linear.pth")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "linear.pth")]) == 2
    assert "not a BCRN checkpoint" in one_error_line(capsys.readouterr().err)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pth")]) == 2
    assert "no such checkpoint file" in one_error_line(capsys.readouterr().err)


def test_scale_flag_mismatch(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_rgb(tmp_path / "pic.png")
    assert main(["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights), "--scale", "4", *REF]) == 2
    assert "scale x4 was requested" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fused", "--backend", "reference"], "--fused cannot be combined with --backend reference"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice"),
        (["--backend", "vulkan"], "argument --backend: invalid choice"),
        (["--device", "floppy"], "unknown device"),
    ],
)
def test_bad_flags(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    src = save_rgb(tmp_path / "pic.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights), *extra]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_missing_required_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", "x.png", "--weights", "w.pth"]) == 2
    assert "required" in one_error_line(capsys.readouterr().err)
    assert main([]) == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_unavailable(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_rgb(tmp_path / "pic.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights), "--device", "cuda"]) == 2
    assert "CUDA is not available" in one_error_line(capsys.readouterr().err)


def test_bf16_runs(tmp_path: Path, weights: Path) -> None:
    src = save_rgb(tmp_path / "pic.png", 16, 16)
    assert main(["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights), "--dtype", "bf16", *REF]) == 0
    got = np.array(Image.open(tmp_path / "pic_x2.png")).astype(int)
    ref = expected_sr(weights, src).astype(int)
    assert np.abs(got - ref).mean() < 4  # bf16 has ~3 significant digits


def test_default_backend_matches_reference(tmp_path: Path, weights: Path) -> None:
    """Without --backend: the reference on the CPU, the fused model on CUDA; either way the reference's result."""
    src = save_rgb(tmp_path / "pic.png", 16, 17)
    assert main(["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights)]) == 0
    got = np.array(Image.open(tmp_path / "pic_x2.png")).astype(int)
    assert np.abs(got - expected_sr(weights, src).astype(int)).max() <= 1


def test_unavailable_backend_is_one_line_error(tmp_path: Path, weights: Path, capsys) -> None:
    src = save_rgb(tmp_path / "pic.png", 16, 17)
    assert main(["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights), "--backend", "cuda"]) == 2
    assert "backend='cuda' cannot run" in one_error_line(capsys.readouterr().err)


def test_fused_torch_backend_matches_reference(tmp_path: Path, weights: Path) -> None:
    src = save_rgb(tmp_path / "pic.png", 16, 17)
    assert main(["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights), "--backend", "torch"]) == 0
    got = np.array(Image.open(tmp_path / "pic_x2.png")).astype(int)
    assert np.abs(got - expected_sr(weights, src).astype(int)).max() <= 1


def test_tile_flag_matches_whole_image(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tile routes through bcrn_fast.tiling.tiled_forward: the same PNG as the whole-image run (1 step)."""
    src = save_rgb(tmp_path / "pic.png", 40, 37)
    base = ["upscale", str(src), "--weights", str(weights), *REF]
    assert main([*base, "-o", str(tmp_path / "tiled"), "--tile", "20"]) == 0
    assert main([*base, "-o", str(tmp_path / "whole")]) == 0
    tiled = np.array(Image.open(tmp_path / "tiled" / "pic_x2.png")).astype(int)
    whole = np.array(Image.open(tmp_path / "whole" / "pic_x2.png")).astype(int)
    assert tiled.shape == (80, 74, 3) and np.abs(tiled - whole).max() <= 1
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "x"), "--tile", "0"]) == 2
    assert "--tile expects a positive number of LR pixels or 'auto'" in one_error_line(capsys.readouterr().err)
    assert main([*base, "-o", str(tmp_path / "x"), "--max-memory", "-1"]) == 2
    assert "--max-memory expects a positive size in GiB" in one_error_line(capsys.readouterr().err)


def test_engine_ray_hands_planned_jobs_over(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--engine ray plans with bcrn_fast.jobs, then calls bcrn_fast.distributed.run_upscale(jobs, args)."""
    import types

    from bcrn_fast.jobs import Job

    src = tmp_path / "in"
    src.mkdir()
    a = save_rgb(src / "a.png")
    save_rgb(src / "b.png", seed=2)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "b_x2.png").write_bytes(b"done")
    seen = {}

    def run_upscale(jobs, args):  # noqa: ANN001, ANN202
        seen.update(jobs=jobs, gpus=args.gpus_per_worker, workers=args.workers)
        return 0

    monkeypatch.setitem(sys.modules, "bcrn_fast.distributed", types.SimpleNamespace(run_upscale=run_upscale))
    args = ["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights), "--engine", "ray"]
    assert main([*args, "--skip-existing", "--workers", "3"]) == 0
    assert seen == {"jobs": [Job(a, tmp_path / "o" / "a_x2.png", "image")], "gpus": 0.0, "workers": 3}
    assert not (tmp_path / "o" / "a_x2.png").exists()  # nothing ran locally
    monkeypatch.setitem(sys.modules, "bcrn_fast.distributed", None)  # as if the module were missing
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    assert "--engine ray needs bcrn_fast.distributed.run_upscale" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- defaults: dtype, fp32 re-runs, CUDA graphs


@pytest.mark.parametrize(
    ("name", "device", "want"),
    [
        ("auto", "cuda", torch.float16),  # fp16 storage, fp32 accumulation: the fused half path
        ("auto", "cuda:1", torch.float16),
        ("auto", "cpu", torch.float32),
        ("fp32", "cuda", torch.float32),  # explicit choices are honoured everywhere
        ("bf16", "cuda", torch.bfloat16),
        ("fp16", "cpu", torch.float16),
    ],
)
def test_resolve_dtype(name: str, device: str, want: torch.dtype) -> None:
    assert cli.resolve_dtype(name, torch.device(device)) == want


NOTES = {  # why an explicit --cuda-graph cannot apply
    "cpu": "CUDA graphs need --device cuda (this run is on cpu)",
    "torch": "CUDA graphs are used with the fused triton/cuda backends, not torch",
    "tile": "--tile runs tile by tile, with shapes that vary",
    "compile": "--compile and CUDA graphs are not combined (use one of them)",
}


@pytest.mark.parametrize(
    ("requested", "device", "backend", "tile", "compile_", "use", "note"),
    [
        (None, "cuda", "triton", None, False, True, None),  # the default for CUDA fused runs
        (None, "cuda", "cuda", None, False, True, None),
        (True, "cuda", "triton", None, False, True, None),
        (False, "cuda", "triton", None, False, False, None),  # --no-cuda-graph
        (None, "cpu", "torch", None, False, False, None),  # off by default, quietly
        (None, "cpu", "reference", None, False, False, None),
        (True, "cpu", "reference", None, False, False, "cpu"),
        (None, "cuda", "reference", None, False, False, None),
        (True, "cuda", "torch", None, False, False, "torch"),
        (None, "cuda", "triton", 256, False, False, None),
        (True, "cuda", "triton", "auto", False, False, "tile"),
        (True, "cuda", "cuda", None, True, False, "compile"),
    ],
)
def test_wants_graph(
    requested: bool | None, device: str, backend: str, tile: int | str | None, compile_: bool, use: bool, note: str
) -> None:
    want = (use, None if note is None else f"--cuda-graph ignored: {NOTES[note]}")
    assert cli.wants_graph(requested, torch.device(device), backend, tile=tile, compile=compile_) == want


def overflow_in(monkeypatch: pytest.MonkeyPatch, when: Callable[[torch.Tensor], bool]) -> list[torch.dtype | None]:
    """Patch the CLI's model loader: each model it loads puts an inf at output pixel (0, 0) whenever
    ``when(output)`` holds (a stand-in for fp16 overflow). Returns the dtypes loaded, in order."""
    loaded: list[torch.dtype | None] = []
    real = cli.load_checkpoint

    def hook(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if when(out):
            out = out.clone()
            out[..., 0, 0] = float("inf")
        return out

    def load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = real(*args, **kwargs)
        loaded.append(kwargs.get("dtype"))
        model.upsample_block.register_forward_hook(hook)
        return model

    monkeypatch.setattr(cli, "load_checkpoint", load)
    return loaded


def _two_images(tmp_path: Path) -> tuple[Path, Path, Path]:
    src = tmp_path / "in"
    src.mkdir()
    return src, save_rgb(src / "a.png", 16, 17, seed=1), save_rgb(src / "b.png", 18, 21, seed=2)


def test_half_output_not_finite_is_rerun_in_fp32(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """a.png overflows in fp16: one note naming it, and its PNG is the fp32 model's; b.png stays fp16.
    The fp32 model is loaded once, only when needed."""
    src, a, b = _two_images(tmp_path)
    loaded = overflow_in(monkeypatch, lambda y: y.dtype == torch.float16 and y.shape[-1] == 34)
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--weights", str(weights), *REF, "--dtype", "fp16"]) == 0
    assert loaded == [torch.float16, torch.float32]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bcrn-fast: note: {a}: fp16 output is not finite; re-ran it in fp32 and wrote that result",
        "bcrn-fast: 2 written",
    ]
    assert np.array_equal(np.array(Image.open(out / "a_x2.png")), expected_sr(weights, a))
    got_b = np.array(Image.open(out / "b_x2.png")).astype(int)
    assert np.abs(got_b - expected_sr(weights, b).astype(int)).max() <= 3  # fp16, not re-run


def test_fp32_rerun_not_finite_fails_the_item(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, a, b = _two_images(tmp_path)
    overflow_in(monkeypatch, lambda y: y.shape[-1] == 34)  # a.png overflows in every dtype
    args = ["upscale", str(src), "--weights", str(weights), *REF, "--dtype", "bf16"]
    assert main([*args, "-o", str(tmp_path / "o1")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"bcrn-fast: error: {a}: output is not finite in bf16 nor in the fp32 re-run; nothing written"
    assert not (tmp_path / "o1" / "a_x2.png").exists()
    assert main([*args, "-o", str(tmp_path / "o2"), "--keep-going"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bcrn-fast: failed: {a}: output is not finite in bf16 nor in the fp32 re-run; nothing written",
        f"bcrn-fast: 1 written; 1 failed: {a}",
    ]
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["b_x2.png"]


@pytest.mark.parametrize("dtype_flag", [["--dtype", "fp32"], []], ids=["fp32", "default-on-cpu"])
def test_fp32_never_reruns(
    tmp_path: Path,
    weights: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dtype_flag: list[str],
) -> None:
    """fp32 (explicit, or auto on the CPU) is not checked: no re-run, no second model, the output as computed."""
    src = save_rgb(tmp_path / "pic.png", 16, 17)
    loaded = overflow_in(monkeypatch, lambda y: True)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF, *dtype_flag]) == 0
    assert loaded == [torch.float32] and capsys.readouterr().err == ""
    got = np.array(Image.open(tmp_path / "o" / "pic_x2.png"))
    want = expected_sr(weights, src)
    assert (got[0, 0] == 255).all() and np.array_equal(got[1:], want[1:])  # the inf pixel clamps to white


def test_cuda_graphs_are_not_used_on_the_cpu(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--cuda-graph on the CPU is ignored with one note; neither it nor the default wraps the model."""
    import bcrn_fast.pipeline

    def no_graphs(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("graphed() called on the CPU")

    monkeypatch.setattr(bcrn_fast.pipeline, "graphed", no_graphs)
    src = save_rgb(tmp_path / "pic.png", 16, 17)
    base = ["upscale", str(src), "--weights", str(weights)]
    assert main([*base, "-o", str(tmp_path / "o1"), "--cuda-graph", "--backend", "torch"]) == 0
    assert capsys.readouterr().err.strip() == (
        "bcrn-fast: note: --cuda-graph ignored: CUDA graphs need --device cuda (this run is on cpu)"
    )
    assert main([*base, "-o", str(tmp_path / "o2")]) == 0
    assert capsys.readouterr().err == ""
    assert np.array_equal(np.array(Image.open(tmp_path / "o2" / "pic_x2.png")), expected_sr(weights, src))


def test_help_names_the_precision_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (default) is fp16 on CUDA (fp16 storage, fp32 accumulation;" in text
    assert "fp32 is the accuracy mode" in text and "tf32 (the fast fp32 mode" in text
    assert "--cuda-graph, --no-cuda-graph" in text


# ---------------------------------------------------------------- eval


def make_pair(root: Path, names: list[str], scale: int = 2) -> tuple[Path, Path]:
    hr_dir, lr_dir = root / "HR", root / "LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for i, name in enumerate(names):
        hr = Image.fromarray(smooth_image(49, 40, seed=10 + i))  # 49 is not a multiple of 2: modcrop matters
        hr.save(hr_dir / f"{name}.png")
        w, h = hr.size
        hr.crop((0, 0, w - w % scale, h - h % scale)).resize((w // scale, h // scale), Image.BICUBIC).save(
            lr_dir / f"{name}.png"
        )
    return hr_dir, lr_dir


def test_eval_tiny_pair(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hr_dir, lr_dir = make_pair(tmp_path, ["one", "two"])
    args = ["eval", "--weights", str(weights), "--hr", str(hr_dir), "--lr", str(lr_dir), *REF, "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"^(\w+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)}
    assert set(rows) == {"one", "two", "mean"}
    model = load_checkpoint(weights)
    expected = []
    for name in ("one", "two"):
        hr, _ = read_rgb_uint8(hr_dir / f"{name}.png")
        x, _ = read_image(lr_dir / f"{name}.png")
        with torch.inference_mode():
            p, s = evaluate_pair(to_uint8(model(x)), hr, 2)
        expected.append((p, s))
        assert rows[name][0] == pytest.approx(p, abs=0.0005)
        assert rows[name][1] == pytest.approx(s, abs=0.00005)
        assert re.search(rf"^{name}\s+\d+\.\d{{3}}\s+\d\.\d{{4}}$", out, re.M)
    assert rows["mean"][0] == pytest.approx(np.mean([e[0] for e in expected]), abs=0.0005)
    assert rows["mean"][1] == pytest.approx(np.mean([e[1] for e in expected]), abs=0.00005)


def test_eval_unpaired(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hr_dir, lr_dir = make_pair(tmp_path, ["one", "two"])
    (lr_dir / "two.png").rename(lr_dir / "deux.png")
    assert main(["eval", "--weights", str(weights), "--hr", str(hr_dir), "--lr", str(lr_dir), *REF]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "do not pair by file name" in line
    assert "1 HR images without an LR partner: two" in line
    assert "1 LR images without an HR partner: deux" in line


def test_eval_wrong_scale_folder(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hr_dir, lr_dir = make_pair(tmp_path, ["one"], scale=3)  # LR is HR/3 but the model is x2
    assert main(["eval", "--weights", str(weights), "--hr", str(hr_dir), "--lr", str(lr_dir), *REF]) == 2
    assert "one: LR 13x16 times 2 is 26x32" in one_error_line(capsys.readouterr().err)


def test_eval_needs_both_folders(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--weights", str(weights), "--hr", str(tmp_path)]) == 2
    assert "give both --hr and --lr" in one_error_line(capsys.readouterr().err)


def test_eval_no_data_dir(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCRN_DATA_DIR", str(tmp_path / "absent"))
    assert main(["eval", "--weights", str(weights), *REF]) == 2
    assert "no data dir found" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- bench, help, subprocess


def test_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--quick", "--sizes", "16x20", "--scales", "3", "--variants", "eager,fused_torch"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # both variants verified against the reference, then timed
    assert re.search(r"model x3 16x20 N=1 fp32: eager \d+(\.\d+)? ms/img, fused_torch \d+(\.\d+)? ms/img", out), out
    assert re.search(r"\| fused_torch +\| OK", out), out
    assert main(["bench", "--sizes", "big"]) == 2
    assert "WIDTHxHEIGHT" in one_error_line(capsys.readouterr().err)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "upscale" in capsys.readouterr().out


def _run_module(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "bcrn_fast", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_python_dash_m(tmp_path: Path, weights: Path) -> None:
    a = save_rgb(tmp_path / "a.png", 16, 16, seed=1)
    b = save_rgb(tmp_path / "b.bmp", 17, 15, seed=2)
    proc = _run_module(["upscale", str(a), str(b), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "o" / "a_x2.png"), str(tmp_path / "o" / "b_x2.png")]
    assert np.array_equal(np.array(Image.open(tmp_path / "o" / "b_x2.png")), expected_sr(weights, b))
    proc = _run_module(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--weights", str(weights)])
    assert proc.returncode == 2
    assert "missing.png: no such file or folder" in one_error_line(proc.stderr)


# ---------------------------------------------------------------- image I/O helpers used by the CLI


def test_find_images_case_insensitive_sorted(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpeg", "C.Jpg", "d.bmp", "e.gif", "f.txt", ".g.png.tmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    from bcrn_fast.imageio import ImageError, find_images

    assert [p.name for p in find_images(tmp_path)] == ["C.Jpg", "a.jpeg", "b.PNG", "d.bmp"]
    with pytest.raises(ImageError, match="no such folder"):
        find_images(tmp_path / "absent")


def test_read_image_errors_and_16bit(tmp_path: Path) -> None:
    from bcrn_fast.imageio import ImageError

    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "absent.png")
    gray16 = (np.arange(16 * 17).reshape(16, 17) * 240).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    x, note = read_image(tmp_path / "g16.png")
    assert note == "converted 16-bit grayscale (I;16) image to RGB"
    assert x.shape == (1, 3, 16, 17) and x.dtype == torch.float32
    assert torch.equal(x[0, 0], x[0, 2])
    torch.testing.assert_close(x[0, 1], torch.from_numpy(gray16.astype(np.float32) / 65535), rtol=0, atol=1e-7)
    rgb = smooth_image(15, 16)
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    x, note = read_image(tmp_path / "rgb.bmp")
    assert note is None
    assert np.array_equal(to_uint8(x), rgb)  # uint8 -> /255 -> x255 round trips exactly


def test_write_png_atomic_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bcrn_fast.imageio import write_png_atomic

    dest = tmp_path / "out.png"
    dest.write_bytes(b"old")

    def broken_save(self: Image.Image, fp, format=None, **kw) -> None:  # noqa: A002, ANN001
        fp.write(b"\x89PNG partial")
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_png_atomic(smooth_image(4, 5), dest)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    monkeypatch.undo()
    write_png_atomic(smooth_image(4, 5), dest)
    assert np.array_equal(np.array(Image.open(dest)), smooth_image(4, 5))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_eval_defaults_to_set5_of_the_data_dir(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bcrn_fast.evaluate import default_data_dir

    data = tmp_path / "data"
    hr_dir, lr_dir = make_pair(tmp_path, ["bird"])
    (data / "Set5" / "LR_bicubic").mkdir(parents=True)
    hr_dir.rename(data / "Set5" / "HR")
    lr_dir.rename(data / "Set5" / "LR_bicubic" / "X2")
    monkeypatch.setenv("BCRN_DATA_DIR", str(data))
    assert default_data_dir() == data
    assert main(["eval", "--weights", str(weights), *REF]) == 0
    out = capsys.readouterr().out
    assert str(data / "Set5" / "LR_bicubic" / "X2") in out
    assert re.search(r"^bird\s+\d+\.\d{3}\s+\d\.\d{4}$", out, re.M)
    monkeypatch.setenv("BCRN_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() is None
    assert main(["eval", "--weights", str(weights), "--data-dir", str(data), *REF]) == 0
    assert re.search(r"^mean\s+\d+\.\d{3}\s+\d\.\d{4}$", capsys.readouterr().out, re.M)
