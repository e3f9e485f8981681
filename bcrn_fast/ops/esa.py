"""ESA fused ops: ``esa_pool`` (strided depthwise + max-pool), ``esa_low`` (the low-resolution branch)
and ``esa_apply`` (mask, multiply, CCA).

The ESA of a BCB is, with every conv a BSConvU (see docs/fused-ops.md)::

    a  = pw2·conv1(t)                         16 ch, written by the convnext epilogue
    v  = maxpool_{7,3}(dw2 ⊛_{stride 2} a + b2)   esa_pool (this file)
    c3 = conv3_(relu(conv3(relu(conv_max(v)))))   esa_low: three BSConv 3x3 on the ~H/6 map, one launch
    u  = t ⊙ σ(W4ᵀ·(bilinear↑(c3) + Wfᵀ·t + bf) + b4)   esa_apply (this file)

``conv_f ∘ conv1`` folds into the rank-16 map ``Wf, bf`` and ``conv4`` into
``W4, b4``; :func:`pack_esa` does the algebra in float64. ``esa_apply`` writes
``u`` into channels ``[out_offset, out_offset + 64)`` of a caller-provided
buffer and, given the CCA weights, writes the CCA scale of ``u`` (computed in
the same launch, ``bcrn_fast.ops.cca``) into a caller-provided ``[N, 64]``
fp32 view, e.g. block k's slice of BCRNFused's ``[N, 384]`` scales, using a
caller-provided merge workspace (:func:`apply_workspaces`: one allocation and
one zero fill per forward for all six blocks), or allocating both itself.
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
    CCAWorkspace,
    _fold_bsconv_1x1,
    cca_from_stats,
    cca_workspace,
    cca_workspace_size,
    cca_workspaces,
    check_cca_weights,
    check_op_backend,
    check_pixels,
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
    low_pw: Tensor  # [3, 16, 16] compute dtype: conv_max, conv3, conv3_ pointwise weights transposed [k, in, out]
    low_dw: Tensor  # [3, 9, 16] fp32: their depthwise taps, tap = 3·ky + kx
    low_b: Tensor  # [3, 16] fp32: their depthwise biases


def pack_esa(esa, dtype: torch.dtype) -> ESAWeights:
    """Fold an ``ESA`` module's conv2 (depthwise), conv_f ∘ conv1 and conv4, and stack its low-resolution
    branch (conv_max, conv3, conv3_), for storage ``dtype``.

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
    low = [_low_stage(conv) for conv in (esa.conv_max, esa.conv3, esa.conv3_)]
    low_pw, low_dw, low_b = (torch.stack(parts) for parts in zip(*low, strict=True))
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
        low_pw.to(**mat).contiguous(),
        low_dw.to(**vec).contiguous(),
        low_b.to(**vec).contiguous(),
    )


def _low_stage(conv) -> tuple[Tensor, Tensor, Tensor]:
    """A 3x3 pad-1 ``BSConvU`` of the low-res branch as float64 ``(pwᵀ [16, 16], taps [9, 16], bias [16])``."""
    pw, dw = conv.pw, conv.dw
    f = ESA_CHANNELS
    if tuple(pw.weight.shape) != (f, f, 1, 1) or pw.bias is not None:
        raise InputError(f"ESA low-res conv: expected a bias-free 1x1 {f}->{f} pointwise conv, got {pw}")
    if tuple(dw.weight.shape) != (f, 1, 3, 3) or tuple(dw.padding) != (1, 1) or tuple(dw.stride) != (1, 1):
        raise InputError(f"ESA low-res conv: expected a depthwise 3x3 stride-1 pad-1 conv, got {dw}")
    bias = torch.zeros(f, dtype=torch.float64) if dw.bias is None else dw.bias.detach().double()
    return pw.weight.detach().double().reshape(f, f).t(), dw.weight.detach().double().reshape(f, 9).t(), bias


def pooled_size(h: int, w: int) -> tuple[int, int]:
    """Spatial size after conv2 (3x3, stride 2, no padding) and max_pool2d(7, 3)."""
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    return (h2 - 7) // 3 + 1, (w2 - 7) // 3 + 1


# ----------------------------------------------------------------------------- checks


def _check_esa_pool(a, dw, b) -> None:
    _common.check_map(a, ESA_CHANNELS, "esa_pool input", MIN_SIZE, MIN_SIZE_WHY)
    _common.check_tensor(dw, "esa_pool dw", (9, ESA_CHANNELS), torch.float32, a.device, contiguous=True)
    _common.check_tensor(b, "esa_pool b", (ESA_CHANNELS,), torch.float32, a.device, contiguous=True)


