"""Fused ConvNeXt inverse bottleneck (BCRN's ``convNextBlock``) in one launch.

    z = b_d + Σ_tap dw[tap] ⊙ t[p + tap]                 depthwise 3x3, pad 1
    y = t + W2ᵀ·GELU(W1ᵀ·z + b1) + b2                      1x1 C→HID, exact GELU, 1x1 HID→C
    a = Aᵀ·y + a0                                          optional: the 16-channel ESA pre-map

The HID-wide (256) hidden tile never leaves the chip in the Triton kernel: it
is processed in chunks of 64 (``h = GELU(z·W1_c + b1_c); acc += h·W2_c``).
The kernel's GELU is ``h·Φ(h)`` with ``Φ`` from one exp2 and a degree-7
polynomial: its erf is within 1e-6 of the exact erf for every fp32 input
(``tests/test_gelu.py``; docs/fused-ops.md, "GELU"); the torch backend uses
``F.gelu`` (exact erf).
``A``/``a0`` fold ESA's ``conv1`` (BSConvU(64, 16, 1)) and the pointwise part
of its ``conv2`` into one 64→16 map: ``A = (pw2 · diag(d1) · pw1)ᵀ``,
``a0 = pw2 · b1`` (docs/fused-ops.md).

Layers: the Triton kernel (``bcrn_fast.kernels.convnext``), its launcher
:func:`convnext_triton`, the PyTorch backend :func:`convnext_torch`, the custom
op ``bcrn_fast::convnext``, the checked entry points :func:`convnext` /
:func:`convnext_packed` and the packing :func:`pack_convnext` / :func:`pack_esa_pre`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast.ops import _common, backends, cuda_ext
from bcrn_fast.validation import InputError

__all__ = [
    "ConvNeXtPack",
    "EsaPrePack",
    "convnext",
    "convnext_packed",
    "convnext_torch",
    "convnext_triton",
    "pack_convnext",
    "pack_esa_pre",
]

HIDDEN_BLOCK = 64  # hidden channels per chunk in the Triton kernel


# --------------------------------------------------------------------------- packing


class ConvNeXtPack(NamedTuple):
    """Packed weights of one ``ConvNeXtBlock`` (C = 64, HID = 256 in BCRN)."""

    dw: torch.Tensor  # [9, C] fp32: depthwise taps, tap = kh*3 + kw
    bd: torch.Tensor  # [C] fp32: depthwise bias
    w1: torch.Tensor  # [C, HID] compute dtype: c1_r_1 weight, transposed
    b1: torch.Tensor  # [HID] fp32
    w2: torch.Tensor  # [HID, C] compute dtype: c1_r_2 weight, transposed
    b2: torch.Tensor  # [C] fp32


class EsaPrePack(NamedTuple):
    """ESA ``conv2.pw ∘ conv1`` folded into one affine 1x1 map (C → E = 16)."""

    a_w: torch.Tensor  # [C, E] compute dtype: A
    a_b: torch.Tensor  # [E] fp32: a0


def _bias64(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        return torch.zeros(conv.out_channels, dtype=torch.float64, device=conv.weight.device)
    return conv.bias.detach().double()


@torch.no_grad()
def pack_convnext(block: nn.Module, dtype: torch.dtype = torch.float32) -> ConvNeXtPack:
    """Pack a ``bcrn_fast.model.ConvNeXtBlock`` for storage ``dtype`` (exact, in float64, then cast)."""
    for name in ("c1_d_3", "c1_r_1", "c1_r_2"):
        if not isinstance(getattr(block, name, None), nn.Conv2d):
            raise InputError(f"pack_convnext expects a ConvNeXtBlock (Conv2d {name}), got {type(block).__name__}")
    d, r1, r2 = block.c1_d_3, block.c1_r_1, block.c1_r_2
    c = d.out_channels
    if (
        tuple(d.kernel_size) != (3, 3)
        or d.groups != c
        or tuple(d.padding) != (1, 1)
        or tuple(d.stride) != (1, 1)
        or tuple(d.dilation) != (1, 1)
        or d.padding_mode != "zeros"
    ):
        raise InputError(f"c1_d_3 must be a depthwise 3x3 conv with zero padding 1 and stride 1, got {d}")
    if tuple(r1.kernel_size) != (1, 1) or tuple(r2.kernel_size) != (1, 1) or r1.groups != 1 or r2.groups != 1:
        raise InputError(f"c1_r_1 / c1_r_2 must be dense 1x1 convs, got {r1} / {r2}")
    hid = r1.out_channels
    if r1.in_channels != c or r2.in_channels != hid or r2.out_channels != c:
        raise InputError(
            f"channel mismatch: c1_d_3 {c}, c1_r_1 {r1.in_channels}->{hid}, c1_r_2 {r2.in_channels}->{r2.out_channels}"
        )
    cd = _common.compute_dtype(dtype)
    return ConvNeXtPack(
        dw=d.weight.detach().double().reshape(c, 9).t().float().contiguous(),
        bd=_bias64(d).float().contiguous(),
        w1=r1.weight.detach().double().reshape(hid, c).t().to(cd).contiguous(),
        b1=_bias64(r1).float().contiguous(),
        w2=r2.weight.detach().double().reshape(c, hid).t().to(cd).contiguous(),
        b2=_bias64(r2).float().contiguous(),
    )


@torch.no_grad()
def pack_esa_pre(esa: nn.Module, dtype: torch.dtype = torch.float32) -> EsaPrePack:
    """Fold ``esa.conv2.pw ∘ esa.conv1`` (``bcrn_fast.model.ESA``) into ``A [C, 16]``, ``a0 [16]``.

    ``conv2.pw(conv1(y)) = pw2·(d1 ⊙ (pw1·y) + b1) = (pw2·diag(d1)·pw1)·y + pw2·b1``,
    folded in float64, then A cast to the compute dtype and a0 to fp32.
    """
    conv1, conv2 = getattr(esa, "conv1", None), getattr(esa, "conv2", None)
    if conv1 is None or conv2 is None or not hasattr(conv1, "pw") or not hasattr(conv2, "pw"):
        raise InputError(f"pack_esa_pre expects a bcrn_fast.model.ESA, got {type(esa).__name__}")
    pw1, dw1, pw2 = conv1.pw, conv1.dw, conv2.pw
    if tuple(dw1.kernel_size) != (1, 1) or tuple(dw1.stride) != (1, 1) or tuple(pw2.kernel_size) != (1, 1):
        raise InputError("ESA conv1 must be a BSConvU with kernel 1 and stride 1 (conv2.pw a 1x1 conv)")
    if pw1.bias is not None or pw2.bias is not None:
        raise InputError("ESA conv1.pw / conv2.pw must have no bias (BSConvU)")
    f, c = pw1.out_channels, pw1.in_channels
    w1 = pw1.weight.detach().double().reshape(f, c)
    d1 = dw1.weight.detach().double().reshape(f)
    b1 = _bias64(dw1)
    w2 = pw2.weight.detach().double().reshape(pw2.out_channels, f)
    a = (w2 @ torch.diag(d1) @ w1).t()  # [C, E]
    a0 = w2 @ b1  # [E]
    return EsaPrePack(a_w=a.to(_common.compute_dtype(dtype)).contiguous(), a_b=a0.float().contiguous())


# --------------------------------------------------------------------------- checks


def check_convnext_args(
    t: torch.Tensor,
    dw: torch.Tensor,
    bd: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    esa_a: torch.Tensor | None,
    esa_b: torch.Tensor | None,
    precision: str,
) -> None:
    """Validate every argument of ``convnext`` (metadata only)."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"t: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise InputError(f"t: expected a 4-D tensor [N, C, H, W], got shape {tuple(t.shape)}")
    _common.check_kernel_dtype(t, "t")
    if not isinstance(w1, torch.Tensor) or w1.dim() != 2:
        raise InputError(f"w1: expected a 2-D tensor [C, HID], got {getattr(w1, 'shape', w1)}")
    c, hid = w1.shape
    if t.shape[1] != c:
        raise InputError(f"t has {t.shape[1]} channels (shape {tuple(t.shape)}) but the weights expect C = {c}")
    cd = _common.compute_dtype(t.dtype)
    _common.check_tensor(w1, "w1", (c, hid), cd, t.device)
    _common.check_tensor(w2, "w2", (hid, c), cd, t.device)
    _common.check_tensor(dw, "dw", (9, c), torch.float32, t.device)
    _common.check_tensor(bd, "bd", (c,), torch.float32, t.device)
    _common.check_tensor(b1, "b1", (hid,), torch.float32, t.device)
    _common.check_tensor(b2, "b2", (c,), torch.float32, t.device)
    if (esa_a is None) != (esa_b is None):
        raise InputError("esa_a and esa_b must be given together (or both None)")
    if esa_a is not None:
        if not isinstance(esa_a, torch.Tensor) or esa_a.dim() != 2:
            raise InputError(f"esa_a: expected a 2-D tensor [C, E], got {getattr(esa_a, 'shape', esa_a)}")
        e = esa_a.shape[1]
        _common.check_tensor(esa_a, "esa_a", (c, e), cd, t.device)
        _common.check_tensor(esa_b, "esa_b", (e,), torch.float32, t.device)
    _common.check_precision(precision)


