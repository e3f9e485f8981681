"""A three-stage pipeline that keeps the model busy: read -> compute -> write.

::

    reader thread ──[bounded queue]──> compute (caller's thread) ──[bounded queue]──> writer thread
    (decode frames,                    (batch equal sizes, H2D on a copy        (wait for the D2H copy,
     thread-pool image reads)           stream, model, quantize, D2H)            encode / write PNG)

- **Back-pressure**: both queues are bounded (``queue_size`` items), so a fast reader waits for
  the model and a slow writer stalls the model instead of memory growing without bound.
- **Batching**: consecutive items of the same shape are stacked, up to ``batch`` items; an item
  of another shape closes the batch. Pass-through items (an audio packet, a file that failed to
  read) ride along with the batch they arrived in and reach the writer after it, in order.
- **CUDA**: a batch is stacked into pinned host memory, copied to the GPU on a separate copy
  stream (the compute stream waits on it with an event), run, quantized to uint8 on the GPU and
  copied back into pinned memory on the copy stream; the writer synchronizes on that copy's event
  only when it needs the pixels, so decode, H2D, compute, D2H and encode overlap. Pinned buffers
  come from PyTorch's caching host allocator (freed buffers are reused once their copies finish).
- **CPU**: the reference BCRN runs in channels-last layout (``prepare_model``): 1.5-1.7x faster than
  NCHW in eager mode on the project's 2-core machine, within 1 step of 255 of NCHW
  (``python -m bcrn_fast.pipeline_bench`` measures both); ``--compile`` adds ``torch.compile``.
- **CUDA graphs** (``prepare_model(..., cuda_graph=True)``): the model is replayed from
  :func:`bcrn_fast.graphed` graphs, a batch shape being captured on its second batch (one-off
  shapes run eagerly), at most two shapes kept; tiled items always run the eager model.
- **Half precision is checked**: with an fp16/bf16 :class:`Runner` every item's output is tested
  for finiteness (one small reduction and, on CUDA, one wait for the batch's compute). An item whose
  output is not finite is re-run alone in fp32 by the runner's ``fallback`` model (built on first
  need, once; eager, never a graph) and :func:`run_pipeline` reports it with ``note``; if the fp32
  output is not finite either, the item fails with :class:`NonFiniteOutput` (``item.error``), as a
  file that cannot be read does. A runner without ``fallback`` raises :class:`NonFiniteOutput`.

Outputs are ``[H*S, W*S, 3]`` uint8 host tensors, ``round(255 * clamp(y, 0, 1))`` exactly as
:func:`bcrn_fast.imageio.to_uint8`. The caller's thread receives ``KeyboardInterrupt``; the other
threads are stopped and joined before :func:`run_pipeline` returns or raises.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bcrn_fast.graphs import GraphedModule, graphed
from bcrn_fast.jobs import forward_image
from bcrn_fast.validation import InputError

__all__ = [
    "Item",
    "NonFiniteOutput",
    "PipelineStats",
    "Recomputed",
    "Runner",
    "eager_model",
    "image_item_data",
    "ordered_map",
    "prepare_model",
    "run_pipeline",
]

_END = object()
HALF = {torch.float16: "fp16", torch.bfloat16: "bf16"}
# the CLI's graph cache: a video is one shape (plus its last, shorter batch); a folder of photos rarely repeats more
GRAPH_SHAPES = 2
GRAPH_CAPTURE_AFTER = 2


class NonFiniteOutput(InputError):
    """An item whose output is not finite even in fp32 (or that had no fp32 re-run); nothing is written for it."""


@dataclass(frozen=True)
class Recomputed:
    """A :class:`Runner` result for an item whose ``dtype`` output was not finite and was re-run in fp32.

    ``out`` is the fp32 run's uint8 output, or ``None`` when that was not finite either.
    """

    out: torch.Tensor | None
    dtype: torch.dtype

    def message(self) -> str:
        """The note (re-run worked) or the error text (it did not), without the item's name."""
        name = HALF.get(self.dtype, str(self.dtype))
        if self.out is not None:
            return f"{name} output is not finite; re-ran it in fp32 and wrote that result"
        return f"output is not finite in {name} nor in the fp32 re-run; nothing written"


