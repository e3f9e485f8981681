"""The stated byte/FLOP model and the roofline floor every benchmark row is held to.

Two numbers to beat (docs/design.md), for an input of ``P = N·H·W``
LR pixels:

- **FLOPs** = 2 × multiply-adds of every convolution, counted from the
  architecture (docs/design.md): ≈ 272 K MACs per LR pixel at x4. The
  elementwise work (GELU, sigmoid, pooling, bilinear, CCA reductions) is not
  counted; it is < 1 % of the arithmetic.
- **bytes** = the fewest bytes the fully fused design of docs/fused-ops.md
  must move through DRAM: every intermediate map written once and read once
  per consumer, nothing re-read through a cache, the concat never
  materialised, CCA scales applied on load, plus the weights once. That is
  ≈ 416 elements per LR pixel per BCB (≈ 0.8 KB in fp16, the "order of 1 KB"
  of docs/design.md) and ≈ 3.2 K elements per LR pixel for the whole x4
  model. The element size is the storage dtype (fp32: 4 B, fp16/bf16: 2 B).

The floor is ``max(FLOPs / peak FLOP/s, bytes / peak bandwidth)`` with the
datasheet peaks of :data:`GPU_PEAKS` (dense, no sparsity). fp32 rows use the
fp32 CUDA-core peak: the benchmark runs fp32 with TF32 off (the precision
contract's ``ieee`` mode). A CPU has no entry: its floor is "n/a".

Per launch (:func:`launch_costs`, the table a GPU profile confirms or refutes):
the launches one forward makes, as ``python -m bcrn_fast.aot`` records them
(grid, tensor arguments, per-program SASS instruction counts weighted by loop
trip counts), each predicted at ``max(bytes / HBM, MMA FLOPs / tensor peak,
warp instructions / issue rate, MUFU / MUFU rate)``. The issue rate is one warp
instruction per clock per SM sub-partition (4 per SM), i.e. the fp32 peak / 64
(one FFMA warp instruction = 32 lanes x 2 FLOPs); MUFU runs 16 lanes per clock
per SM (CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table,
compute capability 9.0), 1/8 of that. A launch without SASS counts gets a
labelled lower-bound estimate instead (:func:`estimate_instructions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bcrn_fast.model import NUM_BLOCKS, NUM_FEATURES

__all__ = [
    "GPU_PEAKS",
    "LaunchCost",
    "Peaks",
    "Roofline",
    "Traffic",
    "count_conv_macs",
    "dtype_size",
    "esa_sizes",
    "estimate_instructions",
    "format_launch_costs",
    "issue_rate",
    "launch_costs",
    "model_macs",
    "module_macs",
    "mufu_rate",
    "peaks_for_device",
    "roofline",
    "target_traffic",
]

ESA_F = NUM_FEATURES // 4  # ESA inner width (16)
CCA_R = NUM_FEATURES // 16  # CCA squeeze width (4)
HIDDEN = 4 * NUM_FEATURES  # convNextBlock expansion (256)

_DTYPE_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2}


def dtype_size(dtype: str) -> int:
    """Bytes per stored element of a benchmark dtype name (``fp32``/``fp16``/``bf16``)."""
    return _DTYPE_SIZE[dtype]


# --------------------------------------------------------------------------- FLOPs
def esa_sizes(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """ESA's strided map (after conv2, stride 2, no padding) and pooled map (7x7 / 3) sizes."""
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    h6, w6 = (h2 - 7) // 3 + 1, (w2 - 7) // 3 + 1
    return (h2, w2), (h6, w6)


def _bsconv_macs(px: int, cin: int, cout: int, k: int = 3) -> int:
    """BSConvU: pointwise ``cin -> cout`` then a depthwise ``k x k`` on ``px`` output pixels."""
    return px * (cin * cout + cout * k * k)


def module_macs(name: str, h: int, w: int, batch: int = 1, c: int = NUM_FEATURES) -> int:
    """Multiply-adds of one BCRN building block on a ``[batch, c, h, w]`` map.

    ``name`` is ``bsconv`` (the BCB's ``BSConv(64, 64, 3)``), ``convnext``,
    ``esa``, ``cca`` or ``bcb``. Exact for the reference modules (border
    effects of the strided ESA branch included), convolutions only.
    """
    p = h * w
    f = ESA_F
    (h2, w2), (h6, w6) = esa_sizes(h, w)
    p2, p6 = h2 * w2, h6 * w6
    if name == "bsconv":
        per_image = _bsconv_macs(p, c, c)
    elif name == "convnext":
        per_image = p * (9 * c + c * 4 * c + 4 * c * c)
    elif name == "esa":
        per_image = (
            _bsconv_macs(p, c, f, 1)  # conv1 (BSConvU k=1: pw + 1x1 depthwise scale)
            + _bsconv_macs(p, f, f, 1)  # conv_f
            + p * f * f
            + p2 * f * 9  # conv2: pointwise at full size, depthwise stride 2
            + 3 * _bsconv_macs(p6, f, f)  # conv_max, conv3, conv3_ on the pooled map
            + _bsconv_macs(p, f, c, 1)  # conv4
        )
    elif name == "cca":
        r = c // 16
        per_image = _bsconv_macs(1, c, r, 1) + _bsconv_macs(1, r, c, 1)
    elif name == "bcb":
        per_image = sum(module_macs(m, h, w, 1, c) for m in ("bsconv", "convnext", "esa", "cca"))
    else:
        raise ValueError(f"unknown module {name!r}")
    return batch * per_image


