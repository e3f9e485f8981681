"""Helpers shared by the fused operators: dtypes, checks, launch geometry (a leaf: imports no op module)."""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
from collections.abc import Callable

import torch

from bcrn_fast.validation import InputError

PRECISIONS = ("ieee", "tf32")
HALF_DTYPES = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Activation codes shared by kernels and torch backends.
ACT_NONE, ACT_RELU, ACT_GELU = 0, 1, 2


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS} (fp32 dots), got {precision!r}")
    return precision


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the GEMM operands: half storage stays half, everything else fp32."""
    return dtype if dtype in HALF_DTYPES else torch.float32


def check_kernel_dtype(x: torch.Tensor, name: str = "input") -> None:
    if x.dtype not in KERNEL_DTYPES:
        raise InputError(f"{name}: fused kernels take float32, float16 or bfloat16, got {x.dtype}")


def check_tensor(
    t: torch.Tensor,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    contiguous: bool = False,
) -> None:
    """Check an op argument's type, exact shape, dtype and device (metadata only); optionally contiguity."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise InputError(
            f"{name}: expected dtype {dtype}, got {t.dtype} (GEMM weights use the compute dtype of the input: "
            "half for half inputs, fp32 otherwise; vectors are fp32)"
        )
    if t.device != device:
        raise InputError(f"{name} is on {t.device} but the input is on {device}; move them to one device")
    if contiguous and not t.is_contiguous():
        raise InputError(f"{name}: expected a contiguous tensor (strides {t.stride()}); use the pack_* functions")


def check_map(x: torch.Tensor, channels: int, name: str, min_size: int = 1, why: str = "") -> None:
    """``x`` is a ``[N, channels, H, W]`` fp32/fp16/bf16 map with N >= 1 and H, W >= ``min_size``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise InputError(f"{name}: expected shape [N, {channels}, H, W], got {tuple(x.shape)}")
    check_kernel_dtype(x, name)
    if x.shape[0] == 0:
        raise InputError(f"{name}: empty batch (shape {tuple(x.shape)})")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise InputError(
            f"{name}: spatial size {x.shape[2]}x{x.shape[3]} is below the minimum {min_size}x{min_size}"
            + (f" ({why})" if why else "")
        )


def op_args(name: str, fn: Callable) -> type:
    """A namedtuple of ``fn``'s parameters and defaults: the one argument record every backend of an op receives.

    The op's signature is written once (its public function); the record, the
    fake and every ``IMPLS`` entry take the same arguments through it.
    """
    params = list(inspect.signature(fn).parameters.values())
    defaults = [p.default for p in params if p.default is not inspect.Parameter.empty]
    return collections.namedtuple(name, [p.name for p in params], defaults=defaults)


def custom_op(
    qualname: str, fn: Callable, record: Callable, check: Callable, outputs: Callable
) -> torch.library.CustomOpDef:
    """``fn`` as the custom op ``qualname`` (opaque to torch.compile), keeping its name, signature and docstring.

    Its fake (what ``torch.compile`` traces) builds the argument ``record``, runs the same
    contract ``check`` and returns ``outputs(record)``: empty tensors of the exact shapes,
    strides and dtypes the backends return.
    """
    op = torch.library.custom_op(qualname, fn, mutates_args=())
    functools.update_wrapper(op, fn)

    def fake(*args, **kwargs):
        a = record(*args, **kwargs)
        check(a)
        return outputs(a)

    op.register_fake(fake)
    return op


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return (a + b - 1) // b


def device_guard(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``x``'s CUDA device (Triton uses the current device and stream); no-op on the CPU."""
    if x.device.type == "cuda":
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def empty_nhwc(n: int, c: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An ``[N, C, H, W]`` tensor stored channels-last (NHWC), the internal layout."""
    return torch.empty((n, c, h, w), dtype=dtype, device=device, memory_format=torch.channels_last)


# Offsets at or above this need 64-bit index math in the kernels (Triton computes i32 by default).
INDEX_LIMIT = 2**31

# Tests set this to force the 64-bit index path on small inputs (bcrn_fast.ops.* launchers read it).
FORCE_WIDE_INDEX = False


def max_element_offset(t: torch.Tensor) -> int:
    """Largest element offset a kernel can form in ``t``: Σ (size − 1)·|stride| (0 for an empty tensor).

    Shapes and strides only, so meta tensors and ``torch.empty_strided`` views
    of huge sizes can be checked without allocating them.
    """
    if t.numel() == 0:
        return 0
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))


def needs_wide_index(*tensors: torch.Tensor | None) -> bool:
    """Whether a kernel touching ``tensors`` must compute its offsets in int64.

    True when any tensor's largest element offset reaches 2^31 (an i32 offset
    would wrap: an illegal address or silent corruption), or when the tests
    force the wide path through ``FORCE_WIDE_INDEX``. ``None`` entries (absent
    optional operands) are ignored.
    """
    if FORCE_WIDE_INDEX:
        return True
    return any(t is not None and max_element_offset(t) >= INDEX_LIMIT for t in tensors)
