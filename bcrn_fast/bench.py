"""Minimal ``bcrn-fast bench``: median latency of the reference BCRN with random weights.

A placeholder until the full benchmark lands; it only times
:class:`bcrn_fast.model.BCRN` (default initialisation, eval mode,
``torch.inference_mode()``) on a random ``[1, 3, H, W]`` input.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bcrn_fast.model import BCRN, MIN_SIZE, SCALES
from bcrn_fast.validation import InputError

__all__ = ["add_arguments", "parse_size", "run"]


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``64x48``) into ``(H, W)``; both must be at least 15."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--size must look like HxW (e.g. 64x64), got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if h < MIN_SIZE or w < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"--size {text}: ESA needs at least {MIN_SIZE}x{MIN_SIZE} LR pixels")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument("--quick", action="store_true", help="tiny input and 3 iterations (smoke test)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--scale", type=int, choices=SCALES, default=4, help="upscaling factor (default 4)")
    parser.add_argument("--size", type=parse_size, default=None, help="LR input size HxW (default 64x64)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 10)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> int:
    """Time ``BCRN(args.scale)`` forward passes and print the median in milliseconds; returns 0."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise InputError(f"unknown device {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but CUDA is not available")
    size = args.size or ((24, 24) if args.quick else (64, 64))
    iters = args.iters if args.iters is not None else (3 if args.quick else 10)
    if iters < 1:
        raise InputError(f"--iters must be >= 1, got {iters}")
    torch.manual_seed(0)
    model = BCRN(args.scale).eval().to(device)
    x = torch.rand(1, 3, *size, device=device)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        _sync(device)
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    h, w = size
    print(
        f"reference BCRN x{args.scale} on {device}, input {h}x{w}, {iters} iterations: "
        f"median {statistics.median(times):.3f} ms"
    )
    return 0
