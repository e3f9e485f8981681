"""ESA fused ops: ``esa_pool`` (strided depthwise + max-pool) and ``esa_apply`` (mask, multiply, CCA).

The ESA of a BCB is, with every conv a BSConvU (see docs/fused-ops.md)::

    a  = pw2·conv1(t)                         16 ch, written by the convnext epilogue
    v  = maxpool_{7,3}(dw2 ⊛_{stride 2} a + b2)   esa_pool (this file)
    c3 = conv3_(relu(conv3(relu(conv_max(v)))))   bsconv ×3 on the ~H/6 map (elsewhere)
    u  = t ⊙ σ(W4ᵀ·(bilinear↑(c3) + Wfᵀ·t + bf) + b4)   esa_apply (this file)

``conv_f ∘ conv1`` folds into the rank-16 map ``Wf, bf`` and ``conv4`` into
``W4, b4``; :func:`pack_esa` does the algebra in float64. ``esa_apply`` writes
``u`` into channels ``[out_offset, out_offset + 64)`` of a caller-provided
buffer and, given the CCA weights, returns the CCA scale of ``u`` computed in
the same launch (``bcrn_fast.ops.cca``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bcrn_fast.ops import _common, backends
from bcrn_fast.ops.cca import (
    CHANNELS,
    MERGE_BLOCK,
    SQUEEZE,
    CCAWeights,
    _fold_bsconv_1x1,
    cca_from_stats,
    cca_workspace,
    check_cca_weights,
    check_op_backend,
    check_pixels,
    launch_settings,
    merge_group,
)
from bcrn_fast.validation import InputError

ESA_CHANNELS = 16  # f = 64 / 4
MIN_SIZE = 15  # stride-2 valid 3x3 (H2 >= 7) then the 7x7/3 pool
MIN_SIZE_WHY = "ESA's stride-2 3x3 conv followed by a 7x7/3 max-pool needs at least 15x15 pixels"
# esa_pool: the pooled map is ~HW/36 pixels, so keep programs small and many. The
# [4 pixels, 64 window slots, 16] fp32 tile compiles (sm_90) to 188 registers at
# 8 warps, no spills (255 at 4 warps).
POOL_BLOCK = 4
POOL_WARPS = 8


class ESAWeights(NamedTuple):
    """Folded ESA weights for ``esa_pool`` and ``esa_apply``."""

    pool_dw: Tensor  # [9, 16] fp32: conv2 depthwise taps, tap = 3·ky + kx
    pool_b: Tensor  # [16] fp32: conv2 bias
    wf: Tensor  # [64, 16] compute dtype: (diag(df)·pwf·diag(d1)·pw1)ᵀ
    bf: Tensor  # [16] fp32: diag(df)·pwf·b1 + b_f
    w4: Tensor  # [16, 64] compute dtype: (diag(d4)·pw4)ᵀ
    b4: Tensor  # [64] fp32


def pack_esa(esa, dtype: torch.dtype) -> ESAWeights:
    """Fold an ``ESA`` module's conv2 (depthwise), conv_f ∘ conv1 and conv4 for storage ``dtype``.

    Exact algebra in float64, then GEMM operands cast to ``compute_dtype(dtype)``
    and per-channel vectors to fp32. conv2's pointwise part is folded onto
    conv1 by the convnext epilogue's packing, not here.
    """
    cdt = _common.compute_dtype(dtype)
    dw2 = esa.conv2.dw.weight.detach().double()  # [16, 1, 3, 3]
    pool_dw = dw2.reshape(dw2.shape[0], 9).t()
    pool_b = esa.conv2.dw.bias
    pool_b = torch.zeros(dw2.shape[0], dtype=torch.float64) if pool_b is None else pool_b.detach().double()
    w1t, b1 = _fold_bsconv_1x1(esa.conv1)  # [64, 16], [16]
    wft, bff = _fold_bsconv_1x1(esa.conv_f)  # [16, 16], [16]
    wf = w1t @ wft  # (Wf1·W1)ᵀ = W1ᵀ·Wf1ᵀ
    bf = b1 @ wft + bff
    w4, b4 = _fold_bsconv_1x1(esa.conv4)  # [16, 64], [64]
    dev = esa.conv1.pw.weight.device
    vec = {"dtype": torch.float32, "device": dev}
    mat = {"dtype": cdt, "device": dev}
    return ESAWeights(
        pool_dw.to(**vec).contiguous(),
        pool_b.to(**vec).contiguous(),
        wf.to(**mat).contiguous(),
        bf.to(**vec).contiguous(),
        w4.to(**mat).contiguous(),
        b4.to(**vec).contiguous(),
    )


def pooled_size(h: int, w: int) -> tuple[int, int]:
    """Spatial size after conv2 (3x3, stride 2, no padding) and max_pool2d(7, 3)."""
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    return (h2 - 7) // 3 + 1, (w2 - 7) // 3 + 1


# ----------------------------------------------------------------------------- checks


def _check_esa_pool(a, dw, b) -> None:
    _common.check_map(a, ESA_CHANNELS, "esa_pool input", MIN_SIZE, MIN_SIZE_WHY)
    _common.check_tensor(dw, "esa_pool dw", (9, ESA_CHANNELS), torch.float32, a.device, contiguous=True)
    _common.check_tensor(b, "esa_pool b", (ESA_CHANNELS,), torch.float32, a.device, contiguous=True)


def _check_esa_apply(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision) -> None:
    c, f = CHANNELS, ESA_CHANNELS
    _common.check_map(t, c, "esa_apply t", MIN_SIZE, MIN_SIZE_WHY)
    _common.check_map(c3, f, "esa_apply c3")
    n, _, h, w = t.shape
    if c3.shape[0] != n:
        raise InputError(f"esa_apply c3: batch {c3.shape[0]} != t's batch {n}")
    cdt = _common.compute_dtype(t.dtype)
    _common.check_tensor(wf, "esa_apply wf", (c, f), cdt, t.device, contiguous=True)
    _common.check_tensor(bf, "esa_apply bf", (f,), torch.float32, t.device, contiguous=True)
    _common.check_tensor(w4, "esa_apply w4", (f, c), cdt, t.device, contiguous=True)
    _common.check_tensor(b4, "esa_apply b4", (c,), torch.float32, t.device, contiguous=True)
    for x, name in ((c3, "c3"), (out, "out")):
        if x.dtype != t.dtype:
            raise InputError(f"esa_apply {name}: dtype {x.dtype} != t's dtype {t.dtype}")
        if x.device != t.device:
            raise InputError(f"esa_apply {name} is on {x.device} but t is on {t.device}")
    if out.dim() != 4 or out.shape[0] != n or tuple(out.shape[2:]) != (h, w):
        raise InputError(f"esa_apply out: expected shape [{n}, Cbuf, {h}, {w}], got {tuple(out.shape)}")
    if not 0 <= out_offset <= out.shape[1] - c:
        raise InputError(
            f"esa_apply out_offset={out_offset}: channels [{out_offset}, {out_offset + c}) "
            f"do not fit in out's {out.shape[1]} channels"
        )
    cca = (w1, b1, w2, b2)
    if any(p is not None for p in cca):
        if any(p is None for p in cca):
            raise InputError("esa_apply: pass all four CCA weights (w1, b1, w2, b2) or none")
        check_cca_weights(w1, b1, w2, b2, t.device)
    _common.check_precision(precision)


# ----------------------------------------------------------------------------- torch backend


def esa_pool_torch(a: Tensor, dw: Tensor, b: Tensor) -> Tensor:
    f = a.shape[1]
    weight = dw.t().reshape(f, 1, 3, 3)
    c1 = F.conv2d(a.float(), weight, b, stride=2, groups=f)
    v = F.max_pool2d(c1, kernel_size=7, stride=3)
    out = _common.empty_nhwc(*v.shape, dtype=a.dtype, device=a.device)
    out.copy_(v)
    return out


def esa_apply_torch(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision="ieee") -> Tensor:
    """The fused dataflow in PyTorch ops (fp32 matmuls are IEEE; ``precision`` only affects Triton)."""
    h, w = t.shape[2:]
    tf = t.float()
    g = torch.einsum("nchw,cf->nfhw", tf, wf.float()) + bf[:, None, None]
    up = F.interpolate(c3.float(), size=(h, w), mode="bilinear", align_corners=False)
    pre = torch.einsum("nfhw,fc->nchw", g + up, w4.float()) + b4[:, None, None]
    u = (tf * torch.sigmoid(pre)).to(out.dtype)
    out.narrow(1, out_offset, CHANNELS).copy_(u)
    if w1 is None:
        return t.new_empty((0,), dtype=torch.float32)
    return cca_from_stats(u.float(), w1, b1, w2, b2)


# ----------------------------------------------------------------------------- triton launchers


def esa_pool_triton(a: Tensor, dw: Tensor, b: Tensor) -> Tensor:
    from bcrn_fast.kernels.esa import esa_pool_kernel

    n, f, h, w = a.shape
    hp, wp = pooled_size(h, w)
    v = _common.empty_nhwc(n, f, hp, wp, a.dtype, a.device)
    with _common.device_guard(a):
        esa_pool_kernel[(_common.cdiv(hp * wp, POOL_BLOCK), n)](
            a, dw, b, v,
            wp, hp * wp,
            *a.stride(), *v.stride(),
            F=f, BLOCK_Q=POOL_BLOCK, WIDE_INDEX=_common.needs_wide_index(a, v),
            num_warps=POOL_WARPS,
        )  # fmt: skip
    return v


def esa_apply_triton(
    t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision="ieee", block_p=None, block_t=None
) -> Tensor:
    """Launch ``esa_apply_kernel``; ``block_p``/``block_t`` override the tiling (tests)."""
    from bcrn_fast.kernels.esa import esa_apply_kernel

    n, c, h, w = t.shape
    hl, wl = c3.shape[2:]
    hw = h * w
    bp, warps = launch_settings(hw, c, fma_dots=t.dtype == torch.float32 and precision == "ieee")
    bp = block_p or bp
    bt = block_t or MERGE_BLOCK
    tiles = _common.cdiv(hw, bp)
    u = out.narrow(1, out_offset, c)  # a view: the kernel writes the slice in place
    has_cca = w1 is not None
    if has_cca:
        check_pixels(hw, "esa_apply input")
        g = merge_group(tiles, bt)  # two-level merge: tiles per group
        s = torch.empty((n, c), dtype=torch.float32, device=t.device)
        ws, cnt = cca_workspace(n, tiles, t.device, g)
    else:  # never dereferenced (HAS_CCA=False compiles the statistics out)
        g = MERGE_BLOCK
        s = t.new_empty((0,), dtype=torch.float32)
        w1 = b1 = w2 = b2 = ws = cnt = bf
    with _common.device_guard(t):
        esa_apply_kernel[(tiles, n)](
            t, c3, wf, bf, w4, b4, u,
            w1, b1, w2, b2, s if has_cca else bf, ws, cnt,
            w, hw, tiles, g, n, hl, wl, hl / h, wl / w,
            *t.stride(), *c3.stride(), *u.stride(), *(s.stride() if has_cca else (0, 0)),
            C=c, F=ESA_CHANNELS, R=SQUEEZE, BLOCK_P=bp, BLOCK_T=bt,
            HAS_CCA=has_cca,
            # Triton 3.9's interpreter multiplies bf16 dot operands as raw uint16 bits
            # (triton-lang/triton#11584); bf16 -> fp32 is exact, so numerics match the GPU path.
            DOT_IN_FP32=backends.interpreter_enabled() and t.dtype == torch.bfloat16,
            INPUT_PRECISION=precision if t.dtype == torch.float32 else "tf32",  # ignored for half operands
            WIDE_INDEX=_common.needs_wide_index(t, c3, u),
            num_warps=warps,
        )  # fmt: skip
    return s


# One implementation per concrete backend, one signature per table. ESA has no CUDA
# kernels: under "cuda" its ops run on Triton.
ESA_POOL_IMPLS = {"torch": esa_pool_torch, "triton": esa_pool_triton, "cuda": esa_pool_triton}
ESA_APPLY_IMPLS = {"torch": esa_apply_torch, "triton": esa_apply_triton, "cuda": esa_apply_triton}


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("bcrn_fast::esa_pool", mutates_args=())
def esa_pool_op(a: Tensor, dw: Tensor, b: Tensor, backend: str) -> Tensor:
    """``v = maxpool_{7,3}(b + Σ_tap dw[tap] ⊙ a[2p + tap])``: ``[N, 16, Hp, Wp]`` channels-last."""
    _check_esa_pool(a, dw, b)
    return ESA_POOL_IMPLS[check_op_backend(backend, a.device)](a, dw, b)


@esa_pool_op.register_fake
def _esa_pool_fake(a, dw, b, backend):
    backends.check_backend_name(backend, backends.CONCRETE)
    _check_esa_pool(a, dw, b)
    hp, wp = pooled_size(a.shape[2], a.shape[3])
    return _common.empty_nhwc(a.shape[0], a.shape[1], hp, wp, a.dtype, a.device)


@torch.library.custom_op("bcrn_fast::esa_apply", mutates_args=("out",))
def esa_apply_op(
    t: Tensor,
    c3: Tensor,
    wf: Tensor,
    bf: Tensor,
    w4: Tensor,
    b4: Tensor,
    out: Tensor,
    out_offset: int,
    w1: Tensor | None,
    b1: Tensor | None,
    w2: Tensor | None,
    b2: Tensor | None,
    backend: str,
    precision: str = "ieee",
) -> Tensor:
    """``out[:, off:off+64] = t ⊙ σ(W4ᵀ·(bilinear↑(c3) + Wfᵀ·t + bf) + b4)``.

    Returns the CCA scale ``s [N, 64]`` fp32 of that map when ``w1, b1, w2, b2``
    are given (one launch), else an empty ``[0]`` fp32 tensor.
    """
    _check_esa_apply(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision)
    impl = ESA_APPLY_IMPLS[check_op_backend(backend, t.device)]
    return impl(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision)


@esa_apply_op.register_fake
def _esa_apply_fake(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, backend, precision="ieee"):
    backends.check_backend_name(backend, backends.CONCRETE)
    _check_esa_apply(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision)
    if w1 is None:
        return t.new_empty((0,), dtype=torch.float32)
    return t.new_empty((t.shape[0], CHANNELS), dtype=torch.float32)


# ----------------------------------------------------------------------------- entry points


def esa_pool(a: Tensor, pack: ESAWeights, backend: str = "auto") -> Tensor:
    """``bcrn_fast::esa_pool`` with the taps of an :class:`ESAWeights` (``backend="auto"`` resolved)."""
    return torch.ops.bcrn_fast.esa_pool(a, pack.pool_dw, pack.pool_b, backends.resolve_backend(backend, a.device))


def esa_apply(
    t: Tensor,
    c3: Tensor,
    pack: ESAWeights,
    out: Tensor,
    out_offset: int = 0,
    cca: CCAWeights | None = None,
    precision: str = "ieee",
    backend: str = "auto",
) -> Tensor:
    """``bcrn_fast::esa_apply`` with packed weights: writes ``u`` into ``out[:, off:off+64]``.

    Returns the CCA scale ``s [N, 64]`` of ``u`` when ``cca`` is given, else an empty tensor.
    """
    w1, b1, w2, b2 = cca if cca is not None else (None,) * 4
    backend = backends.resolve_backend(backend, t.device)
    return torch.ops.bcrn_fast.esa_apply(
        t, c3, pack.wf, pack.bf, pack.w4, pack.b4, out, out_offset, w1, b1, w2, b2, backend, precision
    )
