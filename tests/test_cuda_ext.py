"""The CUDA extension (``csrc/`` -> ``bcrn_fast._C``): build, resources, correctness.

Four layers, cheapest first:

(a) it compiles with nvcc for sm_90 (``BCRN_CUDA_ARCHS`` overrides) and the
    module imports without a GPU and without libtorch / libcudart.so;
(b) ``cuobjdump --dump-resource-usage`` (or the ptxas report saved at build
    time) lists every kernel and none of them spills or uses local memory;
(c) execution on a GPU against the float64 reference modules (skipped with a
    reason when no GPU is visible);
(d) the same execution tests on the CPU through the emulation build
    (``csrc/emu/cuda_emu.h``): the real kernel sources, every CUDA thread a
    fiber, shared memory poisoned with NaN, barriers checked.

Builds are cached in ``build/cuda-test/`` (incremental) and shared by all tests
of a session; only nvcc's absence skips (a) and (b).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bcrn_fast import model as M
from bcrn_fast.ops import _common, backends, cuda_ext
from bcrn_fast.ops.bsconv import pack_bsconv, pack_upsampler
from bcrn_fast.ops.cca import pack_cca
from bcrn_fast.ops.convnext import pack_convnext, pack_esa_pre
from bcrn_fast.validation import InputError
from tests.utils import CPU_ONLY_ON_GPU, QUICK, assert_close_to_ref, guarded, rel_error

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "cuda-test"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(2, 17, 23), (1, 15, 15)] if not QUICK else [(2, 17, 23)]
# (shape, channels_last): both layouts on the odd batch-2 shape, the minimum BCB size channels-last
LAYOUTS = [(SHAPES[0], False), (SHAPES[0], True)] + [(s, True) for s in SHAPES[1:]]
LAYOUT_IDS = ["x".join(map(str, s)) + ("-nhwc" if cl else "-nchw") for s, cl in LAYOUTS]
KERNELS = ("bsconv_kernel", "convnext_kernel", "bcb_front_kernel", "cca_kernel")
SM86_SMEM_LIMIT = 101376  # max dynamic shared memory per block on sm_86 / sm_89, the tightest target


def _load_build_module():
    spec = importlib.util.spec_from_file_location("bcrn_cuda_build", ROOT / "csrc" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bcrn_cuda_build"] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


build = _load_build_module()


def _import_so(path: Path) -> ModuleType:
    name = path.name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _test_archs() -> list[str]:
    return build.requested_archs(os.environ.get("BCRN_CUDA_ARCHS") or "90")


# --------------------------------------------------------------------------- build fixtures


@pytest.fixture(scope="session")
def cuda_build():
    """The real extension, built for sm_90 (or BCRN_CUDA_ARCHS) into build/cuda-test."""
    if build.find_nvcc() is None:
        pytest.skip("nvcc not found (CUDA_HOME / PATH): the CUDA extension cannot be compiled here")
    archs = _test_archs()
    out = CACHE / f"sm{'-'.join(archs)}"
    return build.build_extension(out / f"_C{build.ext_suffix()}", out / "obj", archs=archs)


@pytest.fixture(scope="session")
def emu_module():
    """The CPU-emulation build of the same kernel sources (module _C_emu)."""
    if torch.cuda.is_available():
        pytest.skip(CPU_ONLY_ON_GPU)
    if shutil.which(os.environ.get("CXX", "c++")) is None or build.cuda_include_dir() is None:
        pytest.skip("the emulator build needs a C++ compiler and the CUDA headers (cuda_fp16.h)")
    out = CACHE / "emu"
    res = build.build_extension(out / f"_C_emu{build.ext_suffix()}", out / "obj", emulate=True)
    return _import_so(res.path)


@pytest.fixture(scope="session")
def gpu_module():
    """bcrn_fast._C when installed, else a session build for this GPU's architecture."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible: GPU execution tests skipped (the emulator tests run the kernels on CPU)")
    ext = cuda_ext.extension()
    if ext is not None:
        return ext
    if build.find_nvcc() is None:
        pytest.skip(f"bcrn_fast._C is not built ({cuda_ext.import_error()}) and nvcc is not available")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    out = CACHE / f"gpu-sm{arch}"
    res = build.build_extension(out / f"_C{build.ext_suffix()}", out / "obj", archs=[arch])
    return _import_so(res.path)


