"""PSNR / SSIM / Y / modcrop / shave against independently computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcrn_fast.metrics import evaluate_pair, modcrop, psnr, rgb_to_y, shave, ssim


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- PSNR


def test_psnr_constant_images_known_mse() -> None:
    a = np.zeros((8, 9), dtype=np.uint8)
    b = np.full((8, 9), 10, dtype=np.uint8)  # MSE = 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)
    assert psnr(a, b) == pytest.approx(28.130803608679102, abs=1e-12)


def test_psnr_pattern_known_mse() -> None:
    a = np.full((6, 6), 100, dtype=np.uint8)
    b = a.copy()
    b[::2] += 3  # every other row off by +3, the rest exact: MSE = 9 / 2
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 4.5), abs=1e-12)
    # uint8 wrap-around must not happen: 0 - 255 is a difference of 255, not 1
    assert psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0, abs=1e-12)


def test_psnr_identical_is_inf_and_peak() -> None:
    a = rng().integers(0, 256, (7, 5), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    x = np.zeros((4, 4))
    y = np.full((4, 4), 0.1)  # MSE 0.01 on a [0, 1] scale
    assert psnr(x, y, peak=1.0) == pytest.approx(20.0, abs=1e-9)


def test_psnr_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))


# ---------------------------------------------------------------- Y (BT.601)


def bt601(r: float, g: float, b: float) -> float:
    return 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((0, 0, 0), 16),
        ((255, 255, 255), 235),
        ((255, 0, 0), 81),  # 81.481
        ((0, 255, 0), 145),  # 144.553
        ((0, 0, 255), 41),  # 40.966
        ((128, 128, 128), 126),  # 125.929...
        ((255, 255, 0), 210),  # 210.034
        ((10, 200, 90), 128),  # 128.205
    ],
)
def test_y_of_pure_colours(rgb: tuple[int, int, int], expected: int) -> None:
    img = np.empty((2, 3, 3), dtype=np.uint8)
    img[...] = rgb
    y = rgb_to_y(img)
    assert y.dtype == np.uint8 and y.shape == (2, 3)
    assert np.all(y == round(bt601(*rgb)))
    assert np.all(y == expected)


def test_y_accepts_float_0_255() -> None:
    img = rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(rgb_to_y(img), rgb_to_y(img.astype(np.float64)))
    assert np.array_equal(rgb_to_y(img), rgb_to_y(img.astype(np.float32)))
    with pytest.raises(ValueError, match="HxWx3"):
        rgb_to_y(img[..., 0])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_y_matches_formula_for_any_colour(r: int, g: int, b: int) -> None:
    y = int(rgb_to_y(np.array([[[r, g, b]]], dtype=np.uint8))[0, 0])
    exact = bt601(r, g, b)
    assert abs(y - exact) <= 0.5 + 1e-9
    assert 16 <= y <= 235


# ---------------------------------------------------------------- SSIM


def ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """Straightforward SSIM: every fully covered 11x11 window, Gaussian weights, population moments."""
    k, sigma = 11, 1.5
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    w = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            w[i, j] = math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * sigma**2))
    w /= w.sum()
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    vals = []
    for y in range(a.shape[0] - k + 1):
        for x in range(a.shape[1] - k + 1):
            pa, pb = a[y : y + k, x : x + k], b[y : y + k, x : x + k]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum()
            vb = (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one() -> None:
    a = rng(2).integers(0, 256, (32, 40), dtype=np.uint8)
    assert ssim(a, a) == 1.0


def test_ssim_matches_direct_loop() -> None:
    a = rng(3).integers(0, 256, (20, 23)).astype(np.uint8)
    noise = rng(4).integers(-30, 31, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    got = ssim(a, b)
    ref = ssim_direct(a, b)
    assert got == pytest.approx(ref, abs=1e-12)
    assert 0 < got < 1
    assert ssim(b, a) == pytest.approx(got, abs=1e-15)


def test_ssim_smooth_image_matches_direct_loop() -> None:
    yy, xx = np.mgrid[0:16, 0:19]
    a = (128 + 100 * np.sin(yy / 3.0) * np.cos(xx / 4.0)).round().astype(np.uint8)
    b = np.roll(a, 1, axis=1)
    assert ssim(a, b) == pytest.approx(ssim_direct(a, b), abs=1e-12)


def test_ssim_constant_images_closed_form() -> None:
    # zero variance everywhere: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    a = np.full((12, 13), 100, dtype=np.uint8)
    b = np.full((12, 13), 120, dtype=np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), abs=1e-12)


def test_ssim_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))
    with pytest.raises(ValueError, match="single-channel"):
        ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(np.zeros((12, 12)), np.zeros((12, 13)))


# ---------------------------------------------------------------- modcrop / shave / evaluate_pair


@pytest.mark.parametrize(("scale", "shape"), [(2, (16, 22)), (3, (15, 21)), (4, (16, 20))])
def test_modcrop(scale: int, shape: tuple[int, int]) -> None:
    img = rng(5).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out = modcrop(img, scale)
    assert out.shape == (*shape, 3)
    assert np.array_equal(out, img[: shape[0], : shape[1]])
    assert modcrop(img[..., 0], scale).shape == shape
    assert modcrop(img[:16, :20], 4).shape == (16, 20, 3)
    with pytest.raises(ValueError):
        modcrop(img[:3, :3], 4)


def test_shave() -> None:
    img = rng(6).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert shave(img, 4).shape == (9, 15, 3)
    assert np.array_equal(shave(img, 4), img[4:13, 4:19])
    assert shave(img[..., 0], 2).shape == (13, 19)
    assert shave(img, 0) is img
    with pytest.raises(ValueError, match="too small"):
        shave(img, 9)


def test_evaluate_pair_protocol() -> None:
    scale = 3
    hr = rng(7).integers(0, 256, (41, 44, 3), dtype=np.uint8)  # modcrop -> 39 x 42
    sr = hr[:39, :42].copy()
    assert evaluate_pair(sr, hr, scale) == (math.inf, 1.0)
    # the shaved border does not count
    sr_border = sr.copy()
    sr_border[:scale] = 0
    sr_border[:, -scale:] = 255
    assert evaluate_pair(sr_border, hr, scale) == (math.inf, 1.0)
    # inside the border it counts, and equals the step-by-step computation
    sr_noisy = np.clip(sr.astype(int) + rng(8).integers(-8, 9, sr.shape), 0, 255).astype(np.uint8)
    p, s = evaluate_pair(sr_noisy, hr, scale)
    y_sr = rgb_to_y(sr_noisy[3:36, 3:39])
    y_hr = rgb_to_y(hr[3:36, 3:39])
    mse = np.mean((y_sr.astype(np.float64) - y_hr.astype(np.float64)) ** 2)
    assert p == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)
    assert s == pytest.approx(ssim_direct(y_sr, y_hr), abs=1e-12)
    assert 0 < s < 1


def test_evaluate_pair_size_mismatch() -> None:
    hr = np.zeros((40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="ground truth cropped"):
        evaluate_pair(np.zeros((36, 40, 3), dtype=np.uint8), hr, 3)
    with pytest.raises(ValueError, match="HxWx3"):
        evaluate_pair(np.zeros((39, 39), dtype=np.uint8), hr, 3)
