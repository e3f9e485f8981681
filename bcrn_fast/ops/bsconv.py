"""Fused BSConvU: pointwise 1x1 + depthwise KxK (+ scale on load, activation,
residual, pixel-shuffle store).

    y[n, o, q] = act(b[o] + Σ_tap dw[tap, o] · Σ_i pw_t[i, o] · s[n, i] · x[n, i, q·stride − pad + tap]) + res[n, o, q]

with zero padding outside the image; when ``shuffle = r > 1`` channel
``o = c·r² + i·r + j`` of pixel ``q`` lands at ``y[n, c, r·qh + i, r·qw + j]``
(``nn.PixelShuffle(r)``) and ``res`` is given in that output layout. On Triton
it is one launch (implicit GEMM with per-tap folded weights, or im2col for
conv1), or two where the pointwise GEMM is wide or padded (conv2, the
upsampler): pointwise once per pixel, then the depthwise taps
(``kernels.bsconv.dataflow``).

Layers: the weight packing (:func:`pack_bsconv` / :func:`pack_upsampler`), the
contract check :func:`check_bsconv_args`, three backends with one signature
``(BSConvArgs, out=None)`` in :data:`BSCONV_IMPLS` — :func:`bsconv_torch` (the
same dataflow in PyTorch ops), :func:`bsconv_triton` (launches
``bcrn_fast.kernels.bsconv``) and :func:`bsconv_cuda` (the ``bcrn_fast._C``
kernel) — and the entry point :func:`bsconv`, which *is* the custom op
``bcrn_fast::bsconv``: it checks once, resolves ``backend`` and dispatches.
:func:`bsconv_packed` is the one convenience wrapper.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast.ops import _common, backends, cuda_ext
from bcrn_fast.validation import InputError

__all__ = [
    "BSCONV_IMPLS",
    "BSConvArgs",
    "BSConvPack",
    "bsconv",
    "bsconv_cuda",
    "bsconv_packed",
    "bsconv_torch",
    "bsconv_triton",
    "pack_bsconv",
    "pack_upsampler",
]

ACTS = (_common.ACT_NONE, _common.ACT_RELU, _common.ACT_GELU)


# --------------------------------------------------------------------------- packing


class BSConvPack(NamedTuple):
    """Packed weights of one BSConvU (or the upsampler), built once per weight version."""

    pw_t: torch.Tensor  # [Cin, Cout] compute dtype: pointwise weight, transposed
    dw: torch.Tensor  # [K*K, Cout] fp32: depthwise taps, tap = kh*K + kw
    bias: torch.Tensor  # [Cout] fp32: depthwise bias (zeros when the module has none)
    ksize: int
    stride: int
    padding: int
    shuffle: int = 0  # pixel-shuffle factor of the store (0 = none)


def _pair_value(v: int | tuple[int, ...], what: str) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise InputError(f"{what} must be the same along height and width, got {v}")
        return int(v[0])
    return int(v)


@torch.no_grad()
def _pack_pw_dw(pw: nn.Conv2d, dw: nn.Conv2d, dtype: torch.dtype, shuffle: int = 0) -> BSConvPack:
    if not isinstance(pw, nn.Conv2d) or not isinstance(dw, nn.Conv2d):
        raise InputError(
            f"expected (pointwise Conv2d, depthwise Conv2d), got ({type(pw).__name__}, {type(dw).__name__})"
        )
    if tuple(pw.kernel_size) != (1, 1) or pw.groups != 1 or _pair_value(pw.stride, "pw stride") != 1:
        raise InputError(f"pointwise conv must be a 1x1, stride-1, groups=1 Conv2d, got {pw}")
    if pw.bias is not None:
        raise InputError(
            "pointwise conv must have no bias (BSConvU's pw has bias=False); its bias does not fold exactly"
        )
    cin, cout = pw.in_channels, pw.out_channels
    if dw.in_channels != cout or dw.out_channels != cout or dw.groups != cout:
        raise InputError(f"depthwise conv must be Conv2d({cout}, {cout}, groups={cout}), got {dw}")
    if dw.padding_mode != "zeros" or _pair_value(dw.dilation, "dw dilation") != 1:
        raise InputError(f"depthwise conv must use zero padding and dilation 1, got {dw}")
    if isinstance(dw.padding, str):
        raise InputError(f"depthwise conv padding must be an int, got {dw.padding!r}")
    k = _pair_value(dw.kernel_size, "dw kernel_size")
    stride = _pair_value(dw.stride, "dw stride")
    padding = _pair_value(dw.padding, "dw padding")
    # exact algebra (transposes only) in float64, then cast
    pw_t = pw.weight.detach().double().reshape(cout, cin).t()
    taps = dw.weight.detach().double().reshape(cout, k * k).t()
    bias = dw.bias.detach().double() if dw.bias is not None else torch.zeros(cout, dtype=torch.float64)
    return BSConvPack(
        pw_t=pw_t.to(_common.compute_dtype(dtype)).contiguous(),
        dw=taps.float().contiguous(),
        bias=bias.float().to(pw.weight.device).contiguous(),
        ksize=k,
        stride=stride,
        padding=padding,
        shuffle=shuffle,
    )


def pack_bsconv(module: nn.Module | tuple[nn.Conv2d, nn.Conv2d], dtype: torch.dtype = torch.float32) -> BSConvPack:
    """Pack a ``BSConvU`` (``bcrn_fast.bsconv``) or a ``(pw, dw)`` Conv2d pair for storage ``dtype``."""
    if isinstance(module, tuple):
        pw, dw = module
    elif hasattr(module, "pw") and hasattr(module, "dw"):
        pw, dw = module.pw, module.dw
    else:
        raise InputError(f"pack_bsconv expects a BSConvU or a (pw, dw) Conv2d pair, got {type(module).__name__}")
    return _pack_pw_dw(pw, dw, dtype)


def pack_upsampler(module: nn.Sequential, dtype: torch.dtype = torch.float32) -> BSConvPack:
    """Pack BCRN's ``upsample_block`` = ``Sequential(pw 1x1, dw 3x3 + bias, PixelShuffle(r))``."""
    if not isinstance(module, nn.Sequential) or len(module) != 3 or not isinstance(module[2], nn.PixelShuffle):
        raise InputError(f"pack_upsampler expects Sequential(Conv2d, Conv2d, PixelShuffle), got {module}")
    r = int(module[2].upscale_factor)
    pack = _pack_pw_dw(module[0], module[1], dtype, shuffle=r)
    if pack.pw_t.shape[1] % (r * r):
        raise InputError(f"upsampler channels {pack.pw_t.shape[1]} are not divisible by shuffle² = {r * r}")
    return pack


