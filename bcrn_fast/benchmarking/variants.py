"""The implementations a benchmark compares, each built from the same reference weights.

A variant is a recipe: :meth:`Variant.unavailable` says why it cannot run
here (the row is then SKIPPED with that reason), :meth:`Variant.build` turns
the fp32 reference module into a callable ``fn(x) -> y`` in the row's dtype.
Every build starts from a private deep copy of the reference, so no variant
can change the weights another one sees (fused modules share parameters with
the module they are made from, and ``.to(dtype)`` would convert both).

| name | what |
| --- | --- |
| ``eager`` | reference module, NCHW, eager PyTorch (the baseline) |
| ``eager_cl`` | reference module and input in channels-last |
| ``inductor`` | ``torch.compile`` default mode |
| ``inductor_max_autotune`` | ``torch.compile(mode="max-autotune-no-cudagraphs")`` |
| ``inductor_reduce_overhead`` | ``torch.compile(mode="reduce-overhead")`` (CUDA graphs via cudagraph trees) |
| ``cudagraphs`` | ``torch.compile(backend="cudagraphs")``: eager kernels replayed from a CUDA graph |
| ``fused_torch`` | ``bcrn_fast.fused`` module, ``backend="torch"`` (the fused dataflow in PyTorch ops) |
| ``fused_triton`` | ``bcrn_fast.fused`` module, ``backend="triton"`` |
| ``fused_cuda`` | ``bcrn_fast.fused`` module, ``backend="cuda"`` (CUDA extension), when built |
| ``fused_triton_graph`` | ``fused_triton`` captured once in a ``torch.cuda.CUDAGraph`` (static input) |
| ``onnxruntime`` | ONNX export run by onnxruntime (``bcrn_fast.export.build_ort_session``; CPU rows) |
"""

from __future__ import annotations

import copy
import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bcrn_fast.benchmarking.targets import Target

__all__ = [
    "ALL_VARIANTS",
    "COMPILE_VARIANTS",
    "DEFAULT_VARIANTS",
    "ISOLATED_ORDER",
    "QUICK_VARIANTS",
    "VARIANTS",
    "BuildContext",
    "Prepared",
    "Variant",
    "fused_backend_unavailable",
    "fused_backends",
    "resolve_variants",
]


@dataclass
class BuildContext:
    """What a builder gets: the fp32 reference (never modified), device, dtype, a sample input."""

    target: Target
    reference: nn.Module
    device: torch.device
    dtype: torch.dtype
    sample: torch.Tensor  # in ``dtype`` on ``device``: static-shape warm-up and graph capture

    def fresh_reference(self, memory_format: torch.memory_format | None = None) -> nn.Module:
        """A private copy in the row's dtype; its parameters are normal tensors even when called under
        ``torch.inference_mode`` (fused modules track parameter versions, which inference tensors lack)."""
        with torch.inference_mode(False):
            module = copy.deepcopy(self.reference).to(device=self.device, dtype=self.dtype)
            if memory_format is not None:
                module = module.to(memory_format=memory_format)
        return module.eval().requires_grad_(False)