class Target:
    def __init__(self, device: str, module: ModuleType):
        self.device = torch.device(device)
        self.module = module


@pytest.fixture(params=["emu", "gpu"])
def target(request, monkeypatch):
    """Run a test through the CPU emulator or on the GPU."""
    if request.param == "emu":
        mod = request.getfixturevalue("emu_module")
        with cuda_ext.emulated(mod):
            yield Target("cpu", mod)
    else:
        mod = request.getfixturevalue("gpu_module")
        monkeypatch.setattr(cuda_ext, "_ext", mod)
        monkeypatch.setattr(cuda_ext, "_loaded", True)
        yield Target("cuda", mod)


# --------------------------------------------------------------------------- (a) build + import


def test_extension_compiles_and_imports(cuda_build):
    """nvcc builds the module; it imports in a fresh interpreter without a GPU or torch."""
    assert cuda_build.path.is_file()
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_C', {str(cuda_build.path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules\n"
        "print(m.archs, m.emulated, m.cca_blocks(57600), m.smem_bytes('convnext', 1))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    archs, emulated, blocks, smem = proc.stdout.split()
    assert archs.split(";") == cuda_build.archs and emulated == "False"
    assert int(blocks) == 113 and int(smem) > 0
    ldd = shutil.which("ldd")
    if ldd:
        libs = subprocess.run([ldd, str(cuda_build.path)], capture_output=True, text=True).stdout
        for lib in ("libtorch", "libc10", "libcudart.so", "libpython"):
            assert lib not in libs, f"the extension links {lib}:\n{libs}"


# --------------------------------------------------------------------------- (b) resources


def _resource_usage(cuda_build):
    cuobjdump = build.find_cuobjdump()
    if cuobjdump is not None:
        text, usage = build.cuobjdump_report(cuda_build.path, cuobjdump)
        source = "cuobjdump --dump-resource-usage"
    else:
        text = cuda_build.resource_report.read_text()
        usage = build.parse_ptxas_report(text)
        source = "nvcc --resource-usage (ptxas, at build time)"
    return source, text, usage


def test_resource_usage_no_spills(cuda_build):
    """Every kernel x arch is in the report; none spills or uses local memory (stack)."""
    source, text, usage = _resource_usage(cuda_build)
    ours = [u for u in usage if any(k in u.name for k in KERNELS)]
    smem = {k: _smem_of(cuda_build, k) for k in ("bsconv", "convnext", "bcb_front", "cca")}
    table = build.format_table(ours, {f"{k}_kernel<{t}": v for k, d in smem.items() for t, v in d.items()})
    report = cuda_build.path.parent / "resource-usage.md"
    report.write_text(f"# bcrn_fast._C resource usage ({source})\n\n{table}\n\n```\n{text}\n```\n")
    print(f"\n{source}:\n{table}\n(saved to {report})")
    for arch in cuda_build.archs:
        for k in KERNELS:
            n = sum(1 for u in ours if k in u.name and u.arch == f"sm_{arch}")
            expected = 6 if k == "bsconv_kernel" else 3  # dtypes (x ksize 1/3 for bsconv)
            assert n == expected, f"{k}: {n} instantiations for sm_{arch} in the {source} report, expected {expected}"
    spilling = [
        f"{u.name} ({u.arch}): stack {u.stack} B, spills {u.spill_stores}/{u.spill_loads} B" for u in ours if u.spills
    ]
    assert not spilling, "kernels use local memory:\n" + "\n".join(spilling)
    for kernel, by_dtype in smem.items():
        for dt, v in by_dtype.items():
            assert v <= SM86_SMEM_LIMIT, f"{kernel}<{dt}> needs {v} B of shared memory: over sm_86's {SM86_SMEM_LIMIT}"


def _smem_of(cuda_build, kernel: str) -> dict[str, int]:
    mod = _import_so(cuda_build.path)
    return {name: int(mod.smem_bytes(kernel, code)) for name, code in (("float", 0), ("fp16", 1), ("bf16", 2))}


# --------------------------------------------------------------------------- references and helpers