@dataclass
class Item:
    """One unit of work: ``data`` is a uint8 ``[H, W, 3]`` host tensor or a float32 ``[3, H, W]`` one in
    [0, 1], or ``None`` for an item that only passes through to the writer (``key`` says what it is)."""

    key: Any
    data: torch.Tensor | None = None
    error: BaseException | None = None


@dataclass
class PipelineStats:
    """Counts and times of one :func:`run_pipeline` call (seconds)."""

    items: int = 0
    batches: int = 0
    wall: float = 0.0
    compute: float = 0.0  # time the model (compute stream on CUDA) was busy
    _events: list[tuple[Any, Any]] = field(default_factory=list, repr=False)

    @property
    def busy(self) -> float:
        """Fraction of the wall time the compute stage was busy (0..1)."""
        return self.compute / self.wall if self.wall > 0 else 0.0

    @property
    def rate(self) -> float:
        """Items per second."""
        return self.items / self.wall if self.wall > 0 else 0.0


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def image_item_data(arr: np.ndarray) -> torch.Tensor:
    """An ``HxWx3`` image array as :class:`Item` data without running a torch operator (safe on pool threads).

    uint8 stays ``[H, W, 3]`` uint8 (the runner divides by 255 as :func:`bcrn_fast.imageio.read_image` does);
    float32 in [0, 1] (16-bit input) becomes a ``[3, H, W]`` view.
    """
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if t.dtype == torch.uint8 else t.permute(2, 0, 1)


def prepare_model(
    model: nn.Module,
    device: torch.device,
    *,
    compile: bool = False,  # noqa: A002
    cuda_graph: bool = False,
) -> nn.Module:
    """The fastest accurate form of ``model`` for the pipeline on ``device``.

    On the CPU the reference BCRN is put in channels-last layout (its inputs follow); ``compile``
    wraps it in ``torch.compile`` (worth its ~1 min compile on long jobs only); ``cuda_graph``
    wraps it in :func:`bcrn_fast.graphed` (CUDA only: captured on a shape's second batch, two
    shapes kept, static output returned without a copy, which :class:`Runner` consumes before the
    next replay).
    """
    from bcrn_fast.model import BCRN

    if device.type == "cpu" and isinstance(model, BCRN):
        model = model.to(memory_format=torch.channels_last)
        model._bcrn_channels_last = True  # type: ignore[assignment]
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    if cuda_graph:
        model = graphed(model, max_graphs=GRAPH_SHAPES, clone=False, capture_after=GRAPH_CAPTURE_AFTER)
    return model


def eager_model(model: nn.Module) -> nn.Module:
    """``model`` without its ``torch.compile`` / CUDA-graph wrappers (what tiling drives layer by layer)."""
    if isinstance(model, GraphedModule):
        model = model.model
    return getattr(model, "_orig_mod", model)


def _channels_last(model: nn.Module) -> bool:
    return bool(getattr(eager_model(model), "_bcrn_channels_last", False))


