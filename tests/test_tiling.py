"""Exact tiled inference (bcrn_fast.tiling): tiled output equals whole-image output.

Official weights, odd image sizes and tile sizes that divide nothing; errors
are measured against the whole-image output of the same model (relative
Frobenius error and 8-bit steps), fp16 against the float64 reference.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bcrn_fast import BCRN, BCRNFused, InputError, tiled_forward, tiling
from bcrn_fast.checkpoint import load_checkpoint
from bcrn_fast.evaluate import default_data_dir
from tests.utils import assert_close_to_ref, rel_error

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data dir (official weights, Set5) not found")


def _weights(scale: int) -> Path:
    assert DATA is not None
    path = DATA / "bcrn_official" / f"best_epoch_x{scale}.pth"
    if not path.is_file():
        pytest.skip(f"official x{scale} weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def ref_models() -> dict[int, BCRN]:
    if DATA is None:
        pytest.skip("shared data dir (official weights) not found")
    return {s: load_checkpoint(_weights(s), s) for s in (2, 4)}


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth-plus-noise test image in [0, 1] (natural-image-like statistics, not just noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 3, h), torch.linspace(0, 4, w), indexing="ij")
    base = torch.stack([torch.sin(xx + yy), torch.cos(2 * xx - yy), torch.sin(3 * yy) * torch.cos(xx)]) * 0.35 + 0.5
    return (base + 0.1 * torch.rand((3, h, w), generator=g)).clamp(0, 1)[None]


def _steps(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-value difference in 8-bit steps after clamping and rounding (what a PNG stores)."""
    q = lambda t: (t.detach().float().clamp(0, 1) * 255).round()  # noqa: E731
    return (q(y) - q(ref)).abs()


