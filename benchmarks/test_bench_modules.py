"""Per-fusion micro-benchmarks: BSConv, convNextBlock, CCA, ESA and one BCB, each fused module against
its reference module (eager and torch.compile), verified before timing."""

from __future__ import annotations

import pytest

from bcrn_fast.benchmarking.pytest_support import bench_params, run_benchmark


@pytest.mark.parametrize(("case", "variant"), bench_params("modules"))
def test_module(benchmark, harness, case, variant):
    run_benchmark(benchmark, harness, case, variant)
