"""The CUDA extension (``csrc/`` -> ``bcrn_fast._C``): build, resources, emulator, argument gates.

(a) it compiles with nvcc for sm_90 (``BCRN_CUDA_ARCHS`` overrides) and the
    module imports without a GPU and without libtorch / libcudart.so;
(b) ``cuobjdump --dump-resource-usage`` (or the ptxas report saved at build
    time) lists every kernel and none of them spills or uses local memory;
(c) the emulation build (``csrc/emu/cuda_emu.h``) gives the same bits under
    every thread schedule; bad arguments are refused before a launch.

Each op's CUDA execution tests (float64 references, poisoned outputs) live in
its ``tests/test_op_<op>.py``, the whole model on ``backend="cuda"`` in
``tests/test_fused_model.py``; the fixtures (``cuda_build``, ``emu_module``,
``gpu_module``, ``target``) in ``tests/cuda_fixtures.py``. Only nvcc's absence
skips (a) and (b).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from bcrn_fast import model as M
from bcrn_fast.ops import backends, cuda_ext
from bcrn_fast.ops.bcb_front import bcb_front_packed
from bcrn_fast.ops.bsconv import BSConvArgs, bsconv, bsconv_cuda, pack_bsconv
from bcrn_fast.ops.cca import cca_scale, pack_cca
from bcrn_fast.ops.convnext import ConvNeXtArgs, convnext, convnext_cuda, pack_convnext, pack_esa_pre
from bcrn_fast.validation import InputError
from tests.cuda_fixtures import block_modules, build, f32, import_so, rand_input, rand_like_module
from tests.utils import cuda_emulator

KERNELS = build.KERNEL_PREFIXES  # csrc/build.py: the one list of the CUDA kernels
SM86_SMEM_LIMIT = 101376  # max dynamic shared memory per block on sm_86 / sm_89, the tightest target


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
    mod = import_so(cuda_build.path)
    return {name: int(mod.smem_bytes(kernel, code)) for name, code in (("float", 0), ("fp16", 1), ("bf16", 2))}


# --------------------------------------------------------------------------- (c) emulator specifics


def test_emulator_schedules(emu_module):
    """Every kernel gives the same bits under four thread schedules (lockstep or one warp racing
    ahead, from either end): a missing __syncthreads / __syncwarp would read NaN-poisoned or stale data."""
    blk, esa, conv = block_modules(50)
    cca = rand_like_module(M.CCALayer(), 51)
    outs = []
    for order in (0, 1, 2, 3):
        emu_module.set_schedule(order)
        try:
            with cuda_emulator(emu_module):
                for dtype in (torch.float32, torch.float16):
                    bp = pack_bsconv(f32(conv), dtype)
                    cp = pack_convnext(f32(blk), dtype)
                    ep = pack_esa_pre(f32(esa), dtype)
                    x, _ = rand_input((1, 64, 15, 17), dtype, "cpu", channels_last=False)
                    outs.append(bsconv(x, bp.pw_t, bp.dw, bp.bias, backend="cuda"))
                    outs.extend(convnext(x, *cp, *ep, backend="cuda"))
                    outs.extend(bcb_front_packed(x, bp, cp, ep, backend="cuda"))
                    outs.append(cca_scale(x, pack_cca(f32(cca)), backend="cuda"))
        finally:
            emu_module.set_schedule(0)
    per = len(outs) // 4
    for k in range(1, 4):
        for a, b in zip(outs[:per], outs[k * per : (k + 1) * per], strict=True):
            assert torch.isfinite(b).all(), f"schedule {k}: non-finite output"
            assert torch.equal(a, b), f"schedule {k} changes the result"


# --------------------------------------------------------------------------- argument checks (no launch)


def test_rejects_bad_arguments(emu_module):
    blk, esa, conv = block_modules(60)
    bp = pack_bsconv(f32(conv), torch.float32)
    cp = pack_convnext(f32(blk), torch.float32)
    x = torch.randn(1, 64, 15, 15)
    # no emulator: CPU tensors are refused with a clear message, before any launch
    with pytest.raises(InputError, match="CUDA tensors"):
        bsconv_cuda(BSConvArgs(x, bp.pw_t, bp.dw, bp.bias, padding=1))
    with pytest.raises(backends.BackendUnavailable, match="backend='cuda' cannot run"):
        bsconv(x, bp.pw_t, bp.dw, bp.bias, backend="cuda")
    with cuda_emulator(emu_module):
        with pytest.raises(InputError, match="dtype"):
            bsconv(x.half(), bp.pw_t, bp.dw, bp.bias, backend="cuda")  # fp32 weights for a half input
        with pytest.raises(InputError, match="the CUDA bsconv supports ksize 1 and 3"):
            bsconv(x, bp.pw_t, torch.zeros(25, 64), bp.bias, ksize=5, backend="cuda")
        with pytest.raises(InputError, match="built for C = 64 channels"):
            convnext(torch.randn(1, 32, 15, 15), *pack_convnext(f32(M.ConvNeXtBlock(32))), backend="cuda")
        with pytest.raises(InputError, match="overlaps"):
            convnext_cuda(ConvNeXtArgs(x, *cp), out=x)
        with pytest.raises(InputError, match="expected shape"):
            cca_scale(torch.randn(1, 65, 4, 4), pack_cca(f32(M.CCALayer())), backend="cuda")
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
