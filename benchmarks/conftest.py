"""pytest-benchmark suite setup: one shared harness per session.

Run ``pytest benchmarks/ --benchmark-only`` (add ``-rs`` to see why rows are
skipped). ``BCRN_BENCH_DEVICE`` picks the device (default CUDA when present),
``BCRN_BENCH_QUICK=0|1`` the grid (default quick on a CPU, full on a GPU);
see bcrn_fast/benchmarking/pytest_support.py and benchmarks/NOTES.md.
"""

from __future__ import annotations

import pytest

from bcrn_fast.benchmarking.pytest_support import bench_device, bench_quick, make_harness


@pytest.fixture(scope="session")
def harness():
    """The benchmark harness: reference models, inputs and reference outputs shared by every test."""
    return make_harness()


def pytest_report_header(config):
    device = bench_device()
    return f"bcrn_fast benchmarks: device {device}, {'quick' if bench_quick(device) else 'full'} grid"
