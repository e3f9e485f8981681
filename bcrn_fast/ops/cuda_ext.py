"""CUDA-extension backend of the fused operators (``bcrn_fast._C``, sources in ``csrc/``).

One function per fused op, with the argument conventions of the Triton
launchers in this package (so ``backend="cuda"`` can dispatch here with the
same arguments)::

    bsconv(x, pw_t, dw, bias, in_scale, residual, ksize, stride, padding, act, shuffle, precision, out) -> y
        == bcrn_fast.ops.bsconv.bsconv_triton (ksize 1 or 3)
    convnext(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision, out, out_a) -> (y, a)
        == bcrn_fast.ops.convnext.convnext_triton (C = 64, HID a multiple of 64, E <= 16)
    cca_scale(x, w1, b1, w2, b2) -> s
        == bcrn_fast.ops.cca.cca_scale_triton (C <= 64)
    bcb_front(x, conv_pw_t, conv_dw, conv_bias, dw, bd, w1, b1, w2, b2, esa_a, esa_b, in_scale, precision) -> (y, a)
        BSConv(64 -> 64, 3x3) then convnext in ONE kernel (no Triton twin); also the
        custom op ``bcrn_fast::bcb_front``.

Storage fp32 / fp16 / bf16 with fp32 accumulation; fp16/bf16 GEMMs on tensor
cores, fp32 GEMMs as IEEE fp32 FMA (``precision="tf32"`` is accepted and runs
the same IEEE path). Outputs are allocated with torch (channels-last, except
the pixel-shuffled bsconv output: NCHW-contiguous) and the kernels are
launched on ``torch.cuda.current_stream()``: no host synchronisation, safe
inside CUDA-graph capture. Every argument is checked here (shape, dtype,
device, element alignment, output overlap) and a bad one raises
:class:`~bcrn_fast.validation.InputError`; launch failures raise RuntimeError.

The extension is optional: :func:`available` says whether it is built and a
GPU is visible, :func:`import_error` why not. The package works without it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor

from bcrn_fast.ops import _common
from bcrn_fast.validation import InputError

__all__ = [
    "available",
    "bcb_front",
    "bcb_front_packed",
    "bsconv",
    "cca_scale",
    "convnext",
    "extension",
    "import_error",
    "info",
]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
CHANNELS = 64  # convnext / bcb_front feature width
HID_MULTIPLE = 64  # hidden width must be a multiple of the kernels' chunk
MAX_ESA = 16  # ESA pre-map channels
MAX_CCA_CHANNELS = 64
MAX_BATCH = 65535  # grid.y / grid.z limit

_ext: ModuleType | None = None
_ext_error: str | None = None
_loaded = False
_emulator: ModuleType | None = None  # tests: the CPU emulation build runs CPU tensors


# --------------------------------------------------------------------------- availability


def extension() -> ModuleType | None:
    """The compiled ``bcrn_fast._C`` module, or None when it is not built / cannot load."""
    global _ext, _ext_error, _loaded
    if not _loaded:
        _loaded = True
        try:
            _ext = importlib.import_module("bcrn_fast._C")
        except ImportError as exc:  # not built (no nvcc, BCRN_NO_CUDA=1, failed build) or unloadable
            _ext, _ext_error = None, f"{type(exc).__name__}: {exc}"
    return _ext


def import_error() -> str | None:
    """Why :func:`extension` is None (None when it loaded)."""
    extension()
    return _ext_error


def available() -> bool:
    """True when the extension is built and a CUDA device is visible."""
    return extension() is not None and torch.cuda.is_available()


def info() -> dict:
    """Build facts: whether it loaded, the compiled architectures, and the reason if it did not."""
    ext = extension()
    return {
        "built": ext is not None,
        "archs": getattr(ext, "archs", "") if ext is not None else "",
        "cuda_device": torch.cuda.is_available(),
        "error": _ext_error,
    }


def emulating() -> bool:
    """True inside :func:`emulated` (tests): CPU tensors then run the emulated kernels."""
    return _emulator is not None


@contextlib.contextmanager
def emulated(module: ModuleType) -> Iterator[None]:
    """Tests only: route CPU tensors to a CPU-emulation build of the same kernels (``_C_emu``)."""
    global _emulator
    prev, _emulator = _emulator, module
    try:
        yield
    finally:
        _emulator = prev


def _target(x: Tensor) -> tuple[ModuleType, int, int]:
    """(module, device index, stream handle) to launch on for tensors living where ``x`` lives."""
    if _emulator is not None and x.device.type == "cpu":
        return _emulator, -1, 0
    if x.device.type != "cuda":
        raise InputError(f"the CUDA extension runs on CUDA tensors, got a tensor on {x.device}")
    ext = extension()
    if ext is None:
        raise RuntimeError(
            f"bcrn_fast._C is not built ({_ext_error}); reinstall with nvcc on PATH "
            "(pip install -e .) or use backend='triton' / 'torch'"
        )
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return ext, index, torch.cuda.current_stream(x.device).cuda_stream


# --------------------------------------------------------------------------- checks


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _check_aligned(t: Tensor | None, name: str) -> None:
    if t is not None and t.numel() > 0 and t.data_ptr() % t.element_size() != 0:
        raise InputError(f"{name}: data pointer {t.data_ptr():#x} is not aligned to its {t.element_size()}-byte dtype")


def _check_device(t: Tensor | None, name: str, device: torch.device) -> None:
    if t is not None and t.device != device:
        raise InputError(f"{name} is on {t.device} but the input is on {device}; move them to one device")


def _span(t: Tensor) -> tuple[int, int]:
    """[first byte, last byte] a tensor's elements occupy."""
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True) if s > 0)
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size() - 1


