"""Test helpers: guard-banded inputs, poisoned outputs, dtype tolerances.

The Triton interpreter does not fault on an out-of-bounds read, so inputs are
views into a larger NaN-filled buffer (a stray read turns into NaN in the
output) and outputs are poisoned with NaN before a launch (an unwritten element
stays NaN). Errors are measured against a float64 reference, and a kernel's
error must be within a small multiple of PyTorch's own error in the same dtype.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

import torch

QUICK = os.environ.get("BCRN_QUICK", "0") not in ("", "0")

# Reason of every CPU-only case (the CUDA emulator, the Triton interpreter on CPU tensors) on a CUDA machine:
# there the same tests run the compiled kernels on the GPU, and tests/conftest.py has removed TRITON_INTERPRET.
CPU_ONLY_ON_GPU = "CPU-only case (emulator / Triton interpreter): skipped on a CUDA machine, the GPU cases run instead"

# Relative Frobenius error allowed vs the float64 reference (precision contract).
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}


def guarded(x: torch.Tensor, pad: int = 3, channels_last: bool = False) -> torch.Tensor:
    """A copy of ``x`` ([N, C, H, W]) living inside a NaN guard band.

    The result is a non-contiguous view whose neighbours in memory (other
    channels' and rows' padding) are NaN, so any unmasked read shows up.
    """
    n, c, h, w = x.shape
    if channels_last:
        big = torch.full((n, h + 2 * pad, w + 2 * pad, c + pad), float("nan"), dtype=x.dtype, device=x.device)
        view = big[:, pad : pad + h, pad : pad + w, :c].permute(0, 3, 1, 2)
    else:
        big = torch.full((n, c + pad, h + 2 * pad, w + 2 * pad), float("nan"), dtype=x.dtype, device=x.device)
        view = big[:, :c, pad : pad + h, pad : pad + w]
    view.copy_(x)
    return view


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; inf if ``out`` has NaN/Inf."""
    out64 = out.detach().double()
    ref64 = ref.detach().double()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item() or 1.0
    return (out64 - ref64).norm().item() / denom


def assert_close_to_ref(
    out: torch.Tensor,
    ref64: torch.Tensor,
    dtype: torch.dtype,
    torch_same_dtype: torch.Tensor | None = None,
    factor: float = 4.0,
    name: str = "",
) -> float:
    """Assert ``out`` is within the dtype's tolerance of the float64 reference.

    With ``torch_same_dtype`` (PyTorch's own result in ``dtype``) the bound is
    ``max(REL_TOL[dtype], factor * its error)`` — no worse than a small
    multiple of what PyTorch itself achieves. Returns the measured error.
    """
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    err = rel_error(out, ref64)
    tol = REL_TOL[dtype]
    if torch_same_dtype is not None:
        tol = max(tol, factor * rel_error(torch_same_dtype, ref64))
    if not err <= tol:
        diff = (out.detach().double() - ref64.double()).abs()
        diff = torch.nan_to_num(diff, nan=float("inf"))
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"{name} ({dtype}): relative error {err:.3e} > tolerance {tol:.3e}; "
            f"worst at {idx}: got {out[idx].item():.6g}, expected {ref64[idx].item():.6g}; "
            f"non-finite outputs: {int((~torch.isfinite(out.double())).sum())}"
        )
    return err


def inductor_unavailable() -> str | None:
    """Why torch.compile's inductor backend cannot build CPU code here, or None if it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure means no CPU inductor here
        return f"CPU inductor unavailable: {e}"
    return None


def random_bcrn(scale: int, seed: int = 0):
    """A seeded BCRN whose default init is perturbed by 0.05·N(0, 1) (non-trivial outputs), in eval mode."""
    from bcrn_fast.model import BCRN

    torch.manual_seed(seed)
    model = BCRN(scale)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@contextlib.contextmanager
def cuda_emulator(module: ModuleType) -> Iterator[None]:
    """Run ``backend="cuda"`` on CPU tensors through the emulation build ``module`` (``_C_emu``).

    Patches the two questions the CUDA wrappers ask the loader — can it run on
    this device, where does a launch go — for CPU tensors only; production code
    knows nothing of the emulator.
    """
    from bcrn_fast.ops import cuda_ext

    runs_on, launch_target = cuda_ext.runs_on, cuda_ext.launch_target
    cuda_ext.runs_on = lambda device: device.type == "cpu" or runs_on(device)
    cuda_ext.launch_target = lambda x: (module, -1, 0) if x.device.type == "cpu" else launch_target(x)
    try:
        yield
    finally:
        cuda_ext.runs_on, cuda_ext.launch_target = runs_on, launch_target
