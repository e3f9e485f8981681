"""bcrn_fast::bsconv (fused BSConvU) against the reference modules, both backends.

Every BSConvU shape BCRN uses: conv1 (Cin 3), the BCB conv (64, CCA scale on
load), the 1x1 form, ESA's stride-2 valid 3x3, the tail conv2 (Cin 384 from a
channel slice, scale + GELU + residual) and the upsampler (pixel-shuffle store,
r = 2, 3, 4). Inputs are NaN guard-banded views; every backend (torch, triton,
cuda: the extension on a GPU, its emulator build on a CPU host) writes into a
NaN-poisoned, guard-banded buffer, and the op's own allocation is checked for layout.
"""

import copy
import shutil
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from bcrn_fast.kernels.bsconv import dataflow
from torch import nn

from bcrn_fast import model as M
from bcrn_fast.model import (
    BSConvU,  # the class the reference model is built from
    make_upsampler,
)
from bcrn_fast.ops import _common
from bcrn_fast.ops.bsconv import (
    BSCONV_IMPLS,
    BSConvArgs,
    BSConvPack,
    bsconv,
    bsconv_cuda,
    bsconv_packed,
    bsconv_triton,
    pack_bsconv,
    pack_upsampler,
)
from bcrn_fast.validation import InputError
from tests.cuda_fixtures import SHAPES, assert_written_exactly, f32, poisoned, rand_input, rand_like_module
from tests.utils import assert_close_to_ref, guarded, rel_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


BACKENDS = ["torch", "triton", "cuda"]


class Case(NamedTuple):
    n: int
    cin: int
    cout: int
    k: int
    stride: int
    pad: int
    h: int
    w: int
    act: int  # 0 none, 1 relu, 2 GELU
    has_scale: bool  # per-(n, cin) in_scale on load
    has_res: bool  # residual added last
    shuffle: int  # pixel-shuffle factor (0 = none)
    layout: str  # "nchw", "nhwc" or "slice" (a channel slice of a wider NHWC buffer)


CASES = {
    "conv1_cin3": Case(2, 3, 64, 3, 1, 1, 17, 23, 0, False, False, 0, "nchw"),
    "bcb_conv_scale_relu": Case(1, 64, 64, 3, 1, 1, 15, 15, 1, True, False, 0, "nhwc"),
    "k1_64to16": Case(2, 64, 16, 1, 1, 0, 31, 9, 0, False, False, 0, "nchw"),
    "k1_gelu_res": Case(1, 16, 16, 1, 1, 0, 15, 15, 2, True, True, 0, "nhwc"),
    "esa_stride2_valid": Case(2, 16, 16, 3, 2, 0, 17, 23, 0, False, False, 0, "nhwc"),
    "tail_cin384": Case(2, 384, 64, 3, 1, 1, 9, 13, 2, True, True, 0, "slice"),
    "up_x2_res": Case(1, 64, 12, 3, 1, 1, 15, 15, 0, False, True, 2, "nhwc"),
    "up_x3": Case(2, 64, 27, 3, 1, 1, 9, 13, 0, False, False, 3, "nchw"),
    "up_x4": Case(1, 64, 48, 3, 1, 1, 17, 23, 0, False, False, 4, "nhwc"),
}


def _cuda_unsupported(c: Case) -> str | None:
    """Why the CUDA kernel cannot run case ``c`` (it is built for ksize 1 / 3, stride 1..4), or None."""
    if c.k not in (1, 3) or c.stride > 4:
        return f"the CUDA bsconv supports ksize 1/3 and stride <= 4 (case: ksize {c.k}, stride {c.stride})"
    return None


def _case_backend_params() -> list:
    params = []
    for name, c in CASES.items():
        for b in BACKENDS:
            why = _cuda_unsupported(c) if b == "cuda" else None
            marks = [pytest.mark.skip(reason=why)] if why else []
            params.append(pytest.param(name, b, id=f"{name}-{b}", marks=marks))
    return params


