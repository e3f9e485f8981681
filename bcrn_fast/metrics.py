"""Image-quality metrics exactly as the BCRN paper's evaluation protocol computes them.

The authors' test script (``BCRN_test.py`` of github.com/kptx666/BCRN) does, per image:

1. ``hr = modcrop(hr, s)``: crop the ground truth to a multiple of the scale ``s``;
2. ``shave(., s)``: drop ``s`` pixels from every border of both SR and HR;
3. ``Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)`` on 0..255 RGB
   (ITU-R BT.601 luma as MATLAB's and scikit-image's ``rgb2ycbcr``), clipped
   to [0, 255] and stored as uint8;
4. PSNR with peak 255 and SSIM (Gaussian window, sigma 1.5, 11x11, K1 = 0.01,
   K2 = 0.03, population covariance, mean over the 'valid' part of the map).

Everything is computed in float64 with numpy. Inputs are numpy arrays: ``HxWx3``
uint8 RGB for images, ``HxW`` for single channels.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "evaluate_pair",
    "gaussian_window_1d",
    "modcrop",
    "psnr",
    "rgb_to_y",
    "shave",
    "ssim",
]

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # 2 * int(3.5 * sigma + 0.5) + 1: scikit-image's truncate=3.5 gives the same 11 taps
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# BT.601 luma weights on 0..255 RGB (rows of MATLAB's rgb2ycbcr matrix, first row).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop ``img`` (``HxW`` or ``HxWxC``) to ``(H - H mod s) x (W - W mod s)`` from the top-left.

    Returns a view. Raises ``ValueError`` for a non-positive scale or an image
    smaller than ``scale`` in either dimension.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {img.shape}")
    h, w = img.shape[:2]
    hh, ww = h - h % scale, w - w % scale
    if hh == 0 or ww == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than the scale {scale}")
    return img[:hh, :ww, ...]


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """Remove ``border`` pixels from each of the four sides of ``img`` (``HxW`` or ``HxWxC``).

    ``border = 0`` returns the image unchanged (a view). Raises ``ValueError``
    when nothing would remain.
    """
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {img.shape}")
    if border == 0:
        return img
    h, w = img.shape[:2]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"image of size {h}x{w} is too small to shave {border} pixels from each border")
    return img[border : h - border, border : w - border, ...]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an ``HxWx3`` RGB image with values in 0..255 (uint8 or float).

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, computed in float64,
    then clipped to [0, 255] and rounded half to even (numpy's ``round``) to
    uint8, as the protocol's ``quantize(rgb2ycbcr(img)[..., 0])`` does. The
    result lies in [16, 235] for any valid input.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    rgb = img.astype(np.float64, copy=False)
    y = 16.0 + (rgb[..., 0] * _Y_WEIGHTS[0] + rgb[..., 1] * _Y_WEIGHTS[1] + rgb[..., 2] * _Y_WEIGHTS[2]) / 255.0
    return np.clip(y, 0.0, 255.0).round().astype(np.uint8)


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("empty images")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(peak^2 / MSE)`` in dB, MSE over all elements in float64.

    Identical images have MSE 0 and give ``math.inf`` (not an error), as
    scikit-image's ``peak_signal_noise_ratio`` does.
    """
    _check_same_shape(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian ``g[k] = exp(-(k - c)^2 / (2 sigma^2)) / sum``, ``c = (size - 1) / 2``.

    The 2-D SSIM window is its outer product ``g g^T`` (which also sums to 1).
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of ``img`` with ``g g^T``, keeping only fully covered positions ('valid')."""
    k = g.shape[0]
    h, w = img.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * img[i : i + h - k + 1, :]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j : j + w - k + 1]
    return out


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two single-channel images (``HxW``), in float64.

    With the normalised 11x11 Gaussian window ``w`` (sigma 1.5) and 'valid'
    filtering (only windows that lie inside the image, i.e. the map is cropped
    by 5 pixels per side, as the MATLAB-style and scikit-image implementations
    do), per position::

        mu_a = w * a,  mu_b = w * b
        var_a = w * a^2 - mu_a^2,  var_b = w * b^2 - mu_b^2,  cov = w * (a b) - mu_a mu_b
        S = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))

    with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = data_range`` (255 for
    uint8) and population (biased) moments. Returns the mean of ``S``;
    identical images give exactly 1 (numerator and
    denominator are then the same float64 products). Both images must be at least 11x11.
    """
    _check_same_shape(a, b)
    if a.ndim != 2:
        raise ValueError(f"ssim expects single-channel HxW images, got shape {a.shape}")
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[0]}x{a.shape[1]}")
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    g = gaussian_window_1d()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x * mu_x
    var_y = _filter_valid(y * y, g) - mu_y * mu_y
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def evaluate_pair(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """PSNR (dB) and SSIM of a super-resolved image against its ground truth, by the paper's protocol.

    ``sr`` and ``hr`` are ``HxWx3`` uint8 RGB. ``hr`` is modcropped to a multiple
    of ``scale`` and must then have the shape of ``sr``; both are shaved by
    ``scale`` pixels per border and converted to rounded BT.601 Y
    (:func:`rgb_to_y`) before :func:`psnr` (peak 255) and :func:`ssim`.
    PSNR is ``inf`` when the Y channels are identical.
    """
    for name, img in (("sr", sr), ("hr", hr)):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name}: expected an HxWx3 RGB image, got shape {img.shape}")
    hr_c = modcrop(hr, scale)
    if sr.shape != hr_c.shape:
        raise ValueError(
            f"SR image is {sr.shape[0]}x{sr.shape[1]} but the ground truth cropped to a multiple of "
            f"{scale} is {hr_c.shape[0]}x{hr_c.shape[1]}"
        )
    y_sr = rgb_to_y(shave(sr, scale))
    y_hr = rgb_to_y(shave(hr_c, scale))
    return psnr(y_sr, y_hr), ssim(y_sr, y_hr)