def _check_no_overlap(out: Tensor, name: str, *inputs: tuple[Tensor | None, str]) -> None:
    if out.numel() == 0:
        return
    lo, hi = _span(out)
    for t, tname in inputs:
        if t is None or t.numel() == 0:
            continue
        a, b = _span(t)
        if a <= hi and lo <= b:
            raise InputError(f"{name} overlaps {tname} in memory; the kernel reads {tname} halos after writing {name}")


def _check_activation(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise InputError(f"{name}: expected a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] > MAX_BATCH:
        raise InputError(f"{name}: batch {x.shape[0]} exceeds the CUDA kernels' limit of {MAX_BATCH}")
    if max(x.shape[2], x.shape[3]) >= 2**30:
        raise InputError(f"{name}: spatial size {tuple(x.shape[2:])} is too large")
    if any(s < 0 for s in x.stride()):
        raise InputError(f"{name}: negative strides are not supported, got {x.stride()}")
    _check_aligned(x, name)


def _check_out(out: Tensor | None, name: str, shape: tuple[int, ...], like: Tensor) -> None:
    if out is None:
        return
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)}, got {tuple(getattr(out, 'shape', ()))}")
    if out.dtype != like.dtype:
        raise InputError(f"{name}: expected dtype {like.dtype}, got {out.dtype}")
    _check_device(out, name, like.device)
    if out.dim() == 4:
        _check_activation(out, name)


# --------------------------------------------------------------------------- bsconv


