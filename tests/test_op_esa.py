"""esa_pool and esa_apply (+ fused CCA) vs the reference ESA / CCALayer (float64), both backends.

Triton runs through the interpreter on CPU (TRITON_INTERPRET=1, which
tests/conftest.py sets without a GPU). Inputs live in NaN guard bands, the
``out`` buffer is NaN-poisoned inside and outside the written channel slice, and errors are
bounded by a multiple of PyTorch's own same-dtype error.
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

import bcrn_fast.ops.esa  # noqa: F401  (registers bcrn_fast::esa_pool, bcrn_fast::esa_apply)
from bcrn_fast.model import ESA, CCALayer, mean_channels, stdv_channels
from bcrn_fast.ops import backends
from bcrn_fast.ops.cca import pack_cca
from bcrn_fast.ops.esa import esa_apply, esa_apply_triton, esa_pool, pack_esa, pooled_size
from bcrn_fast.validation import InputError
from tests.utils import assert_close_to_ref, guarded, inductor_unavailable, rel_error

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HAS_TRITON = backends.triton_can_run(DEVICE)
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")),
    "torch",
]
ops = torch.ops.bcrn_fast
NAN = float("nan")


def random_modules(seed: int = 0) -> tuple[ESA, CCALayer]:
    torch.manual_seed(seed)
    esa, cca = ESA().double(), CCALayer().double()
    with torch.no_grad():
        for p in [*esa.parameters(), *cca.parameters()]:
            p.normal_(0.0, 0.3)
    esa.requires_grad_(False)
    cca.requires_grad_(False)
    return esa.to(DEVICE), cca.to(DEVICE)


def random_t(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, h, w, generator=g, dtype=torch.float64).to(DEVICE)


def pre_map(esa: ESA, t: torch.Tensor) -> torch.Tensor:
    """``a = pw2·conv1(t)``: what the convnext epilogue hands to esa_pool."""
    return esa.conv2.pw(esa.conv1(t))


def low_res_branch(esa: ESA, v: torch.Tensor) -> torch.Tensor:
    """conv_max + relu, conv3 + relu, conv3_ (the bsconv op's job in the model)."""
    return esa.conv3_(torch.relu(esa.conv3(torch.relu(esa.conv_max(v)))))


def c3_ref(esa: ESA, t: torch.Tensor) -> torch.Tensor:
    return low_res_branch(esa, F.max_pool2d(esa.conv2(esa.conv1(t)), kernel_size=7, stride=3))


def cca_ref(cca: CCALayer, u: torch.Tensor) -> torch.Tensor:
    return cca.conv_du(stdv_channels(u) + mean_channels(u)).flatten(1)


@functools.cache
def apply_refs(n: int, h: int, w: int, dtype: torch.dtype | None = None):
    """Cached references (the reference modules' depthwise convs are slow on CPU).

    ``dtype=None``: ``(esa, cca, t, c3, u, s)`` in float64; otherwise PyTorch's own
    ``(u, s)`` with the modules and input cast to ``dtype``. Never mutate them.
    """
    esa, cca = random_modules()
    t = random_t(n, h, w)
    if dtype is None:
        with torch.no_grad():
            u = esa(t)
            return esa, cca, t, c3_ref(esa, t), u, cca_ref(cca, u)
    with torch.no_grad():
        u = copy.deepcopy(esa).to(dtype)(t.to(dtype))
        return u, cca_ref(copy.deepcopy(cca).to(dtype), u)


def poisoned(n: int, cbuf: int, h: int, w: int, dtype, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.full((n, cbuf, h, w), NAN, dtype=dtype, device=DEVICE).contiguous(memory_format=fmt)


# (N, H, W, channels_last) -> pooled: 15x15 -> 1x1, 17x23 -> 1x2, 40x29 -> 5x3, 47x33 -> 6x4.
POOL_CASES = [(1, 15, 15, False), (2, 17, 23, True), (2, 40, 29, False), (1, 47, 33, True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,h,w,channels_last", POOL_CASES)
def test_esa_pool(n, h, w, channels_last, dtype, backend):
    esa, _ = random_modules()
    t = random_t(n, h, w)
    a = pre_map(esa, t)
    ref64 = F.max_pool2d(esa.conv2.dw(a), kernel_size=7, stride=3)
    ref_same = F.max_pool2d(copy.deepcopy(esa.conv2.dw).to(dtype)(a.to(dtype)), kernel_size=7, stride=3)
    wts = pack_esa(esa, dtype)
    v = ops.esa_pool(guarded(a.to(dtype), channels_last=channels_last), wts.pool_dw, wts.pool_b, backend)
    assert v.shape == (n, 16, *pooled_size(h, w)) and v.dtype == dtype
    assert v.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_ref(v, ref64, dtype, ref_same, name=f"esa_pool[{backend}]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_esa_pool_nan_propagates(backend):
    """A NaN inside a pooling window gives NaN like torch's max_pool2d; other windows stay finite."""
    esa, _ = random_modules()
    a = torch.randn(1, 16, 40, 29, device=DEVICE)
    a[0, 5, 20, 3] = NAN  # only in windows of pooled row 1..2, column 0, channel 5
    wts = pack_esa(esa, torch.float32)
    v = ops.esa_pool(a, wts.pool_dw, wts.pool_b, backend)
    ref = F.max_pool2d(F.conv2d(a, wts.pool_dw.t().reshape(16, 1, 3, 3), wts.pool_b, stride=2, groups=16), 7, 3)
    assert torch.equal(torch.isnan(v), torch.isnan(ref)) and torch.isnan(v).any()


# (N, H, W, channels_last, Cbuf, out_offset, with_cca)
APPLY_CASES = [
    (1, 15, 15, False, 64, 0, True),  # standalone: a fresh [N, 64, H, W] buffer
    (2, 17, 23, True, 192, 64, True),
    (2, 40, 29, False, 128, 64, False),
    (1, 47, 33, True, 384, 320, True),  # the model's 384-channel buffer, last block
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,h,w,channels_last,cbuf,offset,with_cca", APPLY_CASES)
def test_esa_apply(n, h, w, channels_last, cbuf, offset, with_cca, dtype, backend):
    esa, cca, t, c3, u64, s64 = apply_refs(n, h, w)
    u_same, s_same = apply_refs(n, h, w, dtype)
    wts = pack_esa(esa, dtype)
    cw = pack_cca(cca) if with_cca else (None,) * 4
    out = poisoned(n, cbuf, h, w, dtype, channels_last)
    s = ops.esa_apply(
        guarded(t.to(dtype), channels_last=channels_last),
        guarded(c3.to(dtype), channels_last=not channels_last),
        wts.wf, wts.bf, wts.w4, wts.b4,
        out, offset, *cw, backend,
    )  # fmt: skip
    untouched = torch.cat([out[:, :offset], out[:, offset + 64 :]], dim=1)
    assert torch.isnan(untouched).all(), "esa_apply wrote outside its channel slice"
    u = out[:, offset : offset + 64]
    assert torch.isfinite(u).all()
    assert_close_to_ref(u, u64, dtype, u_same, name=f"esa_apply u[{backend}]")
    if with_cca:
        assert s.shape == (n, 64) and s.dtype == torch.float32
        assert_close_to_ref(s, s64, dtype, s_same, name=f"esa_apply s[{backend}]")
    else:
        assert s.shape == (0,) and s.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_esa_cca_composed(dtype, backend):
    """esa_pool -> reference low-res branch -> esa_apply(+CCA): u ⊙ s == cca(esa(t))."""
    n, h, w = 2, 40, 29
    esa, cca, t, _, u64, _ = apply_refs(n, h, w)  # u64 = esa(t)
    u_same, _ = apply_refs(n, h, w, dtype)  # esa in dtype
    ref64 = cca(u64)
    ref_same = copy.deepcopy(cca).to(dtype)(u_same)
    wts = pack_esa(esa, dtype)
    td = guarded(t.to(dtype), channels_last=True)
    v = ops.esa_pool(guarded(pre_map(esa, t).to(dtype)), wts.pool_dw, wts.pool_b, backend)
    c3 = low_res_branch(esa, v.double()).to(dtype)
    out = poisoned(n, 128, h, w, dtype, channels_last=True)
    s = ops.esa_apply(td, c3, wts.wf, wts.bf, wts.w4, wts.b4, out, 64, *pack_cca(cca), backend)
    y = out[:, 64:].double() * s.double()[:, :, None, None]
    assert_close_to_ref(y, ref64, dtype, ref_same, name=f"cca(esa(t))[{backend}]")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_apply_deterministic_and_tiling():
    """CCA scale bit-identical over calls; another tiling and merge chunking stays within tolerance."""
    esa, cca, t, c3, _, s64 = apply_refs(2, 40, 29)
    n, _, h, w = t.shape
    wts, cw = pack_esa(esa, torch.float32), pack_cca(cca)
    args = (guarded(t.float()), c3.float(), wts.wf, wts.bf, wts.w4, wts.b4)
    out = poisoned(n, 64, h, w, torch.float32, channels_last=True)
    first = ops.esa_apply(*args, out, 0, *cw, "triton")  # 1160 pixels: 10 tiles of 128, one merge chunk
    u_first = out.clone()
    for _ in range(2):
        assert torch.equal(ops.esa_apply(*args, out, 0, *cw, "triton"), first)
    out2 = poisoned(n, 64, h, w, torch.float32, channels_last=False)
    fine = esa_apply_triton(*args, out2, 0, *cw, block_p=32, block_t=4)  # 37 tiles in 10 merge chunks
    assert torch.equal(esa_apply_triton(*args, out2, 0, *cw, block_p=32, block_t=4), fine)
    assert rel_error(out2, u_first) < 1e-6  # other dot shapes: equal up to rounding
    assert rel_error(fine, first) < 1e-6
    assert_close_to_ref(fine, s64, torch.float32, name="esa_apply s, 37 tiles")


@pytest.mark.parametrize("backend", BACKENDS)
def test_entry_points(backend):
    """The pack-taking Python entry points (used by the fused modules) match the ops."""
    esa, cca, t, c3, u64, s64 = apply_refs(1, 15, 15)
    pack = pack_esa(esa, torch.float32)
    a = pre_map(esa, t).float()
    v = esa_pool(a, pack, backend=backend)
    torch.testing.assert_close(v, ops.esa_pool(a, pack.pool_dw, pack.pool_b, backend), rtol=0, atol=0)
    out = poisoned(1, 64, 15, 15, torch.float32, channels_last=True)
    s = esa_apply(t.float(), c3.float(), pack, out, 0, cca=pack_cca(cca), precision="ieee", backend=backend)
    assert_close_to_ref(out, u64, torch.float32, name="esa_apply entry point u")
    assert_close_to_ref(s, s64, torch.float32, name="esa_apply entry point s")
    assert esa_apply(t.float(), c3.float(), pack, out, backend=backend).shape == (0,)


def test_pack_esa_matches_module():
    esa, _ = random_modules()
    t = random_t(1, 9, 7)
    wts = [p.double() for p in pack_esa(esa, torch.float32)]
    pool_dw, pool_b, wf, bf, w4, b4 = wts
    a = pre_map(esa, t)
    dw_ref = F.conv2d(a, pool_dw.t().reshape(16, 1, 3, 3), pool_b, stride=2, groups=16)
    assert rel_error(dw_ref, esa.conv2.dw(a)) < 1e-6
    cf = torch.einsum("nchw,cf->nfhw", t, wf) + bf[:, None, None]
    assert rel_error(cf, esa.conv_f(esa.conv1(t))) < 1e-6
    z = torch.randn(1, 16, 5, 4, dtype=torch.float64, device=DEVICE)
    c4 = torch.einsum("nfhw,fc->nchw", z, w4) + b4[:, None, None]
    assert rel_error(c4, esa.conv4(z)) < 1e-6
    half = pack_esa(esa, torch.float16)
    assert half.wf.dtype == half.w4.dtype == torch.float16 and half.bf.dtype == half.pool_dw.dtype == torch.float32


def _apply_args(n=1, h=15, w=15, dtype=torch.float32, cca=True):
    esa, cc = random_modules()
    wts = pack_esa(esa, dtype)
    t = torch.randn(n, 64, h, w, dtype=dtype, device=DEVICE)
    c3 = torch.randn(n, 16, *pooled_size(max(h, 15), max(w, 15)), dtype=dtype, device=DEVICE)
    out = torch.empty(n, 64, h, w, dtype=dtype, device=DEVICE)
    cw = pack_cca(cc) if cca else (None,) * 4
    return [t, c3, wts.wf, wts.bf, wts.w4, wts.b4, out, 0, *cw, "torch"]


def test_validation():
    esa, _ = random_modules()
    wts = pack_esa(esa, torch.float32)
    a = torch.randn(1, 16, 15, 15, device=DEVICE)
    with pytest.raises(ValueError, match="15x15"):
        ops.esa_pool(a[:, :, :14], wts.pool_dw, wts.pool_b, "torch")
    with pytest.raises(ValueError, match="16"):
        ops.esa_pool(torch.randn(1, 64, 15, 15, device=DEVICE), wts.pool_dw, wts.pool_b, "torch")
    with pytest.raises(InputError, match="float32"):
        ops.esa_pool(a.double(), wts.pool_dw, wts.pool_b, "torch")
    with pytest.raises(InputError, match="dtype"):
        ops.esa_pool(a, wts.pool_dw.half(), wts.pool_b, "torch")
    with pytest.raises(ValueError, match="on"):
        ops.esa_pool(a.to("meta"), wts.pool_dw, wts.pool_b, "torch")

    def bad(match, exc=ValueError, **edits):
        args = _apply_args(**{k: edits.pop(k) for k in ("n", "h", "w", "dtype", "cca") if k in edits})
        for i, value in edits.items():
            args[int(i[1:])] = value(args) if callable(value) else value
        with pytest.raises(exc, match=match):
            ops.esa_apply(*args)

    ops.esa_apply(*_apply_args())  # the baseline call is valid
    bad("15x15", h=14)
    bad("64", a0=lambda a: a[0][:, :32])  # t with 32 channels
    bad("16", a1=lambda a: a[1][:, :8])  # c3 with 8 channels
    bad("batch", a1=lambda a: torch.cat([a[1], a[1]]))
    bad("float32", InputError, a0=lambda a: a[0].double())
    bad("dtype", InputError, a1=lambda a: a[1].half())  # c3 dtype != t dtype
    bad("dtype", InputError, a2=lambda a: a[2].half())  # fp32 storage needs fp32 wf
    bad("dtype", InputError, dtype=torch.float16, a4=lambda a: a[4].float())  # fp16 storage needs fp16 w4
    bad("on", a0=lambda a: a[0].to("meta"))
    bad("do not fit", a7=1)
    bad("do not fit", a7=-1)
    bad("out", a6=lambda a: a[6][:, :, :-1])
    bad("all four", a10=None)
    bad("precision|backend", a12="auto")


def test_opcheck():
    esa, cca = random_modules()
    wts = pack_esa(esa, torch.float32)
    a = guarded(torch.randn(2, 16, 17, 23, device=DEVICE))
    torch.library.opcheck(ops.esa_pool.default, (a, wts.pool_dw, wts.pool_b, "torch"))
    for with_cca in (True, False):
        args = _apply_args(n=2, h=17, w=23, cca=with_cca)
        args[6] = torch.zeros(2, 128, 17, 23, device=DEVICE).contiguous(memory_format=torch.channels_last)
        args[7] = 64
        torch.library.opcheck(ops.esa_apply.default, tuple(args))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_compile_fullgraph(compiler):
    if compiler == "inductor" and (reason := inductor_unavailable()):
        pytest.skip(reason)
    torch._dynamo.reset()
    esa, cca = random_modules()
    wts, cw = pack_esa(esa, torch.float32), pack_cca(cca)

    def fn(t, a, out):
        v = ops.esa_pool(a, wts.pool_dw, wts.pool_b, "torch")
        c3 = torch.relu(v) * 0.5  # stands in for the low-res branch
        s = ops.esa_apply(t, c3, wts.wf, wts.bf, wts.w4, wts.b4, out, 64, *cw, "torch")
        return v, s

    t = random_t(2, 17, 23).float()
    a = pre_map(esa, t.double()).float()
    out_c = torch.zeros(2, 128, 17, 23, device=DEVICE)
    out_e = out_c.clone()
    got = torch.compile(fn, fullgraph=True, backend=compiler)(t, a, out_c)
    ref = fn(t, a, out_e)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(out_c, out_e)
