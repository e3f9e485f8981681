"""What a benchmark compares: targets (the network or one fused block) and variants (implementations).

A :class:`Target` builds its fp32 reference module (seeded random weights, or the official checkpoint for the model),
makes inputs, names the ``bcrn_fast.fused`` class that replaces it and counts its FLOPs.

A :class:`Variant` is a recipe: :meth:`Variant.unavailable` says why it cannot run here (the row is then SKIPPED with
that reason), :meth:`Variant.build` turns the fp32 reference module into a callable ``fn(x) -> y`` in the row's
dtype. Every build starts from a private deep copy of the reference, so no variant can change the weights another one
sees (fused modules share parameters with the module they are made from, and ``.to(dtype)`` would convert both).
:data:`TARGETS` and :data:`VARIANTS` list them.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast import fused
from bcrn_fast.benchmarking.costs import model_macs, module_macs
from bcrn_fast.checkpoint import state_dict_from_file
from bcrn_fast.model import BCRN, ESA, NUM_FEATURES, BluePrintShortcutBlock, CCALayer, ConvNeXtBlock, bsconv3
from bcrn_fast.ops import backends

__all__ = ["ALL_VARIANTS", "COMPILE_VARIANTS", "ISOLATED_ORDER", "MODULE_TARGETS", "TARGETS", "VARIANTS"]
__all__ += ["BuildContext", "Prepared", "Target", "Variant", "reference_weights", "resolve_variants"]


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One benchmarkable network or module."""

    name: str
    fused_class: str  # attribute of bcrn_fast.fused
    factory: Callable[[int], nn.Module]  # scale -> fresh reference module (random init)
    description: str

    @property
    def uses_scale(self) -> bool:
        return self.name == "model"

    def reference(self, scale: int | None, seed: int) -> nn.Module:
        """A fresh fp32 reference module in eval mode with seeded random weights."""
        torch.manual_seed(seed)
        return self.factory(scale or 4).eval().requires_grad_(False)

    def make_input(self, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
        """A CPU fp32 input: an image-like RGB batch in [0, 1] for the model, N(0, 1) features for a module.

        The image is bicubic-upsampled 1/8-resolution uniform noise plus N(0, 0.03^2) detail, clamped: smooth like
        a photo. Pure per-pixel noise is no good with the official weights — the network is ill-conditioned there
        (fp32 eager itself is ~4e-4 away from float64, vs ~3e-7 on this input or on Set5), so correct fp32 variants
        would fail verification.
        """
        gen = torch.Generator().manual_seed(seed)
        if self.name != "model":
            return torch.randn((batch, NUM_FEATURES, height, width), generator=gen)
        coarse = torch.rand((batch, 3, max(2, height // 8), max(2, width // 8)), generator=gen)
        image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        return (image + 0.03 * torch.randn((batch, 3, height, width), generator=gen)).clamp_(0.0, 1.0)

    def output_pixels(self, height: int, width: int, scale: int | None) -> int:
        """Output pixels per image (HR pixels for the model)."""
        s = scale if self.uses_scale and scale else 1
        return height * width * s * s

    def macs(self, height: int, width: int, scale: int | None, batch: int) -> int:
        if self.name == "model":
            return model_macs(height, width, scale or 4, batch)
        return module_macs(self.name, height, width, batch)


_NF = NUM_FEATURES  # every block target is 64 channels wide
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("model", "BCRNFused", BCRN, "the whole BCRN network"),
        Target("bsconv", "FusedBSConv", lambda s: bsconv3(_NF, _NF), "BSConv(64, 64, 3): pointwise + depthwise 3x3"),
        Target(
            "convnext",
            "FusedConvNeXtBlock",
            lambda s: ConvNeXtBlock(_NF),
            "convNextBlock: dw3x3 -> 1x1 64->256 -> GELU -> 1x1 256->64 -> + x",
        ),
        Target(
            "cca",
            "FusedCCA",
            lambda s: CCALayer(_NF),
            "contrast-aware channel attention (mean + std pooling, squeeze MLP, scale)",
        ),
        Target("esa", "FusedESA", lambda s: ESA(_NF), "enhanced spatial attention"),
        Target("bcb", "FusedBCB", lambda s: BluePrintShortcutBlock(_NF), "one BCB: cca(esa(convNextBlock(conv(x))))"),
    )
}
MODULE_TARGETS = tuple(name for name in TARGETS if name != "model")


def resolve_weights_file(weights: str | os.PathLike[str] | None, scale: int) -> Path | None:
    """The checkpoint to use for ``scale``: ``weights`` itself if a file, ``best_epoch_x{scale}.pth``
    under it (or its ``bcrn_official/``) if a folder; None when absent (random weights then)."""
    if not weights:
        return None
    path = Path(weights)
    if path.is_file():
        return path
    candidates = (folder / f"best_epoch_x{scale}.pth" for folder in (path, path / "bcrn_official"))
    return next((c for c in candidates if c.is_file()), None)


def reference_weights(target: str, scale: int | None, seed: int, weights: str | None) -> tuple[nn.Module, str]:
    """The fp32 reference module of ``target`` and where its weights came from: seeded random, or for the
    model the checkpoint :func:`resolve_weights_file` finds under ``weights`` (loaded strictly)."""
    module = TARGETS[target].reference(scale, seed)
    path = resolve_weights_file(weights, scale or 4) if target == "model" else None
    if path is None:
        return module, f"random(seed={seed})"
    module.load_state_dict(state_dict_from_file(path), strict=True)
    return module, path.name


# ----------------------------------------------------------------------------- variants
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
            module = copy.deepcopy(self.reference).to(device=self.device, dtype=self.dtype, memory_format=memory_format)
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
            return fused_backend_unavailable(self.fused_backend, device)
        if self.name == "onnxruntime":
            if target.name != "model":
                return "onnxruntime rows are for the whole model only"
            try:
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                return f"onnxruntime is not installed ({exc})"
        return None


def _compile_unavailable(device: torch.device) -> str | None:
    if not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        return "Inductor's CPU backend needs a C++ compiler and none is on PATH"
    if device.type == "cuda" and not backends.triton_available():
        return "Inductor on CUDA needs triton"
    return None


def fused_backend_unavailable(backend: str, device: torch.device) -> str | None:
    """Why the fused ``backend`` cannot run on ``device`` (None when it can): the check every fused module
    makes (:func:`bcrn_fast.ops.backends.unavailable`, e.g. the CUDA extension's import error)."""
    if backend == "triton" and device.type != "cuda":
        return "Triton kernels need a CUDA device (the interpreter is for tests, not timing)"
    return backends.unavailable(backend, device)


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
        compiled = torch.compile(module, backend=backend, dynamic=False, **({"mode": mode} if mode else {}))
        mark = torch.compiler.cudagraph_mark_step_begin

        def fn(x: torch.Tensor) -> torch.Tensor:
            mark()  # one inference step per call: the previous output may be overwritten
            return compiled(x)

        return Prepared(fn if mark_steps else compiled, keep=[module])

    return build


def _fused(backend: str) -> Callable:
    def build(ctx: BuildContext) -> Prepared:
        module = getattr(fused, ctx.target.fused_class).from_reference(ctx.fresh_reference(), backend=backend)
        return Prepared(module.eval(), keep=[module])

    return build


def _onnxruntime(ctx: BuildContext) -> Prepared:
    """The model exported to ONNX and run by onnxruntime (the session's own provider choice)."""
    from bcrn_fast.export import build_ort_session

    module = ctx.fresh_reference()
    return Prepared(build_ort_session(module, ctx.sample, providers=None), keep=[module])


def _fused_graph(backend: str) -> Callable:
    def build(ctx: BuildContext) -> Prepared:
        module = _fused(backend)(ctx).fn
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


_ANY, _GPU, _CPU = ("cpu", "cuda"), ("cuda",), ("cpu",)
_AUTOTUNE, _RO = "max-autotune-no-cudagraphs", "reduce-overhead"
# name, what it is, builder, devices, tier, est_build_s, torch_compile, fused_backend
_TABLE: tuple[tuple[Any, ...], ...] = (
    ("eager", "reference module, NCHW, eager PyTorch (the baseline)", _eager, _ANY, 0, 1, False, None),
    ("eager_cl", "reference module and input in channels-last", _eager_cl, _ANY, 0, 1, False, None),
    ("inductor", "torch.compile (inductor, default mode)", _compiled(), _ANY, 1, 40, True, None),
    ("inductor_max_autotune", "mode=max-autotune-no-cudagraphs", _compiled(_AUTOTUNE), _GPU, 3, 120, True, None),
    ("inductor_reduce_overhead", "mode=reduce-overhead (CUDA graphs)", _compiled(_RO, True), _GPU, 2, 45, True, None),
    ("cudagraphs", "backend=cudagraphs", _compiled(backend="cudagraphs", mark_steps=True), _GPU, 1, 10, True, None),
    ("onnxruntime", "ONNX export run by onnxruntime (CPU rows)", _onnxruntime, _CPU, 1, 15, False, None),
    ("fused_torch", "bcrn_fast.fused, backend=torch (PyTorch ops)", _fused("torch"), _ANY, 0, 2, False, "torch"),
    ("fused_triton", "bcrn_fast.fused, backend=triton", _fused("triton"), _GPU, 0, 20, False, "triton"),
    ("fused_cuda", "bcrn_fast.fused, backend=cuda (the CUDA extension)", _fused("cuda"), _GPU, 0, 5, False, "cuda"),
    ("fused_triton_graph", "fused_triton in one CUDA graph", _fused_graph("triton"), _GPU, 0, 20, False, "triton"),
)
VARIANTS: dict[str, Variant] = {row[0]: Variant(*row) for row in _TABLE}
ALL_VARIANTS = tuple(VARIANTS)
# Order of rows when each row runs in its own process (--isolate): the baselines first, so a fused row that
# faults cannot cost them; then the fused rows; the slow compile modes last (a time budget cuts those).
ISOLATED_ORDER = (
    *("eager", "eager_cl", "inductor", "onnxruntime"),
    *("fused_triton", "fused_triton_graph", "fused_cuda", "fused_torch"),
    *("cudagraphs", "inductor_reduce_overhead", "inductor_max_autotune"),
)
COMPILE_VARIANTS = tuple(n for n, v in VARIANTS.items() if v.torch_compile)
DEFAULT_VARIANTS = {
    "cpu": ("eager", "eager_cl", "inductor", "onnxruntime", "fused_torch"),
    "cuda": tuple(n for n in ALL_VARIANTS if n not in ("fused_torch", "onnxruntime")),
}
QUICK_VARIANTS = {"cpu": ("eager", "eager_cl", "fused_torch"), "cuda": DEFAULT_VARIANTS["cuda"]}


def expand_names(spec: str, known: Iterable[str], groups: Mapping[str, Sequence[str]], unknown: str) -> list[str]:
    """The names of a comma list ``spec``, group names expanded, duplicates dropped (first one kept).

    Raises ``ValueError(unknown.format(item=...))`` for an item that is neither a name nor a group.
    """
    known = set(known)
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if item in groups:
            names.extend(groups[item])
        elif item in known:
            names.append(item)
        elif item:
            raise ValueError(unknown.format(item=repr(item)))
    return list(dict.fromkeys(names))


def resolve_variants(spec: str | None, device_type: str, quick: bool = False) -> list[str]:
    """Variant names from ``spec`` (comma list, ``all``, ``default``, ``quick``; None = per device default)."""
    groups = {"all": ALL_VARIANTS, "compile": COMPILE_VARIANTS}
    groups.update(default=DEFAULT_VARIANTS[device_type], quick=QUICK_VARIANTS[device_type])
    unknown = "unknown variant {item}; choose from " + ", ".join(ALL_VARIANTS) + " (or all/default/quick)"
    names = expand_names(spec or ("quick" if quick else "default"), VARIANTS, groups, unknown)
    return names if "eager" in names else ["eager", *names]  # the baseline every speedup is relative to
