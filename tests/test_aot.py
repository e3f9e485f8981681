"""Ahead-of-time compilation of every Triton kernel configuration for sm_80 and sm_90.

Runs ``python -m bcrn_fast.aot`` in a subprocess without TRITON_INTERPRET (the
interpreter replaces @triton.jit functions, so it cannot share a process with
the interpreter tests). That drives BCRNFused (x2/x3/x4) and every standalone
fused module in fp32 (ieee and tf32), fp16 and bf16 at several sizes with the
launches intercepted, and compiles each (kernel, configuration) the launchers
choose with the real NVIDIA backend, exactly specialised as the JIT would.

The instruction-count machinery (SASS classes and loops, TTIR trip counts,
their matching) is tested first on small hand-written listings whose counts are
known by construction (fast, no compiler); then on the run: per-forward totals
are per-program counts x programs, SASS MMA FLOPs equal the TTIR dots', and the
GELU costs at most half the libdevice erf's instructions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bcrn_fast import aot
from bcrn_fast.aot import SMEM_LIMIT
from bcrn_fast.benchmarking import costs

pytest.importorskip("triton")
slow = pytest.mark.slow  # the AOT run: ~2+ min of CPU compiles; CI runs it, BCRN_QUICK=1 and the GPU check skip it

EXPECTED_KERNELS = {
    "bsconv_kernel",
    "depthwise_kernel",
    "convnext_kernel",
    "esa_pool_kernel",
    "esa_low_kernel",
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


@slow
def test_every_kernel_compiles_for_sm80_and_sm90(report):
    _, rows = report
    for arch in (80, 90):
        seen = {r["kernel"] for r in rows if r["arch"] == arch}
        assert seen == EXPECTED_KERNELS, f"sm_{arch}: compiled {sorted(seen)}"
    assert len(rows) > 100  # every dtype x precision x tile-size configuration


@slow
def test_every_config_table_row_is_compiled(aot_run):
    """Each row of each kernel file's CONFIGS table is picked by a driven launch: a new row is a new compile check."""
    rc, run = aot_run
    rows = run["rows"]
    assert {r["table"] for r in rows} == {"bsconv", "convnext", "cca", "esa"}
    assert {(r["table"], r["name"]) for r in rows} >= {(t, "CONFIGS") for t in ("bsconv", "convnext", "cca", "esa")}
    missed = [r for r in rows if not r["compiled"]]
    assert not missed, "config rows no driven shape compiles:\n" + "\n".join(
        f"kernels/{r['table']}.py {r['name']}[{r['row']}] {r['when']}: {r['config']}" for r in missed
    )


@slow
def test_no_kernel_spills_or_uses_local_memory(report):
    """Every configuration, the int64 offset (WIDE_INDEX) path included, is spill-free; the driver agrees."""
    rc, rows = report
    bad = [r for r in rows if r["stack"] != 0 or r["local"] != 0]
    assert not bad, "register spills / local memory:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['dtypes']} {r['config']}: stack {r['stack']} local {r['local']}" for r in bad
    )
    assert all(0 < r["regs"] <= 255 for r in rows)
    assert rc == 0, "python -m bcrn_fast.aot reported failing configurations (see its stderr above)"


@slow
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


@slow
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


@slow
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


# --------------------------------------------------------------------------- instruction counting, known listings
def _sass(lines: list[tuple[int, str]]) -> str:
    """A cuobjdump --dump-sass listing of ``(address, instruction)`` rows (encodings elided)."""
    body = "\n".join(f"        /*{a:04x}*/                   {inst} ;   /* 0x0000000000000000 */" for a, inst in lines)
    return f"\n\tcode for sm_90a\n\t\tFunction : k\n{body}\n"


