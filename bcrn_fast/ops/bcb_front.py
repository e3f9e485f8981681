"""The front half of a BCB: BSConv(64 → 64, 3x3) then the ConvNeXt block, as one op.

    t1 = b0 + Σ_tap d0[tap] ⊙ (P0ᵀ · (s ⊙ x))[p + tap]          BSConvU 3x3, pad 1 (bcrn_fast.ops.bsconv)
    y  = t1 + W2ᵀ·GELU(W1ᵀ·(b_d + Σ_tap dw[tap] ⊙ t1[p + tap]) + b1) + b2
    a  = Aᵀ·y + a0                                               optional ESA pre-map (bcrn_fast.ops.convnext)

The CUDA backend runs both in ONE kernel (``csrc/bcb_front.cu``): ``t1`` stays in
shared memory with its 2-pixel halo, so its ``N·64·H·W`` round trip to memory
is gone. The torch and Triton backends compose the two ops' backends (two
launches on Triton); all three return exactly what ``convnext(bsconv(x))``
returns. ``FusedBCB`` calls this one op whatever the backend.

Layers: the contract check :func:`check_bcb_front_args` (the two ops' checks),
the backends :data:`BCB_FRONT_IMPLS` with one signature ``(BcbFrontArgs, out=None,
out_a=None)``, the entry point :func:`bcb_front` (the custom op
``bcrn_fast::bcb_front``) and :func:`bcb_front_packed`.
"""

from __future__ import annotations

import torch

from bcrn_fast.ops import _common, backends, cuda_ext
from bcrn_fast.ops.bsconv import BSCONV_IMPLS, BSConvArgs, BSConvPack, check_bsconv_args
from bcrn_fast.ops.convnext import (
    CONVNEXT_IMPLS,
    ConvNeXtArgs,
    ConvNeXtPack,
    EsaPrePack,
    alloc_outs,
    check_convnext_args,
    cuda_epilogue,
    cuda_operands,
)
from bcrn_fast.validation import InputError

__all__ = ["BCB_FRONT_IMPLS", "BcbFrontArgs", "bcb_front", "bcb_front_packed", "check_bcb_front_args"]

CHANNELS = 64


# --------------------------------------------------------------------------- checks


def _conv_args(a: BcbFrontArgs) -> BSConvArgs:
    """The BSConv's argument record: 3x3, stride 1, padding 1 on ``x ⊙ in_scale``."""
    return BSConvArgs(a.x, a.conv_pw_t, a.conv_dw, a.conv_bias, a.in_scale, None, 3, 1, 1, precision=a.precision)


def _block_args(a: BcbFrontArgs, t1: torch.Tensor) -> ConvNeXtArgs:
    """The ConvNeXt block's argument record on its input ``t1``."""
    return ConvNeXtArgs(t1, a.dw, a.bd, a.w1, a.b1, a.w2, a.b2, a.esa_a, a.esa_b, a.precision)


def check_bcb_front_args(a: BcbFrontArgs) -> None:
    """Validate every argument (metadata only): the BSConv is 64 → 64, the ConvNeXt block takes its output."""
    check_bsconv_args(_conv_args(a))
    if tuple(a.conv_pw_t.shape) != (CHANNELS, CHANNELS):
        raise InputError(f"bcb_front: conv_pw_t must be [{CHANNELS}, {CHANNELS}], got {tuple(a.conv_pw_t.shape)}")
    check_convnext_args(_block_args(a, a.x))  # t1 has x's shape, dtype and device


# --------------------------------------------------------------------------- backends


