"""Test session setup.

Without a CUDA device the Triton kernels run through Triton's interpreter on
the CPU; the variable must be set before any kernel module is imported, so it
is set here, before the test modules import bcrn_fast. The ahead-of-time
compile test runs in a subprocess with the variable removed.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Make `tests.utils` importable when pytest runs from the project root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):
    """BCRN_QUICK=1 is the inner-loop mode: skip tests marked slow (CI runs everything)."""
    if os.environ.get("BCRN_QUICK", "0") in ("", "0"):
        return
    import pytest

    skip = pytest.mark.skip(reason="BCRN_QUICK=1 (inner-loop mode); CI runs the full set")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
