"""Timers: CUDA events on a GPU, ``time.perf_counter`` on a CPU; median and p20/p80.

GPU method ``loop`` (the default): each sample is one CUDA-event interval around ``inner`` back-to-back calls that
start from an idle device (synchronised before the start event), divided by ``inner``; the launch overhead stays in
the number, as a user running the model in a loop sees it. Calls rotate through several input buffers so no input
stays hot in L2. ``flush`` instead times every call alone between two events after overwriting a 256 MB buffer (L2
flushed, flush not timed) — the ``triton.testing.do_bench`` method, which can hide launch overhead behind the flush.
Warm-up calls are never timed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

Fn = Callable[[torch.Tensor], object]


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` in [0, 1] of ``values`` (numpy's default method)."""
    if not values:
        raise ValueError("quantile of no values")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class TimingResult:
    """Per-call milliseconds: median, p20, p80 over ``samples`` (each the mean of ``inner`` calls)."""

    samples_ms: list[float]
    inner: int = 1
    method: str = "given"
    median_ms: float = field(init=False)
    p20_ms: float = field(init=False)
    p80_ms: float = field(init=False)

    def __post_init__(self) -> None:
        self.samples_ms = list(self.samples_ms)
        self.median_ms = statistics.median(self.samples_ms)
        self.p20_ms, self.p80_ms = quantile(self.samples_ms, 0.2), quantile(self.samples_ms, 0.8)


def sync(device: torch.device) -> None:
    """Wait for the device (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn: Fn, x: torch.Tensor, device: torch.device) -> float:
    """Wall-clock milliseconds of one synchronised call (the estimate :func:`plan` starts from)."""
    sync(device)
    t0 = time.perf_counter()
    fn(x)
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def plan(est_ms: float, *, target_sample_ms: float, reps: int, max_row_s: float) -> tuple[int, int]:
    """``(reps, inner)`` so a sample lasts ~``target_sample_ms`` (200 calls at most), a row ~``max_row_s`` at most."""
    est_ms = max(est_ms, 1e-3)
    inner = max(1, min(200, math.ceil(target_sample_ms / est_ms)))
    affordable = int(max_row_s * 1e3 / (est_ms * inner))
    return max(3, min(reps, affordable)), inner


def time_cuda(fn: Fn, inputs: Sequence[torch.Tensor], *, reps: int, inner: int, method: str = "loop") -> TimingResult:
    """CUDA-event timing of ``fn`` rotating over ``inputs`` (see the module docstring)."""
    device, n = inputs[0].device, len(inputs)
    if method == "loop":
        samples: list[float] = []
        for rep in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for i in range(inner):
                fn(inputs[(rep * inner + i) % n])
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / inner)
        return TimingResult(samples, inner, "cuda-events loop")
    if method == "flush":
        scratch = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device)
        events = []
        for i in range(reps * inner):
            scratch.zero_()  # evict L2 (50 MB on H100/H200); not inside the timed interval
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(inputs[i % n])
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        return TimingResult([s.elapsed_time(e) for s, e in events], 1, "cuda-events flush-L2")
    raise ValueError(f"timing method must be 'loop' or 'flush', got {method!r}")


def time_cpu(fn: Fn, inputs: Sequence[torch.Tensor], *, reps: int) -> TimingResult:
    """``time.perf_counter`` per call, rotating over ``inputs`` (call under ``torch.inference_mode``)."""
    samples = []
    for i in range(reps):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - t0) * 1e3)
    return TimingResult(samples, 1, "perf_counter")