def _rand_like_module(mod: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A float64 copy of ``mod`` with fresh, non-trivial random weights and biases."""
    g = torch.Generator().manual_seed(seed)
    mod = copy.deepcopy(mod).double()
    with torch.no_grad():
        for p in mod.parameters():
            fan = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / fan**0.5)
    return mod


def _f32(mod: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(mod).float()


def _input(shape, dtype, device, channels_last, seed=0, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    x = guarded(x64.to(dtype).to(device), channels_last=channels_last)
    return x, x.double().cpu().contiguous()  # the reference sees the rounded input


def _poisoned(shape, dtype, device, channels_last=True):
    """A NaN output view inside a NaN guard band: unwritten elements and stray writes both show."""
    return guarded(torch.full(shape, float("nan"), dtype=dtype, device=device), channels_last=channels_last)


def _assert_written_exactly(out: torch.Tensor, name: str) -> None:
    """Every element of ``out`` written (finite), nothing around it in its buffer touched (still NaN)."""
    base = out._base
    assert base is not None, "expected a view made by _poisoned"
    assert torch.isfinite(out).all(), f"{name}: unwritten or non-finite outputs"
    stray = base.numel() - out.numel() - int(torch.isnan(base).sum())
    assert stray == 0, f"{name}: {stray} elements written outside the output"


# --------------------------------------------------------------------------- (c) + (d): bsconv


BSCONV_CASES = [
    # (name, cin, cout, ksize, stride, padding, act, shuffle, scale, residual)
    ("3x3", 64, 64, 3, 1, 1, 0, 0, False, False),
    ("3x3-scale-gelu-res", 64, 64, 3, 1, 1, 2, 0, True, True),
    ("conv1-rgb", 3, 64, 3, 1, 1, 0, 0, False, False),
    ("conv2-384", 384, 64, 3, 1, 1, 2, 0, True, True),
    ("1x1-relu", 64, 16, 1, 1, 0, 1, 0, False, False),
    ("esa-stride2", 16, 16, 3, 2, 0, 0, 0, False, False),
    ("upsampler-x4", 64, 48, 3, 1, 1, 0, 4, False, True),
    ("cout-80", 16, 80, 3, 1, 1, 1, 0, False, False),
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


@pytest.mark.parametrize("case", BSCONV_CASES, ids=[c[0] for c in BSCONV_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_bsconv(target, case, dtype, channels_last):
    name, cin, cout, k, stride, padding, act, shuffle, use_scale, use_res = case
    n, h, w = SHAPES[0]
    dev = target.device
    pw = torch.nn.Conv2d(cin, cout, 1, bias=False)
    dw = torch.nn.Conv2d(cout, cout, k, stride=stride, padding=padding, groups=cout)
    seq = _rand_like_module(torch.nn.Sequential(pw, dw), seed=1)
    s32 = _f32(seq)
    if shuffle:
        pack = pack_upsampler(torch.nn.Sequential(s32[0], s32[1], torch.nn.PixelShuffle(shuffle)), dtype)
    else:
        pack = pack_bsconv((s32[0], s32[1]), dtype)
    pack = pack._replace(pw_t=pack.pw_t.to(dev), dw=pack.dw.to(dev), bias=pack.bias.to(dev))
    x, x64 = _input((n, cin, h, w), dtype, dev, channels_last)
    scale = scale64 = None
    if use_scale:
        scale = torch.rand((n, cin), generator=torch.Generator().manual_seed(3)) + 0.5
        scale64 = scale.double()
        scale = scale.to(dev)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    r = max(shuffle, 1)
    out_shape = (n, cout // (r * r), ho * r, wo * r)
    res = res64 = None
    if use_res:
        res, res64 = _input(out_shape, dtype, dev, not channels_last, seed=4)
    ref = _bsconv_ref(x64, seq[0].weight, seq[1], stride, padding, scale64, act, shuffle, res64)
    out = _poisoned(out_shape, dtype, dev, channels_last=shuffle <= 1)
    y = cuda_ext.bsconv(x, pack.pw_t, pack.dw, pack.bias, scale, res, k, stride, padding, act, shuffle, out=out)
    assert y is out
    _assert_written_exactly(y, f"bsconv {name}")
    assert_close_to_ref(y.cpu(), ref, dtype, name=f"bsconv {name}")
    # default allocation: channels-last (NCHW-contiguous when shuffled)
    y2 = cuda_ext.bsconv(x, pack.pw_t, pack.dw, pack.bias, scale, res, k, stride, padding, act, shuffle)
    assert y2.is_contiguous(memory_format=torch.contiguous_format if shuffle > 1 else torch.channels_last)
    assert torch.equal(y2.cpu(), y.cpu())


def test_bsconv_tiny_maps(target):
    """Maps smaller than one tile (the ESA branch's ~H/6 map) in every direction."""
    dev = target.device
    conv = _rand_like_module(M.ESA().conv3, seed=5)
    pack = pack_bsconv(_f32(conv), torch.float32)
    pack = pack._replace(pw_t=pack.pw_t.to(dev), dw=pack.dw.to(dev), bias=pack.bias.to(dev))
    for h, w in ((1, 1), (2, 3), (3, 2), (7, 40), (40, 1)):
        x, x64 = _input((2, 16, h, w), torch.float32, dev, channels_last=True)
        y = cuda_ext.bsconv(x, pack.pw_t, pack.dw, pack.bias, act=_common.ACT_RELU)
        assert_close_to_ref(y.cpu(), torch.relu(conv(x64)), torch.float32, name=f"bsconv {h}x{w}")


# --------------------------------------------------------------------------- (c) + (d): convnext, bcb_front


def _block_modules(seed: int):
    blk = _rand_like_module(M.ConvNeXtBlock(), seed)
    esa = _rand_like_module(M.ESA(), seed + 1)
    conv = _rand_like_module(M.bsconv3(64, 64), seed + 2)
    return blk, esa, conv


def _to(dev, tensors):
    return tuple(t.to(dev) for t in tensors)


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_esa", [True, False], ids=["esa", "plain"])
def test_convnext(target, layout, dtype, with_esa):
    shape, channels_last = layout
    dev = target.device
    blk, esa, _ = _block_modules(10)
    cp = _to(dev, pack_convnext(_f32(blk), dtype))
    ep = _to(dev, pack_esa_pre(_f32(esa), dtype)) if with_esa else (None, None)
    n, h, w = shape
    x, x64 = _input((n, 64, h, w), dtype, dev, channels_last)
    ref = blk(x64)
    out = _poisoned((n, 64, h, w), dtype, dev)
    out_a = _poisoned((n, 16, h, w), dtype, dev) if with_esa else None
    y, a = cuda_ext.convnext(x, *cp, *ep, out=out, out_a=out_a)
    assert y is out
    _assert_written_exactly(y, "convnext y")
    if with_esa:
        _assert_written_exactly(a, "convnext a")
    assert_close_to_ref(y.cpu(), ref, dtype, name="convnext y")
    if with_esa:
        assert a is out_a
        assert_close_to_ref(a.cpu(), esa.conv2.pw(esa.conv1(ref)), dtype, name="convnext ESA pre-map")
    else:
        assert a.numel() == 0


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_scale", [True, False], ids=["scale", "noscale"])
def test_bcb_front(target, layout, dtype, with_scale):
    """One kernel == convnext(bsconv(x)): against float64 and against the two-kernel CUDA path."""
    shape, channels_last = layout
    dev = target.device
    blk, esa, conv = _block_modules(20)
    bp = pack_bsconv(_f32(conv), dtype)
    bp = bp._replace(pw_t=bp.pw_t.to(dev), dw=bp.dw.to(dev), bias=bp.bias.to(dev))
    cp = _to(dev, pack_convnext(_f32(blk), dtype))
    ep = _to(dev, pack_esa_pre(_f32(esa), dtype))
    n, h, w = shape
    x, x64 = _input((n, 64, h, w), dtype, dev, channels_last)
    scale = scale64 = None
    if with_scale:
        scale = torch.rand((n, 64), generator=torch.Generator().manual_seed(7)) + 0.5
        scale64 = scale.double()
        scale = scale.to(dev)
    t1 = conv(x64 * scale64[:, :, None, None] if with_scale else x64)
    ref = blk(t1)
    out = _poisoned((n, 64, h, w), dtype, dev)
    out_a = _poisoned((n, 16, h, w), dtype, dev)
    y, a = cuda_ext.bcb_front(x, bp.pw_t, bp.dw, bp.bias, *cp, *ep, in_scale=scale, out=out, out_a=out_a)
    _assert_written_exactly(y, "bcb_front y")
    _assert_written_exactly(a, "bcb_front a")
    assert_close_to_ref(y.cpu(), ref, dtype, name="bcb_front y")
    assert_close_to_ref(a.cpu(), esa.conv2.pw(esa.conv1(ref)), dtype, name="bcb_front ESA pre-map")
    t1_k = cuda_ext.bsconv(x, bp.pw_t, bp.dw, bp.bias, in_scale=scale)
    y2, a2 = cuda_ext.convnext(t1_k, *cp, *ep)
    tol = 1e-6 if dtype == torch.float32 else 1e-3  # same roundings; only summation order may differ
    assert rel_error(y.cpu(), y2.cpu().double()) <= tol
    assert rel_error(a.cpu(), a2.cpu().double()) <= tol


def test_bcb_front_custom_op(target):
    """``torch.ops.bcrn_fast.bcb_front`` (packed entry point) and its fake implementation."""
    dev = target.device
    blk, esa, conv = _block_modules(30)
    bp = pack_bsconv(_f32(conv), torch.float32)
    bp = bp._replace(pw_t=bp.pw_t.to(dev), dw=bp.dw.to(dev), bias=bp.bias.to(dev))
    cp = pack_convnext(_f32(blk), torch.float32)
    cp = type(cp)(*_to(dev, cp))
    ep = pack_esa_pre(_f32(esa), torch.float32)
    ep = type(ep)(*_to(dev, ep))
    x, x64 = _input((1, 64, 15, 16), torch.float32, dev, channels_last=True)
    y, a = cuda_ext.bcb_front_packed(x, bp, cp, ep)
    assert_close_to_ref(y.cpu(), blk(conv(x64)), torch.float32, name="bcb_front op")
    assert a.shape == (1, 16, 15, 16) and y.is_contiguous(memory_format=torch.channels_last)
    args = (x.contiguous(), bp.pw_t, bp.dw, bp.bias, *cp, ep.a_w, ep.a_b, None, "ieee")
    torch.library.opcheck(torch.ops.bcrn_fast.bcb_front.default, args, test_utils=("test_schema", "test_faketensor"))


# --------------------------------------------------------------------------- (c) + (d): cca


@pytest.mark.parametrize("shape", [*SHAPES, (2, 40, 53)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cca_scale(target, shape, dtype, channels_last):
    dev = target.device
    cca = _rand_like_module(M.CCALayer(), 40)
    wts = _to(dev, pack_cca(_f32(cca)))
    n, h, w = shape
    # |mean| >> std: the case Σx / Σx² pooling gets wrong
    x, x64 = _input((n, 64, h, w), dtype, dev, channels_last, scale=0.05, offset=3.0)
    s = cuda_ext.cca_scale(x, *wts)
    ref = cca.conv_du(M.stdv_channels(x64) + M.mean_channels(x64)).flatten(1)
    assert s.shape == (n, 64) and s.dtype == torch.float32 and s.is_contiguous()
    assert_close_to_ref(s.cpu(), ref, torch.float32, name="cca s")  # fp32 statistics of the stored values
    assert torch.equal(cuda_ext.cca_scale(x, *wts).cpu(), s.cpu()), "cca_scale is not deterministic"


def test_cca_constant_channels(target):
    """A constant channel has std exactly 0 (no NaN), the scale equals the reference."""
    dev = target.device
    cca = _rand_like_module(M.CCALayer(), 41)
    wts = _to(dev, pack_cca(_f32(cca)))
    x64 = torch.full((2, 64, 33, 31), 0.7, dtype=torch.float64)
    x64[1] = torch.linspace(-2, 2, 64, dtype=torch.float64)[:, None, None]
    s = cuda_ext.cca_scale(x64.float().to(dev), *wts).cpu()
    ref = cca.conv_du(M.stdv_channels(x64) + M.mean_channels(x64)).flatten(1)
    assert torch.isfinite(s).all()
    assert_close_to_ref(s, ref, torch.float32, name="cca constant")


# --------------------------------------------------------------------------- (d) emulator specifics


def test_emulator_schedules(emu_module):
    """Every kernel gives the same bits under four thread schedules (lockstep or one warp racing
    ahead, from either end): a missing __syncthreads / __syncwarp would read NaN-poisoned or stale data."""
    blk, esa, conv = _block_modules(50)
    cca = _rand_like_module(M.CCALayer(), 51)
    outs = []
    for order in (0, 1, 2, 3):
        emu_module.set_schedule(order)
        try:
            with cuda_ext.emulated(emu_module):
                for dtype in (torch.float32, torch.float16):
                    bp = pack_bsconv(_f32(conv), dtype)
                    cp = pack_convnext(_f32(blk), dtype)
                    ep = pack_esa_pre(_f32(esa), dtype)
                    x, _ = _input((1, 64, 15, 17), dtype, "cpu", channels_last=False)
                    outs.append(cuda_ext.bsconv(x, bp.pw_t, bp.dw, bp.bias))
                    outs.extend(cuda_ext.convnext(x, *cp, *ep))
                    outs.extend(cuda_ext.bcb_front(x, bp.pw_t, bp.dw, bp.bias, *cp, *ep))
                    outs.append(cuda_ext.cca_scale(x, *pack_cca(_f32(cca))))
        finally:
            emu_module.set_schedule(0)
    per = len(outs) // 4
    for k in range(1, 4):
        for a, b in zip(outs[:per], outs[k * per : (k + 1) * per], strict=True):
            assert torch.isfinite(b).all(), f"schedule {k}: non-finite output"
            assert torch.equal(a, b), f"schedule {k} changes the result"


# --------------------------------------------------------------------------- argument checks (no launch)


def test_rejects_bad_arguments(emu_module):
    blk, esa, conv = _block_modules(60)
    bp = pack_bsconv(_f32(conv), torch.float32)
    cp = pack_convnext(_f32(blk), torch.float32)
    x = torch.randn(1, 64, 15, 15)
    # no emulator: CPU tensors are refused with a clear message, before any launch
    with pytest.raises(InputError, match="CUDA tensors"):
        cuda_ext.bsconv(x, bp.pw_t, bp.dw, bp.bias)
    with cuda_ext.emulated(emu_module):
        with pytest.raises(InputError, match="dtype"):
            cuda_ext.bsconv(x.half(), bp.pw_t, bp.dw, bp.bias)  # fp32 weights for a half input
        with pytest.raises(InputError, match="ksize"):
            cuda_ext.bsconv(x, bp.pw_t, torch.zeros(25, 64), bp.bias, ksize=5)
        with pytest.raises(InputError, match="channels"):
            cuda_ext.convnext(torch.randn(1, 32, 15, 15), *pack_convnext(_f32(M.ConvNeXtBlock(32))))
        with pytest.raises(InputError, match="overlaps"):
            cuda_ext.convnext(x, *cp, out=x)
        with pytest.raises(InputError):
            cuda_ext.cca_scale(torch.randn(1, 65, 4, 4), *pack_cca(_f32(M.CCALayer())))
        # the C++ launchers re-check and raise ValueError instead of launching garbage
        with pytest.raises(ValueError, match="ksize"):
            emu_module.bsconv(
                dtype=0, x=x.data_ptr(), sx=x.stride(), scale=0, ss=(0, 0), pw=bp.pw_t.data_ptr(),
                dw=bp.dw.data_ptr(), bias=bp.bias.data_ptr(), res=0, sr=(0, 0, 0, 0), y=x.data_ptr(),
                sy=x.stride(), sizes=(1, 64, 64, 15, 15, 15, 15), ksize=5, stride=1, pad=2, act=0, shuffle=0,
                device=-1, stream=0,
            )  # fmt: skip


def test_available_reports_state():
    assert isinstance(cuda_ext.available(), bool)
    info = cuda_ext.info()
    assert set(info) == {"built", "archs", "cuda_device", "error"}
    if not info["built"]:
        assert cuda_ext.import_error()
    if not torch.cuda.is_available():
        assert not cuda_ext.available()


# --------------------------------------------------------------------------- whole model, backend="cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bcrn_fused_cuda_backend_matches_reference(target, dtype):
    """BCRNFused(backend="cuda"): bcb_front, bsconv and cca on the extension, ESA on Triton."""
    from bcrn_fast.fused import BCRNFused

    if target.device.type == "cpu" and not backends.interpreter_enabled():
        # ESA has no CUDA kernel: its ops run on Triton, which takes CPU tensors only through the interpreter
        pytest.skip(CPU_ONLY_ON_GPU if torch.cuda.is_available() else "ESA runs on Triton: needs TRITON_INTERPRET=1")
    torch.manual_seed(0)
    ref = M.BCRN(2)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    device = target.device
    ref = ref.to(device)
    fused = BCRNFused.from_reference(ref, backend="cuda").to(dtype)
    x = torch.rand(1, 3, 15, 17, device=device)
    with torch.no_grad():
        expected = copy.deepcopy(ref).double()(x.double())
    with torch.inference_mode():
        out = fused(guarded(x.to(dtype)))
    assert_close_to_ref(out.float(), expected, dtype, name="BCRNFused cuda backend")
