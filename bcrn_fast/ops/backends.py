"""Which backend runs an op: the one home of backend names, availability and ``"auto"``.

Every layer asks here: the ``nn.Module`` layer resolves ``"auto"`` once
(:func:`resolve_backend`), the custom ops receive a concrete name and look it
up in their ``IMPLS`` table, and the CLI, the accuracy table and the
benchmarks list what can run with :func:`available_backends`.

Imports only ``torch`` and the leaf :mod:`bcrn_fast.ops.cuda_ext` loader.
"""

from __future__ import annotations

import os

import torch

from bcrn_fast.ops import cuda_ext
from bcrn_fast.validation import InputError

BACKENDS = ("auto", "triton", "torch", "cuda")
CONCRETE = ("torch", "triton", "cuda")  # what an op's IMPLS table is keyed by


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
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


def check_backend_name(backend: str, allowed: tuple[str, ...] = BACKENDS) -> str:
    """``backend`` if it is one of ``allowed``, else a one-line :class:`InputError`."""
    if backend not in allowed:
        raise InputError(f"backend must be one of {allowed}, got {backend!r}")
    return backend


def unavailable(backend: str, device: torch.device) -> str | None:
    """Why the concrete ``backend`` cannot run on ``device`` (None when it can)."""
    if backend == "torch":
        return None
    if backend == "triton":
        if triton_can_run(device):
            return None
        if not triton_available():
            return "backend='triton' cannot run: Triton is not installed"
        return (
            f"backend='triton' cannot run on {device}: Triton needs a CUDA device, "
            "or TRITON_INTERPRET=1 for CPU tensors (interpreter, for testing)"
        )
    if backend == "cuda":
        if cuda_ext.runs_on(device):
            return None
        reason = cuda_ext.import_error() or f"tensors are on {device}, not a CUDA device"
        return f"backend='cuda' cannot run: {reason}"
    return f"backend must be one of {CONCRETE}, got {backend!r}"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend and check that an explicit choice can run.

    ``"auto"`` is Triton on a CUDA device with Triton installed, else the torch
    backend.
    """
    check_backend_name(backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    why = unavailable(backend, device)
    if why is not None:
        raise BackendUnavailable(why)
    return backend


def available_backends(device: torch.device | str) -> list[str]:
    """The concrete backends that can run on ``device``, in the order torch, triton, cuda."""
    device = torch.device(device)
    return [b for b in CONCRETE if unavailable(b, device) is None]