def model_macs(h: int, w: int, scale: int, batch: int = 1, c: int = NUM_FEATURES, blocks: int = NUM_BLOCKS) -> int:
    """Multiply-adds of the whole BCRN forward on a ``[batch, 3, h, w]`` image (convolutions only)."""
    p = h * w
    per_image = (
        _bsconv_macs(p, 3, c)  # conv1
        + blocks * module_macs("bcb", h, w, 1, c)
        + _bsconv_macs(p, blocks * c, c)  # conv2 over the 384-channel concat
        + _bsconv_macs(p, c, 3 * scale * scale)  # upsampler pw + depthwise (before the shuffle)
    )
    return batch * per_image


def count_conv_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds of every ``nn.Conv2d`` in ``module`` for ``inputs``, by running it on the meta device.

    A cross-check of the analytic formulas: ``out.numel() · cin/groups · kh · kw``
    per convolution. ``module`` is copied, never modified.
    """
    import copy

    meta = copy.deepcopy(module).to("meta")
    total = 0

    def hook(mod: nn.Conv2d, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    for mod in meta.modules():
        if isinstance(mod, nn.Conv2d):
            mod.register_forward_hook(hook)
    with torch.inference_mode():
        meta(*(torch.empty(x.shape, dtype=x.dtype, device="meta") for x in inputs))
    return total


# --------------------------------------------------------------------------- bytes
@dataclass
class Traffic:
    """DRAM traffic of the fused design: ``stages`` lists (name, elements read, elements written)."""

    elem_bytes: int
    stages: list[tuple[str, int, int]] = field(default_factory=list)
    weight_elems: int = 0

    def add(self, name: str, read: int, written: int) -> None:
        self.stages.append((name, int(read), int(written)))

    @property
    def elements(self) -> int:
        return sum(r + w for _, r, w in self.stages) + self.weight_elems

    @property
    def bytes(self) -> int:
        return self.elements * self.elem_bytes


def _bcb_stages(t: Traffic, p: int, p6: int, c: int, tag: str, standalone: bool) -> None:
    """One BCB in the fused dataflow (fused-ops.md): 5 launches, ~416 elements per pixel."""
    f = ESA_F
    t.add(f"{tag} bsconv", c * p, c * p)  # read u_{k-1} (CCA scale applied on load), write t1
    t.add(f"{tag} convnext+esa pre-map", c * p, (c + f) * p)  # read t1, write t2 and the 16-ch map a
    t.add(f"{tag} esa_pool", f * p, f * p6)  # stride-2 depthwise + 7/3 max-pool
    t.add(f"{tag} esa_low", f * p6, f * p6)  # the three 3x3 BSConvs of the pooled map, one launch
    t.add(f"{tag} esa_apply+cca partials", c * p + f * p6, c * p)  # read t2 (+ c3 gathered), write u_k
    if standalone:  # a lone BCB must return cca(u) itself: one more read and write
        t.add(f"{tag} channel_scale", c * p, c * p)


def target_traffic(
    target: str,
    h: int,
    w: int,
    scale: int | None,
    batch: int,
    dtype: str,
    params: int = 0,
    c: int = NUM_FEATURES,
    blocks: int = NUM_BLOCKS,
) -> Traffic:
    """Minimum DRAM traffic of the fused design for ``target`` on a ``[batch, *, h, w]`` input.

    ``target`` is ``model`` or one of the module names of :func:`module_macs`;
    ``params`` is the parameter count (weights are read once per forward).
    """
    p = batch * h * w
    _, (h6, w6) = esa_sizes(h, w)
    p6 = batch * h6 * w6
    f = ESA_F
    t = Traffic(dtype_size(dtype), weight_elems=params)
    if target == "model":
        if scale is None:
            raise ValueError("the model target needs a scale")
        t.add("conv1", 3 * p, c * p)
        for k in range(1, blocks + 1):
            _bcb_stages(t, p, p6, c, f"bcb{k}", standalone=False)
        t.add("conv2+gelu+residual", blocks * c * p + c * p, c * p)  # the six u_k and F0, write G
        t.add("upsampler+shuffle", c * p, 3 * scale * scale * p)
    elif target in ("bsconv", "convnext"):
        t.add(target, c * p, c * p)
    elif target == "cca":
        t.add("cca reduce", c * p, 0)
        t.add("cca apply", c * p, c * p)
    elif target == "esa":
        t.add("esa pre-map", c * p, f * p)
        t.add("esa_pool", f * p, f * p6)
        t.add("esa_low", f * p6, f * p6)
        t.add("esa_apply", c * p + f * p6, c * p)
    elif target == "bcb":
        _bcb_stages(t, p, p6, c, "bcb", standalone=True)
    else:
        raise ValueError(f"unknown target {target!r}")
    return t


# --------------------------------------------------------------------------- peaks
@dataclass(frozen=True)
class Peaks:
    """Datasheet peaks of one GPU: HBM GB/s and dense TFLOP/s per math mode."""

    name: str
    hbm_gbps: float
    tflops: dict[str, float]  # keys: fp32 (CUDA cores), tf32, fp16, bf16 (dense tensor cores)


# NVIDIA datasheets (boost clock, dense = half the "with sparsity" figure). H100 SXM and H200 (SXM): 132 SMs at
# up to 1.98 GHz, which is what the fp32 figure is (132 x 128 lanes x 2 x 1.98 GHz = 67 TFLOP/s); the H200 has the
# H100's arithmetic with 4.8 TB/s of HBM3e (/work/.library/device/H200.md; measured there: ~4.3 TB/s copy,
# ~790 TFLOP/s bf16 on random 8192^3, 132 SMs, SM clock 1980 MHz under load: device/KINDS.md, 2026-10-28).
GPU_PEAKS: dict[str, Peaks] = {
    "H100 SXM": Peaks("H100 SXM", 3350.0, {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),
    "H100 PCIe": Peaks("H100 PCIe", 2000.0, {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0}),
    "H100 NVL": Peaks("H100 NVL", 3900.0, {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5}),
    "H200": Peaks("H200", 4800.0, {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),
    "H200 NVL": Peaks("H200 NVL", 4800.0, {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5}),
}


def peaks_for_device(device_name: str | None) -> Peaks | None:
    """The :data:`GPU_PEAKS` entry for a CUDA device name (``torch.cuda.get_device_name``), else None.

    ``NVIDIA H100 80GB HBM3`` is the SXM part; PCIe and NVL parts say so in
    their names; ``NVIDIA H200`` is the SXM H200.
    """
    if not device_name:
        return None
    name = device_name.upper()
    if "H200" in name:
        return GPU_PEAKS["H200 NVL" if "NVL" in name else "H200"]
    if "H100" in name:
        if "PCIE" in name:
            return GPU_PEAKS["H100 PCIe"]
        if "NVL" in name:
            return GPU_PEAKS["H100 NVL"]
        return GPU_PEAKS["H100 SXM"]
    return None


@dataclass(frozen=True)
class Roofline:
    """Floor time of one row: compute and memory floors, the larger one, and which it is."""

    compute_ms: float
    memory_ms: float

    @property
    def floor_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def roofline(flops: float, nbytes: float, dtype: str, peaks: Peaks | None) -> Roofline | None:
    """``max(flops / peak_flops, bytes / peak_bw)`` in ms for ``dtype``; None without peaks (CPU)."""
    if peaks is None:
        return None
    tflops = peaks.tflops[dtype]
    return Roofline(compute_ms=flops / (tflops * 1e12) * 1e3, memory_ms=nbytes / (peaks.hbm_gbps * 1e9) * 1e3)


# --------------------------------------------------------------------------- per-launch prediction
def issue_rate(peaks: Peaks) -> float:
    """Warp instructions per second the whole GPU issues: 4 per SM per clock = fp32 FLOP/s / 64."""
    return peaks.tflops["fp32"] * 1e12 / 64


def mufu_rate(peaks: Peaks) -> float:
    """MUFU (special function) warp instructions per second: 16 lanes per SM per clock, 1/8 of :func:`issue_rate`."""
    return issue_rate(peaks) / 8


def estimate_instructions(nbytes: float, mma_flops: float) -> dict[str, float]:
    """A lower bound on warp instructions when no SASS counts exist (labelled ``est`` in the tables): every byte
    moved by a 16-byte vector access of one thread (512 B per warp instruction, loads and stores alike) and every
    MMA FLOP by an m16n8k16 HMMA (4096 FLOPs per warp instruction); no address or elementwise arithmetic."""
    mem = nbytes / 512
    tensor = mma_flops / 4096
    return {"tensor": tensor, "ldg": mem, "total": mem + tensor}


@dataclass(frozen=True)
class LaunchCost:
    """One launch's predicted cost: what it moves and issues, and the floor each resource sets on one GPU."""

    kernel: str
    programs: int
    nbytes: float  # ideal DRAM bytes: each distinct tensor argument moved once
    mma_flops: float  # tensor-core (or, for fp32 IEEE dots, FMA) FLOPs of the launch's tl.dot work
    instructions: dict[str, float]  # warp instructions per class, whole launch ("total", "mufu", "tensor", ...)
    source: str  # "sass": counted from the cubin; "est": estimate_instructions
    memory_us: float
    mma_us: float
    issue_us: float
    mufu_us: float

    @property
    def predicted_us(self) -> float:
        return max(self.memory_us, self.mma_us, self.issue_us, self.mufu_us)

    @property
    def bound(self) -> str:
        floors = {"memory": self.memory_us, "mma": self.mma_us, "issue": self.issue_us, "mufu": self.mufu_us}
        return max(floors, key=floors.get)