# Outer loop 0x20..0x80 (back-edge at 0x80), inner loop 0x30..0x60; a CALL'd subroutine and padding after it.
KNOWN_SASS = _sass(
    [
        (0x00, "LDC R1, c[0x0][0x28]"),
        (0x10, "S2R R0, SR_CTAID.X"),
        (0x20, "LDG.E.128 R4, desc[UR4][R2.64]"),  # outer body
        (0x30, "HMMA.16816.F32 R8, R4, R6, R8"),  # inner body
        (0x40, "FFMA R9, R9, R10, R11"),
        (0x50, "MUFU.EX2 R12, R12"),
        (0x60, "@P0 BRA 0x30"),  # inner back-edge
        (0x70, "HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24"),
        (0x80, "@!P1 BRA 0x20"),  # outer back-edge
        (0x90, "CALL.REL.NOINC 0xd0"),
        (0xA0, "STG.E desc[UR4][R2.64], R8"),
        (0xB0, "EXIT"),
        (0xC0, "BRA 0xc0"),  # the final self-branch: padding follows
        (0xD0, "FFMA R1, R2, R3, R4"),  # subroutine (the slow path), never counted
        (0xE0, "RET.REL.NODEC R10 0x0"),
        (0xF0, "NOP"),
    ]
)


def test_sass_classes_loops_and_weights():
    sass = aot.parse_sass(KNOWN_SASS)
    assert sass.classes == ["const", "int", "ldg", "tensor", "ffma", "mufu", "ctrl", "tensor", "ctrl", "ctrl", "stg",
                            "ctrl", "ctrl"]  # fmt: skip
    assert sass.skipped == 3  # the subroutine's two instructions and the padding NOP
    assert sass.loops == [(2, 8), (3, 6)] and sass.parents() == [-1, 0]
    static = sass.static()
    assert static["total"] == 13 and static["tensor"] == 2 and static["ffma"] == 1 and static["mufu"] == 1
    # outer 5 trips, inner 9: inner body 4 x 45, outer-only body (LDG, HGMMA, BRA) 3 x 5, the rest 6 x 1
    counts, flops = sass.weighted([5, 9])
    assert counts["total"] == 4 * 45 + 3 * 5 + 6
    assert counts["ffma"] == counts["mufu"] == 45 and counts["ldg"] == 5 and counts["stg"] == 1
    assert counts["tensor"] == 45 + 5
    # HMMA m16n8k16 per warp issue: 4096 FLOPs; HGMMA 64x64x16 is a warpgroup MMA, a quarter per warp issue
    assert flops == 45 * 2 * 16 * 8 * 16 + 5 * 2 * 64 * 64 * 16 / 4
    assert sass.weighted([None, None])[0]["total"] == static["total"]  # unknown trips: bodies once


def test_convergent_call_in_the_body_is_a_jump_not_a_subroutine():
    """sm_80 ptxas leaves loops through ``@P CALL.REL.NOINC`` to a nearby body address: the code it reaches and
    the loop around it are counted; only a CALL past the last unpredicated EXIT is a subroutine."""
    listing = _sass(
        [
            (0x00, "S2R R0, SR_TID.X"),
            (0x10, "HMMA.16816.F32 R8, R4, R6, R8"),  # the loop: 0x10 .. 0x40
            (0x20, "@!P5 CALL.REL.NOINC 0x40"),
            (0x30, "BRA 0x10"),
            (0x40, "FFMA R1, R2, R3, R4"),  # reached by the CALL: after the loop
            (0x50, "EXIT"),
            (0x60, "BRA 0x60"),
        ]
    )
    sass = aot.parse_sass(listing)
    assert sass.skipped == 0 and sass.loops == [(1, 3)]
    counts, flops = sass.weighted([7])
    assert counts["total"] == 4 + 3 * 7 and counts["tensor"] == 7 and flops == 7 * 4096


def test_sass_after_an_elected_exit_counts_zero():
    """Code after the predicated EXIT that follows an ATOMG runs only in the elected (last-arriving) program."""
    listing = _sass(
        [
            (0x00, "FFMA R1, R2, R3, R4"),
            (0x10, "@P0 ATOMG.E.ADD.STRONG.GPU PT, R5, desc[UR4][R2.64], R6"),
            (0x20, "ISETP.NE.AND P1, PT, R5, R7, PT"),
            (0x30, "@P1 EXIT"),
            (0x40, "FADD R1, R1, R2"),  # the merge: elected program only
            (0x50, "STG.E desc[UR4][R2.64], R1"),
            (0x60, "EXIT"),
            (0x70, "BRA 0x70"),
        ]
    )
    sass = aot.parse_sass(listing)
    assert sass.guarded_from == 4 and sass.static()["total"] == 8
    counts, _ = sass.weighted([])
    assert counts["total"] == 4 and counts["fadd"] == 0 and counts["stg"] == 0 and counts["atom"] == 1
    # a predicated EXIT with no atomic before it guards nothing
    assert aot.parse_sass(listing.replace("@P0 ATOMG.E.ADD.STRONG.GPU PT, R5,", "LDG.E R5,")).guarded_from is None