# --------------------------------------------------------------------------- checks


def _out_hw(h: int, w: int, ksize: int, stride: int, padding: int) -> tuple[int, int]:
    return (h + 2 * padding - ksize) // stride + 1, (w + 2 * padding - ksize) // stride + 1


def _out_shape(a: BSConvArgs) -> tuple[int, ...]:
    n, _, h, w = a.x.shape
    ho, wo = _out_hw(h, w, a.ksize, a.stride, a.padding)
    r = max(a.shuffle, 1)
    return (n, a.pw_t.shape[1] // (r * r), ho * r, wo * r)


def _alloc_out(a: BSConvArgs) -> torch.Tensor:
    """The op's output: channels-last, except the pixel-shuffled map (NCHW contiguous)."""
    shape = _out_shape(a)
    if a.shuffle > 1:
        return torch.empty(shape, dtype=a.x.dtype, device=a.x.device)
    return _common.empty_nhwc(*shape, dtype=a.x.dtype, device=a.x.device)


def check_bsconv_args(a: BSConvArgs) -> None:
    """Validate every argument of ``bsconv`` (metadata only)."""
    x, pw_t = a.x, a.pw_t
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"x: expected a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    _common.check_kernel_dtype(x, "x")
    if not isinstance(pw_t, torch.Tensor) or pw_t.dim() != 2:
        raise InputError(f"pw_t: expected a 2-D tensor [Cin, Cout], got {getattr(pw_t, 'shape', pw_t)}")
    cin, cout = pw_t.shape
    if x.shape[1] != cin:
        raise InputError(f"x has {x.shape[1]} channels (shape {tuple(x.shape)}) but pw_t expects Cin = {cin}")
    if pw_t.device != x.device:
        raise InputError(f"pw_t is on {pw_t.device} but x is on {x.device}; move the weights or the input")
    cd = _common.compute_dtype(x.dtype)
    if pw_t.dtype != cd:
        raise InputError(
            f"pw_t has dtype {pw_t.dtype} but x is {x.dtype}, which needs {cd} GEMM weights; "
            "re-pack the weights for this dtype"
        )
    for name, lo in (("ksize", 1), ("stride", 1), ("padding", 0), ("shuffle", 0)):
        v = getattr(a, name)
        if not isinstance(v, int) or v < lo:
            raise InputError(f"{name} must be an int >= {lo}, got {v!r}")
    ksize, padding = a.ksize, a.padding
    if padding >= ksize:
        raise InputError(f"padding {padding} must be smaller than ksize {ksize}")
    if a.act not in ACTS:
        raise InputError(f"act must be 0 (none), 1 (relu) or 2 (gelu), got {a.act!r}")
    _common.check_precision(a.precision)
    _common.check_tensor(a.dw, "dw", (ksize * ksize, cout), torch.float32, x.device)
    _common.check_tensor(a.bias, "bias", (cout,), torch.float32, x.device)
    r = max(a.shuffle, 1)
    if cout % (r * r):
        raise InputError(f"Cout = {cout} is not divisible by shuffle² = {r * r}")
    ho, wo = _out_hw(x.shape[2], x.shape[3], ksize, a.stride, padding)
    if ho < 1 or wo < 1:
        raise InputError(
            f"x: spatial size {x.shape[2]}x{x.shape[3]} is too small for a {ksize}x{ksize} conv "
            f"with stride {a.stride} and padding {padding}"
        )
    if a.in_scale is not None:
        _common.check_tensor(a.in_scale, "in_scale", (x.shape[0], cin), torch.float32, x.device)
    shape = _out_shape(a)
    if a.residual is not None:
        if a.residual.dim() != 4:
            raise InputError(f"residual: expected a 4-D tensor {shape}, got shape {tuple(a.residual.shape)}")
        _common.check_tensor(a.residual, "residual", shape, x.dtype, x.device)


# --------------------------------------------------------------------------- launch config


def _launch_config(*args: object, **kwargs: object) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_K, num_warps, num_stages): ``launch_config`` of ``kernels/bsconv.py``, its ``CONFIGS`` table.

    Every row there comes from ptxas resource usage of the AOT-compiled kernel
    (``python -m bcrn_fast.aot``), its reason in the row's ``why``.
    """
    from bcrn_fast.kernels.bsconv import launch_config

    return launch_config(*args, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- backends
# Every backend takes the op's argument record (BSConvArgs, checked) and an optional output to write in place.


def bsconv_torch(a: BSConvArgs, out: torch.Tensor | None = None) -> torch.Tensor:
    """The fused dataflow in PyTorch ops (fp32 compute; rounds where the kernel does).

    Pointwise once per input pixel, then the depthwise taps on the fp32
    pointwise result (equal to the kernel's per-tap GEMMs: pw has no bias, so
    the zero padding commutes with it). fp32 matmuls run in IEEE mode;
    ``precision`` only affects the Triton kernel.
    """
    cout = a.pw_t.shape[1]
    xs = a.x.float()
    if a.in_scale is not None:
        # scale on load, rounded to the GEMM operand dtype like the kernel's tile
        xs = (xs * a.in_scale[:, :, None, None]).to(a.pw_t.dtype).float()
    z = torch.matmul(xs.permute(0, 2, 3, 1), a.pw_t.float()).permute(0, 3, 1, 2)  # [N, Cout, H, W] fp32
    # depthwise taps + bias: Σ_tap dw[tap] ⊙ z[q·stride − pad + tap] (one grouped conv, zero padding)
    taps = a.dw.t().reshape(cout, 1, a.ksize, a.ksize)
    acc = F.conv2d(z, taps, a.bias, stride=a.stride, padding=a.padding, groups=cout)
    if a.act == _common.ACT_RELU:
        acc = torch.relu(acc)
    elif a.act == _common.ACT_GELU:
        acc = F.gelu(acc)
    if a.shuffle > 1:
        acc = F.pixel_shuffle(acc, a.shuffle)
    if a.residual is not None:
        acc = acc + a.residual.float()
    out = _alloc_out(a) if out is None else out
    out.copy_(acc)
    return out


def bsconv_triton(a: BSConvArgs, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton kernels; ``out`` (optional) is written in place.

    One launch (implicit GEMM or im2col), or two for the two-pass form (pointwise
    once per pixel into ``z``, then the depthwise taps): ``kernels.bsconv.dataflow``.
    """
    from bcrn_fast.kernels.bsconv import dataflow

    x = a.x
    if out is None:
        out = _alloc_out(a)
    else:
        _common.check_tensor(out, "out", _out_shape(a), x.dtype, x.device)
    if out.numel() == 0:
        return out
    n, cin, h, w = x.shape
    cout = a.pw_t.shape[1]
    plan = dataflow(cin, cout, a.ksize)
    if plan != "two_pass":
        _launch_gemm(a, out, im2col=plan == "im2col")
        return out
    z = _common.empty_nhwc(n, cout, h, w, dtype=x.dtype, device=x.device)
    _launch_gemm(
        a._replace(residual=None, ksize=1, stride=1, padding=0, act=_common.ACT_NONE, shuffle=0), z, pw_only=True
    )
    _launch_depthwise(a, z, out)
    return out


