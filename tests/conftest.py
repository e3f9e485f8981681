"""Test session setup: the one place that decides whether Triton runs through its interpreter.

Without a CUDA device the Triton kernels run through Triton's interpreter on
the CPU: ``TRITON_INTERPRET=1`` is set here, before any test module imports
bcrn_fast (a ``@triton.jit`` kernel is interpreted or compiled depending on
the variable when its module is imported). On a CUDA machine the variable is
removed so the tests run the compiled kernels; if it was set from outside the
session fails with a one-line message, unless ``BCRN_ALLOW_INTERPRET_ON_GPU=1``
deliberately keeps the interpreter on the GPU. The ahead-of-time compile test
runs in a subprocess with the variable removed.

No test module may touch the variable: after collection (every test module is
imported by then) the session fails if it differs from the decision made here.
``BCRN_REHEARSE_GPU=1`` takes the CUDA-machine decision without a GPU; with
``pytest --collect-only`` that proves on a CPU host that no test module forces the interpreter.
"""

import os
import sys

import pytest
import torch


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


REHEARSE_GPU = _flag("BCRN_REHEARSE_GPU")
ALLOW_INTERPRET_ON_GPU = _flag("BCRN_ALLOW_INTERPRET_ON_GPU")
GPU_DECISION = torch.cuda.is_available() or REHEARSE_GPU

# Error found while deciding, reported at session start (conftest import errors are unreadable).
_SETUP_ERROR: str | None = None

if GPU_DECISION:
    _forced = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if _forced and ALLOW_INTERPRET_ON_GPU:
        print(
            "bcrn_fast tests: TRITON_INTERPRET is set on a CUDA machine; BCRN_ALLOW_INTERPRET_ON_GPU=1 keeps the "
            "interpreter, so the GPU tests check the interpreter, NOT the compiled kernels",
            file=sys.stderr,
        )
    else:
        # Removed even when it was forced, so nothing below can import an interpreted kernel.
        os.environ.pop("TRITON_INTERPRET", None)
        if _forced:
            _SETUP_ERROR = (
                "TRITON_INTERPRET is set on a CUDA machine: the GPU tests would check the interpreter, not the "
                "compiled kernels; unset it (or set BCRN_ALLOW_INTERPRET_ON_GPU=1 to keep the interpreter on purpose)"
            )
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# What every test module must still see after collection (None = unset).
DECIDED_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET")

# Make `tests.utils` importable when pytest runs from the project root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The CUDA-extension fixtures (emu_module, gpu_module, target, host_cuda, backend, cuda_build) for every test
# module; imported only now, after TRITON_INTERPRET is decided (they import bcrn_fast).
from tests.cuda_fixtures import backend, cuda_build, emu_module, gpu_module, host_cuda, target  # noqa: E402, F401


def pytest_sessionstart(session: pytest.Session) -> None:
    if _SETUP_ERROR is not None:
        raise pytest.UsageError(_SETUP_ERROR)


def _interpreted_kernels() -> list[str]:
    """Names of the already imported bcrn_fast kernels whose interpreted/compiled kind differs from the decision."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    want_interpreted = DECIDED_TRITON_INTERPRET not in (None, "", "0")
    wrong = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("bcrn_fast.kernels.") or module is None:
            continue
        for attr, value in vars(module).items():
            if isinstance(value, (JITFunction, InterpretedFunction)):
                if isinstance(value, InterpretedFunction) != want_interpreted:
                    wrong.append(f"{name}.{attr}")
    return wrong


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail the session if a test module changed TRITON_INTERPRET (or imported kernels of the wrong kind)."""
    now = os.environ.get("TRITON_INTERPRET")
    if now != DECIDED_TRITON_INTERPRET:
        raise pytest.UsageError(
            f"a test module changed TRITON_INTERPRET during collection (tests/conftest.py decided "
            f"{DECIDED_TRITON_INTERPRET!r}, now {now!r}); only tests/conftest.py may set it"
        )
    try:
        wrong = _interpreted_kernels()
    except ImportError:  # no Triton: nothing can be interpreted
        return
    if wrong:
        kind = "compiled" if DECIDED_TRITON_INTERPRET is None else "interpreted"
        raise pytest.UsageError(
            f"kernels imported as the wrong kind during collection (expected {kind}): {', '.join(wrong)}; "
            "a test module changed TRITON_INTERPRET around an import"
        )


def pytest_collection_modifyitems(config, items):
    """BCRN_QUICK=1 is the inner-loop mode: skip tests marked slow (CI runs everything)."""
    if os.environ.get("BCRN_QUICK", "0") in ("", "0"):
        return

    skip = pytest.mark.skip(reason="BCRN_QUICK=1 (inner-loop mode); CI runs the full set")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