KNOWN_TTIR = """
module {
  tt.func public @k(%x_ptr: !tt.ptr<f16> {tt.divisibility = 16 : i32} loc("x_ptr"(#loc)), %CIN: i32 loc("CIN"(#loc)), %T: i32 loc("T"(#loc)), %unused_ptr: !tt.ptr<f16> loc("u"(#loc))) attributes {noinline = false} {
    %c0_i32 = arith.constant 0 : i32 loc(#loc1)
    %c1_i32 = arith.constant 1 : i32 loc(#loc1)
    %c9_i32 = arith.constant 9 : i32 loc(#loc1)
    %c64_i32 = arith.constant 64 : i32 loc(#loc1)
    %cst = arith.constant dense<0.000000e+00> : tensor<128x64xf32> loc(#loc1)
    %pid = tt.get_program_id x : i32 loc(#loc2)
    %ub = arith.addi %CIN, %c64_i32 : i32 loc(#loc3)
    %acc = scf.for %k0 = %c0_i32 to %ub step %c64_i32 iter_args(%a = %cst) -> (tensor<128x64xf32>)  : i32 {
      %v = tt.load %x_ptr : !tt.ptr<f16> loc(#loc4)
      %acc_1 = scf.for %tap = %c0_i32 to %c9_i32 step %c1_i32 iter_args(%b = %a) -> (tensor<128x64xf32>)  : i32 {
        %p = tt.dot %xt, %w, %cst, inputPrecision = tf32 : tensor<128x32xf16> * tensor<32x64xf16> -> tensor<128x64xf32> loc(#loc5)
        scf.yield %p : tensor<128x64xf32> loc(#loc6)
      } loc(#loc7)
      scf.yield %acc_1 : tensor<128x64xf32> loc(#loc8)
    } loc(#loc9)
    %r = "tt.reduce"(%acc) <{axis = 0 : i32}> ({
    ^bb0(%l: f32 loc(#loc10), %m: f32 loc(#loc10)):
      %s = arith.addf %l, %m : f32 loc(#loc10)
      tt.reduce.return %s : f32 loc(#loc10)
    }) : (tensor<128x64xf32>) -> tensor<64xf32> loc(#loc10)
    %old = tt.atomic_rmw add, acq_rel, gpu, %cnt, %c1_i32, %true : (!tt.ptr<i32>, i32, i1) -> i32 loc(#loc11)
    %last = arith.cmpi eq, %old, %T : i32 loc(#loc12)
    scf.if %last {
      %m:2 = scf.for %t0 = %c0_i32 to %T step %c1_i32 iter_args(%q = %c0_i32) -> (i32)  : i32 {
        scf.yield %q : i32 loc(#loc13)
      } loc(#loc14)
    } loc(#loc15)
    tt.return loc(#loc16)
  } loc(#loc)
} loc(#loc)
"""  # noqa: E501


def test_ttir_trip_counts_dots_and_guards():
    ttir = aot.parse_ttir(KNOWN_TTIR)
    assert ttir.args == ["x_ptr", "CIN", "T", "unused_ptr"] and ttir.used_args == {"x_ptr", "CIN", "T"}
    assert [lp.parent for lp in ttir.loops] == [-1, 0, -1]
    assert [lp.guarded for lp in ttir.loops] == [False, False, True]  # the last loop waits on an atomic
    # CIN = 384: cdiv(384 + 64, 64) = 7 chunks x 9 taps; the atomic-guarded loop: 0 trips
    assert aot.ttir_trips(ttir, {"CIN": 384, "T": 5}) == [7, 9, 0]
    assert aot.ttir_trips(ttir, {}) == [None, 9, 0]  # CIN unknown
    assert aot.dot_flops(ttir, [7, 9, 0]) == 7 * 9 * 2 * 128 * 64 * 32


