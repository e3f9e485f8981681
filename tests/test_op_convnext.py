"""bcrn_fast::convnext (fused ConvNeXt block + ESA pre-map epilogue), every backend.

References: ``bcrn_fast.model.ConvNeXtBlock`` and ``esa.conv2.pw(esa.conv1(y))``
in float64. Inputs are NaN guard-banded views; every backend (torch, triton,
cuda: the extension on a GPU, its emulator build on a CPU host) writes into
NaN-poisoned, guard-banded buffers, and the op's own allocation is checked for layout.
"""

import copy
import shutil
from typing import NamedTuple

import pytest
import torch
from torch import nn

from bcrn_fast.model import ESA, ConvNeXtBlock
from bcrn_fast.ops import _common
from bcrn_fast.ops.convnext import (
    CONVNEXT_IMPLS,
    ConvNeXtArgs,
    convnext,
    convnext_cuda,
    convnext_packed,
    convnext_triton,
    pack_convnext,
    pack_esa_pre,
)
from bcrn_fast.validation import InputError
from tests.cuda_fixtures import (
    assert_written_exactly,
    block_packs,
    over_layouts_and_dtypes,
    poisoned,
    rand_input,
)
from tests.utils import assert_close_to_ref, guarded, rel_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Every case has C = 64 channels (ConvNeXtBlock's default), the one width the CUDA kernel is built for.
BACKENDS = ["torch", "triton", "cuda"]


class Case(NamedTuple):
    n: int
    h: int
    w: int
    layout: str  # "nchw" or "nhwc"
    with_esa: bool  # the ESA pre-map epilogue


CASES = {
    "n2_17x23_nchw_esa": Case(2, 17, 23, "nchw", True),
    "n1_15x15_nhwc_esa": Case(1, 15, 15, "nhwc", True),
    "n2_31x9_nchw": Case(2, 31, 9, "nchw", False),
    "n1_9x13_nhwc": Case(1, 9, 13, "nhwc", False),
}


def _modules(seed: int = 0) -> tuple[ConvNeXtBlock, ESA]:
    """Random block and ESA, scaled so the MLP branch is as large as the residual."""
    torch.manual_seed(seed)
    block, esa = ConvNeXtBlock(), ESA()
    with torch.no_grad():
        block.c1_d_3.weight.normal_(0.0, 1 / 3)
        block.c1_r_1.weight.normal_(0.0, 1 / 8)
        block.c1_r_2.weight.normal_(0.0, 1 / 8)
        for conv in (block.c1_d_3, block.c1_r_1, block.c1_r_2, esa.conv1.dw):
            conv.bias.normal_(0.0, 0.2)
    return block.to(DEVICE), esa.to(DEVICE)


def _build(case: str, dtype: torch.dtype):
    c = CASES[case]
    block, esa = _modules()
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(c.n, 64, c.h, c.w, generator=gen).to(DEVICE, dtype)
    b64, e64 = copy.deepcopy(block).double(), copy.deepcopy(esa).double()
    y64 = b64(t.double())
    a64 = e64.conv2.pw(e64.conv1(y64))
    bdt, edt = copy.deepcopy(block).to(dtype), copy.deepcopy(esa).to(dtype)
    ydt = bdt(t)
    adt = edt.conv2.pw(edt.conv1(ydt))
    pack = pack_convnext(block, dtype)
    epack = pack_esa_pre(esa, dtype) if c.with_esa else None
    tin = guarded(t, channels_last=c.layout == "nhwc")
    return pack, epack, tin, (y64, a64), (ydt, adt)


def _poisoned(shape, dtype) -> torch.Tensor:
    return guarded(torch.full(shape, float("nan"), dtype=dtype, device=DEVICE), channels_last=True)


def _check_guard_untouched(out: torch.Tensor) -> None:
    base = out._base
    assert torch.isfinite(out).all(), "output has NaN/Inf (unwritten element or stray read)"
    assert int(torch.isnan(base).sum()) == base.numel() - out.numel(), "kernel wrote outside its output view"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("case", list(CASES))
def test_convnext(case, backend, dtype):
    """The backend writes exactly its poisoned outputs, within max(bound, 4x PyTorch's error) of float64;
    the op's own allocations (same backend) are channels-last in x's dtype, same bits."""
    pack, epack, t, (y64, a64), (ydt, adt) = _build(case, dtype)
    y_out = _poisoned(tuple(t.shape), dtype)
    a_out = _poisoned((t.shape[0], 16, t.shape[2], t.shape[3]), dtype) if epack else None
    esa_args = (epack.a_w, epack.a_b) if epack else (None, None)
    y, a = CONVNEXT_IMPLS[backend](ConvNeXtArgs(t, *pack, *esa_args, "ieee"), out=y_out, out_a=a_out)
    assert y is y_out
    _check_guard_untouched(y)
    assert_close_to_ref(y, y64, dtype, ydt, name=f"convnext[{backend}] {case} y")
    if epack:
        assert a is a_out
        _check_guard_untouched(a)
        assert_close_to_ref(a, a64, dtype, adt, name=f"convnext[{backend}] {case} esa pre-map")
    else:
        assert a.numel() == 0

    y_op, a_op = convnext_packed(t, pack, epack, backend=backend)
    assert y_op.dtype == dtype and y_op.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_op, y), f"convnext[{backend}] {case}: the op's y differs from the launcher's"
    if epack:
        assert a_op.dtype == dtype and a_op.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a_op, a), f"convnext[{backend}] {case}: the op's pre-map differs from the launcher's"
    else:
        assert a_op.numel() == 0


