"""esa_pool, esa_low and esa_apply (+ fused CCA) vs the reference ESA / CCALayer (float64), both backends.

Triton runs through the interpreter on CPU (TRITON_INTERPRET=1, which
tests/conftest.py sets without a GPU). Inputs live in NaN guard bands, the
``out`` buffer is NaN-poisoned inside and outside the written channel slice (the CCA scale's
``[N, 384]`` buffer likewise, esa_low's scratch too), and errors are
bounded by a multiple of PyTorch's own same-dtype error.
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from bcrn_fast.kernels.esa import low_launch_config

import bcrn_fast.ops.esa  # noqa: F401  (registers bcrn_fast::esa_pool, esa_low, esa_apply)
from bcrn_fast.model import ESA, CCALayer, mean_channels, stdv_channels
from bcrn_fast.ops import _common, backends
from bcrn_fast.ops.cca import cca_workspace_size, pack_cca
from bcrn_fast.ops.esa import (
    apply_workspaces,
    esa_apply,
    esa_apply_triton,
    esa_low,
    esa_low_triton,
    esa_pool,
    pack_esa,
    pooled_size,
    workspace_size,
)
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


# (N, Hl, Wl, channels_last) pooled maps: 1x1 (a 15x15 input), 2x3, one 16x16 block's 10x10 owned tile
# exactly, 11x13 and 23x17 (tiles crossing the map's borders), 28x51 (what a 180x320 input pools to)
LOW_CASES = [(1, 1, 1, True), (2, 2, 3, False), (1, 10, 10, True), (1, 11, 13, False), (2, 23, 17, True)]
LOW_CASES_SLOW = [(1, 28, 51, True)]


def low_refs(esa: ESA, v64: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 reference, PyTorch's own result in ``dtype``) of the low-res branch."""
    with torch.no_grad():
        return low_res_branch(esa, v64), low_res_branch(copy.deepcopy(esa).to(dtype), v64.to(dtype))


def random_v(n: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, h, w, generator=g, dtype=torch.float64).to(DEVICE)


def check_low(n, h, w, channels_last, dtype, backend, side=None):
    esa, _ = random_modules()
    v64 = random_v(n, h, w)
    ref64, ref_same = low_refs(esa, v64, dtype)
    wts = pack_esa(esa, dtype)
    v = guarded(v64.to(dtype), channels_last=channels_last)
    if backend == "triton":
        s, _ = low_launch_config(h, w)
        s = side or s
        tiles = _common.cdiv(h, s - 6) * _common.cdiv(w, s - 6)
        scratch = torch.full((n * tiles * 2 * s * s * 16,), NAN, device=DEVICE)  # read only where written
        c3 = esa_low_triton(v, wts.low_pw, wts.low_dw, wts.low_b, side=side, scratch=scratch)
        if side is None:
            assert torch.equal(c3, ops.esa_low(v, wts.low_pw, wts.low_dw, wts.low_b, backend)), "op != launcher"
    else:
        c3 = ops.esa_low(v, wts.low_pw, wts.low_dw, wts.low_b, backend)
    assert c3.shape == (n, 16, h, w) and c3.dtype == dtype
    assert c3.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_ref(c3, ref64, dtype, ref_same, name=f"esa_low[{backend}] {n}x{h}x{w}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,h,w,channels_last", LOW_CASES)
