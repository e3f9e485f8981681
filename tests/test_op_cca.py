"""cca_scale and channel_scale vs the reference CCALayer (float64), torch and triton; cca_scale on CUDA.

Triton runs through the interpreter on CPU (TRITON_INTERPRET=1, set before
bcrn_fast is imported). Inputs live in NaN guard bands; errors are measured
against float64 and bounded by a multiple of PyTorch's own same-dtype error.
"""

import copy

import pytest
import torch

import bcrn_fast.ops.cca  # noqa: F401  (registers bcrn_fast::cca_scale, bcrn_fast::channel_scale)
from bcrn_fast import model as M
from bcrn_fast.model import CCALayer, mean_channels, stdv_channels
from bcrn_fast.ops import backends
from bcrn_fast.ops.cca import cca_scale, cca_scale_cuda, cca_scale_triton, channel_scale, pack_cca
from bcrn_fast.validation import InputError
from tests.cuda_fixtures import SHAPES, f32, rand_input, rand_like_module, to_device
from tests.utils import REL_TOL, assert_close_to_ref, guarded, inductor_unavailable, rel_error

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = [
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(not backends.triton_can_run(DEVICE), reason="Triton needs CUDA or TRITON_INTERPRET=1"),
    ),
    "torch",
]
ops = torch.ops.bcrn_fast

# (N, H, W, channels_last): odd, non-square, one tile, several tiles, a 1x1 map.
CASES = [(1, 15, 15, False), (2, 17, 23, True), (2, 40, 29, False), (2, 1, 1, True)]


def random_cca(seed: int = 0) -> CCALayer:
    torch.manual_seed(seed)
    cca = CCALayer().double()
    with torch.no_grad():
        for p in cca.parameters():
            p.normal_(0.0, 0.3)
    return cca.requires_grad_(False).to(DEVICE)


def cca_ref(cca: CCALayer, x: torch.Tensor) -> torch.Tensor:
    """The reference scale ``conv_du(std + mean)`` as ``[N, C]``."""
    return cca.conv_du(stdv_channels(x) + mean_channels(x)).flatten(1)


