"""Whole-network benchmarks: reference eager (NCHW, channels-last), torch.compile modes, CUDA graphs,
and the fused backends, each verified against the fp32 eager reference before it is timed."""

from __future__ import annotations

import pytest

from bcrn_fast.benchmarking.pytest_support import bench_params, run_benchmark


@pytest.mark.parametrize(("case", "variant"), bench_params("model"))
def test_model(benchmark, harness, case, variant):
    run_benchmark(benchmark, harness, case, variant)