class Runner:
    """Runs batches of host images through ``model`` on ``device`` and returns uint8 HWC host tensors.

    ``tile`` / ``max_memory`` route every item through :func:`bcrn_fast.tiling.tiled_forward`
    (one image at a time); on CUDA without ``tile``, an image whose whole-image peak
    (:func:`bcrn_fast.tiling.whole_image_peak_bytes`) exceeds the free memory is tiled with ``"auto"``.
    ``tile_progress(shape)`` may return a ``progress(done, total)`` callback for one tiled image.

    With ``dtype`` fp16/bf16 each item's output is checked: one that is not finite is re-run alone
    in fp32 on the model ``fallback()`` returns (called once, on first need) and comes back as a
    :class:`Recomputed` in place of its tensor; without ``fallback`` the call raises
    :class:`NonFiniteOutput`. fp32 runs are not checked.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        *,
        tile: int | str | None = None,
        max_memory: int | None = None,
        tile_progress: Callable[[tuple[int, ...]], Callable[[int, int], None] | None] | None = None,
        fallback: Callable[[], nn.Module] | None = None,
    ) -> None:
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.tile, self.max_memory, self.tile_progress = tile, max_memory, tile_progress
        self.cuda = self.device.type == "cuda"
        self.channels_last = _channels_last(model)
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._auto_tile: dict[tuple[torch.dtype, int, int, int], str | None] = {}
        self.check_finite = dtype in HALF
        self._make_fallback, self._fallback = fallback, None
        self.reruns = 0  # items re-run in fp32

    def tile_for(self, n: int, h: int, w: int, dtype: torch.dtype | None = None) -> int | str | None:
        """The tile to use for an ``n x h x w`` batch in ``dtype`` (default the runner's):
        ``self.tile``, else ``"auto"`` when it would not fit on CUDA."""
        if self.tile is not None or not self.cuda:
            return self.tile
        dtype = dtype or self.dtype
        if (dtype, n, h, w) not in self._auto_tile:  # decided once per batch shape
            try:
                from bcrn_fast.tiling import whole_image_peak_bytes
            except ImportError:
                return None
            free, _ = torch.cuda.mem_get_info(self.device)
            peak = whole_image_peak_bytes(eager_model(self.model), n, h, w, dtype)
            self._auto_tile[(dtype, n, h, w)] = "auto" if peak > free else None
        return self._auto_tile[(dtype, n, h, w)]

    def _to_model_input(
        self, x: torch.Tensor, dtype: torch.dtype | None = None, channels_last: bool | None = None
    ) -> torch.Tensor:
        """uint8 NHWC or float NCHW -> float NCHW in [0, 1] (channels-last memory when the model is)."""
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # NHWC memory: already channels-last
        if self.channels_last if channels_last is None else channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(dtype or self.dtype)

    def _finite(self, y: torch.Tensor) -> torch.Tensor | None:
        """Per-item "all finite" flags of a half-precision output batch (``None`` when not checked)."""
        return torch.isfinite(y).flatten(1).all(1) if self.check_finite else None

    def _recheck(self, datas: list[torch.Tensor], finite: torch.Tensor | None, outs: list[Any]) -> list[Any]:
        """``outs`` with every item whose flag in ``finite`` is false re-run in fp32 (waits for the flags)."""
        if finite is None:
            return outs
        for i, ok in enumerate(finite.tolist()):
            if not ok:
                outs[i] = self._rerun_fp32(datas[i], i)
        return outs

    def _rerun_fp32(self, data: torch.Tensor, index: int) -> Recomputed:
        """One item through the fp32 fallback model (eager: a CUDA graph of the half model is never used)."""
        if self._make_fallback is None:
            raise NonFiniteOutput(
                f"{HALF[self.dtype]} output of item {index} of the batch is not finite and this runner has "
                "no fp32 fallback; nothing written (run in fp32)"
            )
        if self._fallback is None:
            self._fallback = self._make_fallback()
        model = self._fallback
        self.reruns += 1
        x = self._to_model_input(data.unsqueeze(0).cpu(), torch.float32, _channels_last(model))
        tile = self.tile_for(1, x.shape[-2], x.shape[-1], torch.float32)
        with torch.inference_mode():
            y = forward_image(
                eager_model(model) if tile is not None else model,
                x,
                self.device,
                torch.float32,
                tile=tile,
                max_memory=self.max_memory,
            )
            if not bool(torch.isfinite(y).all()):
                return Recomputed(None, self.dtype)
            return Recomputed(self._quantize(y)[0].cpu().contiguous(), self.dtype)

    @staticmethod
    def _quantize(y: torch.Tensor) -> torch.Tensor:
        # round(255 * clamp(y, 0, 1)) in float32, as imageio.to_uint8; NCHW -> NHWC
        return y.to(torch.float32).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)

    def __call__(self, datas: list[torch.Tensor], stats: PipelineStats) -> tuple[list[Any], Any]:
        """``(outputs, ready)``: one uint8 ``[H*S, W*S, 3]`` host tensor (or :class:`Recomputed`) per
        input; ``ready`` is a CUDA event to synchronize on before reading them (``None`` on the CPU)."""
        x = torch.stack(datas)
        n, h, w = x.shape[0], *((x.shape[1], x.shape[2]) if x.dtype == torch.uint8 else (x.shape[2], x.shape[3]))
        tile = self.tile_for(n, h, w)
        if tile is not None:
            return self._tiled(datas, tile, stats), None
        if not self.cuda:
            t0 = time.perf_counter()
            with torch.inference_mode():
                y = forward_image(self.model, self._to_model_input(x), self.device, self.dtype)
                finite = self._finite(y)
                out = self._quantize(y).contiguous()
            stats.compute += time.perf_counter() - t0
            return self._recheck(datas, finite, list(out.unbind(0))), None
        return self._cuda_batch(x, datas, stats)

    def _cuda_batch(self, x: torch.Tensor, datas: list[torch.Tensor], stats: PipelineStats) -> tuple[list[Any], Any]:
        compute = torch.cuda.current_stream(self.device)
        host_in = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        host_in.copy_(x)
        with torch.cuda.stream(self.copy_stream):  # H2D on the copy stream
            dev_in = host_in.to(self.device, non_blocking=True)
        compute.wait_stream(self.copy_stream)
        dev_in.record_stream(compute)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            start.record(compute)
            y = forward_image(self.model, self._to_model_input(dev_in), self.device, self.dtype)
            finite = self._finite(y)  # before the next replay can overwrite a graph's static output
            q = self._quantize(y).contiguous()  # NHWC on the GPU, so the D2H copy is one block
            end.record(compute)
        host_out = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
        self.copy_stream.wait_stream(compute)
        with torch.cuda.stream(self.copy_stream):  # D2H on the copy stream, overlapping the next batch
            host_out.copy_(q, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        q.record_stream(self.copy_stream)
        stats._events.append((start, end))
        # the flags' copy waits for this batch's compute (the D2H above is already queued)
        return self._recheck(datas, finite, list(host_out.unbind(0))), ready

    def _tiled(self, datas: list[torch.Tensor], tile: int | str, stats: PipelineStats) -> list[Any]:
        outs: list[Any] = []
        model = eager_model(self.model)  # tiling drives the eager model's layers
        for d in datas:
            x = self._to_model_input(d.unsqueeze(0).cpu())
            cb = self.tile_progress(tuple(x.shape)) if self.tile_progress else None
            t0 = time.perf_counter()
            with torch.inference_mode():
                y = forward_image(model, x, self.device, self.dtype, tile=tile, max_memory=self.max_memory, progress=cb)
                finite = self._finite(y)
                outs.append(self._quantize(y)[0].cpu().contiguous())
            if self.cuda:
                torch.cuda.synchronize(self.device)
            stats.compute += time.perf_counter() - t0
            if finite is not None and not bool(finite[0]):
                outs[-1] = self._rerun_fp32(d, 0)
        return outs


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _put(q: queue.Queue, obj: Any, stop: threading.Event) -> bool:
    """Put with back-pressure; gives up (False) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(obj, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 2, ahead: int = 4) -> Iterator[Any]:
    """``map(fn, items)`` on a thread pool, in order, with at most ``workers + ahead`` calls in flight.

    ``fn`` should not run torch operators: each calling thread gets its own OpenMP team, and on a small
    CPU those teams fight the model's (measured: a pool that converted images with torch ops cut a
    2-core machine's folder throughput 2-3x). Decode with numpy and wrap with ``torch.from_numpy``.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="bcrn-read")
    pending: list[Any] = []
    try:
        for it in items:
            pending.append(pool.submit(fn, it))
            if len(pending) > workers + ahead:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def run_pipeline(
    source: Iterable[Item],
    runner: Callable[[list[torch.Tensor], PipelineStats], tuple[list[torch.Tensor], Any]],
    sink: Callable[[Item, torch.Tensor | None], None],
    *,
    batch: int = 1,
    queue_size: int = 8,
    label: Callable[[Any], str] = str,
    note: Callable[[str], Any] | None = None,
) -> PipelineStats:
    """Read ``source`` on a thread, run batches through ``runner`` here, ``sink(item, output)`` on a thread.

    ``sink`` gets ``output=None`` for pass-through items (``data is None``). An exception in any
    stage stops all three and is re-raised here; so is ``KeyboardInterrupt``.

    A :class:`Recomputed` result (an item re-run in fp32) reaches ``sink`` as its fp32 output, with
    one ``note("<label(key)>: ...")`` line (default: printed to stderr); when the re-run was not
    finite either, ``sink`` gets ``output=None`` and ``item.error`` is a :class:`NonFiniteOutput`
    naming the item, as for a file that could not be read.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    stats = PipelineStats()
    stop = threading.Event()
    in_q: queue.Queue = queue.Queue(maxsize=queue_size)
    out_q: queue.Queue = queue.Queue(maxsize=queue_size)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for item in source:
                if not _put(in_q, item, stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            _put(in_q, _Failure(exc), stop)
        finally:
            _put(in_q, _END, stop)

    def write() -> None:
        try:
            while True:
                got = out_q.get()
                if got is _END:
                    return
                items, outs, ready = got
                if ready is not None:
                    ready.synchronize()
                for it, out in zip(items, outs, strict=True):
                    sink(it, out)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    reader = threading.Thread(target=read, name="bcrn-reader", daemon=True)
    writer = threading.Thread(target=write, name="bcrn-writer", daemon=True)
    t0 = time.perf_counter()
    reader.start()
    writer.start()
    pending: list[Item] = []  # items of the open batch, pass-throughs included, in arrival order

    def settle(item: Item, out: Any) -> torch.Tensor | None:
        if not isinstance(out, Recomputed):
            return out
        text = f"{label(item.key)}: {out.message()}"
        if out.out is None:
            item.error = NonFiniteOutput(text)
        else:
            (note or _stderr)(text)
        return out.out

    def flush() -> None:
        work = [it for it in pending if it.data is not None]
        outs, ready = runner([it.data for it in work], stats) if work else ([], None)
        by_id = {id(it): settle(it, o) for it, o in zip(work, outs, strict=True)}
        if work:
            stats.items += len(work)
            stats.batches += 1
        if not _put(out_q, (list(pending), [by_id.get(id(it)) for it in pending], ready), stop):
            raise errors[0] if errors else RuntimeError("pipeline stopped")
        pending.clear()

    try:
        while True:
            try:
                got = in_q.get(timeout=0.05)
            except queue.Empty:
                if errors:
                    raise errors[0] from None
                continue
            if got is _END:
                break
            if isinstance(got, _Failure):
                raise got.exc
            if errors:
                raise errors[0]
            if got.data is not None:
                kinds = [(it.data.shape, it.data.dtype) for it in pending if it.data is not None]
                if kinds and (len(kinds) >= batch or kinds[0] != (got.data.shape, got.data.dtype)):
                    flush()
            pending.append(got)
        if pending:
            flush()
        _put(out_q, _END, stop)
        writer.join()
        if errors:
            raise errors[0]
    finally:
        stop.set()
        for q in (in_q, out_q):  # unblock the threads
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        out_q.put(_END) if writer.is_alive() else None
        reader.join(timeout=10)
        writer.join(timeout=10)
        if stats._events:
            torch.cuda.synchronize()
            stats.compute += sum(s.elapsed_time(e) for s, e in stats._events) / 1e3
            stats._events.clear()
        stats.wall = time.perf_counter() - t0
    return stats