def _make_module(cin, cout, k, stride, pad, shuffle, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    if shuffle:
        assert cout == 3 * shuffle * shuffle
        m = make_upsampler(cin, shuffle)
    else:
        m = BSConvU(cin, cout, kernel_size=k, stride=stride, padding=pad)
    with torch.no_grad():  # random, non-trivial biases
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.2)
    return m.to(DEVICE)


def _act(y: torch.Tensor, act: int) -> torch.Tensor:
    return torch.relu(y) if act == 1 else F.gelu(y) if act == 2 else y


def _place(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A NaN guard-banded view of x: NCHW, channels-last, or a channel slice of a wider NHWC buffer."""
    if layout == "slice":
        n, c, h, w = x.shape
        wide = torch.full((n, c + 16, h, w), float("nan"), dtype=x.dtype, device=x.device)
        wide[:, 8 : 8 + c] = x
        return guarded(wide, channels_last=True)[:, 8 : 8 + c]
    return guarded(x, channels_last=layout == "nhwc")


def _poisoned_out(shape, dtype, shuffle) -> torch.Tensor:
    """A NaN-filled output buffer inside a NaN guard band, in the op's output layout."""
    return guarded(torch.full(shape, float("nan"), dtype=dtype, device=DEVICE), channels_last=not shuffle)


def _check_guard_untouched(out: torch.Tensor) -> None:
    base = out._base
    assert base is not None
    assert torch.isfinite(out).all(), "output has NaN/Inf (unwritten element or stray read)"
    n_nan = int(torch.isnan(base).sum())
    assert n_nan == base.numel() - out.numel(), "kernel wrote outside its output view"


def _build(case: str, dtype: torch.dtype):
    c = CASES[case]
    m = _make_module(c.cin, c.cout, c.k, c.stride, c.pad, c.shuffle)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(c.n, c.cin, c.h, c.w, generator=gen).to(DEVICE, dtype)
    s = (0.5 + torch.rand(c.n, c.cin, generator=gen)).to(DEVICE) if c.has_scale else None
    ho, wo = (c.h + 2 * c.pad - c.k) // c.stride + 1, (c.w + 2 * c.pad - c.k) // c.stride + 1
    r = max(c.shuffle, 1)
    out_shape = (c.n, c.cout // (r * r), ho * r, wo * r)
    res = torch.randn(out_shape, generator=gen).to(DEVICE, dtype) if c.has_res else None

    # float64 reference from the module itself (inputs as the kernel sees them)
    m64 = copy.deepcopy(m).double()
    x64 = x.double() * (s.double()[:, :, None, None] if s is not None else 1.0)
    ref64 = _act(m64(x64), c.act) + (res.double() if res is not None else 0.0)
    # PyTorch's own result in the storage dtype
    mdt = copy.deepcopy(m).to(dtype)
    xdt = x * s[:, :, None, None].to(dtype) if s is not None else x
    ref_dt = _act(mdt(xdt), c.act) + (res if res is not None else 0.0)

    pack = pack_upsampler(m, dtype) if c.shuffle else pack_bsconv(m, dtype)
    xin = _place(x, c.layout)
    resin = guarded(res, channels_last=c.layout != "nchw") if res is not None else None
    return pack, xin, s, resin, c.act, ref64, ref_dt, out_shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case, backend", _case_backend_params(), indirect=["backend"])
def test_bsconv(case, backend, dtype):
    """The backend writes exactly its poisoned output, within max(bound, 4x PyTorch's error) of float64;
    the op's own allocation (same backend) is channels-last (NCHW-contiguous when shuffled), same bits."""
    pack, x, s, res, act, ref64, ref_dt, out_shape = _build(case, dtype)
    out = _poisoned_out(out_shape, dtype, pack.shuffle)
    args = BSConvArgs(
        x, pack.pw_t, pack.dw, pack.bias, s, res, pack.ksize, pack.stride, pack.padding, act, pack.shuffle
    )
    y = BSCONV_IMPLS[backend](args, out=out)
    assert y is out
    _check_guard_untouched(out)
    assert_close_to_ref(y, ref64, dtype, ref_dt, name=f"bsconv[{backend}] {case}")

    y_op = bsconv_packed(x, pack, in_scale=s, residual=res, act=act, backend=backend)
    assert y_op.dtype == dtype and tuple(y_op.shape) == out_shape
    if pack.shuffle:
        assert y_op.is_contiguous(), "pixel-shuffled output must be NCHW contiguous"
    else:
        assert y_op.is_contiguous(memory_format=torch.channels_last), "output must be channels-last"
    assert torch.equal(y_op, y), f"bsconv[{backend}] {case}: the op's result differs from the launcher's"


def test_pixel_shuffle_store_matches_nn_pixelshuffle():
    """The shuffled store equals nn.PixelShuffle applied to the unshuffled fused result."""
    for r in (2, 3, 4):
        m = _make_module(16, 3 * r * r, 3, 1, 1, r)
        x = torch.randn(1, 16, 9, 7, device=DEVICE)
        packed = pack_upsampler(m)
        plain = BSConvPack(*packed[:6], shuffle=0)
        y_plain = bsconv_triton(BSConvArgs(x, *plain[:3], None, None, 3, 1, 1, 0, 0))
        y_shuf = bsconv_triton(BSConvArgs(x, *packed[:3], None, None, 3, 1, 1, 0, r))
        torch.testing.assert_close(y_shuf, nn.PixelShuffle(r)(y_plain), rtol=0, atol=0)
        assert y_shuf.is_contiguous() and y_shuf.shape == (1, 3, 9 * r, 7 * r)


@pytest.mark.parametrize(
    "cin, cout, k, plan",
    [
        (3, 64, 3, "im2col"),  # conv1: the 27 (tap, channel) pairs are one 32-wide K chunk
        (64, 64, 3, "implicit"),  # the BCB BSConv: per-tap folded weights, in-place accumulation
        (16, 16, 3, "implicit"),  # ESA's low-resolution convs
        (64, 16, 1, "implicit"),  # a 1x1 BSConv is one GEMM
        (384, 64, 3, "two_pass"),  # conv2: a 6-chunk GEMM would repeat per tap
        (64, 48, 3, "two_pass"),  # the x4 upsampler: 48 outputs padded to 64 per tap
        (64, 27, 3, "two_pass"),  # the x3 upsampler
    ],
)
def test_dataflow_per_shape(cin, cout, k, plan):
    """Which form each BCRN BSConv takes on Triton (kernels/bsconv.py header: MACs per pixel of each)."""
    assert dataflow(cin, cout, k) == plan


def test_op_dispatch_triton_matches_launcher():
    pack, x, s, res, act, *_ = _build("k1_gelu_res", torch.float32)
    y_op = bsconv_packed(x, pack, in_scale=s, residual=res, act=act, backend="triton")
    y_launch = bsconv_triton(BSConvArgs(x, *pack[:3], s, res, pack.ksize, pack.stride, pack.padding, act, 0))
    torch.testing.assert_close(y_op, y_launch, rtol=0, atol=0)
    assert y_op.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
def test_constant_input_is_finite(backend, value):
    m = _make_module(64, 48, 3, 1, 1, 4)
    pack = pack_upsampler(m, torch.float16)
    x = torch.full((1, 64, 15, 15), value, dtype=torch.float16, device=DEVICE)
    s = torch.ones(1, 64, device=DEVICE)
    y = bsconv_packed(x, pack, in_scale=s, act=2, backend=backend)
    assert torch.isfinite(y).all()
    ref = F.gelu(m.double()(x.double()))
    assert_close_to_ref(y, ref, torch.float16, name="constant input")


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"], indirect=True)
def test_relu_propagates_nan(backend):
    """act=1 keeps NaN like torch.relu (a GPU max.f32 would turn it into 0), for the ESA relu BSConvs."""
    m = _make_module(16, 16, 3, 1, 1, 0)
    pack = pack_bsconv(m)
    x = torch.randn(1, 16, 9, 11, device=DEVICE)
    x[0, 3, 4, 5] = float("nan")  # spreads to the 3x3 neighbourhood of (4, 5), every channel
    y = bsconv_packed(x, pack, act=1, backend=backend)
    with torch.no_grad():
        ref = torch.relu(copy.deepcopy(m).double()(x.double()))
    assert torch.isnan(ref[0, :, 3:6, 4:7]).all() and int(torch.isnan(ref).sum()) == 16 * 9
    assert torch.equal(torch.isnan(y), torch.isnan(ref)), "relu must propagate NaN exactly where torch.relu does"
    finite = ~torch.isnan(ref)
    assert_close_to_ref(y[finite], ref[finite], torch.float32, name="relu bsconv, finite part")


# --------------------------------------------------------------------------- validation


def _pack(cin=16, cout=16, k=3, dtype=torch.float32):
    return pack_bsconv(BSConvU(cin, cout, kernel_size=k, padding=k // 2).to(DEVICE), dtype)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.update(x=a["x"][0]), InputError, "4-D"),
        (lambda a: a.update(x=a["x"][:, :8]), InputError, "channels"),
        (lambda a: a.update(x=a["x"].double()), InputError, "float32, float16 or bfloat16"),
        (lambda a: a.update(x=a["x"].half()), InputError, "re-pack"),
        (lambda a: a.update(pw_t=a["pw_t"].to("meta")), InputError, "pw_t is on meta"),
        (lambda a: a.update(dw=a["dw"].to("meta")), InputError, "dw is on meta"),
        (lambda a: a.update(dw=a["dw"][:4]), InputError, "dw: expected shape"),
        (lambda a: a.update(bias=a["bias"].half()), InputError, "bias: expected dtype"),
        (lambda a: a.update(in_scale=torch.ones(2, 16, device=DEVICE)), InputError, "in_scale: expected shape"),
        (lambda a: a.update(in_scale=torch.ones(1, 16, device=DEVICE).half()), InputError, "in_scale: expected dtype"),
        (lambda a: a.update(residual=torch.zeros(1, 16, 8, 9, device=DEVICE)), InputError, "residual: expected shape"),
        (lambda a: a.update(shuffle=3), InputError, "divisible"),
        (lambda a: a.update(act=5), InputError, "act must be"),
        (lambda a: a.update(precision="fp64"), InputError, "precision"),
        (lambda a: a.update(backend="vulkan"), InputError, "backend"),
        (lambda a: a.update(x=a["x"][:, :, :2, :2], stride=2, padding=0), InputError, "too small"),
    ],
)
def test_validation_errors(mutate, exc, match):
    pack = _pack()
    args = dict(x=torch.randn(1, 16, 9, 9, device=DEVICE), pw_t=pack.pw_t, dw=pack.dw, bias=pack.bias)
    mutate(args)
    with pytest.raises(exc, match=match):
        bsconv(**args)


def test_pack_rejects_bad_modules():
    with pytest.raises(InputError, match="no bias"):
        pack_bsconv((nn.Conv2d(4, 8, 1, bias=True), nn.Conv2d(8, 8, 3, padding=1, groups=8)))
    with pytest.raises(InputError, match="depthwise"):
        pack_bsconv((nn.Conv2d(4, 8, 1, bias=False), nn.Conv2d(8, 8, 3, padding=1)))
    with pytest.raises(InputError, match="PixelShuffle"):
        pack_upsampler(nn.Sequential(nn.Conv2d(4, 12, 1, bias=False)))


# --------------------------------------------------------------------------- torch.library / torch.compile


def _opcheck_args(shuffle: bool, extras: bool):
    if shuffle:
        pack = pack_upsampler(_make_module(16, 12, 3, 1, 1, 2))
    else:
        pack = _pack()
    x = torch.randn(2, 16, 7, 5, device=DEVICE).to(memory_format=torch.channels_last)
    s = torch.rand(2, 16, device=DEVICE) if extras else None
    r = 2 if shuffle else 1
    res = torch.randn(2, pack.pw_t.shape[1] // (r * r), 7 * r, 5 * r, device=DEVICE) if extras else None
    return (x, pack.pw_t, pack.dw, pack.bias, s, res, 3, 1, 1, 2 if extras else 0, pack.shuffle, "ieee", "torch")


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("extras", [False, True])
def test_opcheck(shuffle, extras):
    torch.library.opcheck(torch.ops.bcrn_fast.bsconv.default, _opcheck_args(shuffle, extras))


def _compile_fn():
    def fn(x, pw_t, dw, bias, s, res, up_pw, up_dw, up_b):
        y = bsconv(x, pw_t, dw, bias, in_scale=s, residual=res, act=2, backend="torch")
        return bsconv(y, up_pw, up_dw, up_b, shuffle=2, backend="torch")

    p = _pack()
    up = pack_upsampler(_make_module(16, 12, 3, 1, 1, 2))
    x = torch.randn(2, 16, 7, 5, device=DEVICE)
    args = (x, p.pw_t, p.dw, p.bias, torch.rand(2, 16, device=DEVICE), torch.randn(2, 16, 7, 5, device=DEVICE),
            up.pw_t, up.dw, up.bias)  # fmt: skip
    return fn, args


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
        compiled = torch.compile(fn, fullgraph=True, backend="inductor")
        out = compiled(*args)
    except torch._dynamo.exc.BackendCompilerFailed as e:  # toolchain problem, not a graph break
        pytest.skip(f"inductor CPU compile unavailable: {e}")
    torch.testing.assert_close(out, fn(*args))


def test_compute_dtype_of_packs():
    for dt in DTYPES:
        p = _pack(dtype=dt)
        assert p.pw_t.dtype == _common.compute_dtype(dt)
        assert p.dw.dtype == torch.float32 and p.bias.dtype == torch.float32


def test_tf32_mode_config():
    """precision="tf32" picks another launch config (the interpreter runs its dots in full fp32)."""
    pack, x, s, res, act, ref64, ref_dt, out_shape = _build("bcb_conv_scale_relu", torch.float32)
    y = bsconv_packed(x, pack, in_scale=s, residual=res, act=act, precision="tf32", backend="triton")
    if INTERPRETED:
        assert_close_to_ref(y, ref64, torch.float32, ref_dt, name="bsconv[triton, tf32]")
    else:  # precision contract for tf32 dots
        assert rel_error(y, ref64) < 1e-3


# --------------------------------------------------------------------------- the CUDA kernel on random modules
# (``target``: the emulator build on a CPU host, the extension on a GPU)


class CudaCase(NamedTuple):
    name: str
    cin: int
    cout: int
    ksize: int
    stride: int
    padding: int
    act: int  # 0 none, 1 relu, 2 GELU
    shuffle: int  # pixel-shuffle factor (0 = none)
    scale: bool  # per-(n, cin) in_scale on load
    residual: bool  # residual added last


# Random-weight modules on the CUDA kernel only, bounded by REL_TOL alone (no PyTorch-error allowance).
BSCONV_CASES = [
    CudaCase("3x3", 64, 64, 3, 1, 1, 0, 0, False, False),
    CudaCase("3x3-scale-gelu-res", 64, 64, 3, 1, 1, 2, 0, True, True),
    CudaCase("conv1-rgb", 3, 64, 3, 1, 1, 0, 0, False, False),
    CudaCase("conv2-384", 384, 64, 3, 1, 1, 2, 0, True, True),
    CudaCase("1x1-relu", 64, 16, 1, 1, 0, 1, 0, False, False),
    CudaCase("esa-stride2", 16, 16, 3, 2, 0, 0, 0, False, False),
    CudaCase("upsampler-x4", 64, 48, 3, 1, 1, 0, 4, False, True),
    CudaCase("cout-80", 16, 80, 3, 1, 1, 1, 0, False, False),
]


def _bsconv_ref(x64, pw, dw, stride, padding, scale64, act, shuffle, res64):
    xs = x64 * scale64[:, :, None, None] if scale64 is not None else x64
    z = torch.nn.functional.conv2d(xs, pw)
    y = torch.nn.functional.conv2d(z, dw.weight, dw.bias, stride=stride, padding=padding, groups=dw.groups)
    if act == 1:
        y = torch.relu(y)
    elif act == 2:
        y = torch.nn.functional.gelu(y)
    if shuffle > 1:
        y = torch.nn.functional.pixel_shuffle(y, shuffle)
    return y + res64 if res64 is not None else y


@pytest.mark.parametrize("case", BSCONV_CASES, ids=[c.name for c in BSCONV_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_bsconv_cuda(target, case, dtype, channels_last):
    name, cin, cout, k, stride, padding = case.name, case.cin, case.cout, case.ksize, case.stride, case.padding
    act, shuffle = case.act, case.shuffle
    n, h, w = SHAPES[0]
    dev = target.device
    pw = torch.nn.Conv2d(cin, cout, 1, bias=False)
    dw = torch.nn.Conv2d(cout, cout, k, stride=stride, padding=padding, groups=cout)
    seq = rand_like_module(torch.nn.Sequential(pw, dw), seed=1)
    s32 = f32(seq)
    if shuffle:
        pack = pack_upsampler(torch.nn.Sequential(s32[0], s32[1], torch.nn.PixelShuffle(shuffle)), dtype)
    else:
        pack = pack_bsconv((s32[0], s32[1]), dtype)
    pack = pack._replace(pw_t=pack.pw_t.to(dev), dw=pack.dw.to(dev), bias=pack.bias.to(dev))
    x, x64 = rand_input((n, cin, h, w), dtype, dev, channels_last)
    scale = scale64 = None
    if case.scale:
        scale = torch.rand((n, cin), generator=torch.Generator().manual_seed(3)) + 0.5
        scale64 = scale.double()
        scale = scale.to(dev)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    r = max(shuffle, 1)
    out_shape = (n, cout // (r * r), ho * r, wo * r)
    res = res64 = None
    if case.residual:
        res, res64 = rand_input(out_shape, dtype, dev, not channels_last, seed=4)
    ref = _bsconv_ref(x64, seq[0].weight, seq[1], stride, padding, scale64, act, shuffle, res64)
    out = poisoned(out_shape, dtype, dev, channels_last=shuffle <= 1)
    args = BSConvArgs(x, pack.pw_t, pack.dw, pack.bias, scale, res, k, stride, padding, act, shuffle)
    y = bsconv_cuda(args, out=out)
    assert y is out
    assert_written_exactly(y, f"bsconv {name}")
    assert_close_to_ref(y.cpu(), ref, dtype, name=f"bsconv {name}")
    # default allocation: channels-last (NCHW-contiguous when shuffled)
    y2 = bsconv(*args[:-1], backend="cuda")  # the op: contract check, then the same kernel
    assert y2.is_contiguous(memory_format=torch.contiguous_format if shuffle > 1 else torch.channels_last)
    assert torch.equal(y2.cpu(), y.cpu())


def test_bsconv_cuda_tiny_maps(target):
    """Maps smaller than one tile (the ESA branch's ~H/6 map) in every direction."""
    dev = target.device
    conv = rand_like_module(M.ESA().conv3, seed=5)
    pack = pack_bsconv(f32(conv), torch.float32)
    pack = pack._replace(pw_t=pack.pw_t.to(dev), dw=pack.dw.to(dev), bias=pack.bias.to(dev))
    for h, w in ((1, 1), (2, 3), (3, 2), (7, 40), (40, 1)):
        x, x64 = rand_input((2, 16, h, w), torch.float32, dev, channels_last=True)
        y = bsconv(x, pack.pw_t, pack.dw, pack.bias, act=_common.ACT_RELU, backend="cuda")
        assert_close_to_ref(y.cpu(), torch.relu(conv(x64)), torch.float32, name=f"bsconv {h}x{w}")
