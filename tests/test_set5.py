"""The official weights reproduce the measured Set5 table of ../shared/data/README.md (full-size reference on CPU).

Skipped when the reference data is absent (set BCRN_DATA_DIR) and under BCRN_QUICK=1.
"""

from __future__ import annotations

import os
import time

import pytest

from bcrn_fast.checkpoint import load_checkpoint
from bcrn_fast.evaluate import ImageResult, default_data_dir, evaluate, mean_result, set5_dirs

DATA_DIR = default_data_dir()
QUICK = os.environ.get("BCRN_QUICK", "0") not in ("", "0")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        DATA_DIR is None,
        reason="reference data not found: set BCRN_DATA_DIR or provide ../shared/data next to the project",
    ),
    pytest.mark.skipif(QUICK, reason="BCRN_QUICK=1: full-size Set5 runs skipped"),
]

# Measured with the authors' test script (README of the reference data): per-image PSNR, mean PSNR, mean SSIM.
EXPECTED = {
    4: ({"baby": 33.769, "bird": 34.845, "butterfly": 28.718, "head": 32.921, "woman": 30.788}, 32.208, 0.8940),
    2: ({"baby": 38.850, "bird": 43.200, "butterfly": 35.327, "head": 35.999, "woman": 36.394}, 37.954, 0.9596),
}


@pytest.fixture(scope="module", params=[4, 2], ids=["x4", "x2"])
def set5(request: pytest.FixtureRequest) -> tuple[int, list[ImageResult]]:
    scale = request.param
    assert DATA_DIR is not None
    model = load_checkpoint(DATA_DIR / "bcrn_official" / f"best_epoch_x{scale}.pth", scale)
    hr_dir, lr_dir = set5_dirs(DATA_DIR, scale)
    t0 = time.perf_counter()
    results = evaluate(model, hr_dir, lr_dir, scale, progress=False)
    elapsed = time.perf_counter() - t0
    print(f"\nSet5 x{scale}: reference BCRN fp32 on CPU, {elapsed:.2f} s for 5 images")
    return scale, results


def test_per_image_psnr(set5: tuple[int, list[ImageResult]]) -> None:
    scale, results = set5
    per_image, _, _ = EXPECTED[scale]
    assert [r.name for r in results] == sorted(per_image)
    for r in results:
        assert abs(r.psnr - per_image[r.name]) <= 0.001, f"x{scale} {r.name}: {r.psnr:.4f} dB vs {per_image[r.name]}"


def test_mean_psnr_and_ssim(set5: tuple[int, list[ImageResult]]) -> None:
    scale, results = set5
    _, mean_psnr, mean_ssim = EXPECTED[scale]
    mean = mean_result(results)
    assert abs(mean.psnr - mean_psnr) <= 0.001, f"x{scale}: mean PSNR {mean.psnr:.4f} vs {mean_psnr}"
    assert abs(mean.ssim - mean_ssim) <= 0.0005, f"x{scale}: mean SSIM {mean.ssim:.5f} vs {mean_ssim}"
    assert all(0.7 < r.ssim < 1 for r in results)