def test_loops_match_by_nesting_shape_and_unrolled_constant_loops_drop():
    ttir = aot.parse_ttir(KNOWN_TTIR)
    env = {"CIN": 384, "T": 5}
    nested = aot.Sass(classes=["int"] * 10, flops=[0.0] * 10, loops=[(1, 6), (2, 4), (7, 8)])
    assert aot.match_loops(ttir, nested, env) == ([7, 9, 0], True)
    # the constant 9-trip tap loop fully unrolled by the compiler: the SASS has the outer and the guarded loop
    unrolled = aot.Sass(classes=["int"] * 10, flops=[0.0] * 10, loops=[(1, 6), (7, 8)])
    assert aot.match_loops(ttir, unrolled, env) == ([7, 0], True)
    odd = aot.Sass(classes=["int"] * 10, flops=[0.0] * 10, loops=[(1, 2), (3, 4), (5, 6), (7, 8)])
    assert aot.match_loops(ttir, odd, env) == ([None] * 4, False)


# --------------------------------------------------------------------------- instruction counting, the run
@slow
def test_forward_launches_are_counted_per_program_times_programs(aot_run):
    """Every launch of the two x4 fp16 forwards: loops matched, per-program counts consistent, SASS MMA FLOPs
    equal to the TTIR dots', and the per-forward totals the sum of per-program x programs."""
    _, run = aot_run
    launches = run["launches"]
    phases = {lr["phase"] for lr in launches}
    assert phases == {aot.forward_phase(4, torch.float16, h, w) for h, w in aot.FORWARD_SHAPES}
    sequences = {
        (arch, phase): [lr["kernel"] for lr in launches if lr["arch"] == arch and lr["phase"] == phase]
        for arch in (80, 90)
        for phase in phases
    }
    first = next(iter(sequences.values()))
    assert all(seq == first for seq in sequences.values())  # one model: the same launches at every size and arch
    assert first.count("convnext_kernel") == 6  # one per BCB
    for lr in launches:
        where = (lr["kernel"], lr["arch"], lr["phase"], lr["config"])
        assert lr["loops_matched"], where
        pp = lr["per_program"]
        assert pp["total"] == pytest.approx(sum(v for k, v in pp.items() if k != "total")), where
        assert lr["programs"] == lr["grid"][0] * lr["grid"][1] * lr["grid"][2] > 0
        assert lr["mma_flops"] == pytest.approx(lr["dot_flops"]), where  # fp16: every tl.dot on tensor cores
        if lr["kernel"] in GEMM_KERNELS:
            assert lr["mma_flops"] > 0 and pp["tensor"] > 0, where
        assert lr["bytes"] > 0
    totals = aot.forward_totals([run])
    for g in totals:
        ls = [lr for lr in launches if lr["arch"] == g["arch"] and lr["phase"] == g["phase"]]
        ls = [lr for lr in ls if g["kernel"] in ("all", lr["kernel"])]
        for c in ("total", "tensor", "mufu", "ldg"):
            assert g["counts"][c] == pytest.approx(sum(lr["per_program"][c] * lr["programs"] for lr in ls))
        assert g["launches"] == len(ls) and g["unmatched"] == 0
        h200 = costs.launch_costs(ls, costs.GPU_PEAKS["H200"])
        assert g["predicted_us"]["H200"] == pytest.approx(sum(c.predicted_us for c in h200))
    # the MMA work of the 960x540 forward, as implemented, is at least the network's convolutions (2 FLOPs/MAC)
    big = next(g for g in totals if g["kernel"] == "all" and g["arch"] == 90 and g["phase"].endswith("960x540"))
    assert big["mma_flops"] >= 2 * costs.model_macs(540, 960, 4) * 0.99
    doc = aot.format_document([run])
    assert "## Instructions per forward" in doc and "## Predicted cost per launch" in doc


@slow
def test_gelu_costs_at_most_half_the_libdevice_erf(aot_run):
    """The issue's target: the GELU's SASS instructions per element cut >= 2x against libdevice's exact erf."""
    _, run = aot_run
    rows = run["gelu"]
    for arch in (80, 90):
        per = {g["variant"]: g["per_element"] for g in rows if g["arch"] == arch}
        libdevice, fast = per["libdevice tl.erf"], per["gelu_fast (kernels/convnext.py)"]
        assert libdevice["total"] > 20  # ~32 on sm_90 (the issue measured ~33)
        assert fast["total"] * 2 <= libdevice["total"], (arch, fast["total"], libdevice["total"])
        assert fast["mufu"] <= 1  # one exp2