def test_op_dispatch_triton_matches_launcher():
    pack, epack, t, *_ = _build("n1_9x13_nhwc", torch.float32)
    epack = pack_esa_pre(_modules()[1])
    y_op, a_op = convnext_packed(t, pack, epack, backend="triton")
    y_l, a_l = convnext_triton(ConvNeXtArgs(t, *pack, epack.a_w, epack.a_b))
    torch.testing.assert_close(y_op, y_l, rtol=0, atol=0)
    torch.testing.assert_close(a_op, a_l, rtol=0, atol=0)
    assert y_op.is_contiguous(memory_format=torch.channels_last)
    assert a_op.is_contiguous(memory_format=torch.channels_last)


def test_esa_fold_matches_module():
    """The float64 fold itself: Aᵀ·y + a0 == conv2.pw(conv1(y))."""
    _, esa = _modules()
    esa = esa.double()
    y = torch.randn(2, 64, 5, 7, dtype=torch.float64, device=DEVICE)
    p = pack_esa_pre(esa)  # folded in fp64, A cast to fp32
    ref = esa.conv2.pw(esa.conv1(y))
    got = torch.einsum("nchw,ce->nehw", y, p.a_w.double()) + p.a_b.double()[:, None, None]
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
def test_constant_input_is_finite(backend, value):
    block, esa = _modules()
    t = torch.full((1, 64, 15, 15), value, dtype=torch.float16, device=DEVICE)
    y, a = convnext_packed(t, pack_convnext(block, torch.float16), pack_esa_pre(esa, torch.float16), backend=backend)
    assert torch.isfinite(y).all() and torch.isfinite(a).all()
    assert_close_to_ref(y, block.double()(t.double()), torch.float16, name="constant input")


# --------------------------------------------------------------------------- validation


def _args(dtype=torch.float32):
    block, esa = _modules()
    p, e = pack_convnext(block, dtype), pack_esa_pre(esa, dtype)
    t = torch.randn(1, 64, 9, 9, device=DEVICE).to(dtype)
    return dict(t=t, dw=p.dw, bd=p.bd, w1=p.w1, b1=p.b1, w2=p.w2, b2=p.b2, esa_a=e.a_w, esa_b=e.a_b)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.update(t=a["t"][0]), InputError, "4-D"),
        (lambda a: a.update(t=a["t"][:, :32]), InputError, "channels"),
        (lambda a: a.update(t=a["t"].double()), InputError, "float32, float16 or bfloat16"),
        (lambda a: a.update(t=a["t"].half()), InputError, "w1: expected dtype"),
        (lambda a: a.update(w1=a["w1"].to("meta")), InputError, "w1 is on meta"),
        (lambda a: a.update(b2=a["b2"].to("meta")), InputError, "b2 is on meta"),
        (lambda a: a.update(w2=a["w2"][:128]), InputError, "w2: expected shape"),
        (lambda a: a.update(dw=a["dw"].reshape(3, 3, 64)), InputError, "dw: expected shape"),
        (lambda a: a.update(esa_b=None), InputError, "together"),
        (lambda a: a.update(esa_a=a["esa_a"][:32]), InputError, "esa_a: expected shape"),
        (lambda a: a.update(esa_b=a["esa_b"].half()), InputError, "esa_b: expected dtype"),
        (lambda a: a.update(precision="bf16"), InputError, "precision"),
        (lambda a: a.update(backend="vulkan"), InputError, "backend"),
    ],
)
def test_validation_errors(mutate, exc, match):
    args = _args()
    mutate(args)
    with pytest.raises(exc, match=match):
        convnext(**args)