def bsconv(
    x: Tensor,
    pw_t: Tensor,
    dw: Tensor,
    bias: Tensor,
    in_scale: Tensor | None = None,
    residual: Tensor | None = None,
    ksize: int = 3,
    stride: int = 1,
    padding: int | None = None,
    act: int = _common.ACT_NONE,
    shuffle: int = 0,
    precision: str = "ieee",
    out: Tensor | None = None,
) -> Tensor:
    """Fused BSConvU on the CUDA extension (arguments as ``bcrn_fast.ops.bsconv.bsconv_triton``).

    ``y = act(b + Σ_tap dw[tap] ⊙ (pw_tᵀ · (s ⊙ x)[p·stride − pad + tap])) + res``, optional
    pixel-shuffle store. x ``[N, Cin, H, W]`` any strides; pw_t ``[Cin, Cout]`` compute dtype;
    dw ``[ksize², Cout]``, bias ``[Cout]``, in_scale ``[N, Cin]`` fp32. ksize 1 or 3.
    Returns ``[N, Cout, Ho, Wo]`` channels-last, or ``[N, Cout/r², r·Ho, r·Wo]`` NCHW when shuffle = r > 1.
    """
    from bcrn_fast.ops.bsconv import check_bsconv_args

    if padding is None:
        padding = (ksize - 1) // 2
    shape = check_bsconv_args(x, pw_t, dw, bias, in_scale, residual, ksize, stride, padding, act, shuffle, precision)
    if ksize not in (1, 3):
        raise InputError(f"the CUDA bsconv supports ksize 1 and 3, got {ksize}")
    if stride > 4:
        raise InputError(f"the CUDA bsconv supports stride 1..4, got {stride}")
    _check_activation(x, "x")
    if residual is not None:
        _check_activation(residual, "residual")
    for t, name in ((pw_t, "pw_t"), (dw, "dw"), (bias, "bias"), (in_scale, "in_scale")):
        _check_aligned(t, name)
    if out is None:
        if shuffle > 1:
            out = torch.empty(shape, dtype=x.dtype, device=x.device)
        else:
            out = _common.empty_nhwc(*shape, dtype=x.dtype, device=x.device)
    else:
        _check_out(out, "out", shape, x)
        _check_no_overlap(out, "out", (x, "x"), (in_scale, "in_scale"))
    if out.numel() == 0:
        return out
    mod, device, stream = _target(x)
    n, cin, h, w = x.shape
    cout = pw_t.shape[1]
    ho = (h + 2 * padding - ksize) // stride + 1
    wo = (w + 2 * padding - ksize) // stride + 1
    pw_t, dw, bias = pw_t.contiguous(), dw.contiguous(), bias.contiguous()
    mod.bsconv(
        dtype=DTYPE_CODES[x.dtype], x=x.data_ptr(), sx=x.stride(),
        scale=_ptr(in_scale), ss=in_scale.stride() if in_scale is not None else (0, 0),
        pw=pw_t.data_ptr(), dw=dw.data_ptr(), bias=bias.data_ptr(),
        res=_ptr(residual), sr=residual.stride() if residual is not None else (0, 0, 0, 0),
        y=out.data_ptr(), sy=out.stride(), sizes=(n, cin, cout, h, w, ho, wo),
        ksize=ksize, stride=stride, pad=padding, act=act, shuffle=shuffle, device=device, stream=stream,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------- convnext


def _convnext_common(
    t: Tensor,
    dw: Tensor,
    bd: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    esa_a: Tensor | None,
    esa_b: Tensor | None,
    precision: str,
    out: Tensor | None,
    out_a: Tensor | None,
    what: str,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Checks shared by convnext and bcb_front; returns (y, a, contiguous weights)."""
    from bcrn_fast.ops.convnext import check_convnext_args

    check_convnext_args(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision)
    c, hid = w1.shape
    if c != CHANNELS:
        raise InputError(f"the CUDA {what} kernel is built for C = {CHANNELS} channels, got C = {c}")
    if hid % HID_MULTIPLE:
        raise InputError(f"the CUDA {what} kernel needs a hidden width that is a multiple of {HID_MULTIPLE}, got {hid}")
    if esa_a is not None and not 1 <= esa_a.shape[1] <= MAX_ESA:
        raise InputError(f"the CUDA {what} ESA epilogue takes 1..{MAX_ESA} channels, got {esa_a.shape[1]}")
    _check_activation(t, "x" if what == "bcb_front" else "t")
    weights = tuple(v.contiguous() for v in (dw, bd, w1, b1, w2, b2))
    for v, name in zip(weights, ("dw", "bd", "w1", "b1", "w2", "b2"), strict=True):
        _check_aligned(v, name)
    n, _, h, w = t.shape
    if out is None:
        out = _common.empty_nhwc(n, c, h, w, dtype=t.dtype, device=t.device)
    else:
        _check_out(out, "out", tuple(t.shape), t)
        _check_no_overlap(out, "out", (t, "the input"))
    if esa_a is None:
        a = torch.empty((0,), dtype=t.dtype, device=t.device)
    else:
        a_shape = (n, esa_a.shape[1], h, w)
        if out_a is None:
            a = _common.empty_nhwc(*a_shape, dtype=t.dtype, device=t.device)
        else:
            _check_out(out_a, "out_a", a_shape, t)
            _check_no_overlap(out_a, "out_a", (t, "the input"), (out, "out"))
            a = out_a
    return out, a, weights


def convnext(
    t: Tensor,
    dw: Tensor,
    bd: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    esa_a: Tensor | None = None,
    esa_b: Tensor | None = None,
    precision: str = "ieee",
    out: Tensor | None = None,
    out_a: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused ConvNeXt block on the CUDA extension (arguments as ``convnext_triton``).

    ``y = t + W2ᵀ·GELU(W1ᵀ·(b_d + Σ_tap dw[tap] ⊙ t[p + tap]) + b1) + b2`` and optionally
    ``a = Aᵀ·y + a0`` (A = esa_a ``[64, E]``, a0 = esa_b ``[E]``). Returns ``(y, a)``: y
    channels-last like t; a channels-last ``[N, E, H, W]`` or an empty tensor.
    """
    y, a, (dw, bd, w1, b1, w2, b2) = _convnext_common(
        t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision, out, out_a, "convnext"
    )
    if y.numel() == 0:
        return y, a
    mod, device, stream = _target(t)
    aw = esa_a.contiguous() if esa_a is not None else None
    ab = esa_b.contiguous() if esa_b is not None else None
    n, _, h, w = t.shape
    mod.convnext(
        dtype=DTYPE_CODES[t.dtype], t=t.data_ptr(), st=t.stride(),
        dw=dw.data_ptr(), bd=bd.data_ptr(), w1=w1.data_ptr(), b1=b1.data_ptr(), w2=w2.data_ptr(), b2=b2.data_ptr(),
        aw=_ptr(aw), ab=_ptr(ab), y=y.data_ptr(), sy=y.stride(),
        a=_ptr(a) if aw is not None else 0, sa=a.stride() if aw is not None else (0, 0, 0, 0),
        N=n, H=h, W=w, hid=w1.shape[1], E=aw.shape[1] if aw is not None else 0, device=device, stream=stream,
    )  # fmt: skip
    return y, a


# --------------------------------------------------------------------------- bcb_front


def bcb_front(
    x: Tensor,
    conv_pw_t: Tensor,
    conv_dw: Tensor,
    conv_bias: Tensor,
    dw: Tensor,
    bd: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    esa_a: Tensor | None = None,
    esa_b: Tensor | None = None,
    in_scale: Tensor | None = None,
    precision: str = "ieee",
    out: Tensor | None = None,
    out_a: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The front half of a BCB in one kernel: ``convnext(bsconv(x, in_scale))`` with t1 kept on chip.

    ``conv_pw_t [64, 64]`` (compute dtype), ``conv_dw [9, 64]``, ``conv_bias [64]``: the
    BCB's BSConv(64, 64, 3) as packed by ``pack_bsconv``; the rest as :func:`convnext`;
    ``in_scale [N, 64]`` fp32 (the previous block's CCA scale, applied on load).
    Returns ``(y, a)`` exactly as ``convnext(bsconv(x, ...), ...)`` would.
    """
    from bcrn_fast.ops.bsconv import check_bsconv_args

    check_bsconv_args(x, conv_pw_t, conv_dw, conv_bias, in_scale, None, 3, 1, 1, 0, 0, precision)
    if tuple(conv_pw_t.shape) != (CHANNELS, CHANNELS):
        raise InputError(f"bcb_front: conv_pw_t must be [{CHANNELS}, {CHANNELS}], got {tuple(conv_pw_t.shape)}")
    y, a, (dw, bd, w1, b1, w2, b2) = _convnext_common(
        x, dw, bd, w1, b1, w2, b2, esa_a, esa_b, precision, out, out_a, "bcb_front"
    )
    if in_scale is not None:
        _check_no_overlap(y, "out", (in_scale, "in_scale"))
    pw, d0, b0 = conv_pw_t.contiguous(), conv_dw.contiguous(), conv_bias.contiguous()
    for v, name in ((pw, "conv_pw_t"), (d0, "conv_dw"), (b0, "conv_bias"), (in_scale, "in_scale")):
        _check_aligned(v, name)
    if y.numel() == 0:
        return y, a
    mod, device, stream = _target(x)
    aw = esa_a.contiguous() if esa_a is not None else None
    ab = esa_b.contiguous() if esa_b is not None else None
    n, _, h, w = x.shape
    mod.bcb_front(
        dtype=DTYPE_CODES[x.dtype], x=x.data_ptr(), sx=x.stride(),
        scale=_ptr(in_scale), ss=in_scale.stride() if in_scale is not None else (0, 0),
        pw=pw.data_ptr(), dw0=d0.data_ptr(), b0=b0.data_ptr(),
        dw=dw.data_ptr(), bd=bd.data_ptr(), w1=w1.data_ptr(), b1=b1.data_ptr(), w2=w2.data_ptr(), b2=b2.data_ptr(),
        aw=_ptr(aw), ab=_ptr(ab), y=y.data_ptr(), sy=y.stride(),
        a=_ptr(a) if aw is not None else 0, sa=a.stride() if aw is not None else (0, 0, 0, 0),
        N=n, H=h, W=w, hid=w1.shape[1], E=aw.shape[1] if aw is not None else 0, device=device, stream=stream,
    )  # fmt: skip
    return y, a


def bcb_front_packed(x: Tensor, conv, block, esa=None, in_scale: Tensor | None = None, precision: str = "ieee"):
    """:func:`bcb_front` from a ``BSConvPack``, a ``ConvNeXtPack`` and an optional ``EsaPrePack``."""
    if conv.ksize != 3 or conv.stride != 1 or conv.padding != 1 or conv.shuffle > 1:
        raise InputError(f"bcb_front needs a 3x3, stride-1, padding-1 BSConv pack, got {conv}")
    esa_a, esa_b = (esa.a_w, esa.a_b) if esa is not None else (None, None)
    return torch.ops.bcrn_fast.bcb_front(x, conv.pw_t, conv.dw, conv.bias, *block, esa_a, esa_b, in_scale, precision)


@torch.library.custom_op("bcrn_fast::bcb_front", mutates_args=())
def _bcb_front_op(
    x: Tensor,
    conv_pw_t: Tensor,
    conv_dw: Tensor,
    conv_bias: Tensor,
    dw: Tensor,
    bd: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    esa_a: Tensor | None,
    esa_b: Tensor | None,
    in_scale: Tensor | None,
    precision: str,
) -> tuple[Tensor, Tensor]:
    """``bcrn_fast::bcb_front``: the CUDA-extension kernel (opaque to torch.compile)."""
    return bcb_front(x, conv_pw_t, conv_dw, conv_bias, dw, bd, w1, b1, w2, b2, esa_a, esa_b, in_scale, precision)


@_bcb_front_op.register_fake
def _bcb_front_fake(x, conv_pw_t, conv_dw, conv_bias, dw, bd, w1, b1, w2, b2, esa_a, esa_b, in_scale, precision):
    n, _, h, w = x.shape
    y = _common.empty_nhwc(n, w1.shape[0], h, w, dtype=x.dtype, device=x.device)
    if esa_a is None:
        return y, x.new_empty((0,))
    return y, _common.empty_nhwc(n, esa_a.shape[1], h, w, dtype=x.dtype, device=x.device)


# --------------------------------------------------------------------------- cca


def cca_scale(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """CCA scale on the CUDA extension (arguments as ``bcrn_fast.ops.cca.cca_scale_triton``).

    ``s[n, :] = σ(W2ᵀ·relu(W1ᵀ·(mean + std)[n, :] + b1) + b2)`` from the spatial mean and
    population std of x ``[N, C, H, W]`` (any strides, C <= 64); w1 ``[C, R]``, b1 ``[R]``,
    w2 ``[R, C]``, b2 ``[C]`` fp32. Returns s ``[N, C]`` fp32, contiguous. One launch,
    deterministic (fixed merge order), workspace allocated per call.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    _check_activation(x, "x")
    _common.check_kernel_dtype(x, "x")
    n, c, h, w = x.shape
    if not 1 <= c <= MAX_CCA_CHANNELS:
        raise InputError(f"the CUDA cca_scale takes 1..{MAX_CCA_CHANNELS} channels, got {c}")
    if h * w >= 2**24:
        raise InputError(f"x: H·W = {h * w} must be below 2^24 for the CUDA cca_scale")
    if not isinstance(w1, Tensor) or w1.dim() != 2 or w1.shape[0] != c:
        raise InputError(f"w1: expected [{c}, R], got {tuple(getattr(w1, 'shape', ()))}")
    r = w1.shape[1]
    if not 1 <= r <= MAX_CCA_CHANNELS:
        raise InputError(f"w1: squeeze width R = {r} must be in 1..{MAX_CCA_CHANNELS}")
    for p, shape, name in ((w1, (c, r), "w1"), (b1, (r,), "b1"), (w2, (r, c), "w2"), (b2, (c,), "b2")):
        if not isinstance(p, Tensor) or tuple(p.shape) != shape:
            raise InputError(f"{name}: expected shape {shape}, got {tuple(getattr(p, 'shape', ()))}")
        if p.dtype != torch.float32:
            raise InputError(f"{name}: expected float32 (use pack_cca), got {p.dtype}")
        _check_device(p, name, x.device)
    w1, b1, w2, b2 = (p.contiguous() for p in (w1, b1, w2, b2))
    s = torch.empty((n, c), dtype=torch.float32, device=x.device)
    if n == 0:
        return s
    if h * w == 0:
        raise InputError(f"x: empty spatial size {h}x{w}")
    mod, device, stream = _target(x)
    blocks = mod.cca_blocks(h * w)
    partials = torch.empty((n, blocks, c, 3), dtype=torch.float32, device=x.device)
    counters = torch.zeros((n,), dtype=torch.int32, device=x.device)
    mod.cca_scale(
        dtype=DTYPE_CODES[x.dtype], x=x.data_ptr(), sx=x.stride(),
        w1=w1.data_ptr(), b1=b1.data_ptr(), w2=w2.data_ptr(), b2=b2.data_ptr(), s=s.data_ptr(), ss=s.stride(),
        partials=partials.data_ptr(), counters=counters.data_ptr(),
        N=n, C=c, R=r, H=h, W=w, blocks=blocks, device=device, stream=stream,
    )  # fmt: skip
    return s
