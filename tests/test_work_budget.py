"""The tensor work of one fused x4 forward, counted under the Triton interpreter, against issue 10's budget.

Every ``tl.dot`` the interpreter executes adds M·K·N of its operand tiles (padded rows and columns included,
as a tensor core multiplies them), over one ``BCRNFused`` x4 fp16 forward at 40x48 LR (15 full 128-pixel
tiles); the budget is 1.9x the network's minimum (``benchmarking.costs.model_macs``: 274 K MAC per LR pixel).
Before the pointwise-once conv2 / upsampler and the im2col conv1 it was 2.57x. (Kernels per forward:
``tests/test_fused_model.py::test_kernels_per_forward``.) On a CUDA machine the kernels are compiled, so
there is nothing to hook; the GPU check profiles them instead.
"""

from __future__ import annotations

import collections

import pytest
import torch

from bcrn_fast.benchmarking.costs import model_macs
from bcrn_fast.fused import BCRNFused
from bcrn_fast.ops import backends

pytestmark = pytest.mark.skipif(
    not backends.interpreter_enabled(), reason="counts tl.dot work through the Triton interpreter (CPU host)"
)

H, W = 40, 48
MAC_BUDGET = 1.9  # x the network's minimum


class _Work:
    def __init__(self) -> None:
        self.macs: collections.Counter[str] = collections.Counter()  # per launch "<i>:<kernel>"
        self.launches: list[str] = []


def _count(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, x: torch.Tensor) -> _Work:
    import triton.runtime.interpreter as interp

    work = _Work()
    create_dot, grid_call = interp.InterpreterBuilder.create_dot, interp.GridExecutor.__call__

    def dot(self, a, b, d, *rest):  # noqa: ANN001, ANN202
        m, k = a.data.shape[-2:]
        work.macs[work.launches[-1]] += m * k * b.data.shape[-1]
        return create_dot(self, a, b, d, *rest)

    def launch(self, *args, **kwargs):  # noqa: ANN001, ANN202
        work.launches.append(f"{len(work.launches)}:{self.fn.__name__}")
        return grid_call(self, *args, **kwargs)

    monkeypatch.setattr(interp.InterpreterBuilder, "create_dot", dot)
    monkeypatch.setattr(interp.GridExecutor, "__call__", launch)
    with torch.inference_mode():
        model(x)
    return work


@pytest.fixture(scope="module")
def x4_fp16_model() -> BCRNFused:
    torch.manual_seed(0)
    model = BCRNFused(4, backend="triton").half()
    with torch.inference_mode():
        model(torch.rand(1, 3, H, W).half())  # packs the weights outside the count
    return model


def test_tensor_macs_within_budget(monkeypatch, x4_fp16_model):
    work = _count(monkeypatch, x4_fp16_model, torch.rand(1, 3, H, W).half())
    px = H * W
    per_px = sum(work.macs.values()) / px
    minimum = model_macs(H, W, 4) / px
    table = ", ".join(f"{k} {v / px:,.0f}" for k, v in work.macs.items())
    assert per_px <= MAC_BUDGET * minimum, (
        f"{per_px:,.0f} tensor MAC/px = {per_px / minimum:.2f}x the {minimum:,.0f} minimum (budget {MAC_BUDGET}x): "
        f"{table}"
    )
    # no launch multiplies more than the widest GEMM of the network per pixel: the ConvNeXt block's
    # 64->256->64 (32,768 + its 1,024 ESA pre-map epilogue), the per-tap implicit GEMM of the 64->64 BSConv (36,864)
    worst = max(work.macs.items(), key=lambda kv: kv[1])
    assert worst[1] / px <= 9 * 64 * 64, f"{worst[0]} does {worst[1] / px:,.0f} MAC/px: {table}"