def test_pack_rejects_bad_modules():
    with pytest.raises(InputError, match="ConvNeXtBlock"):
        pack_convnext(nn.Conv2d(64, 64, 1))
    with pytest.raises(InputError, match="ESA"):
        pack_esa_pre(nn.Conv2d(64, 64, 1))
    block = ConvNeXtBlock()
    block.c1_d_3 = nn.Conv2d(64, 64, 3, padding=1)
    with pytest.raises(InputError, match="depthwise"):
        pack_convnext(block)


def test_pack_dtypes():
    block, esa = _modules()
    for dt in DTYPES:
        p, e = pack_convnext(block, dt), pack_esa_pre(esa, dt)
        cd = _common.compute_dtype(dt)
        assert p.w1.dtype == p.w2.dtype == e.a_w.dtype == cd
        assert all(v.dtype == torch.float32 for v in (p.dw, p.bd, p.b1, p.b2, e.a_b))
        assert p.w1.shape == (64, 256) and p.w2.shape == (256, 64) and e.a_w.shape == (64, 16)


# --------------------------------------------------------------------------- torch.library / torch.compile


@pytest.mark.parametrize("with_esa", [False, True])
def test_opcheck(with_esa):
    a = _args()
    t = a["t"][:, :, :7, :5].contiguous()
    esa = (a["esa_a"], a["esa_b"]) if with_esa else (None, None)
    args = (t, a["dw"], a["bd"], a["w1"], a["b1"], a["w2"], a["b2"], *esa, "ieee", "torch")
    torch.library.opcheck(torch.ops.bcrn_fast.convnext.default, args)


def _compile_fn():
    def fn(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b):
        y, a = convnext(t, dw, bd, w1, b1, w2, b2, esa_a, esa_b, backend="torch")
        y2, _ = convnext(y, dw, bd, w1, b1, w2, b2, backend="torch")
        return y2, a

    a = _args()
    return fn, tuple(a.values())


def test_torch_compile_eager_fullgraph():
    torch._dynamo.reset()
    fn, args = _compile_fn()
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="eager")(*args), fn(*args))


def test_torch_compile_inductor_fullgraph():
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("inductor's CPU backend needs a C++ compiler; none found")
    torch._dynamo.reset()
    fn, args = _compile_fn()
    try:
        out = torch.compile(fn, fullgraph=True, backend="inductor")(*args)
    except torch._dynamo.exc.BackendCompilerFailed as e:  # toolchain problem, not a graph break
        pytest.skip(f"inductor CPU compile unavailable: {e}")
    torch.testing.assert_close(out, fn(*args))


def test_tf32_mode_config():
    """precision="tf32" picks another launch config (the interpreter runs its dots in full fp32)."""
    pack, epack, t, (y64, a64), (ydt, adt) = _build("n1_15x15_nhwc_esa", torch.float32)
    y, a = convnext_packed(t, pack, epack, precision="tf32", backend="triton")
    if INTERPRETED:
        assert_close_to_ref(y, y64, torch.float32, ydt, name="convnext[triton, tf32] y")
        assert_close_to_ref(a, a64, torch.float32, adt, name="convnext[triton, tf32] a")
    else:  # precision contract for tf32 dots
        assert rel_error(y, y64) < 1e-3 and rel_error(a, a64) < 1e-3


# --------------------------------------------------------------------------- the CUDA kernel on random modules
# (``target``: the emulator build on a CPU host, the extension on a GPU; bounded by REL_TOL alone)


@over_layouts_and_dtypes
@pytest.mark.parametrize("with_esa", [True, False], ids=["esa", "plain"])
def test_convnext_cuda(target, layout, dtype, with_esa):
    (n, h, w), channels_last = layout
    dev = target.device
    blk, esa, _, cp, ep = block_packs(dev, dtype, seed=10)
    ep = ep if with_esa else (None, None)
    x, x64 = rand_input((n, 64, h, w), dtype, dev, channels_last)
    ref = blk(x64)
    out = poisoned((n, 64, h, w), dtype, dev)
    out_a = poisoned((n, 16, h, w), dtype, dev) if with_esa else None
    y, a = convnext_cuda(ConvNeXtArgs(x, *cp, *ep), out=out, out_a=out_a)
    assert y is out
    assert_written_exactly(y, "convnext y")
    if with_esa:
        assert_written_exactly(a, "convnext a")
    assert_close_to_ref(y.cpu(), ref, dtype, name="convnext y")
    if with_esa:
        assert a is out_a
        assert_close_to_ref(a.cpu(), esa.conv2.pw(esa.conv1(ref)), dtype, name="convnext ESA pre-map")
    else:
        assert a.numel() == 0