def _check_esa_low(v, pw, dw, b, precision) -> None:
    f = ESA_CHANNELS
    _common.check_map(v, f, "esa_low input")
    cdt = _common.compute_dtype(v.dtype)
    _common.check_tensor(pw, "esa_low pw", (3, f, f), cdt, v.device, contiguous=True)
    _common.check_tensor(dw, "esa_low dw", (3, 9, f), torch.float32, v.device, contiguous=True)
    _common.check_tensor(b, "esa_low b", (3, f), torch.float32, v.device, contiguous=True)
    _common.check_precision(precision)


def _check_esa_apply(
    t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, scale, partials, counters, precision
) -> None:
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
        if scale is None:
            raise InputError("esa_apply: with the CCA weights, pass scale, the [N, 64] fp32 output of s")
        _common.check_tensor(scale, "esa_apply scale", (n, c), torch.float32, t.device)
    elif scale is not None or partials is not None or counters is not None:
        raise InputError("esa_apply: scale, partials and counters are outputs of the CCA: pass the CCA weights")
    if (partials is None) != (counters is None):
        raise InputError("esa_apply: pass both workspace tensors (partials, counters) or neither")
    if partials is not None:
        need = workspace_size(n, h, w, t.dtype, precision)
        for x, name, dtype, numel in (
            (partials, "partials", torch.float32, need[0]),
            (counters, "counters", torch.int32, need[1]),
        ):
            _common.check_tensor(x, f"esa_apply {name}", (numel,), dtype, t.device, contiguous=True)
    _common.check_precision(precision)


# ----------------------------------------------------------------------------- workspaces


def apply_launch_config(hw: int, channels: int, dtype: torch.dtype, precision: str) -> tuple[int, int, int]:
    """(BLOCK_P, num_warps, num_stages) of esa_apply_kernel: the ``CONFIGS`` table of ``kernels/esa.py``."""
    from bcrn_fast.kernels import dot_mode, esa

    return esa.launch_config(hw, channels, dot_mode(dtype, precision))


def _apply_tiles(hw: int, dtype: torch.dtype, precision: str) -> int:
    """esa_apply_kernel's tiles per image (its CCA partials) under the launch configuration."""
    bp = apply_launch_config(hw, CHANNELS, dtype, precision)[0]
    return _common.cdiv(hw, bp)


def workspace_size(n: int, h: int, w: int, dtype: torch.dtype, precision: str) -> tuple[int, int]:
    """``(partials, counters)`` element counts of one esa_apply's CCA merge workspace on ``[n, 64, h, w]``."""
    tiles = _apply_tiles(h * w, dtype, precision)
    return cca_workspace_size(n, tiles, merge_group(tiles))


def apply_workspaces(
    blocks: int, n: int, h: int, w: int, dtype: torch.dtype, precision: str, device: torch.device
) -> list[CCAWorkspace]:
    """Merge workspaces for ``blocks`` esa_apply launches on ``[n, 64, h, w]`` maps: one allocation and one
    zero fill of the counters for all of them (BCRNFused: one per forward). Each is good for one launch."""
    tiles = _apply_tiles(h * w, dtype, precision)
    return cca_workspaces(blocks, n, tiles, device, merge_group(tiles))


# ----------------------------------------------------------------------------- torch backend


def esa_pool_torch(a: Tensor, dw: Tensor, b: Tensor) -> Tensor:
    f = a.shape[1]
    weight = dw.t().reshape(f, 1, 3, 3)
    c1 = F.conv2d(a.float(), weight, b, stride=2, groups=f)
    v = F.max_pool2d(c1, kernel_size=7, stride=3)
    out = _common.empty_nhwc(*v.shape, dtype=a.dtype, device=a.device)
    out.copy_(v)
    return out


def esa_low_torch(v: Tensor, pw: Tensor, dw: Tensor, b: Tensor, precision: str = "ieee") -> Tensor:
    """The kernel's dataflow in PyTorch ops: per stage the pointwise once (fp32 math on compute-dtype operands),
    the depthwise 3x3 pad 1 + bias in fp32, relu after the first two, each result rounded to v's dtype."""
    f = v.shape[1]
    x = v
    for k in range(3):
        y = torch.einsum("nihw,io->nohw", x.to(pw.dtype).float(), pw[k].float())
        z = F.conv2d(y, dw[k].t().reshape(f, 1, 3, 3), b[k], padding=1, groups=f)
        x = (torch.relu(z) if k < 2 else z).to(v.dtype)
    out = _common.empty_nhwc(*v.shape, dtype=v.dtype, device=v.device)
    out.copy_(x)
    return out


