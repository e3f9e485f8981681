"""The ConvNeXt kernel's GELU: its erf is within 1e-6 of the exact erf for every fp32 input.

``bcrn_fast.kernels.convnext`` computes ``Φ(-b) = ½·erfc(b/√2)`` as ``2^p(b)``
(degree-7 polynomial, one exp2) and ``GELU(h) = h·Φ(h)`` from it; the erf it
implies is ``erf(h/√2) = sign(h)·(1 - 2·Φ(-|h|))``. The bound is proved here:

- the Triton functions themselves (``gelu_fast`` / ``erf_fast``, interpreted on
  a CPU, compiled on a GPU) are evaluated on every fp32 value of [0, 6] at a
  fixed stride of the bit pattern (every value in the slow test), plus a sweep
  of every binade above 6 up to FLT_MAX, ±inf and NaN, against float64 erf;
- exp2 is exact to fp32 rounding in the interpreter but MUFU.EX2 is not: each
  point is charged the GPU's exp2 error on top, ``2·Φ·2^-21`` (twice the
  documented 2-ulp bound of ``ex2.approx.f32``), and must stay <= 1e-6;
- beyond the sweep, the saturation argument: the polynomial's derivative has no
  real root and a negative leading coefficient (p decreases on all of ℝ), and
  p(5.5) < -22, so for every b >= 5.5 the computed ``2·Φ(-b) <= 2^-21`` while
  the exact ``erfc(b/√2) <= erfc(3.88) < 5e-8``.

The erf symmetry is structural (``|h|`` in, sign restored by a select), so the
negative half is the positive one; it is still checked on the sampled points.
"""

import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from bcrn_fast.kernels import convnext as K

from bcrn_fast.ops import _common

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not _common.triton_can_run(DEVICE), reason="Triton needs CUDA or TRITON_INTERPRET=1")

BOUND = 1e-6  # the precision contract's erf error
EXP2_REL = 2.0**-21  # charged per point for MUFU.EX2 (documented: 2 ulp = 2^-22 relative)
BLOCK = 1 << 16
COEFFS = [getattr(K, f"_GP{k}").value for k in range(8)]  # p(b) = Σ c_k b^k


@triton.jit
def _erf_kernel(x_ptr, erf_ptr, phi_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    tl.store(erf_ptr + offs, K.erf_fast(x), mask=m)
    # Φ(-|h|) as the GELU uses it, for the per-point exp2 allowance
    tl.store(phi_ptr + offs, K.phi_neg(tl.abs(x)), mask=m)


@triton.jit
def _gelu_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, K.gelu_fast(tl.load(x_ptr + offs, mask=m, other=0.0)), mask=m)


def _run(kernel, x: np.ndarray, outs: int) -> list[np.ndarray]:
    xt = torch.from_numpy(x).to(DEVICE)
    ys = [torch.empty_like(xt) for _ in range(outs)]
    kernel[(triton.cdiv(xt.numel(), BLOCK),)](xt, *ys, xt.numel(), BLOCK=BLOCK)
    return [y.cpu().numpy() for y in ys]


def fp32_range(lo: float, hi: float, stride: int) -> np.ndarray:
    """Every ``stride``-th fp32 value in [lo, hi] (0 <= lo < hi), walking the bit patterns."""
    a, b = np.array([lo, hi], dtype=np.float32).view(np.int32)
    return np.arange(a, b + 1, stride, dtype=np.int32).view(np.float32)