def _launch_gemm(a: BSConvArgs, out: torch.Tensor, im2col: bool = False, pw_only: bool = False) -> None:
    """``bsconv_kernel`` over ``a`` into ``out`` (the one-pass forms, or the pointwise pass: ``pw_only``)."""
    import triton

    from bcrn_fast.kernels import next_pow2
    from bcrn_fast.kernels.bsconv import bsconv_kernel

    x, in_scale, residual = a.x, a.in_scale, a.residual
    n, cin, h, w = x.shape
    cout = a.pw_t.shape[1]
    ho, wo = _out_hw(h, w, a.ksize, a.stride, a.padding)
    pw_t, dw, bias = a.pw_t.contiguous(), a.dw.contiguous(), a.bias.contiguous()
    gemm_k = a.ksize * a.ksize * cin if im2col else cin
    block_k = max(min(next_pow2(gemm_k), 64), 16)
    cout_pad = next_pow2(cout)
    wide_index = _common.needs_wide_index(x, residual, out)
    block_p, block_k_cfg, num_warps, num_stages = _launch_config(
        ho * wo, cout_pad, block_k, x.dtype, a.precision, wide_index, pw_only
    )
    if not im2col:  # the im2col form needs all K²·Cin columns in its one chunk
        block_k = block_k_cfg
    grid = (triton.cdiv(ho * wo, block_p), n)
    s = in_scale if in_scale is not None else bias  # dummy pointer, never read
    s_strides = in_scale.stride() if in_scale is not None else (0, 0)
    res = residual if residual is not None else out  # dummy pointer, never read
    # fp32 operands honour `precision`; for half operands it is ignored (tf32 = Triton's default)
    dot_precision = a.precision if x.dtype == torch.float32 else "tf32"
    with _common.device_guard(x):  # launch on x's GPU, not the current one
        bsconv_kernel[grid](
            x, s, pw_t, dw, bias, res, out,
            cin, cout, h, w, ho, wo,
            *x.stride(), *s_strides, *res.stride(), *out.stride(),
            KSIZE=a.ksize, STRIDE=a.stride, PAD=a.padding, ACT=a.act, SHUFFLE=max(a.shuffle, 1),
            HAS_SCALE=in_scale is not None, HAS_RES=residual is not None, IM2COL=im2col, PW_ONLY=pw_only,
            BLOCK_P=block_p, BLOCK_K=block_k, COUT_PAD=cout_pad, PRECISION=dot_precision,
            DOT_IN_FP32=backends.interpreter_enabled() and x.dtype == torch.bfloat16,
            WIDE_INDEX=wide_index,
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip


def _launch_depthwise(a: BSConvArgs, z: torch.Tensor, out: torch.Tensor) -> None:
    """``depthwise_kernel``: the taps, bias, activation, residual and shuffle store of ``a`` from ``z``."""
    import triton

    from bcrn_fast.kernels import next_pow2
    from bcrn_fast.kernels.bsconv import depthwise_kernel, dw_launch_config

    n, c, h, w = z.shape
    ho, wo = _out_hw(h, w, a.ksize, a.stride, a.padding)
    residual = a.residual
    c_pad = next_pow2(c)
    block_p, num_warps = dw_launch_config(ho * wo, c_pad)
    res = residual if residual is not None else out  # dummy pointer, never read
    with _common.device_guard(z):
        depthwise_kernel[(triton.cdiv(ho * wo, block_p), n)](
            z, a.dw.contiguous(), a.bias.contiguous(), res, out,
            c, h, w, ho, wo,
            *z.stride(), *res.stride(), *out.stride(),
            KSIZE=a.ksize, STRIDE=a.stride, PAD=a.padding, ACT=a.act, SHUFFLE=max(a.shuffle, 1),
            HAS_RES=residual is not None, BLOCK_P=block_p, C_PAD=c_pad,
            WIDE_INDEX=_common.needs_wide_index(z, residual, out),
            num_warps=num_warps,
        )  # fmt: skip


def bsconv_cuda(a: BSConvArgs, out: torch.Tensor | None = None) -> torch.Tensor:
    """The CUDA-extension kernel (``csrc/bsconv.cu``): ksize 1 or 3, stride 1..4; fp16/bf16 GEMMs on tensor
    cores, fp32 as IEEE FMA (``precision="tf32"`` runs the same IEEE path)."""
    x, in_scale, residual = a.x, a.in_scale, a.residual
    if a.ksize not in (1, 3):
        raise InputError(f"the CUDA bsconv supports ksize 1 and 3, got {a.ksize}")
    if a.stride > 4:
        raise InputError(f"the CUDA bsconv supports stride 1..4, got {a.stride}")
    cuda_ext.check_activation(x, "x")
    if residual is not None:
        cuda_ext.check_activation(residual, "residual")
    for t, name in ((a.pw_t, "pw_t"), (a.dw, "dw"), (a.bias, "bias"), (in_scale, "in_scale")):
        cuda_ext.check_aligned(t, name)
    if out is None:
        out = _alloc_out(a)
    else:
        cuda_ext.check_out(out, "out", _out_shape(a), x)
        cuda_ext.check_no_overlap(out, "out", (x, "x"), (in_scale, "in_scale"))
    if out.numel() == 0:
        return out
    mod, device, stream = cuda_ext.launch_target(x)
    n, cin, h, w = x.shape
    ho, wo = _out_hw(h, w, a.ksize, a.stride, a.padding)
    pw_t, dw, bias = a.pw_t.contiguous(), a.dw.contiguous(), a.bias.contiguous()
    mod.bsconv(
        dtype=cuda_ext.DTYPE_CODES[x.dtype], x=x.data_ptr(), sx=x.stride(),
        scale=cuda_ext.ptr(in_scale), ss=in_scale.stride() if in_scale is not None else (0, 0),
        pw=pw_t.data_ptr(), dw=dw.data_ptr(), bias=bias.data_ptr(),
        res=cuda_ext.ptr(residual), sr=residual.stride() if residual is not None else (0, 0, 0, 0),
        y=out.data_ptr(), sy=out.stride(), sizes=(n, cin, pw_t.shape[1], h, w, ho, wo),
        ksize=a.ksize, stride=a.stride, pad=a.padding, act=a.act, shuffle=a.shuffle, device=device, stream=stream,
    )  # fmt: skip
    return out


# The backends of bcrn_fast::bsconv, keyed by concrete backend name; one signature: (BSConvArgs, out=None).
BSCONV_IMPLS = {"torch": bsconv_torch, "triton": bsconv_triton, "cuda": bsconv_cuda}


# --------------------------------------------------------------------------- the op (the entry point)


def _bsconv(
    x: torch.Tensor,
    pw_t: torch.Tensor,
    dw: torch.Tensor,
    bias: torch.Tensor,
    in_scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    ksize: int = 3,
    stride: int = 1,
    padding: int | None = None,
    act: int = _common.ACT_NONE,
    shuffle: int = 0,
    precision: str = "ieee",
    backend: str = "auto",
) -> torch.Tensor:
    """Fused BSConvU, the custom op ``bcrn_fast::bsconv`` (see the module docstring for the formula).

    Args:
        x: ``[N, Cin, H, W]`` fp32/fp16/bf16, any strides (channel slices welcome).
        pw_t: ``[Cin, Cout]`` pointwise weight, transposed, in the compute dtype.
        dw: ``[ksize², Cout]`` fp32 depthwise taps. bias: ``[Cout]`` fp32.
        in_scale: optional ``[N, Cin]`` fp32 per-(n, cin) scale applied to x on load.
        residual: optional tensor of the output's shape and x's dtype, added last.
        padding: defaults to ``(ksize - 1) // 2``.
        act: 0 none, 1 relu, 2 exact GELU. shuffle: pixel-shuffle factor (0 = none).
        precision: ``"ieee"`` or ``"tf32"`` fp32 dots. backend: ``"auto"``, ``"triton"``, ``"torch"``, ``"cuda"``.

    Returns ``[N, Cout, Ho, Wo]`` channels-last, or ``[N, Cout/r², r·Ho, r·Wo]``
    NCHW-contiguous when ``shuffle = r > 1``; dtype of ``x``.
    """
    a = _bsconv_args(**locals())
    check_bsconv_args(a)
    return BSCONV_IMPLS[backends.resolve_backend(backend, x.device)](a)


BSConvArgs = _common.op_args("BSConvArgs", _bsconv)


def _bsconv_args(*args, **kwargs) -> BSConvArgs:
    """The op's arguments as a record; ``padding=None`` means ``(ksize - 1) // 2`` (same size at stride 1)."""
    a = BSConvArgs(*args, **kwargs)
    return a if a.padding is not None else a._replace(padding=(a.ksize - 1) // 2)


bsconv = _common.custom_op("bcrn_fast::bsconv", _bsconv, _bsconv_args, check_bsconv_args, _alloc_out)


def bsconv_packed(
    x: torch.Tensor,
    pack: BSConvPack,
    in_scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    act: int = _common.ACT_NONE,
    precision: str = "ieee",
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`bsconv` with the weights and geometry of a :class:`BSConvPack`."""
    return bsconv(
        x, pack.pw_t, pack.dw, pack.bias, in_scale, residual,
        ksize=pack.ksize, stride=pack.stride, padding=pack.padding, act=act, shuffle=pack.shuffle,
        precision=precision, backend=backend,
    )  # fmt: skip
