"""The benchmark harness: build, verify, then (and only then) time.

For every row (target, scale, LR size, batch, dtype, variant):

1. skip with a reason if the variant cannot run here (device, missing backend, half precision on a CPU, time
   budget);
2. build it from a private copy of the fp32 reference weights; the build and the first call are timed together
   as ``compile_s`` (JIT, autotuning, graph capture all happen there);
3. **verify**: the first call's output and the output after warm-up are compared with the fp32 eager reference
   (TF32 off) by relative Frobenius error; above the dtype's tolerance (:mod:`bcrn_fast.tolerances`) the row is
   WRONG and never timed, and an exception anywhere makes it CRASHED;
4. time it (:mod:`bcrn_fast.benchmarking.timing`), rotating input buffers; measure peak memory over the warm-up
   calls;
5. (CUDA) after every row is timed, rebuild the OK variants and count the kernels of one forward with
   ``torch.profiler`` (a separate pass, so the profiler never runs before a timing).

:meth:`Bench.schedule` is the one row loop, in-process (:meth:`Bench.run`) or a process per row
(:mod:`~bcrn_fast.benchmarking.isolated`). Speedups, GB/s, TFLOP/s and the roofline fraction are derived by
:func:`report.annotate`.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bcrn_fast.benchmarking import timing
from bcrn_fast.benchmarking.costs import target_traffic
from bcrn_fast.benchmarking.variants import TARGETS, VARIANTS, BuildContext, Prepared, reference_weights
from bcrn_fast.tolerances import TOLERANCE, rel_error

__all__ = ["DTYPES", "STATUSES", "TOLERANCE", "Bench", "Case", "Options", "Row", "VerificationError"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# WRONG: over tolerance (never timed); CRASHED: raised, or its process died; TIMEOUT: its process ran out of time
STATUSES = ("OK", "WRONG", "CRASHED", "TIMEOUT", "SKIPPED")
_LAUNCH_APIS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
_LAUNCH_APIS += ("cudaLaunchCooperativeKernel", "cudaGraphLaunch", "cuGraphLaunch")
_TIMED = ("median_ms", "p20_ms", "p80_ms", "images_per_s", "out_mpix_per_s")  # None unless the row is OK
# A timer gets the verified fn, the input buffers and one call's wall-clock ms; None = not measured.
Timer = Callable[[timing.Fn, Sequence[torch.Tensor], float], "timing.TimingResult | None"]
OnRow = Callable[["Row", "list[Row]"], None]  # on_row(row, rows_done), called after every row


class VerificationError(AssertionError):
    """A variant's output is not the reference's (wrong shape, non-finite, or over tolerance)."""


@dataclass(frozen=True)
class Case:
    """One benchmark configuration; sizes are LR ``width x height`` (video convention)."""

    target: str
    scale: int | None
    width: int
    height: int
    batch: int
    dtype: str

    @property
    def input_key(self) -> tuple[str, int, int, int]:
        return (self.target, self.width, self.height, self.batch)

    def label(self) -> str:
        scale = f"x{self.scale} " if self.scale else ""
        return f"{self.target} {scale}{self.width}x{self.height} N={self.batch} {self.dtype}"


@dataclass
class Options:
    """How to run: device, seeds, time limits, timing method."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    weights: str | None = None  # checkpoint file or folder for the model target; None = random
    n_buffers: int = 4  # input buffers to rotate through
    timing: str = "loop"  # GPU: "loop" or "flush" (see timing.py)
    warmup: int = 3  # calls after the first one, before verification and timing
    reps: int = 25  # GPU samples per row (upper bound)
    target_sample_ms: float = 20.0  # GPU: calls per sample so one sample lasts about this long
    max_row_s: float = 2.0  # time spent timing one row, at most (about)
    cpu_reps: int = 10  # CPU samples per row (upper bound)
    profile: bool = True  # count kernels per forward with torch.profiler (CUDA)
    budget_s: float | None = None  # whole-run limit: later rows are SKIPPED once it is spent

    @classmethod
    def quick(cls, **kw: Any) -> Options:
        return cls(**{"warmup": 1, "reps": 10, "max_row_s": 1.0, "cpu_reps": 5, **kw})