@dataclass
class Prepared:
    """A built variant: ``fn(x) -> y``, plus what its builder measured itself."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    peak_bytes: int | None = None  # set by graph builders (memory is allocated at capture)
    keep: list[Any] = field(default_factory=list)  # objects that must outlive fn (graphs, pools)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    build: Callable[[BuildContext], Prepared]
    devices: tuple[str, ...] = ("cpu", "cuda")
    tier: int = 0  # run order under a time budget: 0 cheap, 1 compiles, 2 CUDA-graph compiles, 3 autotuning
    est_build_s: float = 2.0  # rough build + first-call cost on a GPU, for the time budget
    torch_compile: bool = False  # counts as a torch.compile mode for "vs best compile"
    fused_backend: str | None = None

    def unavailable(self, target: Target, device: torch.device) -> str | None:
        """Why this variant cannot run for ``target`` on ``device``; None when it can."""
        if device.type not in self.devices:
            return f"needs a {' or '.join(d.upper() for d in self.devices)} device"
        if self.torch_compile:
            return _compile_unavailable(device)
        if self.fused_backend is not None:
            return _fused_unavailable(target, self.fused_backend, device)
        if self.name == "onnxruntime":
            return _onnxruntime_unavailable(target, device)
        return None


# ----------------------------------------------------------------------------- availability
def _compile_unavailable(device: torch.device) -> str | None:
    if not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch"
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "Inductor's CPU backend needs a C++ compiler and none is on PATH"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Inductor on CUDA needs triton"
    return None


def _fused_module() -> Any:
    return importlib.import_module("bcrn_fast.fused")


def fused_backend_unavailable(backend: str, device: torch.device) -> str | None:
    """Why the fused ``backend`` cannot run on ``device`` (None when it can).

    The one real check: :func:`bcrn_fast.ops.backends.resolve_backend`, the
    function every fused module calls, whose ``BackendUnavailable`` message
    says why (e.g. the CUDA extension's import error).
    """
    try:
        _fused_module()
        from bcrn_fast.ops import backends
    except Exception as exc:  # ImportError, or an op module that fails at import
        return f"bcrn_fast.fused is not importable: {type(exc).__name__}: {exc}"
    if backend == "triton" and device.type != "cuda":
        return "Triton kernels need a CUDA device (the interpreter is for tests, not timing)"
    try:
        backends.resolve_backend(backend, device)
    except (backends.BackendUnavailable, ValueError) as exc:
        return str(exc)
    return None


def fused_backends(device: torch.device) -> tuple[list[str] | None, str | None]:
    """``(backends, why_not)``: the fused backends usable on ``device`` (by :func:`fused_backend_unavailable`),
    or ``(None, import error)`` when ``bcrn_fast.fused`` cannot be imported."""
    try:
        _fused_module()
    except Exception as exc:
        return None, f"bcrn_fast.fused is not importable: {type(exc).__name__}: {exc}"
    return [b for b in ("torch", "triton", "cuda") if fused_backend_unavailable(b, device) is None], None


def _fused_unavailable(target: Target, backend: str, device: torch.device) -> str | None:
    why = fused_backend_unavailable(backend, device)
    if why is not None:
        return why
    if not hasattr(_fused_module(), target.fused_class):
        return f"bcrn_fast.fused has no {target.fused_class}"
    return None


def _onnxruntime_unavailable(target: Target, device: torch.device) -> str | None:
    if target.name != "model":
        return "onnxruntime rows are for the whole model only"
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    try:
        from bcrn_fast.export import build_ort_session  # noqa: F401
    except ImportError as exc:
        return f"bcrn_fast.export.build_ort_session is not available ({exc})"
    return None


# ----------------------------------------------------------------------------- builders
def _eager(ctx: BuildContext) -> Prepared:
    return Prepared(ctx.fresh_reference())


def _eager_cl(ctx: BuildContext) -> Prepared:
    cl = torch.channels_last
    module = ctx.fresh_reference(memory_format=cl)
    return Prepared(lambda x: module(x.contiguous(memory_format=cl)))


def _compiled(mode: str | None = None, backend: str = "inductor", mark_steps: bool = False) -> Callable:
    def build(ctx: BuildContext) -> Prepared:
        import torch._dynamo

        torch._dynamo.reset()  # fresh caches: no recompile limit, no stale graphs of other rows
        module = ctx.fresh_reference()
        kwargs: dict[str, Any] = {"backend": backend, "dynamic": False}
        if mode is not None:
            kwargs["mode"] = mode
        compiled = torch.compile(module, **kwargs)
        if not mark_steps:
            return Prepared(compiled, keep=[module])
        mark = torch.compiler.cudagraph_mark_step_begin

        def fn(x: torch.Tensor) -> torch.Tensor:
            mark()  # one inference step per call: the previous output may be overwritten
            return compiled(x)

        return Prepared(fn, keep=[module])

    return build


def _fused(backend: str) -> Callable:
    def build(ctx: BuildContext) -> Prepared:
        cls = getattr(_fused_module(), ctx.target.fused_class)
        module = cls.from_reference(ctx.fresh_reference(), backend=backend)
        return Prepared(module.eval(), keep=[module])

    return build


def _onnxruntime(ctx: BuildContext) -> Prepared:
    """The model exported to ONNX and run by onnxruntime (the session's own provider choice)."""
    from bcrn_fast.export import build_ort_session

    module = ctx.fresh_reference()
    run = build_ort_session(module, ctx.sample, providers=None)
    return Prepared(run, keep=[module])


def _fused_graph(backend: str) -> Callable:
    def build(ctx: BuildContext) -> Prepared:
        prepared = _fused(backend)(ctx)
        module = prepared.fn
        static_x = ctx.sample.clone()
        stream = torch.cuda.Stream(ctx.device)
        stream.wait_stream(torch.cuda.current_stream(ctx.device))
        with torch.cuda.stream(stream):  # warm-up (JIT compile, autotune) outside the capture
            for _ in range(3):
                module(static_x)
        torch.cuda.current_stream(ctx.device).wait_stream(stream)
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = module(static_x)
        torch.cuda.synchronize(ctx.device)
        peak = torch.cuda.max_memory_allocated(ctx.device) - base

        def fn(x: torch.Tensor) -> torch.Tensor:
            static_x.copy_(x)
            graph.replay()
            return static_y

        return Prepared(fn, peak_bytes=peak, keep=[module, graph, static_x, static_y])

    return build


_V = Variant
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _V("eager", "reference, eager NCHW", _eager, est_build_s=1),
        _V("eager_cl", "reference, eager channels-last", _eager_cl, est_build_s=1),
        _V(
            "inductor",
            "torch.compile (inductor, default mode)",
            _compiled(),
            tier=1,
            est_build_s=40,
            torch_compile=True,
        ),
        _V(
            "inductor_max_autotune",
            "torch.compile mode=max-autotune-no-cudagraphs",
            _compiled("max-autotune-no-cudagraphs"),
            devices=("cuda",),
            tier=3,
            est_build_s=120,
            torch_compile=True,
        ),
        _V(
            "inductor_reduce_overhead",
            "torch.compile mode=reduce-overhead",
            _compiled("reduce-overhead", mark_steps=True),
            devices=("cuda",),
            tier=2,
            est_build_s=45,
            torch_compile=True,
        ),
        _V(
            "cudagraphs",
            "torch.compile backend=cudagraphs",
            _compiled(backend="cudagraphs", mark_steps=True),
            devices=("cuda",),
            tier=1,
            est_build_s=10,
            torch_compile=True,
        ),
        _V(
            "onnxruntime",
            "ONNX export run by onnxruntime (bcrn_fast.export.build_ort_session)",
            _onnxruntime,
            devices=("cpu",),
            tier=1,
            est_build_s=15,
        ),
        _V("fused_torch", "BCRNFused backend=torch", _fused("torch"), est_build_s=2, fused_backend="torch"),
        _V(
            "fused_triton",
            "BCRNFused backend=triton",
            _fused("triton"),
            devices=("cuda",),
            est_build_s=20,
            fused_backend="triton",
        ),
        _V(
            "fused_cuda",
            "BCRNFused backend=cuda (extension)",
            _fused("cuda"),
            devices=("cuda",),
            est_build_s=5,
            fused_backend="cuda",
        ),
        _V(
            "fused_triton_graph",
            "BCRNFused triton in one CUDA graph",
            _fused_graph("triton"),
            devices=("cuda",),
            est_build_s=20,
            fused_backend="triton",
        ),
    )
}
ALL_VARIANTS = tuple(VARIANTS)
# Order of rows when each row runs in its own process (--isolate): the baselines first, so a fused row that
# faults cannot cost them; then the fused rows; the slow compile modes last (a time budget cuts those).
ISOLATED_ORDER = (
    "eager",
    "eager_cl",
    "inductor",
    "onnxruntime",
    "fused_triton",
    "fused_triton_graph",
    "fused_cuda",
    "fused_torch",
    "cudagraphs",
    "inductor_reduce_overhead",
    "inductor_max_autotune",
)
COMPILE_VARIANTS = tuple(n for n, v in VARIANTS.items() if v.torch_compile)
DEFAULT_VARIANTS = {
    "cpu": ("eager", "eager_cl", "inductor", "onnxruntime", "fused_torch"),
    "cuda": tuple(n for n in ALL_VARIANTS if n not in ("fused_torch", "onnxruntime")),
}
QUICK_VARIANTS = {
    "cpu": ("eager", "eager_cl", "fused_torch"),
    "cuda": DEFAULT_VARIANTS["cuda"],
}


def resolve_variants(spec: str | None, device_type: str, quick: bool = False) -> list[str]:
    """Variant names from ``spec`` (comma list, ``all``, ``default``, ``quick``; None = per device default)."""
    if not spec:
        spec = "quick" if quick else "default"
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == "all":
            names.extend(ALL_VARIANTS)
        elif item == "default":
            names.extend(DEFAULT_VARIANTS[device_type])
        elif item == "quick":
            names.extend(QUICK_VARIANTS[device_type])
        elif item == "compile":
            names.extend(COMPILE_VARIANTS)
        elif item in VARIANTS:
            names.append(item)
        else:
            raise ValueError(f"unknown variant {item!r}; choose from {', '.join(ALL_VARIANTS)} (or all/default/quick)")
    if "eager" not in names:
        names.insert(0, "eager")  # the baseline every speedup is relative to
    return list(dict.fromkeys(names))
