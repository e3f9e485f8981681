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

Layers: the packing (:func:`pack_convnext` / :func:`pack_esa_pre`), the contract
check :func:`check_convnext_args`, three backends with one signature
``(ConvNeXtArgs, out=None, out_a=None)`` in :data:`CONVNEXT_IMPLS` —
:func:`convnext_torch`, :func:`convnext_triton` (launches
``bcrn_fast.kernels.convnext``) and :func:`convnext_cuda` — and the entry point
:func:`convnext`, which *is* the custom op ``bcrn_fast::convnext``.
:func:`convnext_packed` is the one convenience wrapper.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast.ops import _common, backends, cuda_ext
from bcrn_fast.validation import InputError

__all__ = [
    "CONVNEXT_IMPLS",
    "ConvNeXtArgs",
    "ConvNeXtPack",
    "EsaPrePack",
    "convnext",
    "convnext_cuda",
    "convnext_packed",
    "convnext_torch",
    "convnext_triton",
    "pack_convnext",
    "pack_esa_pre",
]

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


def check_convnext_args(a: ConvNeXtArgs) -> None:
    """Validate every argument of ``convnext`` (metadata only)."""
    t, w1, esa_a = a.t, a.w1, a.esa_a
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
    _common.check_tensor(a.w2, "w2", (hid, c), cd, t.device)
    _common.check_tensor(a.dw, "dw", (9, c), torch.float32, t.device)
    _common.check_tensor(a.bd, "bd", (c,), torch.float32, t.device)
    _common.check_tensor(a.b1, "b1", (hid,), torch.float32, t.device)
    _common.check_tensor(a.b2, "b2", (c,), torch.float32, t.device)
    if (esa_a is None) != (a.esa_b is None):
        raise InputError("esa_a and esa_b must be given together (or both None)")
    if esa_a is not None:
        if not isinstance(esa_a, torch.Tensor) or esa_a.dim() != 2:
            raise InputError(f"esa_a: expected a 2-D tensor [C, E], got {getattr(esa_a, 'shape', esa_a)}")
        e = esa_a.shape[1]
        _common.check_tensor(esa_a, "esa_a", (c, e), cd, t.device)
        _common.check_tensor(a.esa_b, "esa_b", (e,), torch.float32, t.device)
    _common.check_precision(a.precision)


