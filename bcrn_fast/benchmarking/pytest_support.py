"""``pytest benchmarks/ --benchmark-only``: a thin adapter over the ``bcrn-fast bench`` runner.

Each test is one :meth:`Bench.run_one` row (build -> verify -> time), timed by pytest-benchmark instead of
the harness's own timer; its derived numbers come from :func:`report.annotate`. Grids:

- ``BCRN_BENCH_DEVICE`` (default: cuda when available, else cpu);
- ``BCRN_BENCH_QUICK`` (default 1 on a CPU, 0 on a GPU): the small grid;
- ``BCRN_BENCH_THREADS``: ``torch.set_num_threads`` for CPU runs;
- ``BCRN_BENCH_WEIGHTS`` or ``BCRN_DATA_DIR``: official checkpoints (default: seeded random weights).

Every variant of every case is collected, so what cannot run here shows up
as a skip with its reason (``-rs``).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch

from bcrn_fast.benchmarking import timing
from bcrn_fast.benchmarking.harness import Bench, Case, Options
from bcrn_fast.benchmarking.report import annotate
from bcrn_fast.benchmarking.targets import MODULE_TARGETS, TARGETS
from bcrn_fast.benchmarking.variants import ALL_VARIANTS

__all__ = ["bench_device", "bench_quick", "make_harness", "model_params", "module_params", "run_benchmark"]

MODULE_VARIANTS = ("eager", "inductor", "fused_torch", "fused_triton", "fused_cuda", "fused_triton_graph")


def bench_device() -> torch.device:
    name = os.environ.get("BCRN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bench_quick(device: torch.device | None = None) -> bool:
    device = device or bench_device()
    default = "1" if device.type == "cpu" else "0"
    return os.environ.get("BCRN_BENCH_QUICK", default) not in ("", "0")


def _grid(device: torch.device, quick: bool, model: bool) -> list[Case]:
    dtypes = ("fp32", "fp16", "bf16")
    if device.type == "cpu":
        sizes = [(48, 48, 1)] if quick else [(64, 64, 1), (128, 72, 1)]
        scales = (4,) if quick else (4, 2)
    else:
        sizes = (
            [(320, 180, 1), (960, 540, 1)]
            if quick
            else [(256, 256, 1), (256, 256, 8), (320, 180, 1), (480, 270, 1), (960, 540, 1)]
        )
        scales = (4,) if quick else (4, 2)
        if quick:
            dtypes = ("fp32", "fp16")
    if not model:  # one size per module is enough to compare the fusions
        sizes = sizes[:1] if device.type == "cpu" else [(320, 180, 1)] + ([] if quick else [(960, 540, 1)])
    cases = []
    for target in ("model",) if model else MODULE_TARGETS:
        for scale in scales if TARGETS[target].uses_scale else (None,):
            for w, h, b in sizes:
                cases.extend(Case(target, scale, w, h, b, d) for d in dtypes)
    return cases


def _params(cases: list[Case], variants: tuple[str, ...]) -> list[Any]:
    import pytest

    out = []
    for case in cases:
        scale = f"x{case.scale}-" if case.scale else ""
        for v in variants:
            out.append(
                pytest.param(
                    case, v, id=f"{case.target}-{scale}{case.width}x{case.height}-n{case.batch}-{case.dtype}-{v}"
                )
            )
    return out


def model_params() -> list[Any]:
    device = bench_device()
    return _params(_grid(device, bench_quick(device), model=True), ALL_VARIANTS)


def module_params() -> list[Any]:
    device = bench_device()
    return _params(_grid(device, bench_quick(device), model=False), MODULE_VARIANTS)


def make_harness() -> Bench:
    device = bench_device()
    threads = os.environ.get("BCRN_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    # official weights when a data folder is given (BCRN_BENCH_WEIGHTS, else BCRN_DATA_DIR), random otherwise
    weights = os.environ.get("BCRN_BENCH_WEIGHTS") or os.environ.get("BCRN_DATA_DIR") or None
    options = Options.quick() if bench_quick(device) else Options()
    options.device, options.profile, options.weights = device, False, weights
    return Bench(options)


def run_benchmark(benchmark: Any, harness: Bench, case: Case, variant: str) -> None:
    """One row of ``bcrn-fast bench`` (:meth:`Bench.run_one`), timed by pytest-benchmark: SKIPPED rows skip
    with their reason, WRONG and CRASHED rows fail (never timed), OK rows get the report's derived numbers."""
    import pytest

    device = harness.device
    benchmark.group = case.label()

    def timer(fn: Any, xs: Any, est_ms: float) -> timing.TimingResult | None:
        cycle = itertools.cycle(xs)

        def call() -> None:
            fn(next(cycle))
            timing.sync(device)

        opts, cuda = harness.options, device.type == "cuda"
        rounds, iterations = timing.plan(
            est_ms,
            target_sample_ms=5.0 if cuda else 0.0,
            reps=opts.reps if cuda else opts.cpu_reps,
            max_row_s=opts.max_row_s,
        )
        if cuda:
            iterations, rounds = 1, max(rounds, 10)  # one synchronised call per iteration: latency as a caller sees it
        # prepare() already warmed up
        benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=1 if cuda else 0)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)  # None with --benchmark-disable
        return (
            None if stats is None else timing.summarize([d * 1e3 for d in stats.data], iterations, "pytest-benchmark")
        )

    row = harness.run_one(case, variant, timer=timer)
    if row.status == "SKIPPED":
        pytest.skip(row.reason)
    if row.status == "WRONG":
        pytest.fail(f"{case.label()} {variant}: WRONG (failed verification), not timed: {row.reason}", pytrace=False)
    if row.status != "OK":
        pytest.fail(f"{case.label()} {variant}: {row.status}: {row.reason}", pytrace=False)
    keys = ("rel_error", "tolerance", "compile_s", "peak_mem_mb", "weights")
    benchmark.extra_info.update(variant=variant, dtype=case.dtype, **{k: getattr(row, k) for k in keys})
    if row.median_ms is not None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        [derived] = annotate([row.to_dict()], name)
        info = {"gflop": row.flops / 1e9, "mb_moved": row.bytes / 1e6}
        info.update((k, derived[k]) for k in ("achieved_gbps", "achieved_tflops", "roofline_frac"))
        benchmark.extra_info.update({k: v for k, v in info.items() if v is not None})
