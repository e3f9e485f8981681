"""On a CUDA machine the tests must run the compiled Triton kernels, not the interpreter.

tests/conftest.py removes ``TRITON_INTERPRET`` there before any kernel module is
imported; these tests prove it worked: every ``@triton.jit`` function of
``bcrn_fast.kernels`` is a compiled ``JITFunction`` (an ``InterpretedFunction``
would run numpy on the host and pass every GPU test without touching the GPU).
"""

import importlib
import os
import pkgutil

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _kernel_functions() -> dict[str, object]:
    """Every Triton function (kernels and their @triton.jit helpers) defined in bcrn_fast.kernels."""
    import bcrn_fast.kernels as pkg
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, (JITFunction, InterpretedFunction)):
                found[f"{info.name}.{name}"] = value
    return found


def test_triton_interpret_is_unset():
    assert os.environ.get("TRITON_INTERPRET") is None, "TRITON_INTERPRET is set: the GPU tests run the interpreter"


def test_kernels_are_compiled_jit_functions():
    from triton.runtime.jit import JITFunction

    kernels = _kernel_functions()
    for name in (
        "bsconv.bsconv_kernel",
        "bsconv.depthwise_kernel",
        "esa.esa_pool_kernel",
        "esa.esa_low_kernel",
        "esa.esa_apply_kernel",
        "convnext.convnext_kernel",
    ):
        assert name in kernels, f"{name} not found among {sorted(kernels)}"
    wrong = {name: type(fn).__name__ for name, fn in kernels.items() if type(fn) is not JITFunction}
    assert not wrong, f"interpreted (not compiled) Triton functions: {wrong}"


def test_bsconv_kernel_runs_compiled_on_the_gpu():
    """One launch of the compiled kernel on CUDA tensors matches a float64 reference."""
    from bcrn_fast.kernels.bsconv import bsconv_kernel
    from triton.runtime.jit import JITFunction

    from bcrn_fast.ops.bsconv import BSConvArgs, bsconv_triton

    torch.manual_seed(0)
    x = torch.randn(1, 16, 9, 11, device="cuda", dtype=torch.float64)
    pw = torch.randn(16, 32, device="cuda", dtype=torch.float64) / 4
    dw = torch.randn(9, 32, device="cuda", dtype=torch.float64) / 3
    b = torch.randn(32, device="cuda", dtype=torch.float64)
    y = bsconv_triton(BSConvArgs(x.float(), pw.float(), dw.float(), b.float(), None, None, 3, 1, 1, 0, 0))
    # reference: pointwise 1x1 (pwᵀ) then depthwise 3x3, pad 1, in float64
    t = torch.einsum("nchw,co->nohw", x, pw)
    ref = torch.nn.functional.conv2d(t, dw.t().reshape(32, 1, 3, 3), b, padding=1, groups=32)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err <= 1e-5, f"compiled bsconv_kernel: relative error {err:.3e} vs float64"
    assert isinstance(bsconv_kernel, JITFunction), "the launch above ran an interpreted kernel"
