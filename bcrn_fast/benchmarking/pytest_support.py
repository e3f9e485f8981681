"""The pytest-benchmark side of the harness (used by ``benchmarks/``).

``pytest benchmarks/ --benchmark-only`` runs the same build -> verify -> time
sequence as ``bcrn-fast bench``, timed by pytest-benchmark instead. Grids:

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

from bcrn_fast.benchmarking.costs import peaks_for_device, roofline, target_traffic
from bcrn_fast.benchmarking.harness import Bench, Case, Options, VerificationError, fp32_strict
from bcrn_fast.benchmarking.targets import MODULE_TARGETS, TARGETS
from bcrn_fast.benchmarking.timing import plan, wall_ms
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
    """Skip with a reason, or build + verify (fail the test if wrong) + time ``variant`` on ``case``."""
    import pytest

    reason = harness.skip_reason(case, variant)
    if reason is not None:
        pytest.skip(reason)
    device = harness.device
    benchmark.group = case.label()
    with fp32_strict(), torch.inference_mode():
        try:
            prepared, row = harness.prepare(case, variant)
        except VerificationError as exc:
            pytest.fail(f"{case.label()} {variant}: WRONG (failed verification), not timed: {exc}", pytrace=False)
        xs = harness.inputs(case)
        cycle = itertools.cycle(xs)
        fn = prepared.fn

        def call() -> None:
            fn(next(cycle))
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        est = wall_ms(fn, xs[1 % len(xs)], device)
        opts = harness.options
        rounds, iterations = plan(
            est,
            target_sample_ms=5.0 if device.type == "cuda" else 0.0,
            reps=opts.reps if device.type == "cuda" else opts.cpu_reps,
            max_row_s=opts.max_row_s,
        )
        if device.type == "cuda":
            iterations = 1  # one synchronised call per iteration: latency as a caller sees it
            rounds = max(rounds, 10)
        benchmark.extra_info.update(
            {
                "variant": variant,
                "dtype": case.dtype,
                "rel_error": row.rel_error,
                "tolerance": row.tolerance,
                "compile_s": row.compile_s,
                "peak_mem_mb": row.peak_mem_mb,
                "weights": row.weights,
            }
        )
        benchmark.pedantic(
            call, rounds=rounds, iterations=iterations, warmup_rounds=1 if device.type == "cuda" else 0
        )  # prepare() already warmed up
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None with --benchmark-disable
        target = TARGETS[case.target]
        flops = 2 * target.macs(case.height, case.width, case.scale, case.batch)
        params = sum(p.numel() for p in harness.reference(case)[0].parameters())
        nbytes = target_traffic(
            case.target, case.height, case.width, case.scale, case.batch, case.dtype, params=params
        ).bytes
        median_s = stats.median
        info = {
            "gflop": flops / 1e9,
            "mb_moved": nbytes / 1e6,
            "achieved_gbps": nbytes / median_s / 1e9,
            "achieved_tflops": flops / median_s / 1e12,
        }
        if device.type == "cuda":
            floor = roofline(flops, nbytes, case.dtype, peaks_for_device(torch.cuda.get_device_name(device)))
            if floor is not None:
                info["roofline_frac"] = floor.floor_ms * 1e-3 / median_s
        benchmark.extra_info.update(info)
