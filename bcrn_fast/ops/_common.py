"""Helpers shared by the fused operators: backends, precision, launch settings."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

BACKENDS = ("auto", "triton", "torch", "cuda")
PRECISIONS = ("ieee", "tf32")
HALF_DTYPES = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Activation codes shared by kernels and torch backends.
ACT_NONE, ACT_RELU, ACT_GELU = 0, 1, 2


# Set by bcrn_fast.aot while it records launches to compile them ahead of time.
AOT_RECORDING = False


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run on this device / installation."""


def interpreter_enabled() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_can_run(device: torch.device) -> bool:
    """Whether the Triton kernels can execute on tensors of ``device``."""
    if not triton_available():
        return False
    if device.type == "cuda" or AOT_RECORDING:
        return True
    return device.type == "cpu" and interpreter_enabled()


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``auto`` to a concrete backend and check an explicit choice can run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton" and not triton_can_run(device):
        raise BackendUnavailable(
            f"backend='triton' cannot run on {device}: Triton needs a CUDA device, "
            "or TRITON_INTERPRET=1 for CPU tensors (interpreter, for testing)"
        )
    if backend == "cuda":
        from bcrn_fast.ops import cuda_ext

        if AOT_RECORDING:
            return "triton"  # the AOT harness compiles Triton kernels only
        if not (device.type == "cuda" and cuda_ext.available()) and not (device.type == "cpu" and cuda_ext.emulating()):
            reason = cuda_ext.import_error() or f"tensors are on {device}, not a CUDA device"
            raise BackendUnavailable(f"backend='cuda' cannot run: {reason}")
    return backend


def pick_impl(op: str, backend: str, triton: Callable, torch_impl: Callable, cuda: str | None = None) -> Callable:
    """The implementation of ``op`` for a resolved op-level ``backend``.

    ``cuda`` names the function of :mod:`bcrn_fast.ops.cuda_ext` for ops with a
    CUDA kernel; ops without one run their Triton kernel under ``"cuda"``.
    """
    if backend == "cuda" and cuda is not None:
        from bcrn_fast.ops import cuda_ext

        return getattr(cuda_ext, cuda)
    if backend in ("cuda", "triton"):
        return triton
    if backend == "torch":
        return torch_impl
    raise ValueError(f"bcrn_fast::{op}: backend must be 'cuda', 'triton' or 'torch', got {backend!r}")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (fp32 dots), got {precision!r}")
    return precision


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the GEMM operands: half storage stays half, everything else fp32."""
    return dtype if dtype in HALF_DTYPES else torch.float32


def check_kernel_dtype(x: torch.Tensor, name: str = "input") -> None:
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name}: fused kernels take float32, float16 or bfloat16, got {x.dtype}")


def check_tensor(t: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Check an op argument's type, exact shape, dtype and device (metadata only)."""
    from bcrn_fast.validation import InputError

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


def next_pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum) (tl.dot needs dims >= 16)."""
    p = minimum
    while p < n:
        p *= 2
    return p


def pixel_block(hw: int, channels: int) -> tuple[int, int]:
    """The one launch heuristic: pixels per program and warps, from the map size.

    A program owns ``BLOCK_P`` pixels of one image times all channels; keep the
    ``[BLOCK_P, C]`` fp32 tile near 8K elements so it lives in registers.
    """
    block = 128 if channels <= 64 else 64
    while block > 16 and block >= 2 * hw:
        block //= 2
    warps = 4
    return block, warps