def test_esa_low(n, h, w, channels_last, dtype, backend):
    check_low(n, h, w, channels_last, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,h,w,channels_last", LOW_CASES_SLOW)
def test_esa_low_model_size(n, h, w, channels_last, backend):
    check_low(n, h, w, channels_last, torch.float16, backend)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("side", [8, 16, 32])
def test_esa_low_block_sides(side):
    """Every block side on one map: 8 (2x2 owned, 6x7 tiles in two images), 16 and 32 (one tile, mostly halo)."""
    check_low(2, 11, 13, True, torch.float32, "triton", side=side)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_esa_low_wide_index_bit_identical(monkeypatch):
    """The int64 offset path gives the i32 path's result bit for bit."""
    esa, _ = random_modules()
    wts = pack_esa(esa, torch.float16)
    v = guarded(random_v(2, 11, 13).half())
    narrow = ops.esa_low(v, wts.low_pw, wts.low_dw, wts.low_b, "triton")
    monkeypatch.setattr(_common, "FORCE_WIDE_INDEX", True)
    assert torch.equal(ops.esa_low(v, wts.low_pw, wts.low_dw, wts.low_b, "triton"), narrow)


@pytest.mark.parametrize("backend", BACKENDS)
def test_esa_low_nan_propagates(backend):
    """A NaN in v reaches exactly the c3 pixels whose 7x7 receptive field holds it, like the reference."""
    esa, _ = random_modules()
    v = random_v(1, 11, 13).float()
    v[0, 3, 5, 0] = NAN  # at the left border: the zero padding must not hide it or spread it
    wts = pack_esa(esa, torch.float32)
    c3 = ops.esa_low(v, wts.low_pw, wts.low_dw, wts.low_b, backend)
    with torch.no_grad():
        ref = low_res_branch(esa, v.double())
    assert torch.equal(torch.isnan(c3), torch.isnan(ref)) and torch.isnan(c3).any()


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
    scales = torch.full((n, cbuf), NAN, device=DEVICE)  # the model's [N, 6·64] scales: s lands in a slice
    scale = scales[:, offset : offset + 64] if with_cca else None
    # block 1 of a two-block workspace (the model's one allocation): its own counters, zeroed
    workspace = apply_workspaces(2, n, h, w, dtype, "ieee", DEVICE)[1] if with_cca and offset else (None, None)
    ret = ops.esa_apply(
        guarded(t.to(dtype), channels_last=channels_last),
        guarded(c3.to(dtype), channels_last=not channels_last),
        wts.wf, wts.bf, wts.w4, wts.b4,
        out, offset, *cw, scale, *workspace, backend,
    )  # fmt: skip
    assert ret is None
    untouched = torch.cat([out[:, :offset], out[:, offset + 64 :]], dim=1)
    assert torch.isnan(untouched).all(), "esa_apply wrote outside its channel slice"
    u = out[:, offset : offset + 64]
    assert torch.isfinite(u).all()
    assert_close_to_ref(u, u64, dtype, u_same, name=f"esa_apply u[{backend}]")
    if with_cca:
        others = torch.cat([scales[:, :offset], scales[:, offset + 64 :]], dim=1)
        assert torch.isnan(others).all(), "esa_apply wrote outside its scale slice"
        assert_close_to_ref(scale, s64, dtype, s_same, name=f"esa_apply s[{backend}]")


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
    s = torch.full((n, 64), NAN, device=DEVICE)
    ops.esa_apply(td, c3, wts.wf, wts.bf, wts.w4, wts.b4, out, 64, *pack_cca(cca), s, None, None, backend)
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
    first = esa_apply(*args[:2], wts, out, 0, cw, backend="triton")  # 1160 pixels: 18 tiles of 64 (fp32 IEEE)
    u_first = out.clone()
    for workspace in apply_workspaces(2, n, h, w, torch.float32, "ieee", DEVICE):  # views of one allocation
        assert torch.equal(esa_apply(*args[:2], wts, out, 0, cw, backend="triton", workspace=workspace), first)
    assert torch.equal(out, u_first)
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
    low = esa_low(v, pack, backend=backend)
    torch.testing.assert_close(low, ops.esa_low(v, pack.low_pw, pack.low_dw, pack.low_b, backend), rtol=0, atol=0)
    out = poisoned(1, 64, 15, 15, torch.float32, channels_last=True)
    s = esa_apply(t.float(), c3.float(), pack, out, 0, cca=pack_cca(cca), precision="ieee", backend=backend)
    assert_close_to_ref(out, u64, torch.float32, name="esa_apply entry point u")
    assert_close_to_ref(s, s64, torch.float32, name="esa_apply entry point s")
    assert esa_apply(t.float(), c3.float(), pack, out, backend=backend).shape == (0,)
    scale = torch.full((1, 64), NAN, device=DEVICE)
    got = esa_apply(t.float(), c3.float(), pack, out, cca=pack_cca(cca), backend=backend, scale=scale)
    assert got is scale and torch.equal(scale, s)


def test_pack_esa_matches_module():
    esa, _ = random_modules()
    t = random_t(1, 9, 7)
    wts = [p.double() for p in pack_esa(esa, torch.float32)]
    pool_dw, pool_b, wf, bf, w4, b4, low_pw, low_dw, low_b = wts
    a = pre_map(esa, t)
    dw_ref = F.conv2d(a, pool_dw.t().reshape(16, 1, 3, 3), pool_b, stride=2, groups=16)
    assert rel_error(dw_ref, esa.conv2.dw(a)) < 1e-6
    cf = torch.einsum("nchw,cf->nfhw", t, wf) + bf[:, None, None]
    assert rel_error(cf, esa.conv_f(esa.conv1(t))) < 1e-6
    z = torch.randn(1, 16, 5, 4, dtype=torch.float64, device=DEVICE)
    c4 = torch.einsum("nfhw,fc->nchw", z, w4) + b4[:, None, None]
    assert rel_error(c4, esa.conv4(z)) < 1e-6
    for k, conv in enumerate((esa.conv_max, esa.conv3, esa.conv3_)):
        y = torch.einsum("nihw,io->nohw", z, low_pw[k])
        assert (
            rel_error(F.conv2d(y, low_dw[k].t().reshape(16, 1, 3, 3), low_b[k], padding=1, groups=16), conv(z)) < 1e-6
        )
    half = pack_esa(esa, torch.float16)
    assert half.wf.dtype == half.w4.dtype == half.low_pw.dtype == torch.float16
    assert half.bf.dtype == half.pool_dw.dtype == half.low_dw.dtype == half.low_b.dtype == torch.float32


def _apply_args(n=1, h=15, w=15, dtype=torch.float32, cca=True):
    esa, cc = random_modules()
    wts = pack_esa(esa, dtype)
    t = torch.randn(n, 64, h, w, dtype=dtype, device=DEVICE)
    c3 = torch.randn(n, 16, *pooled_size(max(h, 15), max(w, 15)), dtype=dtype, device=DEVICE)
    out = torch.empty(n, 64, h, w, dtype=dtype, device=DEVICE)
    cw = pack_cca(cc) if cca else (None,) * 4
    scale = torch.empty(n, 64, device=DEVICE) if cca else None
    return [t, c3, wts.wf, wts.bf, wts.w4, wts.b4, out, 0, *cw, scale, None, None, "torch"]


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
    bad("precision|backend", a15="auto")
    bad("scale", a12=None)  # the CCA's s needs somewhere to go
    bad("scale", InputError, a12=lambda a: torch.empty(1, 32, device=DEVICE))
    bad("scale", InputError, a12=lambda a: torch.empty(1, 64, device=DEVICE).double())
    bad("pass the CCA weights", cca=False, a12=lambda a: torch.empty(1, 64, device=DEVICE))
    bad("both", a13=lambda a: torch.empty(1, device=DEVICE))  # partials without counters
    ws = apply_workspaces(1, 1, 15, 15, torch.float32, "ieee", DEVICE)[0]
    ops.esa_apply(*_apply_args()[:13], *ws, "torch")  # a workspace of the right size is valid
    bad("partials", InputError, a13=ws.partials[:-1], a14=ws.counters)  # one element short
    bad("counters", InputError, a13=ws.partials, a14=ws.counters.float())
    assert workspace_size(1, 15, 15, torch.float32, "ieee") == cca_workspace_size(1, 4, 32)  # 225 px: 4 tiles of 64

    v = torch.randn(1, 16, 3, 2, device=DEVICE)
    low = (wts.low_pw, wts.low_dw, wts.low_b)
    ops.esa_low(v, *low, "torch")  # valid
    with pytest.raises(ValueError, match="16"):
        ops.esa_low(torch.randn(1, 8, 3, 2, device=DEVICE), *low, "torch")
    with pytest.raises(InputError, match="dtype"):
        ops.esa_low(v.half(), *low, "torch")  # fp16 storage needs fp16 pw
    with pytest.raises(InputError, match="shape"):
        ops.esa_low(v, wts.low_pw[:2], *low[1:], "torch")
    with pytest.raises(InputError, match="precision"):
        ops.esa_low(v, *low, "torch", "fast")
    with pytest.raises(ValueError, match="backend"):
        ops.esa_low(v, *low, "auto")


def test_opcheck():
    esa, cca = random_modules()
    wts = pack_esa(esa, torch.float32)
    a = guarded(torch.randn(2, 16, 17, 23, device=DEVICE))
    torch.library.opcheck(ops.esa_pool.default, (a, wts.pool_dw, wts.pool_b, "torch"))
    v = guarded(torch.randn(2, 16, 3, 4, device=DEVICE))
    torch.library.opcheck(ops.esa_low.default, (v, wts.low_pw, wts.low_dw, wts.low_b, "torch"))
    for with_cca in (True, False):
        args = _apply_args(n=2, h=17, w=23, cca=with_cca)
        args[6] = torch.zeros(2, 128, 17, 23, device=DEVICE).contiguous(memory_format=torch.channels_last)
        args[7] = 64
        if with_cca:
            args[12] = torch.zeros(2, 384, device=DEVICE)[:, 64:128]
            args[13:15] = apply_workspaces(1, 2, 17, 23, torch.float32, "ieee", DEVICE)[0]
        torch.library.opcheck(ops.esa_apply.default, tuple(args))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_compile_fullgraph(compiler):
    if compiler == "inductor" and (reason := inductor_unavailable()):
        pytest.skip(reason)
    torch._dynamo.reset()
    esa, cca = random_modules()
    wts, cw = pack_esa(esa, torch.float32), pack_cca(cca)

    def fn(t, a, out, scales):
        v = ops.esa_pool(a, wts.pool_dw, wts.pool_b, "torch")
        c3 = ops.esa_low(v, wts.low_pw, wts.low_dw, wts.low_b, "torch")
        ops.esa_apply(t, c3, wts.wf, wts.bf, wts.w4, wts.b4, out, 64, *cw, scales[:, 64:], None, None, "torch")
        return v, c3

    t = random_t(2, 17, 23).float()
    a = pre_map(esa, t.double()).float()
    out_c, scales_c = torch.zeros(2, 128, 17, 23, device=DEVICE), torch.zeros(2, 128, device=DEVICE)
    out_e, scales_e = out_c.clone(), scales_c.clone()
    got = torch.compile(fn, fullgraph=True, backend=compiler)(t, a, out_c, scales_c)
    ref = fn(t, a, out_e, scales_e)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(scales_c, scales_e)