def _assert_exact(y: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert y.shape == ref.shape and y.dtype == ref.dtype, f"{what}: {y.shape}/{y.dtype} vs {ref.shape}/{ref.dtype}"
    err = rel_error(y, ref)
    assert err <= 1e-5, f"{what}: relative error {err:.3e} > 1e-5"
    assert _steps(y, ref).max() <= 1, f"{what}: more than one 8-bit step off"


# ----------------------------------------------------------------------------- exactness, reference model


@needs_data
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("tile", [37, 50, 64])
def test_reference_tiled_equals_whole(ref_models: dict[int, BCRN], scale: int, tile: int) -> None:
    model = ref_models[scale]
    x = _image(71, 53, seed=scale)
    with torch.no_grad():
        ref = model(x)
    _assert_exact(tiled_forward(model, x, tile=tile), ref, f"x{scale} tile {tile}")


@needs_data
def test_reference_channels_last_and_batch(ref_models: dict[int, BCRN]) -> None:
    model = ref_models[4]
    x = torch.cat([_image(45, 39, seed=1), _image(45, 39, seed=2)]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
    _assert_exact(tiled_forward(model, x, tile=20), ref, "channels-last batch of 2, tile 20")


# ----------------------------------------------------------------------------- exactness, fused backends


@needs_data
@pytest.mark.parametrize("scale", [2, 4])
def test_fused_torch_tiled_equals_whole(ref_models: dict[int, BCRN], scale: int) -> None:
    model = BCRNFused.from_reference(ref_models[scale], backend="torch")
    x = _image(49, 41, seed=3)
    with torch.no_grad():
        ref = model(x)
    for tile, layout in ((37, torch.contiguous_format), (20, torch.channels_last)):
        y = tiled_forward(model, x.contiguous(memory_format=layout), tile=tile)
        _assert_exact(y, ref, f"fused torch x{scale} tile {tile} {layout}")


@needs_data
def test_fused_fp16_within_contract(ref_models: dict[int, BCRN]) -> None:
    """fp16 tiles: no further from the float64 reference than the fp16 contract allows whole-image fp16."""
    ref_model = ref_models[2]
    x = _image(41, 35, seed=4)
    with torch.no_grad():
        ref64 = copy.deepcopy(ref_model).double()(x.double())
    model = BCRNFused.from_reference(copy.deepcopy(ref_model), backend="torch").half()
    xh = x.half()
    with torch.no_grad():
        whole16 = model(xh)
    y = tiled_forward(model, xh, tile=19)
    assert y.dtype == torch.float16
    assert_close_to_ref(y, ref64, torch.float16, torch_same_dtype=whole16, name="tiled fp16")
    assert _steps(y, whole16).max() <= 1


@needs_data
@pytest.mark.slow
def test_fused_triton_tiled_equals_whole(ref_models: dict[int, BCRN]) -> None:
    """The Triton kernels on tiles (interpreter on the CPU: one tiny image, 2 x 2 tiles)."""
    from bcrn_fast.ops.backends import triton_can_run

    if not triton_can_run(torch.device("cpu")):
        pytest.skip("Triton cannot run on the CPU here (needs TRITON_INTERPRET=1)")
    model = BCRNFused.from_reference(ref_models[2], backend="triton")
    x = _image(31, 23, seed=5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
    _assert_exact(tiled_forward(model, x, tile=17), ref, "triton x2 tile 17")


# ----------------------------------------------------------------------------- memory


@needs_data
@pytest.mark.slow  # the meter sees every op: ~1-2 min on a 2-core machine
@pytest.mark.parametrize("kind", ["reference", "fused-torch"])
def test_compute_peak_independent_of_image_size(ref_models: dict[int, BCRN], kind: str) -> None:
    """The bytes live during tile compute depend on the tile, not on the image (4x the pixels here)."""
    model = ref_models[4] if kind == "reference" else BCRNFused.from_reference(ref_models[4], backend="torch")
    peaks, whole = [], []
    for h, w in ((50, 44), (98, 90)):  # both have interior tiles (full halos on every side)
        x = _image(h, w, seed=6)
        with tiling.measure_compute() as meter:
            tiled_forward(model, x, tile=16)
        peaks.append(meter.peak)
        with tiling.measure_compute() as m2, m2, torch.no_grad():
            model(x)
        whole.append(m2.peak)
    assert peaks[0] == peaks[1], f"compute peak grew with the image: {peaks}"
    assert whole[1] > 3 * whole[0], f"the whole-image meter should see 4x the pixels: {whole}"
    assert peaks[1] < whole[1] / 5
    assert peaks[0] <= tiling.tile_peak_bytes(model, 1, 16), "tile_peak_bytes must bound the measured peak"
    assert whole[0] <= tiling.whole_image_peak_bytes(model, 1, 50, 44, torch.float32)


def test_memory_estimates_scale() -> None:
    model = BCRN(4)
    small = tiling.whole_image_peak_bytes(model, 1, 100, 100, torch.float32)
    big = tiling.whole_image_peak_bytes(model, 2, 200, 100, torch.float32)  # 4x the pixels
    assert 3.9 * small < big < 4 * small
    assert tiling.whole_image_peak_bytes(model, 1, 100, 100, torch.float16) < small
    assert tiling.tile_peak_bytes(model, 1, 128) > tiling.tile_peak_bytes(model, 1, 64)


@needs_data
def test_auto_tile_fits_budget(ref_models: dict[int, BCRN]) -> None:
    model = ref_models[2]
    x = _image(70, 58, seed=7)
    budget = tiling.tile_peak_bytes(model, 1, 30) + 1000
    tile = tiling.auto_tile(model, 1, 70, 58, torch.float32, budget)
    assert tile == 30
    with torch.no_grad():
        ref = model(x)
    _assert_exact(tiled_forward(model, x, tile="auto", max_memory=budget), ref, "auto tile")
    with pytest.raises(InputError, match="too little"):
        tiled_forward(model, x, tile="auto", max_memory=1000)


# ----------------------------------------------------------------------------- OOM fallback, progress


@needs_data
def test_oom_halves_tile_and_retries(ref_models: dict[int, BCRN], monkeypatch: pytest.MonkeyPatch) -> None:
    """A (fake) CUDA OOM on a big window halves the tile, redoes that tile, and the output stays exact."""
    model = ref_models[2]
    x = _image(63, 45, seed=8)
    with torch.no_grad():
        ref = model(x)
    real_front = tiling._ReferenceOps.front
    calls = {"oom": 0}

    def front(self, k, f, s):
        if f.shape[2] * f.shape[3] > 30 * 30:
            calls["oom"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return real_front(self, k, f, s)

    monkeypatch.setattr(tiling._ReferenceOps, "front", front)
    seen: list[tuple[int, int]] = []
    y = tiled_forward(model, x, tile=48, progress=lambda d, t: seen.append((d, t)))
    assert calls["oom"] == 1, "only the first failing tile should OOM; later tiles use the halved tile"
    _assert_exact(y, ref, "after OOM fallback")
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == seen[-1][1], f"progress must end at done == total, got {seen[-1]}"


@needs_data
def test_oom_at_minimum_tile_raises(ref_models: dict[int, BCRN], monkeypatch: pytest.MonkeyPatch) -> None:
    def front(self, k, f, s):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")

    monkeypatch.setattr(tiling._ReferenceOps, "front", front)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="even at tile"):
        tiled_forward(ref_models[2], _image(20, 20), tile=16)


def test_progress_counts_every_tile() -> None:
    torch.manual_seed(0)
    model = BCRN(2).eval()
    seen: list[tuple[int, int]] = []
    tiled_forward(model, _image(40, 30), tile=16, progress=lambda d, t: seen.append((d, t)))
    # 40x30 in 16-px tiles: 3 x 2 LR tiles; the 5x3 pooled map: 6-px pool tiles (a-window 45 <= 48) and
    # 26-px low-res tiles, one each
    lr, pool, low = 3 * 2, 1, 1
    total = 2 * lr + 6 * (2 * lr + pool + low)
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))


# ----------------------------------------------------------------------------- validation


def test_rejects_bad_arguments() -> None:
    model = BCRN(2).eval()
    x = _image(20, 20)
    for bad in (4, 0, "big", 2.5, True):
        with pytest.raises(InputError, match="tile must be"):
            tiled_forward(model, x, tile=bad)
    with pytest.raises(InputError, match="max_memory applies"):
        tiled_forward(model, x, tile=32, max_memory=1 << 30)
    for bad in (-1, 0, "1G", True):
        with pytest.raises(InputError, match="max_memory must be"):
            tiled_forward(model, x, tile="auto", max_memory=bad)
    with pytest.raises(InputError, match="15x15"):
        tiled_forward(model, _image(14, 20), tile=16)
    with pytest.raises(InputError, match=r"\[N, 3, H, W\]"):
        tiled_forward(model, torch.rand(3, 20, 20), tile=16)
    with pytest.raises(InputError, match="BCRN or BCRNFused"):
        tiled_forward(torch.nn.Conv2d(3, 3, 1), x, tile=16)
    with pytest.raises(InputError, match="weights are on"):
        tiled_forward(model, x, tile=16, device="meta")


# ----------------------------------------------------------------------------- CLI


@needs_data
@pytest.mark.slow
def test_cli_tile_png_equals_untiled(tmp_path: Path) -> None:
    """``bcrn-fast upscale --tile 64`` writes the same PNGs as the untiled run on Set5 (fp32)."""
    import numpy as np

    from bcrn_fast.cli import CLIError, build_parser, main
    from bcrn_fast.evaluate import set5_dirs
    from bcrn_fast.imageio import read_rgb_uint8

    try:
        build_parser().parse_args(["upscale", "a.png", "-o", "o", "--weights", "w", "--tile", "64"])
    except (SystemExit, CLIError):
        pytest.skip("CLI --tile not wired yet")
    assert DATA is not None
    _, lr_dir = set5_dirs(DATA, 2)
    common = [str(lr_dir), "--weights", str(_weights(2)), "--backend", "reference", "--no-progress"]
    assert main(["upscale", *common, "-o", str(tmp_path / "whole")]) == 0
    assert main(["upscale", *common, "-o", str(tmp_path / "tiled"), "--tile", "64"]) == 0
    outs = sorted((tmp_path / "whole").glob("*.png"))
    assert len(outs) == 5
    for f in outs:
        a = read_rgb_uint8(f)[0].astype(np.int16)
        b = read_rgb_uint8(tmp_path / "tiled" / f.name)[0].astype(np.int16)
        assert a.shape == b.shape
        diff = np.abs(a - b)
        assert diff.max() <= 1, f"{f.name}: {diff.max()} steps"
        assert (diff > 0).mean() <= 1e-4, f"{f.name}: {(diff > 0).mean():.2e} of values differ"