def _alloc_outs(t: torch.Tensor, esa_a: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` channels-last like ``t``'s shape; ``a`` channels-last ``[N, E, H, W]`` or empty."""
    n, c, h, w = t.shape
    y = _common.empty_nhwc(n, c, h, w, dtype=t.dtype, device=t.device)
    if esa_a is None:
        a = torch.empty((0,), dtype=t.dtype, device=t.device)
    else:
        a = _common.empty_nhwc(n, esa_a.shape[1], h, w, dtype=t.dtype, device=t.device)
    return y, a


# --------------------------------------------------------------------------- launch config


def _launch_config(hw: int, dtype: torch.dtype, precision: str, wide_index: bool = False) -> tuple[int, int]:
    """(BLOCK_P, num_warps) from ``_common.pixel_block`` plus per-mode register caps.

    From ptxas resource usage of the AOT-compiled kernel (C 64, HID 256, sm_80
    and sm_90): half runs BLOCK_P 128 with 8 warps without spills (more pixels
    per W1/W2 chunk load); fp32 tf32 BLOCK_P 64 with 4 warps; fp32 IEEE (FMA
    dots, no tensor cores) spills above BLOCK_P 16. Registers at these configs
    (Triton 3.9, pipelined tap loop, polynomial GELU; sm_80 / sm_90, 0 spills):
    half 188-194 / 131-132, tf32 168 / 214, IEEE 96 / 90. The int64 offset path
    (``wide_index``) runs fp32 IEEE on 8 warps (4 warps spill 8 B on sm_86/sm_89, Triton 3.9).
    """
    block_p, num_warps = _common.pixel_block(hw, 64)
    if dtype == torch.float32:
        block_p = min(block_p, 64 if precision == "tf32" else 16)
        if precision == "ieee" and wide_index:
            num_warps = 8
    elif block_p == 128:
        num_warps = 8
    return block_p, num_warps


# --------------------------------------------------------------------------- backends


def convnext_torch(
    t: torch.Tensor,
    dw: torch.Tensor,
    bd: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    esa_a: torch.Tensor | None,
    esa_b: torch.Tensor | None,
    precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused dataflow in PyTorch ops, fp32 on "chip", rounding where the kernel rounds.

    The GEMM operands (z, the GELU output, y) are rounded to the compute dtype
    right before each matmul, as the kernel does before ``tl.dot``; the whole
    hidden width is done at once here (chunking only bounds the kernel's
    registers; GELU is elementwise). fp32 matmuls run in IEEE mode.
    """
    n, c, h, w = t.shape
    cd = w1.dtype
    tf = t.float()
    # depthwise 3x3 + bias, zero padding: b_d + Σ_tap dw[tap] ⊙ t[p + tap] (one grouped conv)
    z = F.conv2d(tf, dw.t().reshape(c, 1, 3, 3), bd, padding=1, groups=c).permute(0, 2, 3, 1)  # [N, H, W, C]
    hid = F.gelu(torch.matmul(z.to(cd).float(), w1.float()) + b1)  # [N, H, W, HID] fp32
    y = tf.permute(0, 2, 3, 1) + (torch.matmul(hid.to(cd).float(), w2.float()) + b2)
    yq = y.to(t.dtype)
    y_out, a_out = _alloc_outs(t, esa_a)
    y_out.copy_(yq.permute(0, 3, 1, 2))
    if esa_a is not None:
        a = torch.matmul(yq.to(cd).float(), esa_a.float()) + esa_b
        a_out.copy_(a.permute(0, 3, 1, 2))
    return y_out, a_out


def convnext_triton(
    t: torch.Tensor,
    dw: torch.Tensor,
    bd: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    esa_a: torch.Tensor | None,
    esa_b: torch.Tensor | None,
    precision: str = "ieee",
    out: torch.Tensor | None = None,
    out_a: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused Triton kernel (one launch); ``out``/``out_a`` (optional) are written in place.

    The arguments are checked once by the entry point (:func:`check_convnext_args`); only ``out``/``out_a`` here.
    """
    import triton

    from bcrn_fast.kernels.convnext import convnext_kernel

    y, a = _alloc_outs(t, esa_a)
    if out is not None:
        _common.check_tensor(out, "out", tuple(t.shape), t.dtype, t.device)
        y = out
    if out_a is not None:
        _common.check_tensor(out_a, "out_a", tuple(a.shape), t.dtype, t.device)
        a = out_a
    n, c, h, w = t.shape
    hid = w1.shape[1]
    if y.numel() == 0:
        return y, a

    has_esa = esa_a is not None
    e = esa_a.shape[1] if has_esa else 16
    dw, bd, w1, b1, w2, b2 = (v.contiguous() for v in (dw, bd, w1, b1, w2, b2))
    aw = esa_a.contiguous() if has_esa else w1  # dummy pointers when the epilogue is off
    ab = esa_b.contiguous() if has_esa else b1
    a_arg = a if has_esa else y
    c_pad = _common.next_pow2(c)
    hid_block = min(_common.next_pow2(hid), HIDDEN_BLOCK)
    wide_index = _common.needs_wide_index(t, y, a_arg)
    block_p, num_warps = _launch_config(h * w, t.dtype, precision, wide_index)
    grid = (triton.cdiv(h * w, block_p), n)
    dot_precision = precision if t.dtype == torch.float32 else "tf32"  # ignored for half operands
    with _common.device_guard(t):  # launch on t's GPU, not the current one
        convnext_kernel[grid](
            t, dw, bd, w1, b1, w2, b2, aw, ab, y, a_arg,
            c, hid, e, h, w,
            *t.stride(), *y.stride(), *a_arg.stride(),
            HAS_ESA=has_esa, BLOCK_P=block_p, C_PAD=c_pad, HID_BLOCK=hid_block,
            E_PAD=_common.next_pow2(e), PRECISION=dot_precision,
            DOT_IN_FP32=backends.interpreter_enabled() and t.dtype == torch.bfloat16,
            WIDE_INDEX=wide_index,
            num_warps=num_warps,
        )  # fmt: skip
    return y, a


# The backends of bcrn_fast::convnext, keyed by concrete backend name; one signature.
CONVNEXT_IMPLS = {"torch": convnext_torch, "triton": convnext_triton, "cuda": cuda_ext.convnext}


# --------------------------------------------------------------------------- custom op


@torch.library.custom_op("bcrn_fast::convnext", mutates_args=())
def convnext_op(
    t: torch.Tensor,
    dw: torch.Tensor,
    bd: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    esa_a: torch.Tensor | None,
    esa_b: torch.Tensor | None,
    precision: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``bcrn_fast::convnext``: dispatch to the ``"cuda"``, ``"triton"`` or ``"torch"`` backend."""
    backends.check_backend_name(backend, backends.CONCRETE)
    return CONVNEXT_IMPLS[backend](t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision)


@convnext_op.register_fake
def _convnext_fake(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision, backend):
    return _alloc_outs(t, esa_a)


# --------------------------------------------------------------------------- entry points


def convnext(
    t: torch.Tensor,
    dw: torch.Tensor,
    bd: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    esa_a: torch.Tensor | None = None,
    esa_b: torch.Tensor | None = None,
    precision: str = "ieee",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ConvNeXt block (see the module docstring for the formula).

    Args:
        t: ``[N, C, H, W]`` fp32/fp16/bf16 block input, any strides.
        dw ``[9, C]``, bd ``[C]``, b1 ``[HID]``, b2 ``[C]``: fp32.
        w1 ``[C, HID]``, w2 ``[HID, C]``: transposed 1x1 weights in the compute dtype.
        esa_a ``[C, E]`` (compute dtype), esa_b ``[E]`` (fp32): optional ESA pre-map epilogue.
        precision: ``"ieee"`` or ``"tf32"`` fp32 dots. backend: ``"auto"``, ``"triton"``, ``"torch"``, ``"cuda"``.

    Returns ``(y, a)``: ``y`` ``[N, C, H, W]`` channels-last in t's dtype; ``a``
    ``[N, E, H, W]`` channels-last, or an empty tensor without the epilogue.
    """
    check_convnext_args(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision)
    backend = backends.resolve_backend(backend, t.device)
    return torch.ops.bcrn_fast.convnext(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision, backend)


def convnext_packed(
    t: torch.Tensor,
    pack: ConvNeXtPack,
    esa: EsaPrePack | None = None,
    precision: str = "ieee",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`convnext` with the weights of a :class:`ConvNeXtPack` (and optional :class:`EsaPrePack`)."""
    esa_a, esa_b = (esa.a_w, esa.a_b) if esa is not None else (None, None)
    return convnext(t, *pack, esa_a=esa_a, esa_b=esa_b, precision=precision, backend=backend)
