"""Shared CUDA-extension fixtures and helpers (registered by tests/conftest.py via ``pytest_plugins``).

``backend="cuda"`` runs in two places: on a GPU through the real extension
(``gpu_module``), and on a CPU host through the emulation build of the same
kernel sources (``emu_module``, ``csrc/emu/cuda_emu.h``: every CUDA thread a
fiber, shared memory poisoned with NaN, barriers checked). ``target`` runs a
test in both (one of them skips); ``host_cuda`` and the indirect ``backend``
fixture run the per-op tests' "cuda" cases where this host can. Builds are
cached in ``build/cuda-test/`` (incremental) and shared by a whole session.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bcrn_fast import model as M
from bcrn_fast.ops import cuda_ext
from bcrn_fast.ops.convnext import pack_convnext, pack_esa_pre
from tests.utils import CPU_ONLY_ON_GPU, QUICK, cuda_emulator, guarded

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "cuda-test"


def _load_build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bcrn_cuda_build", ROOT / "csrc" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bcrn_cuda_build"] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


build = sys.modules.get("bcrn_cuda_build") or _load_build_module()


def import_so(path: Path) -> ModuleType:
    name = path.name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def requested_archs() -> list[str]:
    """The architectures the build tests compile for: sm_90 unless BCRN_CUDA_ARCHS says otherwise."""
    return build.requested_archs(os.environ.get("BCRN_CUDA_ARCHS") or "90")


# --------------------------------------------------------------------------- build fixtures


@pytest.fixture(scope="session")
def cuda_build():
    """The real extension, built for sm_90 (or BCRN_CUDA_ARCHS) into build/cuda-test."""
    if build.find_nvcc() is None:
        pytest.skip("nvcc not found (CUDA_HOME / PATH): the CUDA extension cannot be compiled here")
    archs = requested_archs()
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
    return import_so(res.path)


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
    return import_so(res.path)


class Target:
    def __init__(self, device: str, module: ModuleType):
        self.device = torch.device(device)
        self.module = module


def _enter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, where: str) -> Iterator[Target]:
    """backend="cuda" through the CPU emulator (where="emu") or the GPU extension (where="gpu")."""
    if where == "emu":
        mod = request.getfixturevalue("emu_module")
        with cuda_emulator(mod):
            yield Target("cpu", mod)
    else:
        mod = request.getfixturevalue("gpu_module")
        monkeypatch.setattr(cuda_ext, "_ext", mod)
        monkeypatch.setattr(cuda_ext, "_loaded", True)
        yield Target("cuda", mod)


@pytest.fixture(params=["emu", "gpu"])
def target(request, monkeypatch):
    """Run a test through the CPU emulator or on the GPU."""
    yield from _enter(request, monkeypatch, request.param)


@pytest.fixture
def host_cuda(request, monkeypatch):
    """backend="cuda" on this host's tensors: the GPU extension on a CUDA machine, else the emulator."""
    yield from _enter(request, monkeypatch, "gpu" if torch.cuda.is_available() else "emu")


@pytest.fixture
def backend(request) -> str:
    """The backend of a per-op test (``indirect=True``); "cuda" enters :func:`host_cuda` first."""
    if request.param == "cuda":
        request.getfixturevalue("host_cuda")
    return request.param


# --------------------------------------------------------------------------- references and helpers


def rand_like_module(mod: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A float64 copy of ``mod`` with fresh, non-trivial random weights and biases."""
    g = torch.Generator().manual_seed(seed)
    mod = copy.deepcopy(mod).double()
    with torch.no_grad():
        for p in mod.parameters():
            fan = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / fan**0.5)
    return mod


def f32(mod: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(mod).float()


def rand_input(shape, dtype, device, channels_last, seed=0, scale=1.0, offset=0.0):
    """A guard-banded random input and its float64 CPU copy (the reference sees the rounded input)."""
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    x = guarded(x64.to(dtype).to(device), channels_last=channels_last)
    return x, x.double().cpu().contiguous()


def poisoned(shape, dtype, device, channels_last=True):
    """A NaN output view inside a NaN guard band: unwritten elements and stray writes both show."""
    return guarded(torch.full(shape, float("nan"), dtype=dtype, device=device), channels_last=channels_last)


def assert_written_exactly(out: torch.Tensor, name: str) -> None:
    """Every element of ``out`` written (finite), nothing around it in its buffer touched (still NaN)."""
    base = out._base
    assert base is not None, "expected a view made by poisoned()"
    assert torch.isfinite(out).all(), f"{name}: unwritten or non-finite outputs"
    stray = base.numel() - out.numel() - int(torch.isnan(base).sum())
    assert stray == 0, f"{name}: {stray} elements written outside the output"


def block_modules(seed: int):
    """float64 random ConvNeXtBlock, ESA and BCB BSConv (64 -> 64, 3x3)."""
    blk = rand_like_module(M.ConvNeXtBlock(), seed)
    esa = rand_like_module(M.ESA(), seed + 1)
    conv = rand_like_module(M.bsconv3(64, 64), seed + 2)
    return blk, esa, conv


def to_device(dev, tensors):
    return tuple(t.to(dev) for t in tensors)


def block_packs(dev, dtype: torch.dtype, seed: int):
    """:func:`block_modules` (float64) and the block's and ESA's packs for ``dtype`` on ``dev``."""
    blk, esa, conv = block_modules(seed)
    cp = to_device(dev, pack_convnext(f32(blk), dtype))
    return blk, esa, conv, cp, to_device(dev, pack_esa_pre(f32(esa), dtype))


# --------------------------------------------------------------------------- shapes of the CUDA execution tests

SHAPES = [(2, 17, 23), (1, 15, 15)] if not QUICK else [(2, 17, 23)]
# (shape, channels_last): both layouts on the odd batch-2 shape, the minimum BCB size channels-last
LAYOUTS = [(SHAPES[0], False), (SHAPES[0], True)] + [(s, True) for s in SHAPES[1:]]
LAYOUT_IDS = ["x".join(map(str, s)) + ("-nhwc" if cl else "-nchw") for s, cl in LAYOUTS]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def over_layouts_and_dtypes(test):
    """Parametrize ``test`` over every (shape, layout) of :data:`LAYOUTS` and every dtype."""
    test = pytest.mark.parametrize("dtype", DTYPES, ids=str)(test)
    return pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)(test)