def esa_apply_torch(
    t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision="ieee", *, scale=None, workspace=None
) -> Tensor:
    """The fused dataflow in PyTorch ops (fp32 matmuls are IEEE; ``precision`` only affects Triton).

    Writes ``u`` into ``out``'s slice and, with the CCA weights, ``s`` into ``scale`` (allocated when None),
    which it returns (else an empty tensor). ``workspace`` is the Triton merge's; unused here.
    """
    h, w = t.shape[2:]
    tf = t.float()
    g = torch.einsum("nchw,cf->nfhw", tf, wf.float()) + bf[:, None, None]
    up = F.interpolate(c3.float(), size=(h, w), mode="bilinear", align_corners=False)
    pre = torch.einsum("nfhw,fc->nchw", g + up, w4.float()) + b4[:, None, None]
    u = (tf * torch.sigmoid(pre)).to(out.dtype)
    out.narrow(1, out_offset, CHANNELS).copy_(u)
    if w1 is None:
        return t.new_empty((0,), dtype=torch.float32)
    s = cca_from_stats(u.float(), w1, b1, w2, b2)
    if scale is None:
        return s
    scale.copy_(s)
    return scale


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


def esa_low_triton(
    v: Tensor, pw: Tensor, dw: Tensor, b: Tensor, precision: str = "ieee", *, side: int | None = None,
    scratch: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Launch ``esa_low_kernel``; ``side`` overrides the block side, ``scratch`` the fp32 scratch (tests)."""
    from bcrn_fast.kernels import esa as kernels

    n, f, hl, wl = v.shape
    s, warps = kernels.low_launch_config(hl, wl, v.dtype)
    s = side or s
    tiles_w = _common.cdiv(wl, s - 6)
    tiles = _common.cdiv(hl, s - 6) * tiles_w
    if scratch is None:  # fully written before it is read: no fill
        scratch = torch.empty((n * tiles * 2 * s * s * f,), dtype=torch.float32, device=v.device)
    elif scratch.numel() < n * tiles * 2 * s * s * f or scratch.dtype != torch.float32:
        raise InputError(f"esa_low scratch: expected {n * tiles * 2 * s * s * f} fp32 elements")
    c3 = _common.empty_nhwc(n, f, hl, wl, v.dtype, v.device)
    with _common.device_guard(v):
        kernels.esa_low_kernel[(tiles, n)](
            v, pw, dw, b, c3, scratch,
            hl, wl, tiles_w, tiles,
            *v.stride(), *c3.stride(),
            F=f, S=s,
            DOT_IN_FP32=backends.interpreter_enabled() and v.dtype == torch.bfloat16,  # see esa_apply_triton
            INPUT_PRECISION=precision if v.dtype == torch.float32 else "tf32",  # ignored for half operands
            WIDE_INDEX=_common.needs_wide_index(v, c3),
            num_warps=warps,
        )  # fmt: skip
    return c3


def esa_apply_triton(
    t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision="ieee", block_p=None, block_t=None, *,
    scale=None, workspace=None,
) -> Tensor:  # fmt: skip
    """Launch ``esa_apply_kernel``; ``block_p``/``block_t`` override the tiling (tests).

    With the CCA weights, ``s`` goes into ``scale`` (allocated when None), which is returned (else an empty
    tensor); ``workspace`` (zeroed counters, :func:`apply_workspaces`) or a fresh one holds the merge.
    """
    from bcrn_fast.kernels.esa import esa_apply_kernel

    n, c, h, w = t.shape
    hl, wl = c3.shape[2:]
    hw = h * w
    bp, warps, stages = apply_launch_config(hw, c, t.dtype, precision)
    bp = block_p or bp
    bt = block_t or MERGE_BLOCK
    tiles = _common.cdiv(hw, bp)
    u = out.narrow(1, out_offset, c)  # a view: the kernel writes the slice in place
    has_cca = w1 is not None
    if has_cca:
        check_pixels(hw, "esa_apply input")
        g = merge_group(tiles, bt)  # two-level merge: tiles per group
        s = torch.empty((n, c), dtype=torch.float32, device=t.device) if scale is None else scale
        if workspace is None:
            ws, cnt = cca_workspace(n, tiles, t.device, g)
        else:
            ws, cnt = workspace
            need = cca_workspace_size(n, tiles, g)
            if ws.numel() < need[0] or cnt.numel() < need[1]:
                raise InputError(f"esa_apply workspace: {need} elements needed, got {(ws.numel(), cnt.numel())}")
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
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    return s


# One implementation per concrete backend, one signature per table. ESA has no CUDA
# kernels: under "cuda" its ops run on Triton.
ESA_POOL_IMPLS = {"torch": esa_pool_torch, "triton": esa_pool_triton, "cuda": esa_pool_triton}
ESA_LOW_IMPLS = {"torch": esa_low_torch, "triton": esa_low_triton, "cuda": esa_low_triton}
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


@torch.library.custom_op("bcrn_fast::esa_low", mutates_args=())
def esa_low_op(v: Tensor, pw: Tensor, dw: Tensor, b: Tensor, backend: str, precision: str = "ieee") -> Tensor:
    """``c3 = conv3_(relu(conv3(relu(conv_max(v)))))``, each ``b[k] + dw[k] ⊛ (pw[k]ᵀ · x)`` 3x3 pad 1:
    ``[N, 16, Hl, Wl]`` channels-last, one launch."""
    _check_esa_low(v, pw, dw, b, precision)
    return ESA_LOW_IMPLS[check_op_backend(backend, v.device)](v, pw, dw, b, precision)


@esa_low_op.register_fake
def _esa_low_fake(v, pw, dw, b, backend, precision="ieee"):
    backends.check_backend_name(backend, backends.CONCRETE)
    _check_esa_low(v, pw, dw, b, precision)
    return _common.empty_nhwc(*v.shape, dtype=v.dtype, device=v.device)


@torch.library.custom_op("bcrn_fast::esa_apply", mutates_args=("out", "scale", "partials", "counters"))
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
    scale: Tensor | None,
    partials: Tensor | None,
    counters: Tensor | None,
    backend: str,
    precision: str = "ieee",
) -> None:
    """``out[:, off:off+64] = t ⊙ σ(W4ᵀ·(bilinear↑(c3) + Wfᵀ·t + bf) + b4)``.

    Given ``w1, b1, w2, b2`` it also writes the CCA scale of that map into ``scale`` (an ``[N, 64]`` fp32
    view, any strides), in the same launch; ``partials``/``counters`` (:func:`apply_workspaces`, counters
    zeroed, each used once) hold the merge tree, or pass None for a fresh workspace.
    """
    _check_esa_apply(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, scale, partials, counters, precision)
    impl = ESA_APPLY_IMPLS[check_op_backend(backend, t.device)]
    workspace = None if partials is None else CCAWorkspace(partials, counters)
    impl(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, precision, scale=scale, workspace=workspace)


@esa_apply_op.register_fake
def _esa_apply_fake(
    t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, scale, partials, counters, backend, precision="ieee"
):
    backends.check_backend_name(backend, backends.CONCRETE)
    _check_esa_apply(t, c3, wf, bf, w4, b4, out, out_offset, w1, b1, w2, b2, scale, partials, counters, precision)


# ----------------------------------------------------------------------------- entry points


def esa_pool(a: Tensor, pack: ESAWeights, backend: str = "auto") -> Tensor:
    """``bcrn_fast::esa_pool`` with the taps of an :class:`ESAWeights` (``backend="auto"`` resolved)."""
    return torch.ops.bcrn_fast.esa_pool(a, pack.pool_dw, pack.pool_b, backends.resolve_backend(backend, a.device))


def esa_low(v: Tensor, pack: ESAWeights, precision: str = "ieee", backend: str = "auto") -> Tensor:
    """``bcrn_fast::esa_low`` with the low-res branch of an :class:`ESAWeights`: the pooled map to ``c3``."""
    backend = backends.resolve_backend(backend, v.device)
    return torch.ops.bcrn_fast.esa_low(v, pack.low_pw, pack.low_dw, pack.low_b, backend, precision)


def esa_apply(
    t: Tensor,
    c3: Tensor,
    pack: ESAWeights,
    out: Tensor,
    out_offset: int = 0,
    cca: CCAWeights | None = None,
    precision: str = "ieee",
    backend: str = "auto",
    scale: Tensor | None = None,
    workspace: CCAWorkspace | None = None,
) -> Tensor:
    """``bcrn_fast::esa_apply`` with packed weights: writes ``u`` into ``out[:, off:off+64]``.

    With ``cca`` it writes the CCA scale of ``u`` into ``scale`` (a fresh ``[N, 64]`` fp32 tensor when None)
    and returns it, merging in ``workspace`` (:func:`apply_workspaces`) or a fresh one; else returns an
    empty tensor.
    """
    backend = backends.resolve_backend(backend, t.device)
    if cca is None:
        w1 = b1 = w2 = b2 = None
        scale = t.new_empty((0,), dtype=torch.float32)
        args = (None, None, None)
    else:
        w1, b1, w2, b2 = cca
        if scale is None:
            scale = torch.empty((t.shape[0], CHANNELS), dtype=torch.float32, device=t.device)
        args = (scale, *(workspace if workspace is not None else (None, None)))
    torch.ops.bcrn_fast.esa_apply(
        t, c3, pack.wf, pack.bf, pack.w4, pack.b4, out, out_offset, w1, b1, w2, b2, *args, backend, precision
    )
    return scale
