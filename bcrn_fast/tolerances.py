"""The one tolerance table: how far a result may be from the fp32 PyTorch reference.

Shared by the benchmarks (every row is verified against fp32 eager before it is timed), the ONNX export's
verification (:mod:`bcrn_fast.export`) and the tests of both. The measure is the relative Frobenius error
``||y - ref||_F / ||ref||_F``, computed in float64; a non-finite ``y`` is infinitely wrong.
"""

from __future__ import annotations

import torch

__all__ = ["TOLERANCE", "rel_error"]

# Allowed relative Frobenius error vs the fp32 reference, per storage dtype of the result.
TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref||_F / ||ref||_F`` in float64 (on ``out``'s device); inf if ``out`` is not finite."""
    o = out.detach().to(torch.float64)
    r = ref.detach().to(device=o.device, dtype=torch.float64)
    if not bool(torch.isfinite(o).all()):
        return float("inf")
    denom = float(r.norm()) or 1.0
    return float((o - r).norm()) / denom
