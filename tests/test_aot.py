"""Ahead-of-time compilation of every Triton kernel configuration for sm_80 and sm_90.

Runs ``python -m bcrn_fast.aot`` in a subprocess without TRITON_INTERPRET (the
interpreter replaces @triton.jit functions, so it cannot share a process with
the interpreter tests). That drives BCRNFused (x2/x3/x4) and every standalone
fused module in fp32 (ieee and tf32), fp16 and bf16 at several sizes with the
launches intercepted, and compiles each (kernel, configuration) the launchers
choose with the real NVIDIA backend, exactly specialised as the JIT would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bcrn_fast.aot import SMEM_LIMIT

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # ~2 min of CPU compiles: CI runs it, BCRN_QUICK=1 and the GPU check skip it

EXPECTED_KERNELS = {
    "bsconv_kernel",
    "convnext_kernel",
    "esa_pool_kernel",
    "esa_apply_kernel",
    "cca_scale_kernel",
    "channel_scale_kernel",
}
GEMM_KERNELS = {"bsconv_kernel", "convnext_kernel", "esa_apply_kernel"}


@pytest.fixture(scope="module")
def aot_run(tmp_path_factory):
    """``(returncode, run)`` of one ``python -m bcrn_fast.aot`` run for sm_80 and sm_90."""
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bcrn_fast.aot",
            "--arch",
            "80,90",
            "--json",
            str(out / "aot.json"),
            "--markdown",
            str(out / "aot.md"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    print(proc.stdout)  # the register table, shown with -s or on failure
    print(proc.stderr[-4000:], file=sys.stderr)
    assert (out / "aot.json").exists(), f"AOT driver crashed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    run = json.loads((out / "aot.json").read_text())
    import triton

    assert run["triton"] == triton.__version__ and run["archs"] == [80, 90] and run["wall_s"] > 0
    assert (out / "aot.md").read_text().count(f"Triton {triton.__version__}") >= 2  # summary line and section
    return proc.returncode, run


@pytest.fixture(scope="module")
def report(aot_run):
    rc, run = aot_run
    return rc, run["reports"]


def test_every_kernel_compiles_for_sm80_and_sm90(report):
    _, rows = report
    for arch in (80, 90):
        seen = {r["kernel"] for r in rows if r["arch"] == arch}
        assert seen == EXPECTED_KERNELS, f"sm_{arch}: compiled {sorted(seen)}"
    assert len(rows) > 100  # every dtype x precision x tile-size configuration


def test_every_config_table_row_is_compiled(aot_run):
    """Each row of each kernel file's CONFIGS table is picked by a driven launch: a new row is a new compile check."""
    rc, run = aot_run
    rows = run["rows"]
    assert {r["table"] for r in rows} == {"bsconv", "convnext", "cca", "esa"}
    missed = [r for r in rows if not r["compiled"]]
    assert not missed, "config rows no driven shape compiles:\n" + "\n".join(
        f"kernels/{r['table']}.py CONFIGS[{r['row']}] {r['when']}: {r['config']}" for r in missed
    )


def test_no_kernel_spills_or_uses_local_memory(report):
    """Every configuration, the int64 offset (WIDE_INDEX) path included, is spill-free; the driver agrees."""
    rc, rows = report
    bad = [r for r in rows if r["stack"] != 0 or r["local"] != 0]
    assert not bad, "register spills / local memory:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['dtypes']} {r['config']}: stack {r['stack']} local {r['local']}" for r in bad
    )
    assert all(0 < r["regs"] <= 255 for r in rows)
    assert rc == 0, "python -m bcrn_fast.aot reported failing configurations (see its stderr above)"


def test_gemm_kernels_use_tensor_cores(report):
    rc, rows = report
    gemm = [r for r in rows if r["kernel"] in GEMM_KERNELS]
    assert all(r["has_dot"] for r in gemm)
    tensor_core = [r for r in gemm if not r["ieee_dot"]]
    # half and tf32 configurations exist for each GEMM kernel on each arch
    for kernel in GEMM_KERNELS:
        for arch in (80, 90):
            assert any(r["kernel"] == kernel and r["arch"] == arch for r in tensor_core), (kernel, arch)
    missing = [r for r in tensor_core if not r["mma"]]
    assert not missing, "GEMM without mma/wgmma:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['dtypes']} {r['config']}" for r in missing
    )


def test_dynamic_shared_memory_is_reported(report):
    _, rows = report
    assert all(r["dyn_shared"] >= 0 for r in rows), "metadata.shared missing"
    # pipelined tensor-core GEMMs stage operands in shared memory, which must fit what a block may have
    gemm = [r for r in rows if r["kernel"] in GEMM_KERNELS and r["mma"]]
    assert any(r["dyn_shared"] > 0 for r in gemm)
    over = [r for r in rows if r["dyn_shared"] > SMEM_LIMIT[r["arch"]]]
    assert not over, "more shared memory than a block may have:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['config']}: {r['dyn_shared']} B" for r in over
    )


def test_wide_index_variants_compile(report):
    """The int64 offset path (forced at the largest shape) compiles clean for the kernels that have it."""
    _, rows = report
    for kernel in sorted(EXPECTED_KERNELS):  # every kernel has the WIDE_INDEX switch
        for arch in (80, 90):
            wide = [r for r in rows if r["kernel"] == kernel and r["arch"] == arch and "WIDE_INDEX=True" in r["config"]]
            assert wide, f"{kernel} sm_{arch}: no WIDE_INDEX=True configuration compiled"
    wide = [r for r in rows if "WIDE_INDEX=True" in r["config"]]
    assert not [r for r in wide if r["stack"] or r["local"]], [
        (r["kernel"], r["arch"], r["config"], r["stack"], r["local"]) for r in wide if r["stack"] or r["local"]
    ]
