"""Occupancy arithmetic and the ConvNeXt configuration sweep (``bcrn_fast.occupancy``).

The residency rules are checked on cases worked by hand from the CUDA limits; the sweep runs in a
subprocess (real Triton compiler, no interpreter, like tests/test_aot.py) on sm_90 and must show what
the table's comment claims: the chosen half row spills nothing and fits more programs per SM than the
64-wide hidden chunks, and ``maxnreg`` reaches ptxas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
from bcrn_fast.kernels import Config

from bcrn_fast import occupancy


@pytest.mark.parametrize(
    ("arch", "regs", "smem", "warps", "expected"),
    [
        # 131 regs -> 131·32 = 4192 -> 17 units of 256 = 4352 per warp; 65536 // 4352 = 15 warps -> 1 program of 8
        (90, 131, 65 * 1024, 8, (1, 8, "registers")),
        # 128 regs -> 4096 per warp -> 16 warps -> 2 programs of 8 (65 KiB + 1 KiB each fit 228 KiB 3 times)
        (90, 128, 65 * 1024, 8, (2, 16, "registers")),
        # sm_86: 100 KiB // (80 KiB + 1 KiB) = 1 program, though registers allow 65536 // (144·32) // 4 = 3
        (86, 144, 80 * 1024, 4, (1, 4, "smem")),
        # tiny programs: 32 regs, no shared memory, 1 warp -> sm_80's 32-programs limit before its 64 warps
        (80, 32, 0, 1, (32, 32, "programs")),
        # 2-warp programs of 32 regs on sm_86: 48 warps // 2 = 24 > 16 programs -> the 16-program limit
        (86, 32, 0, 2, (16, 32, "programs")),
        # 4-warp programs of 24 regs on sm_90: registers allow 85 warps, the SM 64 -> 16 programs, the warp limit
        (90, 24, 0, 4, (16, 64, "warps")),
    ],
)
def test_residency_by_hand(arch, regs, smem, warps, expected):
    assert tuple(occupancy.residency(arch, regs, smem, warps)) == expected


def test_in_table_matches_the_config_rows():
    assert occupancy.in_table("convnext-half", Config(128, 8, 3, block_k=32))
    assert not occupancy.in_table("convnext-half", Config(128, 8, 3))  # the 64-wide hidden chunk it replaced
    assert occupancy.in_table("convnext-tf32", Config(128, 8, 3))
    assert not occupancy.in_table("convnext-tf32", Config(64, 4, 3))
    for name, sweep in occupancy.SWEEPS.items():  # every table choice is among the swept candidates
        assert sum(occupancy.in_table(name, c) for _, c in sweep.candidates) == 1, name
        assert set(occupancy.TIMED[name]) <= {label for label, _ in sweep.candidates}


@pytest.mark.slow
def test_sweep_on_sm90_supports_the_table(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "occ.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bcrn_fast.occupancy", "--archs", "90", "--sweeps", "convnext-half", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {label for label, _ in occupancy.SWEEPS["convnext-half"].candidates}
    chosen = next(r for r in rows.values() if r["in_table"])
    wide_chunks = rows["128x8"]
    assert chosen["spill_bytes"] == 0 and chosen["programs_per_sm"] > wide_chunks["programs_per_sm"]
    assert chosen["l2_weight_bytes"] == wide_chunks["l2_weight_bytes"]  # same pixel tile: same weight reads
    assert rows["128x8 maxnreg 128"]["regs"] <= 128 < wide_chunks["regs"]  # the cap reached ptxas
    for r in rows.values():  # the six blocks' launches; per launch 960x540 / BLOCK_P programs, classes counted
        assert r["launches"] == 6 and r["grid_programs"] == -(-540 * 960 // r["config"]["block_p"])
        assert r["instructions"]["total"] >= r["instructions"]["ffma"] > 0


def test_candidate_labels_name_their_configs():
    assert occupancy.candidate("128x8") == Config(128, 8, 3)
    assert occupancy.candidate("128x8 hid 32 maxnreg 128") == Config(128, 8, 3, block_k=32, maxnreg=128)
    assert occupancy.candidate("64x4 s2 k16", shrink=False) == Config(64, 4, 2, block_k=16, shrink=False)
    labels = [label for sweep in occupancy.SWEEPS.values() for label in sweep.labels]
    for sweep in occupancy.SWEEPS.values():  # no two candidates of a sweep are the same launch
        assert len({c for _, c in sweep.candidates}) == len(sweep.labels)
    assert all(occupancy.candidate(label).block_p in (32, 64, 128) for label in labels)


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("convnext-half", ("128x8", "128x8 hid 32")),
        ("bsconv-tf32", ("32x4 s3", "64x4 s2 k16")),
        ("esa-apply-half", ("128x8", "64x2")),
    ],
)
def test_time_candidates_runs_each_candidate_on_the_captured_launch(monkeypatch, name, labels):
    """The GPU check's timing path, in the interpreter: the captured launch runs under each candidate's
    configuration (the launcher's lookup returns it) and every candidate computes the same output."""
    import torch
    import triton.testing

    from bcrn_fast.ops import bsconv, convnext, esa

    sweep = occupancy.SWEEPS[name]
    seen = []

    def looked_up() -> tuple:  # what the launcher's lookup returns now, for a big map
        if sweep.kernel == "convnext_kernel":
            return convnext._launch_config(4096, sweep.dtype, sweep.precision)[:4]
        if sweep.kernel == "bsconv_kernel":
            return bsconv._launch_config(4096, 64, 64, sweep.dtype, sweep.precision)
        return esa.apply_launch_config(4096, 64, sweep.dtype, sweep.precision)

    captured: list = []  # esa_apply's arguments: it writes its slice of the output buffer (argument 6) in place

    def capture(*args, **kwargs):
        if not captured:
            captured.extend(args)
        return esa_apply(*args, **kwargs)

    def bench(fn, **_):
        c = occupancy.candidate(labels[len(seen)], sweep.shrink)
        chunk = () if sweep.kernel == "esa_apply_kernel" else (c.block_k or 64,)
        assert looked_up() == (c.block_p, *chunk, c.num_warps, c.num_stages)
        out = fn()
        out = captured[6] if sweep.kernel == "esa_apply_kernel" else out[0] if isinstance(out, tuple) else out
        seen.append(out.float().clone())
        return 1.0 + len(seen)

    esa_apply = esa.ESA_APPLY_IMPLS["triton"]
    monkeypatch.setitem(esa.ESA_APPLY_IMPLS, "triton", capture)
    monkeypatch.setattr(triton.testing, "do_bench", bench)
    rows = occupancy.time_candidates(name, labels, shape=(20, 24), device="cpu")
    assert [r["label"] for r in rows] == list(labels) and [r["ms"] for r in rows] == [2.0, 3.0]
    assert [r["in_table"] for r in rows] == [
        occupancy.in_table(name, occupancy.candidate(x, sweep.shrink)) for x in labels
    ]
    assert sum(r["in_table"] for r in rows) == 1 and all(r["gbps"] > 0 for r in rows)
    tol = 1e-2 if sweep.dtype == torch.float16 else 1e-4  # the chunking changes the accumulation order only
    torch.testing.assert_close(seen[0], seen[1], rtol=tol, atol=tol)


def test_time_candidates_starts_none_after_the_deadline(monkeypatch):
    """The GPU check gives the timing a budget: a candidate due after the deadline is not started."""
    import triton.testing

    clock = [100.0]
    monkeypatch.setattr(occupancy, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock

    def bench(fn, **_):  # each timed candidate costs 10 s of the fake clock
        fn()
        clock[0] += 10.0
        return 1.0

    monkeypatch.setattr(triton.testing, "do_bench", bench)
    rows = occupancy.time_candidates("esa-apply-half", ("128x8", "64x2"), (20, 24), "cpu", deadline=105.0)
    assert [r["label"] for r in rows] == ["128x8"]
