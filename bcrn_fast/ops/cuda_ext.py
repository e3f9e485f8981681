"""Loader of the optional CUDA extension ``bcrn_fast._C`` (sources in ``csrc/``): a leaf module.

It answers whether the extension is built and can launch (:func:`available`,
:func:`runs_on`, :func:`import_error`, :func:`info`), where a launch goes
(:func:`launch_target`: the module, device index and current stream) and holds
the pointer-level checks every CUDA wrapper needs (alignment, overlap, strides,
grid limits). It imports nothing from ``bcrn_fast.ops`` except the leaf
``_common``: each op's CUDA wrapper lives in its op file (``bsconv_cuda`` in
``ops/bsconv.py``, ``convnext_cuda`` in ``ops/convnext.py``, ``bcb_front_cuda`` in
``ops/bcb_front.py``, ``cca_scale_cuda`` in ``ops/cca.py``).

The wrappers pass raw pointers and strides to pybind11 functions that launch on
``torch.cuda.current_stream()``: no host synchronisation, safe inside CUDA-graph
capture. Outputs are allocated with torch. The package works without the
extension (``available()`` is False). Tests run the same kernels on CPU tensors
through an emulation build by patching :func:`runs_on` and :func:`launch_target`
(``tests/utils.cuda_emulator``); nothing here knows about it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from bcrn_fast.validation import InputError

__all__ = [
    "DTYPE_CODES",
    "available",
    "check_activation",
    "check_aligned",
    "check_device",
    "check_no_overlap",
    "check_out",
    "extension",
    "import_error",
    "info",
    "launch_target",
    "ptr",
    "runs_on",
]

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MAX_BATCH = 65535  # grid.y / grid.z limit

_ext: ModuleType | None = None
_ext_error: str | None = None
_loaded = False


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


def runs_on(device: torch.device) -> bool:
    """Whether the extension's kernels can run on tensors of ``device``."""
    return device.type == "cuda" and available()


def info() -> dict:
    """Build facts: whether it loaded, the compiled architectures, and the reason if it did not."""
    ext = extension()
    return {
        "built": ext is not None,
        "archs": getattr(ext, "archs", "") if ext is not None else "",
        "cuda_device": torch.cuda.is_available(),
        "error": _ext_error,
    }


def launch_target(x: Tensor) -> tuple[ModuleType, int, int]:
    """(module, device index, stream handle) to launch on for tensors living where ``x`` lives."""
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


# --------------------------------------------------------------------------- pointer-level checks


def ptr(t: Tensor | None) -> int:
    """``t``'s data pointer, 0 for an absent optional operand."""
    return 0 if t is None else t.data_ptr()


def check_aligned(t: Tensor | None, name: str) -> None:
    if t is not None and t.numel() > 0 and t.data_ptr() % t.element_size() != 0:
        raise InputError(f"{name}: data pointer {t.data_ptr():#x} is not aligned to its {t.element_size()}-byte dtype")


def check_device(t: Tensor | None, name: str, device: torch.device) -> None:
    if t is not None and t.device != device:
        raise InputError(f"{name} is on {t.device} but the input is on {device}; move them to one device")


def _span(t: Tensor) -> tuple[int, int]:
    """[first byte, last byte] a tensor's elements occupy."""
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True) if s > 0)
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size() - 1


def check_no_overlap(out: Tensor, name: str, *inputs: tuple[Tensor | None, str]) -> None:
    """``out`` shares no byte with any of ``inputs`` (the kernels read input halos after writing out)."""
    if out.numel() == 0:
        return
    lo, hi = _span(out)
    for t, tname in inputs:
        if t is None or t.numel() == 0:
            continue
        a, b = _span(t)
        if a <= hi and lo <= b:
            raise InputError(f"{name} overlaps {tname} in memory; the kernel reads {tname} halos after writing {name}")


def check_activation(x: Tensor, name: str) -> None:
    """A 4-D activation the kernels can address: batch within the grid, sizes below 2^30, strides >= 0, aligned."""
    if x.dim() != 4:
        raise InputError(f"{name}: expected a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] > MAX_BATCH:
        raise InputError(f"{name}: batch {x.shape[0]} exceeds the CUDA kernels' limit of {MAX_BATCH}")
    if max(x.shape[2], x.shape[3]) >= 2**30:
        raise InputError(f"{name}: spatial size {tuple(x.shape[2:])} is too large")
    if any(s < 0 for s in x.stride()):
        raise InputError(f"{name}: negative strides are not supported, got {x.stride()}")
    check_aligned(x, name)


def check_out(out: Tensor | None, name: str, shape: tuple[int, ...], like: Tensor) -> None:
    """An optional caller-given output: ``shape``, ``like``'s dtype and device, addressable."""
    if out is None:
        return
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)}, got {tuple(getattr(out, 'shape', ()))}")
    if out.dtype != like.dtype:
        raise InputError(f"{name}: expected dtype {like.dtype}, got {out.dtype}")
    check_device(out, name, like.device)
    if out.dim() == 4:
        check_activation(out, name)
