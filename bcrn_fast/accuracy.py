"""Error table: every fused module and BCRNFused vs the float64 reference.

``python -m bcrn_fast.accuracy [--device cpu|cuda] [--backends triton,torch,cuda]``
prints ``||out - ref|| / ||ref||`` per (module, dtype, backend) against the
reference module run in float64, next to PyTorch's own error when the
reference runs in the same dtype, on random weights and a batch-2, 17x23
input (odd sizes, not a multiple of any block). On a CPU the Triton backend
needs ``TRITON_INTERPRET=1`` (set before Python starts) and the ``cuda``
backend is skipped. This is the table the closing notes and GPU runs quote;
the tests assert the same bounds (tests/utils.py REL_TOL).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator

import torch

from bcrn_fast import model as M
from bcrn_fast.fused import FUSED_CLASSES
from bcrn_fast.ops.backends import available_backends, interpreter_enabled

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CASES = [
    ("FusedBSConv 3x3 64->64", lambda: M.BSConvU(64, 64, 3, padding=1), 64, 1),
    ("FusedBSConv 1x1 64->16", lambda: M.BSConvU(64, 16, 1), 64, 1),
    ("FusedConvNeXtBlock", lambda: M.ConvNeXtBlock(64), 64, 1),
    ("FusedCCA", lambda: M.CCALayer(64), 64, 1),
    ("FusedESA", lambda: M.ESA(64), 64, 1),
    ("FusedBCB", lambda: M.BluePrintShortcutBlock(64), 64, 1),
    ("BCRNFused x4", lambda: M.BCRN(4), 3, 0),
]


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan = max(1, p[0].numel())
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / fan**0.5) + 0.05 * torch.randn(p.shape, generator=g))
    return module


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm()).item()


def rows(
    device: str, backends: list[str], dtypes: list[str], size: tuple[int, int, int] = (2, 17, 23)
) -> Iterator[str]:
    """The table's markdown lines, each yielded as soon as it is computed (a time limit keeps the rows done)."""
    n, h, w = size
    yield "| module | dtype | PyTorch same dtype | " + " | ".join(backends) + " |"
    yield "| --- | --- | --- | " + " | ".join("---" for _ in backends) + " |"
    for name, factory, cin, _ in CASES:
        ref = _randomize(factory()).to(device).eval()
        torch.manual_seed(1)
        x = torch.rand(n, cin, h, w, device=device)
        with torch.no_grad():
            expected = copy.deepcopy(ref).double()(x.double())
        for dname in dtypes:
            dtype = DTYPES[dname]
            with torch.no_grad():
                try:
                    same = f"{rel(copy.deepcopy(ref).to(dtype)(x.to(dtype)), expected):.1e}"
                except RuntimeError:  # e.g. an op without a CPU half kernel
                    same = "n/a"
            cells = []
            for backend in backends:
                fused = FUSED_CLASSES[type(ref)].from_reference(copy.deepcopy(ref), backend=backend).to(dtype)
                try:
                    with torch.inference_mode():
                        cells.append(f"{rel(fused(x.to(dtype)), expected):.1e}")
                except RuntimeError as exc:
                    cells.append(f"n/a ({str(exc).splitlines()[0][:40]})")
            yield f"| {name} | {dname} | {same} | " + " | ".join(cells) + " |"


def table(device: str, backends: list[str], dtypes: list[str], size: tuple[int, int, int] = (2, 17, 23)) -> str:
    """The whole table as one markdown string."""
    return "\n".join(rows(device, backends, dtypes, size))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bcrn_fast.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default=None, help="comma-separated (default: what runs on the device)")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = available_backends(device)
    print(
        f"relative error vs float64 reference, device {device}, "
        f"interpreter={interpreter_enabled()}, torch {torch.__version__}",
        flush=True,
    )
    for line in rows(args.device, backends, args.dtypes.split(",")):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