def launch_costs(launches: list[dict], peaks: Peaks, dtype: str = "fp16") -> list[LaunchCost]:
    """Predicted cost of each recorded launch (``python -m bcrn_fast.aot``'s ``launches`` rows of one arch and
    forward: ``kernel``, ``programs``, ``bytes``, ``per_program`` warp instructions, ``mma_flops`` or
    ``dot_flops`` per program) on ``peaks``; ``dtype`` picks the tensor-core peak."""
    rows = []
    for launch in launches:
        programs = int(launch["programs"])
        # SASS MMA FLOPs where counted (0 for fp32 IEEE dots, which are FFMA instructions), else the TTIR dots'
        flops = launch.get("mma_flops")
        mma_flops = float(launch.get("dot_flops") or 0.0 if flops is None else flops) * programs
        per_program = launch.get("per_program")
        if per_program:
            instructions, source = {k: float(v) * programs for k, v in per_program.items()}, "sass"
        else:
            instructions, source = estimate_instructions(float(launch["bytes"]), mma_flops), "est"
        rows.append(
            LaunchCost(
                kernel=launch["kernel"],
                programs=programs,
                nbytes=float(launch["bytes"]),
                mma_flops=mma_flops,
                instructions=instructions,
                source=source,
                memory_us=launch["bytes"] / (peaks.hbm_gbps * 1e9) * 1e6,
                mma_us=mma_flops / (peaks.tflops[dtype] * 1e12) * 1e6,
                issue_us=instructions.get("total", 0.0) / issue_rate(peaks) * 1e6,
                mufu_us=instructions.get("mufu", 0.0) / mufu_rate(peaks) * 1e6,
            )
        )
    return rows