def alloc_outs(t: torch.Tensor, esa_a: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` channels-last like ``t``'s shape; ``a`` channels-last ``[N, E, H, W]`` or empty."""
    n, c, h, w = t.shape
    y = _common.empty_nhwc(n, c, h, w, dtype=t.dtype, device=t.device)
    if esa_a is None:
        a = torch.empty((0,), dtype=t.dtype, device=t.device)
    else:
        a = _common.empty_nhwc(n, esa_a.shape[1], h, w, dtype=t.dtype, device=t.device)
    return y, a


def _outputs(a: ConvNeXtArgs, out: torch.Tensor | None, out_a: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``(y, a)``: the caller's ``out``/``out_a`` (checked) where given, else new tensors."""
    y, e = alloc_outs(a.t, a.esa_a)
    if out is not None:
        _common.check_tensor(out, "out", tuple(y.shape), a.t.dtype, a.t.device)
        y = out
    if out_a is not None:
        _common.check_tensor(out_a, "out_a", tuple(e.shape), a.t.dtype, a.t.device)
        e = out_a
    return y, e


# --------------------------------------------------------------------------- launch config


def _launch_config(*args: object, **kwargs: object) -> tuple[int, ...]:
    """(BLOCK_P, HID_BLOCK cap, num_warps, num_stages, maxnreg): ``launch_config`` of ``kernels/convnext.py``,
    its ``CONFIGS`` table (the seam tests and ``bcrn_fast.occupancy`` replace)."""
    from bcrn_fast.kernels.convnext import launch_config

    return launch_config(*args, **kwargs)


# --------------------------------------------------------------------------- backends
# Every backend takes the op's argument record (ConvNeXtArgs, checked) and optional outputs to write in place.


def convnext_torch(
    a: ConvNeXtArgs, out: torch.Tensor | None = None, out_a: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused dataflow in PyTorch ops, fp32 on "chip", rounding where the kernel rounds.

    The GEMM operands (z, the GELU output, y) are rounded to the compute dtype
    right before each matmul, as the kernel does before ``tl.dot``; the whole
    hidden width is done at once here (chunking only bounds the kernel's
    registers; GELU is elementwise). fp32 matmuls run in IEEE mode.
    """
    t = a.t
    c = t.shape[1]
    cd = a.w1.dtype
    tf = t.float()
    # depthwise 3x3 + bias, zero padding: b_d + Σ_tap dw[tap] ⊙ t[p + tap] (one grouped conv)
    z = F.conv2d(tf, a.dw.t().reshape(c, 1, 3, 3), a.bd, padding=1, groups=c).permute(0, 2, 3, 1)  # [N, H, W, C]
    hid = F.gelu(torch.matmul(z.to(cd).float(), a.w1.float()) + a.b1)  # [N, H, W, HID] fp32
    y = tf.permute(0, 2, 3, 1) + (torch.matmul(hid.to(cd).float(), a.w2.float()) + a.b2)
    yq = y.to(t.dtype)
    y_out, a_out = _outputs(a, out, out_a)
    y_out.copy_(yq.permute(0, 3, 1, 2))
    if a.esa_a is not None:
        e = torch.matmul(yq.to(cd).float(), a.esa_a.float()) + a.esa_b
        a_out.copy_(e.permute(0, 3, 1, 2))
    return y_out, a_out


def convnext_triton(
    a: ConvNeXtArgs, out: torch.Tensor | None = None, out_a: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused Triton kernel (one launch); ``out``/``out_a`` (optional) are written in place."""
    import triton

    from bcrn_fast.kernels import next_pow2
    from bcrn_fast.kernels.convnext import convnext_kernel

    t, esa_a = a.t, a.esa_a
    y, e_out = _outputs(a, out, out_a)
    n, c, h, w = t.shape
    hid = a.w1.shape[1]
    if y.numel() == 0:
        return y, e_out

    has_esa = esa_a is not None
    e = esa_a.shape[1] if has_esa else 16
    dw, bd, w1, b1, w2, b2 = (v.contiguous() for v in (a.dw, a.bd, a.w1, a.b1, a.w2, a.b2))
    aw = esa_a.contiguous() if has_esa else w1  # dummy pointers when the epilogue is off
    ab = a.esa_b.contiguous() if has_esa else b1
    a_arg = e_out if has_esa else y
    c_pad = next_pow2(c)
    wide_index = _common.needs_wide_index(t, y, a_arg)
    block_p, hid_cap, num_warps, num_stages, maxnreg = _launch_config(h * w, t.dtype, a.precision, wide_index, has_esa)
    hid_block = min(next_pow2(hid), hid_cap)
    grid = (triton.cdiv(h * w, block_p), n)
    dot_precision = a.precision if t.dtype == torch.float32 else "tf32"  # ignored for half operands
    with _common.device_guard(t):  # launch on t's GPU, not the current one
        convnext_kernel[grid](
            t, dw, bd, w1, b1, w2, b2, aw, ab, y, a_arg,
            c, hid, e, h, w,
            *t.stride(), *y.stride(), *a_arg.stride(),
            HAS_ESA=has_esa, BLOCK_P=block_p, C_PAD=c_pad, HID_BLOCK=hid_block,
            E_PAD=next_pow2(e), PRECISION=dot_precision,
            DOT_IN_FP32=backends.interpreter_enabled() and t.dtype == torch.bfloat16,
            WIDE_INDEX=wide_index,
            num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}),
        )  # fmt: skip
    return y, e_out


# What the CUDA kernels (csrc/convnext.cu, csrc/bcb_front.cu) are built for.
CUDA_CHANNELS = 64
CUDA_HID_MULTIPLE = 64  # the hidden width is processed in chunks of 64
CUDA_MAX_ESA = 16  # ESA pre-map channels of the epilogue


def cuda_operands(
    a: ConvNeXtArgs, out: torch.Tensor | None, out_a: torch.Tensor | None, what: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None, torch.Tensor | None]:
    """What a CUDA ConvNeXt kernel (``convnext`` or ``bcb_front``, reading ``a.t``) needs beyond the contract.

    Checks the kernel's build limits and addressability, allocates or checks the outputs (no
    overlap with the input: the kernels read halos after writing); returns
    ``(y, a, contiguous (dw, bd, w1, b1, w2, b2), esa_a, esa_b)``.
    """
    c, hid = a.w1.shape
    if c != CUDA_CHANNELS:
        raise InputError(f"the CUDA {what} kernel is built for C = {CUDA_CHANNELS} channels, got C = {c}")
    if hid % CUDA_HID_MULTIPLE:
        raise InputError(
            f"the CUDA {what} kernel needs a hidden width that is a multiple of {CUDA_HID_MULTIPLE}, got {hid}"
        )
    if a.esa_a is not None and not 1 <= a.esa_a.shape[1] <= CUDA_MAX_ESA:
        raise InputError(f"the CUDA {what} ESA epilogue takes 1..{CUDA_MAX_ESA} channels, got {a.esa_a.shape[1]}")
    x = a.t
    cuda_ext.check_activation(x, "x" if what == "bcb_front" else "t")
    weights = tuple(v.contiguous() for v in (a.dw, a.bd, a.w1, a.b1, a.w2, a.b2))
    for v, name in zip(weights, ("dw", "bd", "w1", "b1", "w2", "b2"), strict=True):
        cuda_ext.check_aligned(v, name)
    y, e = alloc_outs(x, a.esa_a)
    if out is not None:
        cuda_ext.check_out(out, "out", tuple(x.shape), x)
        cuda_ext.check_no_overlap(out, "out", (x, "the input"))
        y = out
    if out_a is not None and a.esa_a is not None:
        cuda_ext.check_out(out_a, "out_a", tuple(e.shape), x)
        cuda_ext.check_no_overlap(out_a, "out_a", (x, "the input"), (y, "out"))
        e = out_a
    esa = (a.esa_a.contiguous(), a.esa_b.contiguous()) if a.esa_a is not None else (None, None)
    return y, e, weights, *esa


def cuda_epilogue(aw: torch.Tensor | None, ab: torch.Tensor | None, e: torch.Tensor) -> dict:
    """The ESA-epilogue keyword arguments of the CUDA ConvNeXt kernels (zeros when it is off)."""
    on = aw is not None
    return {
        "aw": cuda_ext.ptr(aw), "ab": cuda_ext.ptr(ab), "a": cuda_ext.ptr(e) if on else 0,
        "sa": e.stride() if on else (0, 0, 0, 0), "E": aw.shape[1] if on else 0,
    }  # fmt: skip


def convnext_cuda(
    a: ConvNeXtArgs, out: torch.Tensor | None = None, out_a: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA-extension kernel (``csrc/convnext.cu``): C = 64, HID a multiple of 64, E <= 16."""
    t = a.t
    y, e, (dw, bd, w1, b1, w2, b2), aw, ab = cuda_operands(a, out, out_a, "convnext")
    if y.numel() == 0:
        return y, e
    mod, device, stream = cuda_ext.launch_target(t)
    n, _, h, w = t.shape
    mod.convnext(
        dtype=cuda_ext.DTYPE_CODES[t.dtype], t=t.data_ptr(), st=t.stride(),
        dw=dw.data_ptr(), bd=bd.data_ptr(), w1=w1.data_ptr(), b1=b1.data_ptr(), w2=w2.data_ptr(), b2=b2.data_ptr(),
        y=y.data_ptr(), sy=y.stride(), N=n, H=h, W=w, hid=w1.shape[1], device=device, stream=stream,
        **cuda_epilogue(aw, ab, e),
    )  # fmt: skip
    return y, e


# The backends of bcrn_fast::convnext, keyed by concrete backend name; one signature: (ConvNeXtArgs, out, out_a).
CONVNEXT_IMPLS = {"torch": convnext_torch, "triton": convnext_triton, "cuda": convnext_cuda}


# --------------------------------------------------------------------------- the op (the entry point)


def _convnext(
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
    """Fused ConvNeXt block, the custom op ``bcrn_fast::convnext`` (see the module docstring for the formula).

    Args:
        t: ``[N, C, H, W]`` fp32/fp16/bf16 block input, any strides.
        dw ``[9, C]``, bd ``[C]``, b1 ``[HID]``, b2 ``[C]``: fp32.
        w1 ``[C, HID]``, w2 ``[HID, C]``: transposed 1x1 weights in the compute dtype.
        esa_a ``[C, E]`` (compute dtype), esa_b ``[E]`` (fp32): optional ESA pre-map epilogue.
        precision: ``"ieee"`` or ``"tf32"`` fp32 dots. backend: ``"auto"``, ``"triton"``, ``"torch"``, ``"cuda"``.

    Returns ``(y, a)``: ``y`` ``[N, C, H, W]`` channels-last in t's dtype; ``a``
    ``[N, E, H, W]`` channels-last, or an empty tensor without the epilogue.
    """
    a = ConvNeXtArgs(**locals())
    check_convnext_args(a)
    return CONVNEXT_IMPLS[backends.resolve_backend(backend, t.device)](a)


ConvNeXtArgs = _common.op_args("ConvNeXtArgs", _convnext)
convnext = _common.custom_op(
    "bcrn_fast::convnext", _convnext, ConvNeXtArgs, check_convnext_args, lambda a: alloc_outs(a.t, a.esa_a)
)


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
