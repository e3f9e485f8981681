"""Benchmarking bcrn_fast: harness, variants, byte/FLOP model, reports, the ``bench`` CLI.

- :mod:`~bcrn_fast.benchmarking.variants`: the targets (model, fused blocks) and the variants compared (eager,
  channels-last, torch.compile modes, CUDA graphs, fused backends, onnxruntime);
- :mod:`~bcrn_fast.benchmarking.costs`: the stated FLOP and byte model, GPU peaks, roofline floor;
- :mod:`~bcrn_fast.benchmarking.harness`: build -> verify against fp32 eager -> time (WRONG rows are never timed);
  ``Bench.schedule`` is the one row loop, in-process (``Bench.run``) or a process per row (``isolated.run_isolated``);
- :mod:`~bcrn_fast.benchmarking.report`: environment, JSON schema, markdown table, plot; ``annotate`` is the one
  place GB/s, TFLOP/s, % of roofline floor and speedups are derived;
- :mod:`~bcrn_fast.benchmarking.cli`: ``bcrn-fast bench`` (also ``python -m bcrn_fast.benchmarking``);
  ``pytest_support``: ``pytest benchmarks/`` over the same rows.

Tolerances: :mod:`bcrn_fast.tolerances` (shared with the ONNX export and the tests).
"""

from bcrn_fast.benchmarking.harness import DTYPES, TOLERANCE, Bench, Case, Options, Row, VerificationError
from bcrn_fast.benchmarking.variants import ALL_VARIANTS, VARIANTS

__all__ = ["ALL_VARIANTS", "DTYPES", "TOLERANCE", "VARIANTS", "Bench", "Case", "Options", "Row", "VerificationError"]