def format_launch_costs(launches: list[dict], peaks: list[Peaks], dtype: str = "fp16") -> str:
    """Markdown: one row per launch with bytes, MMA FLOPs, instructions and each GPU's floors, plus the sum."""
    per_gpu = [launch_costs(launches, pk, dtype) for pk in peaks]
    head = "| # | kernel | programs | DRAM MB | MMA GFLOP | warp inst M (MUFU M) | src |"
    sep = "| ---: | --- | ---: | ---: | ---: | ---: | --- |"
    for pk in peaks:
        head += f" {pk.name}: mem / mma / issue / mufu µs | {pk.name} predicted µs |"
        sep += " ---: | ---: |"
    lines = [head, sep]
    for i, base in enumerate(per_gpu[0]):
        row = (
            f"| {i + 1} | {base.kernel} | {base.programs} | {base.nbytes / 1e6:.1f} | {base.mma_flops / 1e9:.2f} | "
            f"{base.instructions.get('total', 0) / 1e6:.2f} ({base.instructions.get('mufu', 0) / 1e6:.2f}) | "
            f"{base.source} |"
        )
        for rows in per_gpu:
            c = rows[i]
            row += (
                f" {c.memory_us:.1f} / {c.mma_us:.1f} / {c.issue_us:.1f} / {c.mufu_us:.1f} | "
                f"**{c.predicted_us:.1f}** ({c.bound}) |"
            )
        lines.append(row)
    total = (
        f"| | **sum** | {sum(c.programs for c in per_gpu[0])} | {sum(c.nbytes for c in per_gpu[0]) / 1e6:.1f} | "
        f"{sum(c.mma_flops for c in per_gpu[0]) / 1e9:.2f} | "
        f"{sum(c.instructions.get('total', 0) for c in per_gpu[0]) / 1e6:.2f} "
        f"({sum(c.instructions.get('mufu', 0) for c in per_gpu[0]) / 1e6:.2f}) | |"
    )
    for rows in per_gpu:
        total += (
            f" {sum(c.memory_us for c in rows):.1f} / {sum(c.mma_us for c in rows):.1f} / "
            f"{sum(c.issue_us for c in rows):.1f} / {sum(c.mufu_us for c in rows):.1f} | "
            f"**{sum(c.predicted_us for c in rows):.1f}** |"
        )
    lines.append(total)
    return "\n".join(lines)
