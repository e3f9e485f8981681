"""The per-launch cost model (bcrn_fast.benchmarking.costs.launch_costs): floors from recorded launches.

Launch rows are shaped like ``python -m bcrn_fast.aot``'s ``launches`` (kernel,
programs, bytes, per-program warp instructions, MMA FLOPs per program); the
expected floors are recomputed here from the datasheet figures, one resource
at a time, so each floor and the choice of the largest is checked on its own.
"""

from __future__ import annotations

import pytest

from bcrn_fast.benchmarking import costs

H100, H200 = costs.GPU_PEAKS["H100 SXM"], costs.GPU_PEAKS["H200"]


def _launch(kernel: str = "k", programs: int = 1000, nbytes: float = 0.0, mma: float = 0.0, **per_program) -> dict:
    per = {"total": float(sum(per_program.values())), **{k: float(v) for k, v in per_program.items()}}
    return {"kernel": kernel, "programs": programs, "bytes": nbytes, "mma_flops": mma, "per_program": per}


def test_issue_and_mufu_rates_follow_the_fp32_peak():
    # 132 SMs x 4 schedulers x 1.98 GHz: one warp instruction per scheduler per clock = fp32 FLOP/s / (32 x 2)
    assert costs.issue_rate(H100) == pytest.approx(132 * 4 * 1.98e9, rel=0.01)
    assert costs.issue_rate(H200) == costs.issue_rate(H100)  # same chip, faster memory only
    assert costs.mufu_rate(H100) == costs.issue_rate(H100) / 8


def test_each_floor_and_the_bound():
    memory = _launch(nbytes=133e6, ffma=10)
    mma = _launch(mma=1e9, tensor=4)  # 1 TFLOP in all
    issue = _launch(ffma=100_000, int=200_000)
    mufu = _launch(mufu=20_000, ffma=10_000)
    rows = costs.launch_costs([memory, mma, issue, mufu], H200)
    assert rows[0].memory_us == pytest.approx(133e6 / 4.8e12 * 1e6) and rows[0].bound == "memory"
    assert rows[1].mma_us == pytest.approx(1e12 / 989.4e12 * 1e6) and rows[1].bound == "mma"
    assert rows[1].mma_flops == 1e12
    assert rows[2].issue_us == pytest.approx(3e8 / costs.issue_rate(H200) * 1e6) and rows[2].bound == "issue"
    assert rows[3].mufu_us == pytest.approx(2e7 / costs.mufu_rate(H200) * 1e6) and rows[3].bound == "mufu"
    for r in rows:
        assert r.predicted_us == max(r.memory_us, r.mma_us, r.issue_us, r.mufu_us)
        assert r.source == "sass"
    assert rows[2].instructions["int"] == 2e8  # per-program counts x programs


def test_h200_differs_from_h100_only_in_memory_time():
    launch = _launch(nbytes=1e8, mma=5e7, ffma=1000, mufu=100)
    (a,), (b,) = costs.launch_costs([launch], H100), costs.launch_costs([launch], H200)
    assert a.memory_us / b.memory_us == pytest.approx(4800 / 3350)
    assert (a.mma_us, a.issue_us, a.mufu_us) == (b.mma_us, b.issue_us, b.mufu_us)


def test_fp32_ieee_dots_count_as_instructions_not_mma():
    """SASS MMA FLOPs of 0 (FFMA dots) are taken as such; only a launch without SASS falls back to its TTIR dots."""
    ieee = _launch(ffma=50_000) | {"mma_flops": 0.0, "dot_flops": 1e6}
    (row,) = costs.launch_costs([ieee], H100)
    assert row.mma_flops == 0 and row.issue_us > 0
    no_sass = {"kernel": "k", "programs": 10, "bytes": 5120.0, "dot_flops": 4096.0}
    (est,) = costs.launch_costs([no_sass], H100, "fp16")
    assert est.source == "est" and est.mma_flops == 40960
    assert est.instructions == costs.estimate_instructions(5120.0, 40960)
    assert est.instructions["total"] == 5120 / 512 + 40960 / 4096


def test_format_launch_costs_has_a_row_per_launch_and_the_sum():
    launches = [_launch("a", nbytes=1e8, ffma=10), _launch("b", mma=1e9, tensor=1)]
    table = costs.format_launch_costs(launches, [H100, H200])
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + 1  # header, separator, 2 launches, sum
    assert "H100 SXM predicted µs" in lines[0] and "H200 predicted µs" in lines[0]
    per_gpu = [costs.launch_costs(launches, pk) for pk in (H100, H200)]
    for rows in per_gpu:
        assert f"**{sum(r.predicted_us for r in rows):.1f}**" in lines[-1]
    assert lines[1 + 1].split("|")[2].strip() == "a" and lines[2 + 1].split("|")[2].strip() == "b"


def test_roofline_api_unchanged():
    """The names the benchmarks use keep working (the per-launch model is an addition)."""
    pk = costs.peaks_for_device("NVIDIA H200")
    assert pk is H200
    floor = costs.roofline(1e12, 1e9, "fp16", pk)
    assert floor.compute_ms == pytest.approx(1e12 / 989.4e12 * 1e3) and floor.bound == "compute"
    for name in ("target_traffic", "model_macs", "module_macs", "count_conv_macs", "dtype_size", "esa_sizes"):
        assert callable(getattr(costs, name))
