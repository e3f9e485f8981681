"""``pytest benchmarks/ --benchmark-only``: a thin adapter over the ``bcrn-fast bench`` runner.

Each test is one :meth:`Bench.run_one` row (build -> verify -> time) of a grid made by
:func:`cli.build_cases`, timed by pytest-benchmark instead of the harness's own timer; its derived
numbers come from :func:`report.annotate`. Environment:

- ``BCRN_BENCH_DEVICE`` (default: cuda when available, else cpu);
- ``BCRN_BENCH_QUICK`` (default 1 on a CPU, 0 on a GPU): the small grid;
- ``BCRN_BENCH_THREADS``: ``torch.set_num_threads`` for CPU runs;
- ``BCRN_BENCH_WEIGHTS`` or ``BCRN_DATA_DIR``: official checkpoints (default: seeded random weights).

Every variant of every case is collected, so what cannot run here shows up as a skip with its reason (``-rs``).
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import pytest
import torch

from bcrn_fast.benchmarking import timing
from bcrn_fast.benchmarking.cli import build_cases
from bcrn_fast.benchmarking.harness import Bench, Case, Options
from bcrn_fast.benchmarking.report import annotate
from bcrn_fast.benchmarking.variants import ALL_VARIANTS

__all__ = ["bench_device", "bench_quick", "bench_params", "make_harness", "run_benchmark"]

MODULE_VARIANTS = ("eager", "inductor", "fused_torch", "fused_triton", "fused_cuda", "fused_triton_graph")
# (device type, quick) -> LR sizes of the model grid and of the module grid (one size is enough for a module)
SIZES = {
    ("cpu", True): ("48x48", "48x48"),
    ("cpu", False): ("64x64,128x72", "64x64"),
    ("cuda", True): ("320x180,960x540", "320x180"),
    ("cuda", False): ("256x256,320x180,480x270,960x540", "320x180,960x540"),
}


def bench_device() -> torch.device:
    return torch.device(os.environ.get("BCRN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def bench_quick(device: torch.device | None = None) -> bool:
    default = "1" if (device or bench_device()).type == "cpu" else "0"
    return os.environ.get("BCRN_BENCH_QUICK", default) not in ("", "0")


def bench_params(targets: str) -> list[Any]:
    """``pytest.param(case, variant)`` for the ``model`` or ``modules`` grid: every dtype (fp32 and fp16 only
    on a quick GPU grid), x4 (and x2 on a full grid), batch 1 (and 8 at 256x256)."""
    device = bench_device()
    quick, model = bench_quick(device), targets == "model"
    dtypes = "fp32,fp16" if quick and device.type == "cuda" else "fp32,fp16,bf16"
    sizes = SIZES[(device.type, quick)][0 if model else 1]
    args = argparse.Namespace(quick=quick, sizes=sizes, scales=None, dtypes=dtypes, batch=None, targets=targets)
    params = []
    for case, v in itertools.product(build_cases(args, device.type), ALL_VARIANTS if model else MODULE_VARIANTS):
        scale = f"x{case.scale}-" if case.scale else ""
        name = f"{case.target}-{scale}{case.width}x{case.height}-n{case.batch}-{case.dtype}-{v}"
        params.append(pytest.param(case, v, id=name))
    return params


def make_harness() -> Bench:
    device = bench_device()
    if threads := os.environ.get("BCRN_BENCH_THREADS"):
        torch.set_num_threads(int(threads))
    # official weights when a data folder is given (BCRN_BENCH_WEIGHTS, else BCRN_DATA_DIR), random otherwise
    weights = os.environ.get("BCRN_BENCH_WEIGHTS") or os.environ.get("BCRN_DATA_DIR") or None
    given = {"device": device, "profile": False, "weights": weights}
    return Bench(Options.quick(**given) if bench_quick(device) else Options(**given))


def run_benchmark(benchmark: Any, harness: Bench, case: Case, variant: str) -> None:
    """One row of ``bcrn-fast bench`` (:meth:`Bench.run_one`), timed by pytest-benchmark: SKIPPED rows skip
    with their reason, WRONG and CRASHED rows fail (never timed), OK rows get the report's derived numbers."""
    device, cuda = harness.device, harness.device.type == "cuda"
    benchmark.group = case.label()

    def timer(fn: Any, xs: Any, est_ms: float) -> timing.TimingResult | None:
        cycle = itertools.cycle(xs)

        def call() -> None:
            fn(next(cycle))
            timing.sync(device)

        rounds, iterations = harness.plan(est_ms, target_sample_ms=5.0)
        if cuda:
            iterations, rounds = 1, max(rounds, 10)  # one synchronised call per iteration: latency as a caller sees it
        # prepare() already warmed up
        benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=1 if cuda else 0)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        if stats is None:  # --benchmark-disable
            return None
        return timing.TimingResult([d * 1e3 for d in stats.data], iterations, "pytest-benchmark")

    row = harness.run_one(case, variant, timer=timer)
    if row.status == "SKIPPED":
        pytest.skip(row.reason)
    if row.status != "OK":
        what = "WRONG (failed verification), not timed" if row.status == "WRONG" else row.status
        pytest.fail(f"{case.label()} {variant}: {what}: {row.reason}", pytrace=False)
    keys = ("rel_error", "tolerance", "compile_s", "peak_mem_mb", "weights")
    benchmark.extra_info.update(variant=variant, dtype=case.dtype, **{k: getattr(row, k) for k in keys})
    if row.median_ms is not None:
        [derived] = annotate([row.to_dict()], torch.cuda.get_device_name(device) if cuda else None)
        info = {"gflop": row.flops / 1e9, "mb_moved": row.bytes / 1e6}
        info.update((k, derived[k]) for k in ("achieved_gbps", "achieved_tflops", "roofline_frac"))
        benchmark.extra_info.update({k: v for k, v in info.items() if v is not None})