@dataclass
class Row:
    """One result row; ``to_dict`` is the JSON schema."""

    target: str
    scale: int | None
    width: int
    height: int
    batch: int
    dtype: str
    variant: str
    status: str = "SKIPPED"
    reason: str | None = None
    rel_error: float | None = None
    tolerance: float | None = None
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    samples: int | None = None
    calls_per_sample: int | None = None
    timing_method: str | None = None
    images_per_s: float | None = None
    out_mpix_per_s: float | None = None
    compile_s: float | None = None
    peak_mem_mb: float | None = None
    kernels_per_fwd: int | None = None
    launch_calls_per_fwd: int | None = None
    macs: int | None = None
    flops: int | None = None
    bytes: int | None = None
    weights: str | None = None

    @classmethod
    def for_case(cls, case: Case, variant: str, status: str = "SKIPPED", reason: str | None = None, **kw: Any) -> Row:
        return cls(**asdict(case), variant=variant, status=status, reason=reason, **kw)

    @property
    def case(self) -> Case:
        return Case(self.target, self.scale, self.width, self.height, self.batch, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def fp32_strict() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convs (fp32 means IEEE fp32), restored afterwards.

    Uses the legacy ``allow_tf32`` flags (what Inductor reads); if this torch refuses them (mixing with the
    ``fp32_precision`` API raises in torch >= 2.9), sets ``fp32_precision = "ieee"`` instead.
    """
    saved: list[tuple[Any, str, Any]] = []

    def setflag(obj: Any, attr: str, value: Any) -> bool:
        try:
            saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)
        except (RuntimeError, AttributeError):
            return False
        return True

    if not (
        setflag(torch.backends.cuda.matmul, "allow_tf32", False) and setflag(torch.backends.cudnn, "allow_tf32", False)
    ):
        setflag(torch.backends.cuda.matmul, "fp32_precision", "ieee")
        setflag(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", "ieee")
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        for obj, attr, value in reversed(saved):
            with contextlib.suppress(RuntimeError, AttributeError):
                setattr(obj, attr, value)


def check_output(out: Any, ref: torch.Tensor, dtype: str) -> float:
    """Return the relative error of ``out`` vs ``ref``; raise :class:`VerificationError` if wrong."""
    if not isinstance(out, torch.Tensor):
        raise VerificationError(f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref.shape):
        raise VerificationError(f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if out.dtype != DTYPES[dtype]:
        raise VerificationError(f"output dtype {out.dtype} != {DTYPES[dtype]}")
    err, tol = rel_error(out, ref), TOLERANCE[dtype]
    if not err <= tol:
        raise VerificationError(f"relative error {err:.3e} > tolerance {tol:.0e}")
    return err


def count_launch_events(events: Iterable[Any]) -> tuple[int, int]:
    """``(GPU kernels, host launch API calls)`` among profiler ``FunctionEvent``s.

    Kernels are device-side (``DeviceType.CUDA``) events other than memcpy and memset; launch calls are CPU-side
    runtime/driver launch APIs (a CUDA-graph replay is one ``cudaGraphLaunch`` however many kernels it runs).
    """
    from torch.autograd import DeviceType

    kernels = launches = 0
    for ev in events:
        name = getattr(ev, "name", "") or ""
        if getattr(ev, "device_type", None) == DeviceType.CUDA:
            if not name.startswith(("Memcpy", "Memset", "[memory]")):
                kernels += 1
        elif name in _LAUNCH_APIS:
            launches += 1
    return kernels, launches


class Bench:
    """Holds the reference models, inputs and reference outputs shared by all rows of a run."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.device = self.options.device
        self._references: dict[tuple, tuple[torch.nn.Module, str]] = {}
        self._base_inputs: dict[tuple, list[torch.Tensor]] = {}  # CPU fp32, per input_key
        self._inputs: dict[tuple, list[torch.Tensor]] = {}  # on the device in the row's dtype
        self._ref_out: dict[tuple, torch.Tensor] = {}
        self.release_error: str | None = None  # set when freeing memory after a row raised (CUDA fault)
        self.timer_calls = 0  # how many rows reached the timer (tests check WRONG rows never do)

    def reference(self, case: Case) -> tuple[torch.nn.Module, str]:
        """The fp32 reference module for ``case`` on the device, and where its weights came from."""
        key = (case.target, case.scale)
        if key not in self._references:
            module, source = reference_weights(case.target, case.scale, self.options.seed, self.options.weights)
            self._references[key] = (module.to(self.device), source)
        return self._references[key]

    def _base(self, case: Case) -> list[torch.Tensor]:
        """``n_buffers`` CPU fp32 inputs of ``case``, shared by its dtypes and scales."""
        if case.input_key not in self._base_inputs:
            make, seed = TARGETS[case.target].make_input, self.options.seed + 1000
            shape = (case.batch, case.height, case.width)
            self._base_inputs[case.input_key] = [make(*shape, seed + i) for i in range(self.options.n_buffers)]
        return self._base_inputs[case.input_key]

    def inputs(self, case: Case) -> list[torch.Tensor]:
        """``n_buffers`` distinct inputs of ``case`` in its dtype on the device (buffer 0 is verified)."""
        key = (case.input_key, case.dtype)
        if key not in self._inputs:
            self._inputs[key] = [x.to(self.device, DTYPES[case.dtype]) for x in self._base(case)]
        return self._inputs[key]

    def reference_output(self, case: Case) -> torch.Tensor:
        """fp32 eager output on input buffer 0 (TF32 off): what every variant is checked against."""
        key = (*case.input_key, case.scale)
        if key not in self._ref_out:
            x = self._base(case)[0].to(self.device, torch.float32)
            with fp32_strict(), torch.inference_mode():
                self._ref_out[key] = self.reference(case)[0](x).detach()
        return self._ref_out[key]

    def skip_reason(self, case: Case, variant: str) -> str | None:
        if variant not in VARIANTS:
            return f"unknown variant {variant!r}"
        if case.dtype not in DTYPES:
            return f"unknown dtype {case.dtype!r}"
        if self.device.type == "cpu" and case.dtype != "fp32":
            return "half precision is benchmarked on CUDA only"
        return VARIANTS[variant].unavailable(TARGETS[case.target], self.device)

    def prepare(self, case: Case, variant: str, row: Row | None = None) -> tuple[Prepared, Row]:
        """Build ``variant`` for ``case``, verify it, warm it up; fill ``row`` (status OK) and return it.

        Raises :class:`VerificationError` (row WRONG) or any build/run error (row CRASHED); the row's fields are
        filled as far as they got.
        """
        row = row or Row.for_case(case, variant)
        opts, device, cuda = self.options, self.device, self.device.type == "cuda"
        row.tolerance = TOLERANCE[case.dtype]
        ref_module, row.weights = self.reference(case)
        ref, xs = self.reference_output(case), self.inputs(case)

        ctx = BuildContext(TARGETS[case.target], ref_module, device, DTYPES[case.dtype], xs[0])
        timing.sync(device)
        t0 = time.perf_counter()
        prepared = VARIANTS[variant].build(ctx)
        y = prepared.fn(xs[0])
        timing.sync(device)
        row.compile_s = time.perf_counter() - t0
        err_first = check_output(y, ref, case.dtype)
        del y

        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        for i in range(opts.warmup):
            prepared.fn(xs[(i + 1) % len(xs)])
        timing.sync(device)
        peaks = [torch.cuda.max_memory_allocated(device) - base] if cuda else []
        peaks += [prepared.peak_bytes] if prepared.peak_bytes is not None else []
        if peaks:
            row.peak_mem_mb = max(peaks) / 2**20

        y = prepared.fn(xs[0])  # what gets timed is what was verified (graphs replay here)
        timing.sync(device)
        row.rel_error = max(err_first, check_output(y, ref, case.dtype))
        del y
        row.status, row.reason = "OK", None
        return prepared, row

    def time_prepared(self, case: Case, prepared: Prepared, row: Row, timer: Timer | None = None) -> Row:
        """Time a verified variant (with ``timer``, default :meth:`default_timer`) and fill ``row``'s timings."""
        if row.status != "OK":
            raise RuntimeError("refusing to time a variant that did not pass verification")
        self.timer_calls += 1
        xs = self.inputs(case)
        est = timing.wall_ms(prepared.fn, xs[1 % len(xs)], self.device)
        res = (timer or self.default_timer)(prepared.fn, xs, est)
        if res is None:  # the timer measured nothing (pytest --benchmark-disable)
            return row
        row.median_ms, row.p20_ms, row.p80_ms = res.median_ms, res.p20_ms, res.p80_ms
        row.samples, row.calls_per_sample, row.timing_method = len(res.samples_ms), res.inner, res.method
        row.images_per_s = case.batch * 1e3 / res.median_ms
        out_px = TARGETS[case.target].output_pixels(case.height, case.width, case.scale)
        row.out_mpix_per_s = case.batch * out_px / 1e6 * 1e3 / res.median_ms
        return row

    def plan(self, est_ms: float, target_sample_ms: float | None = None) -> tuple[int, int]:
        """``(reps, inner)`` of :func:`timing.plan` under this run's options; a CPU sample is one call."""
        opts, cuda = self.options, self.device.type == "cuda"
        target = (opts.target_sample_ms if target_sample_ms is None else target_sample_ms) if cuda else 0.0
        reps = opts.reps if cuda else opts.cpu_reps
        return timing.plan(est_ms, target_sample_ms=target, reps=reps, max_row_s=opts.max_row_s)

    def default_timer(self, fn: timing.Fn, xs: Sequence[torch.Tensor], est_ms: float) -> timing.TimingResult:
        """CUDA events (``options.timing`` method) or ``perf_counter``, sized by :meth:`plan`."""
        reps, inner = self.plan(est_ms)
        if self.device.type == "cuda":
            return timing.time_cuda(fn, xs, reps=reps, inner=inner, method=self.options.timing)
        return timing.time_cpu(fn, xs, reps=reps)

    def profile_row(self, case: Case, row: Row) -> None:
        """Fill ``kernels_per_fwd`` / ``launch_calls_per_fwd`` of a timed row (CUDA).

        The variant is rebuilt (and re-verified) for this: profiling runs in a separate pass after every row was
        timed, because a CUPTI session can leave callbacks behind that slow later launches. Never raises.
        """
        if self.device.type != "cuda" or row.status != "OK":
            return
        from torch.profiler import ProfilerActivity, profile

        prepared = None
        try:
            with fp32_strict(), torch.inference_mode():
                prepared, _ = self.prepare(case, row.variant)
                torch.cuda.synchronize(self.device)
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    prepared.fn(self.inputs(case)[0])
                    torch.cuda.synchronize(self.device)
                row.kernels_per_fwd, row.launch_calls_per_fwd = count_launch_events(prof.events())
        except Exception:  # the profiler is a nice-to-have; never lose a row to it
            row.kernels_per_fwd = row.launch_calls_per_fwd = None
        finally:
            del prepared
            self._release()

    def run_one(self, case: Case, variant: str, timer: Timer | None = None) -> Row:
        """Skip, or build + verify + time one row. Never raises for a variant's own failure."""
        reason = self.skip_reason(case, variant)
        if reason is not None:
            return Row.for_case(case, variant, "SKIPPED", reason)
        macs = TARGETS[case.target].macs(case.height, case.width, case.scale, case.batch)
        params = sum(p.numel() for p in self.reference(case)[0].parameters())
        shape = (case.height, case.width, case.scale, case.batch, case.dtype)
        traffic = target_traffic(case.target, *shape, params=params)
        row = Row.for_case(case, variant, macs=macs, flops=2 * macs, bytes=traffic.bytes)
        prepared = None
        try:
            with fp32_strict(), torch.inference_mode():
                prepared, row = self.prepare(case, variant, row)
                self.time_prepared(case, prepared, row, timer)
        except VerificationError as exc:
            row.status, row.reason = "WRONG", str(exc)
        except Exception as exc:
            row.status, row.reason = "CRASHED", f"{type(exc).__name__}: {_one_line(exc)}"
        finally:
            del prepared
            self._release()
        if row.status != "OK":
            for name in _TIMED:
                setattr(row, name, None)
        return row

    def _release(self) -> None:
        """Free the row's memory. Never raises: after a sticky CUDA fault (illegal address) ``empty_cache``
        itself raises, and that must not hide the row that faulted (its status is already set)."""
        gc.collect()
        if self.device.type == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception as exc:  # the context is gone; later rows in this process will report it
                self.release_error = f"{type(exc).__name__}: {_one_line(exc)}"

    def run(self, cases: Sequence[Case], variants: Sequence[str], on_row: OnRow | None = None) -> list[Row]:
        """All rows of ``cases`` x ``variants`` in this process, in display order.

        Execution order is cheap variants first (tier 0 for every case, then the compiles, then the long autotuning),
        so a time budget cuts the expensive rows, not the baselines. ``on_row(row, rows_done)`` is called after each
        row (used to write partial reports).
        """
        jobs = [(case, v) for case in cases for v in variants]
        tier = {name: v.tier for name, v in VARIANTS.items()}
        order = sorted(range(len(jobs)), key=lambda i: (tier.get(jobs[i][1], 0), i))
        rows, deadline = self.schedule(
            jobs,
            order,
            need_s=lambda v: VARIANTS[v].est_build_s + 2 * self.options.max_row_s,
            execute=lambda case, v, _limit: self.run_one(case, v),
            on_row=on_row,
        )
        if self.device.type == "cuda" and self.options.profile:  # kernel counts last: never perturbs a timing
            for i in order:
                left = float("inf") if deadline is None else deadline - time.monotonic()
                if rows[i].status == "OK" and left >= VARIANTS[rows[i].variant].est_build_s:
                    self.profile_row(jobs[i][0], rows[i])
                    if on_row is not None:
                        on_row(rows[i], rows)
        return rows

    def schedule(
        self,
        jobs: Sequence[tuple[Case, str]],
        order: Sequence[int],
        need_s: Callable[[str], float],
        execute: Callable[[Case, str, float], Row],
        on_row: OnRow | None = None,
    ) -> tuple[list[Row], float | None]:
        """Run ``jobs`` in ``order`` (the one loop of both runners); return the rows in job order and the deadline.

        A row is SKIPPED with :meth:`skip_reason`'s reason, or when what is left of ``options.budget_s`` is below
        ``need_s(variant)``; otherwise ``execute(case, variant, need_s)`` makes it. ``on_row(row, rows_done)``
        follows every row.
        """
        budget_s = self.options.budget_s
        deadline = None if budget_s is None else time.monotonic() + budget_s
        done: dict[int, Row] = {}
        for i in order:
            case, variant = jobs[i]
            reason = self.skip_reason(case, variant)
            need = need_s(variant) if reason is None else 0.0
            if reason is None and deadline is not None and (left := deadline - time.monotonic()) < need:
                reason = f"time budget: {max(left, 0):.0f} s left, this row needs ~{need:.0f} s"
            done[i] = Row.for_case(case, variant, "SKIPPED", reason) if reason else execute(case, variant, need)
            if on_row is not None:
                on_row(done[i], [done[k] for k in sorted(done)])
        return [done[i] for i in range(len(jobs))], deadline


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