def _composed(impl: str):
    """A backend that runs the two ops' ``impl`` backends one after the other (t1 goes through memory)."""

    def run(
        a: BcbFrontArgs, out: torch.Tensor | None = None, out_a: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t1 = BSCONV_IMPLS[impl](_conv_args(a))
        return CONVNEXT_IMPLS[impl](_block_args(a, t1), out, out_a)

    run.__name__ = run.__qualname__ = f"bcb_front_{impl}"
    run.__doc__ = f"``convnext(bsconv(x))`` on the {impl} backends of the two ops."
    return run


def bcb_front_cuda(
    a: BcbFrontArgs, out: torch.Tensor | None = None, out_a: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one CUDA kernel (``csrc/bcb_front.cu``): t1 is kept in shared memory with its halo."""
    x, in_scale = a.x, a.in_scale
    y, e, (dw, bd, w1, b1, w2, b2), aw, ab = cuda_operands(_block_args(a, x), out, out_a, "bcb_front")
    if in_scale is not None:
        cuda_ext.check_no_overlap(y, "out", (in_scale, "in_scale"))
    pw, d0, b0 = a.conv_pw_t.contiguous(), a.conv_dw.contiguous(), a.conv_bias.contiguous()
    for v, name in ((pw, "conv_pw_t"), (d0, "conv_dw"), (b0, "conv_bias"), (in_scale, "in_scale")):
        cuda_ext.check_aligned(v, name)
    if y.numel() == 0:
        return y, e
    mod, device, stream = cuda_ext.launch_target(x)
    n, _, h, w = x.shape
    mod.bcb_front(
        dtype=cuda_ext.DTYPE_CODES[x.dtype], x=x.data_ptr(), sx=x.stride(),
        scale=cuda_ext.ptr(in_scale), ss=in_scale.stride() if in_scale is not None else (0, 0),
        pw=pw.data_ptr(), dw0=d0.data_ptr(), b0=b0.data_ptr(),
        dw=dw.data_ptr(), bd=bd.data_ptr(), w1=w1.data_ptr(), b1=b1.data_ptr(), w2=w2.data_ptr(), b2=b2.data_ptr(),
        y=y.data_ptr(), sy=y.stride(), N=n, H=h, W=w, hid=w1.shape[1], device=device, stream=stream,
        **cuda_epilogue(aw, ab, e),
    )  # fmt: skip
    return y, e


# The backends of bcrn_fast::bcb_front; one signature: (BcbFrontArgs, out=None, out_a=None).
BCB_FRONT_IMPLS = {"torch": _composed("torch"), "triton": _composed("triton"), "cuda": bcb_front_cuda}


# --------------------------------------------------------------------------- the op (the entry point)


def _bcb_front(
    x: torch.Tensor,
    conv_pw_t: torch.Tensor,
    conv_dw: torch.Tensor,
    conv_bias: torch.Tensor,
    dw: torch.Tensor,
    bd: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    esa_a: torch.Tensor | None = None,
    esa_b: torch.Tensor | None = None,
    in_scale: torch.Tensor | None = None,
    precision: str = "ieee",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``convnext(bsconv(x ⊙ in_scale))``, the custom op ``bcrn_fast::bcb_front``.

    ``conv_pw_t [64, 64]`` (compute dtype), ``conv_dw [9, 64]``, ``conv_bias [64]``: the
    BCB's BSConv(64, 64, 3) as packed by ``pack_bsconv``; ``dw .. b2``, ``esa_a``/``esa_b``
    as :func:`bcrn_fast.ops.convnext.convnext`; ``in_scale [N, 64]`` fp32 (the previous
    block's CCA scale, applied on load). Returns ``(y, a)`` exactly as
    ``convnext(bsconv(x, ...), ...)`` would.
    """
    a = BcbFrontArgs(**locals())
    check_bcb_front_args(a)
    return BCB_FRONT_IMPLS[backends.resolve_backend(backend, x.device)](a)


BcbFrontArgs = _common.op_args("BcbFrontArgs", _bcb_front)
bcb_front = _common.custom_op(
    "bcrn_fast::bcb_front", _bcb_front, BcbFrontArgs, check_bcb_front_args, lambda a: alloc_outs(a.x, a.esa_a)
)


def bcb_front_packed(
    x: torch.Tensor,
    conv: BSConvPack,
    block: ConvNeXtPack,
    esa: EsaPrePack | None = None,
    in_scale: torch.Tensor | None = None,
    precision: str = "ieee",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bcb_front` from a ``BSConvPack``, a ``ConvNeXtPack`` and an optional ``EsaPrePack``."""
    if conv.ksize != 3 or conv.stride != 1 or conv.padding != 1 or conv.shuffle > 1:
        raise InputError(f"bcb_front needs a 3x3, stride-1, padding-1 BSConv pack, got {conv}")
    esa_a, esa_b = (esa.a_w, esa.a_b) if esa is not None else (None, None)
    return bcb_front(x, conv.pw_t, conv.dw, conv.bias, *block, esa_a, esa_b, in_scale, precision, backend)