def erf_errors(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Errors of ``erf_fast(x)`` and of the GELU's implied ``erf(h/√2)`` at ``h = x``, in float64.

    Both include the GPU's exp2 allowance: ``2·Φ·EXP2_REL`` where ``Φ`` is the
    value the exp2 produced (``1 - |erf|`` for erf_fast, ``phi_neg(|h|)`` for the GELU).
    """
    erf_k, phi_h = (v.astype(np.float64) for v in _run(_erf_kernel, x, 2))
    x64 = torch.from_numpy(x.astype(np.float64))
    err_x = np.abs(erf_k - torch.special.erf(x64).numpy()) + (1.0 - np.abs(erf_k)) * EXP2_REL
    exact_h = torch.special.erf(x64.abs() / math.sqrt(2.0)).numpy()
    err_h = np.abs((1.0 - 2.0 * phi_h) - exact_h) + 2.0 * phi_h * EXP2_REL
    return err_x, err_h


def test_reference_erf_is_exact_enough():
    # torch's float64 erf, the reference of the sweeps, against math.erf on a spread of points
    x = np.concatenate([np.linspace(-7, 7, 2001), np.geomspace(1e-30, 1e-2, 200)])
    ours = torch.special.erf(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(ours - np.array([math.erf(v) for v in x]))) < 1e-15


def test_polynomial_saturates():
    """p decreases on all of ℝ and p(5.5) < -22: the exact argument for every b >= 5.5."""
    c = np.array(COEFFS, dtype=np.float64)
    assert np.all(np.array(COEFFS, dtype=np.float32).astype(np.float64) == c), "coefficients must be fp32 values"
    assert c[-1] < 0
    roots = np.roots(np.polyder(c[::-1]))
    assert np.all(np.abs(roots.imag) > 1e-3), f"p' has a real root: {roots}"
    assert np.polyval(c[::-1], 5.5) < -22
    assert math.erfc(5.5 / math.sqrt(2.0)) < 5e-8  # exact tail beyond the sweep's region


@pytest.mark.parametrize("lo,hi,stride", [(0.0, 6.0, 9973), (0.5, 1.0, 61)])
def test_erf_bound_sweep(lo, hi, stride):
    # [0, 6] at a prime stride (≈ 109 K values, every binade), and a dense slice where the error peaks
    x = fp32_range(lo, hi, stride)
    x = np.concatenate([x, -x])
    err_x, err_h = erf_errors(x)
    assert err_x.max() <= BOUND, f"erf_fast: max error {err_x.max():.3g} at x = {x[err_x.argmax()]!r}"
    assert err_h.max() <= BOUND, f"GELU's erf: max error {err_h.max():.3g} at h = {x[err_h.argmax()]!r}"


def test_erf_beyond_sweep():
    # every binade from 6 to FLT_MAX (1 of 4099 patterns), the largest finite values, ±inf
    big = np.concatenate(
        [
            fp32_range(6.0, float(np.finfo(np.float32).max), 4099),
            np.array([np.finfo(np.float32).max, np.inf], dtype=np.float32),
        ]
    )
    x = np.concatenate([big, -big])
    err_x, err_h = erf_errors(x)
    assert err_x.max() <= BOUND and err_h.max() <= BOUND
    erf_nan, _ = _run(_erf_kernel, np.array([np.nan], dtype=np.float32), 2)
    assert np.isnan(erf_nan).all()


@pytest.mark.slow
def test_erf_bound_every_fp32():
    """Every fp32 value in [0, 6] (1.09e9 of them), in chunks."""
    a, b = np.array([0.0, 6.0], dtype=np.float32).view(np.int32)
    worst = 0.0
    for start in range(int(a), int(b) + 1, 1 << 22):
        x = np.arange(start, min(start + (1 << 22), int(b) + 1), dtype=np.int32).view(np.float32)
        err_x, err_h = erf_errors(x)
        worst = max(worst, err_x.max(), err_h.max())
    assert worst <= BOUND, f"max error {worst:.3g}"


def test_gelu_against_float64():
    """GELU(h) = h·Φ(h) within |h|/2·1e-6 (+ fp32 rounding, FLT_MIN for subnormals) of the float64 GELU."""
    x = np.concatenate([fp32_range(0.0, 40.0, 7919), np.array([0.0, 1e-30, 1e30, np.inf], dtype=np.float32)])
    x = np.concatenate([x, -x])
    (y,) = _run(_gelu_kernel, x, 1)
    h = torch.from_numpy(x.astype(np.float64))
    ref = torch.nn.functional.gelu(h).numpy()
    finite = np.isfinite(x)
    err = np.abs(y.astype(np.float64)[finite] - ref[finite])
    allowed = np.abs(x[finite].astype(np.float64)) * (BOUND / 2) + 2.0**-23 * np.abs(ref[finite]) + 2.0**-126
    assert np.all(err <= allowed), (
        f"max excess {np.max(err - allowed):.3g} at h = {x[finite][np.argmax(err - allowed)]!r}"
    )
    assert y[x == np.inf][0] == np.inf
    assert np.all(y[(x <= -40.0) & finite] == 0.0)  # 2^p underflows: exactly 0, not -|h|·tiny
    assert np.isnan(y[x == -np.inf]).all()  # -inf·Φ(-inf) = -inf·0, as torch's GELU
    assert np.all(y[x == 0.0] == 0.0)