def random_map(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    offset = 0.5 * torch.randn(1, 64, 1, 1, generator=g, dtype=torch.float64)
    return (0.8 * torch.randn(n, 64, h, w, generator=g, dtype=torch.float64) + offset).to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,h,w,channels_last", CASES)
def test_cca_scale(n, h, w, channels_last, dtype, backend):
    cca = random_cca()
    x = random_map(n, h, w)
    ref64 = cca_ref(cca, x)
    ref_same = cca_ref(copy.deepcopy(cca).to(dtype), x.to(dtype))
    xg = guarded(x.to(dtype), channels_last=channels_last)
    s = ops.cca_scale(xg, *pack_cca(cca), backend)
    assert s.dtype == torch.float32 and s.shape == (n, 64) and s.is_contiguous()
    assert_close_to_ref(s, ref64, dtype, ref_same, name=f"cca_scale[{backend}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_scale(channels_last, dtype, backend):
    n, h, w = 2, 17, 23
    x = random_map(n, h, w)
    s = torch.rand(n, 64, dtype=torch.float64, device=DEVICE)
    ref64 = x * s[:, :, None, None]
    ref_same = x.to(dtype) * s.to(dtype)[:, :, None, None]
    y = ops.channel_scale(guarded(x.to(dtype), channels_last=channels_last), s.float(), backend)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_ref(y, ref64, dtype, ref_same, name=f"channel_scale[{backend}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_constant_image(dtype, backend):
    """Constant channels: std is 0 (not NaN), s finite and equal to the MLP of the mean."""
    cca = random_cca()
    level = torch.randn(1, 64, 1, 1, dtype=torch.float64, device=DEVICE)
    x = level.expand(2, 64, 19, 26).to(dtype)
    ref64 = cca.conv_du(x.double()[:, :, :1, :1]).flatten(1)  # std == 0 exactly
    s = ops.cca_scale(guarded(x), *pack_cca(cca), backend)
    assert torch.isfinite(s).all()
    assert_close_to_ref(s, ref64, dtype, name=f"constant cca_scale[{backend}]")


def probe_cca(offset: float) -> CCALayer:
    """A CCA whose hidden units read ``y[c] - offset`` of channels 3, 10, 17, 24 exactly."""
    torch.manual_seed(3)
    cca = CCALayer().double()
    d, u = cca.conv_du[0], cca.conv_du[2]
    with torch.no_grad():
        d.pw.weight.zero_()
        for j in range(4):
            d.pw.weight[j, 7 * j + 3] = 1.0
        d.dw.weight.fill_(1.0)
        d.dw.bias.fill_(-offset)
        u.pw.weight.normal_(0.0, 1.0)
        u.dw.weight.fill_(1.0)
        u.dw.bias.normal_(0.0, 0.1)
    return cca.requires_grad_(False).to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_mean_small_std(backend):
    """|mean| = 1e4 >> std = 1 in fp32: Chan-merged partials keep the std right."""
    offset = 1.0e4  # exact in fp32: the probe's hidden units are y - 1e4 without rounding
    cca = probe_cca(offset)
    g = torch.Generator().manual_seed(5)
    x = offset + 0.5 * torch.randn(1, 64, 1, 1, generator=g) + torch.randn(2, 64, 37, 41, generator=g)
    x32 = x.float().to(DEVICE)
    ref64 = cca_ref(cca, x32.double())  # exact statistics of the fp32 values
    ref_same = cca_ref(copy.deepcopy(cca).float(), x32)
    s = ops.cca_scale(guarded(x32), *pack_cca(cca), backend)
    err = assert_close_to_ref(s, ref64, torch.float32, ref_same, name=f"large-mean cca_scale[{backend}]")
    # The bound discriminates: a one-pass Σx, Σx² variance in fp32 fails it by far.
    mean = x32.mean(dim=(2, 3), keepdim=True)
    naive_var = (x32.square().mean(dim=(2, 3), keepdim=True) - mean.square()).clamp_min(0)
    naive = cca.conv_du((mean + naive_var.sqrt()).double()).flatten(1)
    assert rel_error(naive, ref64) > 20 * max(err, REL_TOL[torch.float32])


def test_deterministic_and_tiling():
    """Bit-identical over repeated calls; another tiling (and merge chunking) stays within tolerance."""
    if not backends.triton_can_run(DEVICE):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    cca = random_cca()
    x = random_map(2, 40, 29)  # 1160 pixels: 10 tiles of 128, or 73 tiles of 16 in 19 chunks of 4
    ref64 = cca_ref(cca, x)
    w = pack_cca(cca)
    xs = guarded(x.float(), channels_last=True)
    first = ops.cca_scale(xs, *w, "triton")
    for _ in range(2):
        assert torch.equal(ops.cca_scale(xs, *w, "triton"), first)
    fine = cca_scale_triton(xs, *w, block_p=16, block_t=4)
    assert torch.equal(cca_scale_triton(xs, *w, block_p=16, block_t=4), fine)
    assert rel_error(fine, first) < 1e-6
    assert_close_to_ref(fine, ref64, torch.float32, name="cca_scale 73 tiles")


def test_pack_cca_matches_module():
    cca = random_cca()
    y = torch.randn(3, 64, dtype=torch.float64, device=DEVICE)
    w1, b1, w2, b2 = (p.double() for p in pack_cca(cca))
    folded = torch.sigmoid(torch.relu(y @ w1 + b1) @ w2 + b2)
    ref = cca.conv_du(y[:, :, None, None]).flatten(1)
    assert rel_error(folded, ref) < 1e-6  # fp32-rounded weights
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in pack_cca(cca))


def test_entry_points():
    """The pack-taking Python entry points (used by the fused modules) resolve "auto" and match the ops."""
    cca = random_cca()
    x = random_map(2, 15, 17).float()
    pack = pack_cca(cca)
    s = cca_scale(x, pack)
    assert torch.equal(s, ops.cca_scale(x, *pack, "torch" if DEVICE.type == "cpu" else "triton"))
    y = channel_scale(x, s, backend="torch")
    assert torch.equal(y, ops.channel_scale(x, s, "torch"))
    ref64 = x.double() * cca_ref(cca, x.double())[:, :, None, None]
    assert_close_to_ref(y, ref64, torch.float32, name="cca entry points")


def test_validation():
    w = pack_cca(random_cca())
    x = torch.randn(1, 64, 8, 8, device=DEVICE)
    with pytest.raises(ValueError, match="64"):
        ops.cca_scale(torch.randn(1, 32, 8, 8, device=DEVICE), *w, "torch")
    with pytest.raises(ValueError, match="shape"):
        ops.cca_scale(x[0], *w, "torch")
    with pytest.raises(InputError, match="float32"):
        ops.cca_scale(x.double(), *w, "torch")
    with pytest.raises(InputError, match="dtype"):
        ops.cca_scale(x, w.w1.half(), *w[1:], "torch")
    with pytest.raises(ValueError, match="shape"):
        ops.cca_scale(x, w.w1.t().contiguous(), *w[1:], "torch")
    with pytest.raises(ValueError, match="contiguous"):
        ops.cca_scale(x, w.w1, w.b1, w.w2.t().contiguous().t(), w.b2, "torch")
    with pytest.raises(ValueError, match="on"):
        ops.cca_scale(x.to("meta"), *w, "torch")
    with pytest.raises(ValueError, match="backend"):
        ops.cca_scale(x, *w, "auto")  # "auto" is resolved in the module layer, not by the op
    with pytest.raises(ValueError, match="s"):
        ops.channel_scale(x, torch.ones(2, 64, device=DEVICE), "torch")
    with pytest.raises(InputError, match="dtype"):
        ops.channel_scale(x, torch.ones(1, 64, device=DEVICE, dtype=torch.float16), "torch")


def test_opcheck():
    w = pack_cca(random_cca())
    x = guarded(random_map(2, 9, 11).float(), channels_last=True)
    torch.library.opcheck(ops.cca_scale.default, (x, *w, "torch"))
    s = torch.rand(2, 64, device=DEVICE)
    torch.library.opcheck(ops.channel_scale.default, (x, s, "torch"))


@pytest.mark.parametrize("compiler", ["eager", "inductor"])
def test_compile_fullgraph(compiler):
    if compiler == "inductor" and (reason := inductor_unavailable()):
        pytest.skip(reason)
    torch._dynamo.reset()
    w = pack_cca(random_cca())

    def fn(x, w1, b1, w2, b2):
        s = ops.cca_scale(x, w1, b1, w2, b2, "torch")
        return ops.channel_scale(x, s, "torch"), s

    x = random_map(2, 15, 17).float()
    got = torch.compile(fn, fullgraph=True, backend=compiler)(x, *w)
    ref = fn(x, *w)
    torch.testing.assert_close(got, ref)


# --------------------------------------------------------------------------- the CUDA kernel on random modules
# (``target``: the emulator build on a CPU host, the extension on a GPU)


@pytest.mark.parametrize("shape", [*SHAPES, (2, 40, 53)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cca_scale_cuda(target, shape, dtype, channels_last):
    dev = target.device
    cca = rand_like_module(M.CCALayer(), 40)
    wts = to_device(dev, pack_cca(f32(cca)))
    n, h, w = shape
    # |mean| >> std: the case Σx / Σx² pooling gets wrong
    x, x64 = rand_input((n, 64, h, w), dtype, dev, channels_last, scale=0.05, offset=3.0)
    s = cca_scale_cuda(x, *wts)
    ref = cca.conv_du(M.stdv_channels(x64) + M.mean_channels(x64)).flatten(1)
    assert s.shape == (n, 64) and s.dtype == torch.float32 and s.is_contiguous()
    assert_close_to_ref(s.cpu(), ref, torch.float32, name="cca s")  # fp32 statistics of the stored values
    assert torch.equal(cca_scale_cuda(x, *wts).cpu(), s.cpu()), "cca_scale is not deterministic"


def test_cca_scale_cuda_constant_channels(target):
    """A constant channel has std exactly 0 (no NaN), the scale equals the reference."""
    dev = target.device
    cca = rand_like_module(M.CCALayer(), 41)
    wts = to_device(dev, pack_cca(f32(cca)))
    x64 = torch.full((2, 64, 33, 31), 0.7, dtype=torch.float64)
    x64[1] = torch.linspace(-2, 2, 64, dtype=torch.float64)[:, None, None]
    s = cca_scale_cuda(x64.float().to(dev), *wts).cpu()
    ref = cca.conv_du(M.stdv_channels(x64) + M.mean_channels(x64)).flatten(1)
    assert torch.isfinite(s).all()
    assert_close_to_ref(s, ref, torch.float32, name="cca constant")
