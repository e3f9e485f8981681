"""How many programs of a compiled kernel share an SM, and launch-configuration sweeps (ConvNeXt, BSConv, ESA).

`python -m bcrn_fast.occupancy` compiles the launches of one BCRNFused x4 forward at 960x540 under each
candidate configuration of a sweep in `SWEEPS` (`bcrn_fast/occupancy.py`: the six ConvNeXt launches with
their ESA epilogue, in fp16 and in fp32 tf32; the six BCB 3x3 BSConvs in fp32 tf32 and fp16; the six ESA
apply launches in fp16) for sm_80/86/90, without a GPU (`bcrn_fast.aot`'s recorder), and tabulates what
decides the rows of the `CONFIGS` tables of `kernels/convnext.py`, `bsconv.py` and `esa.py`
(docs/occupancy.md):

- ptxas registers, spills and Triton's shared memory per program -> programs (CTAs) and warps per SM
  (`residency`, the CUDA occupancy rules below);
- the SASS warp instructions of one launch (per class, trip-count weighted, x programs), its H200 issue
  floor (`costs.issue_rate`) and MUFU floor;
- the weight bytes the programs read from L2 (W1, W2 and the ESA map, once per program): what a smaller
  pixel tile pays for its occupancy.

Occupancy (per SM; sm_80 / sm_86 / sm_89 / sm_90): 65,536 registers, allocated per warp in units of 256
(a thread's count x 32 rounded up); at most 64 / 48 / 48 / 64 resident warps and 32 / 16 / 24 / 32
resident programs; 164 / 100 / 100 / 228 KiB of shared memory, each program also reserving 1 KiB
(CUDA C Programming Guide, "Compute Capabilities"; the occupancy calculator's allocation rules).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from bcrn_fast.kernels import Config, dot_mode, pick

REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
RESERVED_SMEM = 1024  # bytes of shared memory the system reserves per resident program (sm_80+)


class SmLimits(NamedTuple):
    max_warps: int
    max_programs: int
    smem: int  # bytes of shared memory per SM that programs may use


SM_LIMITS = {
    80: SmLimits(64, 32, 164 * 1024),
    86: SmLimits(48, 16, 100 * 1024),
    89: SmLimits(48, 24, 100 * 1024),
    90: SmLimits(64, 32, 228 * 1024),
}


class Residency(NamedTuple):
    programs: int  # resident programs (CTAs) per SM
    warps: int  # resident warps per SM
    limit: str  # what bounds it: "registers", "smem", "warps" or "programs"


def residency(arch: int, regs: int, smem: int, warps: int) -> Residency:
    """Programs of ``warps`` warps, ``regs`` registers per thread and ``smem`` bytes of shared memory
    (static + dynamic) that fit on one SM of ``arch`` at once."""
    limits = SM_LIMITS[arch]
    per_warp = math.ceil(max(regs, 1) * 32 / REGISTER_UNIT) * REGISTER_UNIT
    bounds = {
        "registers": (REGISTERS_PER_SM // per_warp) // warps,
        "smem": limits.smem // (smem + RESERVED_SMEM),
        "warps": limits.max_warps // warps,
        "programs": limits.max_programs,
    }
    limit = min(bounds, key=bounds.get)
    return Residency(bounds[limit], bounds[limit] * warps, limit)


def candidate(label: str, shrink: bool = True) -> Config:
    """The configuration a candidate label names: ``PxW`` (pixel tile x warps), then any of ``s<n>`` (stages,
    default 3), ``k<n>`` or ``hid <n>`` (the K or hidden chunk), ``maxnreg <n>``: "128x8 hid 32 maxnreg 128"."""
    words = label.split()
    block_p, warps = (int(v) for v in words[0].split("x"))
    opts = {"s": 3, "k": 0, "maxnreg": 0}
    rest = iter(words[1:])
    for word in rest:
        if word in ("hid", "maxnreg"):
            opts["k" if word == "hid" else word] = int(next(rest))
        else:
            opts[word[0]] = int(word[1:])
    return Config(block_p, warps, opts["s"], block_k=opts["k"], shrink=shrink, maxnreg=opts["maxnreg"])


class Sweep(NamedTuple):
    """One kernel's candidate configurations for one precision mode of a x4 forward."""

    kernel: str  # the Triton kernel's name in the recorder's launch log
    dtype: torch.dtype  # storage dtype of the forward
    precision: str  # fp32 dot precision
    labels: tuple[str, ...]  # the candidates, as :func:`candidate` labels
    weight_bytes: int  # weight bytes one program reads (from L2): what a smaller pixel tile pays again
    selects: tuple[str, ...] = ()  # constexprs ("KSIZE=3") every counted launch has: which launches it is
    shrink: bool = True  # the candidates' pixel tile shrinks on small maps (as the kernel's table rows do)

    @property
    def candidates(self) -> list[tuple[str, Config]]:
        return [(label, candidate(label, self.shrink)) for label in self.labels]


# ConvNeXt: "hid" is the hidden chunk (HID_BLOCK, default 64), maxnreg caps ptxas; before the sweep the table
# held half "128x8" and tf32 "64x4". BSConv: the BCB's 3x3 64 -> 64 implicit-GEMM launches (the tf32 and half
# rows also serve conv1's im2col launch), "k" the input-channel chunk (default 64); before the sweep the table
# held tf32 "32x4 s3" and half "128x8 s3".
_CONVNEXT_WEIGHTS = 64 * 256 * 2 + 64 * 16  # W1, W2, the ESA map A (elements per program)
_BSCONV_WEIGHTS = 64 * 64 + 9 * 64 + 64 + 64  # pw, dw taps, bias, the CCA scale row (fp32 per program)
_BCB_BSCONV = ("IM2COL=False", "KSIZE=3", "PW_ONLY=False", "COUT_PAD=64")  # the BCB's 3x3 64 -> 64 launches
SWEEPS: dict[str, Sweep] = {
    "convnext-half": Sweep(
        "convnext_kernel", torch.float16, "ieee",
        ("128x8", "128x8 maxnreg 128", "128x8 hid 32", "128x8 hid 32 maxnreg 128", "128x4", "64x4", "64x4 maxnreg 128",
         "64x4 hid 32", "64x2", "32x2"),
        _CONVNEXT_WEIGHTS * 2,
    ),
    "convnext-tf32": Sweep(
        "convnext_kernel", torch.float32, "tf32",
        ("64x4", "64x4 maxnreg 128", "64x4 hid 32", "128x8", "128x8 hid 32", "128x8 maxnreg 128", "32x2"),
        _CONVNEXT_WEIGHTS * 4,
    ),
    "bsconv-tf32": Sweep(
        "bsconv_kernel", torch.float32, "tf32",
        ("32x4 s3", "32x4 s2", "32x8 s3", "64x4 s2 k32", "64x8 s2", "64x8 s3 k32", "128x8 s2 k32", "64x4 s3 k16",
         "64x4 s2 k16", "64x8 s3 k16", "128x4 s3 k16", "128x8 s3 k16"),
        _BSCONV_WEIGHTS * 4, _BCB_BSCONV, shrink=False,
    ),
    "bsconv-half": Sweep(
        "bsconv_kernel", torch.float16, "ieee",
        ("128x8 s3", "128x8 s2", "128x8 s3 k32", "128x8 s3 k16", "128x4 s3 k16", "64x4 s3", "64x4 s3 k32",
         "64x4 s2 k16"),
        64 * 64 * 2 + (_BSCONV_WEIGHTS - 64 * 64) * 4, _BCB_BSCONV, shrink=False,  # pw fp16; taps, bias, scale fp32
    ),
    "esa-apply-half": Sweep(
        "esa_apply_kernel", torch.float16, "ieee",
        ("128x8", "128x4", "64x4", "64x2", "32x2", "128x16", "32x1", "64x1"),
        (64 * 16 * 2) * 2 + (64 * 4 * 2 + 64 + 4 + 16) * 4,  # Wf, W4 in fp16; CCA squeeze weights, biases fp32
    ),
}  # fmt: skip
SWEEP_SHAPE = (540, 960)  # LR (H, W): the 960x540 x4 forward of the instruction tables
# What the GPU check times (benchmarks/gpu_stages.py profile): the table's rows and their closest rivals
TIMED = {
    "convnext-half": ("128x8", "128x8 hid 32", "128x8 maxnreg 128", "128x4", "64x4 hid 32"),
    "convnext-tf32": ("64x4", "128x8", "64x4 hid 32"),
    "bsconv-tf32": ("32x4 s3", "64x4 s2 k16", "128x8 s3 k16"),
    "bsconv-half": ("128x8 s3", "128x4 s3 k16", "128x8 s3 k16"),
    "esa-apply-half": ("128x8", "64x2", "32x2"),
}


def table_choice(name: str) -> Config:
    """What the kernel's ``CONFIGS`` picks for sweep ``name``'s launches on a big map (int32 offsets)."""
    from bcrn_fast.kernels import bsconv, convnext, esa

    sweep = SWEEPS[name]
    mode = dot_mode(sweep.dtype, sweep.precision)
    if sweep.kernel == "convnext_kernel":
        return pick(convnext.CONFIGS, mode=mode, wide=False, big=True, esa=True)
    if sweep.kernel == "esa_apply_kernel":
        return pick(esa.CONFIGS, kernel="apply", mode=mode, big=True, tiny=False, fp32=mode != "half")
    return pick(bsconv.CONFIGS, mode=mode, narrow=False, cout_pad=64, wide=False, big=True, pw_only=False)


def in_table(name: str, config: Config) -> bool:
    """Whether ``config`` is the table's choice for sweep ``name`` (the ``why`` aside)."""
    return table_choice(name)._replace(why="") == config._replace(why="")


@contextlib.contextmanager
def fixed_config(name: str, config: Config) -> Iterator[None]:
    """Within the block, the launches of sweep ``name`` use ``config`` (pixel tile capped at the map like the table)."""
    from bcrn_fast.kernels import pixel_tile
    from bcrn_fast.ops import bsconv, convnext, esa

    sweep = SWEEPS[name]

    def convnext_fixed(hw: int, *_: object) -> tuple[int, ...]:
        return pixel_tile(config, hw, 64), config.block_k or 64, config.num_warps, config.num_stages, config.maxnreg

    def bsconv_fixed(*args: object) -> tuple[int, ...]:
        hw, cout_pad, block_k, dtype, precision, *rest = args
        pw_only = bool(rest[1]) if len(rest) > 1 else False
        if pw_only or cout_pad != 64 or dtype != sweep.dtype or precision != sweep.precision:
            return original(*args)  # the launches the sweep is not about keep the table's rows
        block_k = min(block_k, config.block_k) if config.block_k else block_k
        return pixel_tile(config, hw, 64), block_k, config.num_warps, config.num_stages

    def esa_fixed(hw: int, channels: int, *_: object) -> tuple[int, int, int]:  # the launcher and workspace sizing
        return pixel_tile(config, hw, channels), config.num_warps, config.num_stages

    op, attr, fixed = {
        "convnext_kernel": (convnext, "_launch_config", convnext_fixed),
        "bsconv_kernel": (bsconv, "_launch_config", bsconv_fixed),
        "esa_apply_kernel": (esa, "apply_launch_config", esa_fixed),
    }[sweep.kernel]
    original = getattr(op, attr)
    setattr(op, attr, fixed)
    try:
        yield
    finally:
        setattr(op, attr, original)


def _selected(launch: dict, sweep: Sweep) -> bool:
    return launch["kernel"] == sweep.kernel and all(s in launch["config"] for s in sweep.selects)


def sweep(name: str, archs: tuple[int, ...], shape: tuple[int, int] = SWEEP_SHAPE) -> list[dict]:
    """One row per (candidate, arch): resources, residency, instructions and L2 weight bytes of one of the
    selected launches of a x4 forward at ``shape`` (they are identical: the forward's blocks)."""
    from bcrn_fast import aot

    sw = SWEEPS[name]
    rows = []
    with aot.recording(archs) as rec:
        for label, config in sw.candidates:
            with fixed_config(name, config):
                aot.drive_forward(rec, (shape,), dtype=sw.dtype, precision=sw.precision)
            launches = [x for x in rec.launches if _selected(x, sw) and "label" not in x]
            for x in launches:
                x["label"] = label
            for arch in archs:
                mine = [x for x in launches if x["arch"] == arch]
                report = rec.reports[mine[0]["report"]]
                per_launch = {k: v * mine[0]["programs"] for k, v in mine[0]["per_program"].items()}
                res = residency(arch, report.regs, report.dyn_shared + report.shared, config.num_warps)
                rows.append(
                    {
                        "sweep": name,
                        "label": label,
                        "in_table": in_table(name, config),
                        "config": config._asdict(),
                        "arch": arch,
                        "launches": len(mine),
                        "regs": report.regs,
                        "spill_bytes": report.local + report.stack,
                        "smem": report.dyn_shared + report.shared,
                        "programs_per_sm": res.programs,
                        "warps_per_sm": res.warps,
                        "limit": res.limit,
                        "grid_programs": mine[0]["programs"],
                        "instructions": per_launch,
                        "l2_weight_bytes": sw.weight_bytes * mine[0]["programs"],
                        "dram_bytes": mine[0]["bytes"],
                    }
                )
    return rows


def row_label(row: dict) -> str:
    """A sweep or timing row's candidate, bold and marked when it is the table's choice."""
    return f"**{row['label']}** (CONFIGS)" if row["in_table"] else row["label"]


def format_sweep(rows: list[dict]) -> str:
    """The markdown table of :func:`sweep` rows, with the H200 issue and MUFU floors of one launch."""
    from bcrn_fast.benchmarking import costs

    peaks = costs.GPU_PEAKS["H200"]
    head = (
        "| launch | candidate | arch | regs | spill B | smem KiB | programs/SM (limit) | warps/SM | "
        "warp inst M | int M | ffma+fmul M | ldg+shared M | H200 issue µs | MUFU µs | L2 weights MB | DRAM MB |"
    )
    lines = [head, "| " + " | ".join(["---"] * 2 + ["---:"] * 14) + " |"]
    for r in rows:
        inst = r["instructions"]
        total = inst.get("total", 0.0)
        lines.append(
            f"| {r['sweep']} | {row_label(r)} | sm_{r['arch']} | {r['regs']} | {r['spill_bytes']} | "
            f"{r['smem'] / 1024:.0f} | {r['programs_per_sm']} ({r['limit']}) | {r['warps_per_sm']} | "
            f"{total / 1e6:.1f} | {inst.get('int', 0.0) / 1e6:.1f} | "
            f"{(inst.get('ffma', 0.0) + inst.get('fmul', 0.0)) / 1e6:.1f} | "
            f"{(inst.get('ldg', 0.0) + inst.get('shared', 0.0)) / 1e6:.1f} | "
            f"{total / costs.issue_rate(peaks) * 1e6:.1f} | "
            f"{inst.get('mufu', 0.0) / costs.mufu_rate(peaks) * 1e6:.1f} | "
            f"{r['l2_weight_bytes'] / 1e6:.0f} | {r['dram_bytes'] / 1e6:.0f} |"
        )
    return "\n".join(lines) + "\n"


def time_candidates(
    name: str,
    labels: tuple[str, ...] | None = None,
    shape: tuple[int, int] = SWEEP_SHAPE,
    device: str = "cuda",
    deadline: float | None = None,
) -> list[dict]:
    """Measured on the current CUDA device: each candidate's time for the first of sweep ``name``'s launches
    in a x4 forward at ``shape`` (its real arguments; ``triton.testing.do_bench``, median ms; ``device``: where
    the model runs, CUDA but for the tests' interpreter runs; no candidate starts after ``deadline``, a
    ``time.monotonic()`` value)."""
    import triton.testing

    from bcrn_fast.fused import BCRNFused
    from bcrn_fast.ops import bsconv, convnext, esa

    sw = SWEEPS[name]
    # (the op's impl table, which call to time, its input map, output channels per input channel)
    impls, wanted, input_of, out_ratio = {
        "convnext_kernel": (convnext.CONVNEXT_IMPLS, lambda *_: True, lambda a: a.t, 1 + 16 / 64),  # y, ESA map
        # the BCB's 3x3 64 -> 64 BSConv (not conv1, ESA or the two-pass launches)
        "bsconv_kernel": (
            bsconv.BSCONV_IMPLS,
            lambda a, *_: a.x.shape[1] == a.pw_t.shape[1] == 64 and a.ksize == 3 and a.stride == 1,
            lambda a: a.x,
            1,
        ),
        "esa_apply_kernel": (esa.ESA_APPLY_IMPLS, lambda *_: True, lambda t: t, 1),
    }[sw.kernel]
    model = BCRNFused(4, backend="triton").to(device, sw.dtype)
    model.set_backend("triton", sw.precision)
    seen: list = []
    original = impls["triton"]

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the impl signature
        if not seen and wanted(*args):  # the first such call; later ones are the same launch
            # esa_apply: a fresh zeroed merge workspace per call (a workspace's counters serve one launch)
            seen.append((args, {**kwargs, "workspace": None} if "workspace" in kwargs else kwargs))
        return original(*args, **kwargs)

    impls["triton"] = spy
    try:
        with torch.inference_mode():
            model(torch.rand(1, 3, *shape, device=device, dtype=sw.dtype))
    finally:
        impls["triton"] = original
    args, kwargs = seen[0]
    x = input_of(args[0])
    # DRAM floor traffic: the input map read once, the outputs written once
    dram = x.numel() * x.element_size() * (1 + out_ratio)
    rows = []
    for label, config in sw.candidates:
        if labels is not None and label not in labels:
            continue
        if deadline is not None and time.monotonic() > deadline:
            break
        with fixed_config(name, config), torch.inference_mode():
            ms = triton.testing.do_bench(lambda: original(*args, **kwargs), warmup=5, rep=30, return_mode="median")
        rows.append(
            {"sweep": name, "label": label, "in_table": in_table(name, config), "ms": ms, "gbps": dram / ms / 1e6}
        )
        print(f"occupancy: {name} {label}: {ms * 1e3:.1f} us, {dram / ms / 1e6:.0f} GB/s", file=sys.stderr, flush=True)
    return rows


REGENERATE = """Regenerate (CPU only, `TRITON_INTERPRET` unset; about 1 min per Triton version):

    python -m bcrn_fast.occupancy --json /tmp/occ-3.9.json                    # CI's Triton (.venv)
    $REHEARSE_VENV/bin/python -m bcrn_fast.occupancy --json /tmp/occ-3.6.json  # the GPU image's 3.6
    python -m bcrn_fast.occupancy --merge /tmp/occ-3.6.json /tmp/occ-3.9.json --note "..." \\
        --markdown docs/occupancy.md
"""


def format_document(runs: list[dict], note: str = "") -> str:
    """docs/occupancy.md: how it was made, the note (the choice and its reasons), one table per Triton version."""
    lines = ["# Launch configurations: occupancy, instructions, L2 traffic (ConvNeXt, BSConv, ESA)", "", REGENERATE]
    lines += [__doc__.split("\n\n", 1)[1].strip(), ""]
    if note:
        lines += [note, ""]
    for run in runs:
        lines += [f"## Triton {run['triton']} ({run['date']})", "", format_sweep(run["rows"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import json

    import triton

    parser = argparse.ArgumentParser(prog="python -m bcrn_fast.occupancy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="80,86,90", help="comma-separated SM versions (default 80,86,90)")
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated (default {','.join(SWEEPS)})")
    parser.add_argument("--json", help="write the run (Triton version, date, rows) as JSON here")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="tabulate earlier --json runs instead")
    parser.add_argument("--note", default="", help="a paragraph placed above the tables")
    parser.add_argument("--markdown", help="write the document here (default: the tables to stdout)")
    args = parser.parse_args(argv)
    if args.merge:
        runs = [json.loads(Path(p).read_text()) for p in args.merge]
    else:
        archs = tuple(int(a) for a in args.archs.split(","))
        rows = []
        for name in args.sweeps.split(","):
            if name not in SWEEPS:
                parser.error(f"--sweeps: unknown sweep {name!r} (expected some of {', '.join(SWEEPS)})")
            print(f"occupancy: {name}: {len(SWEEPS[name].candidates)} candidates x {len(archs)} archs", file=sys.stderr)
            rows += sweep(name, archs)
        runs = [{"triton": triton.__version__, "date": time.strftime("%Y-%m-%d"), "archs": archs, "rows": rows}]
        if args.json:
            Path(args.json).write_text(json.dumps(runs[0], indent=1))
    if args.markdown:
        Path(args.markdown).write_text(format_document(runs, args.note))
    else:
        print("\n".join(format_sweep(run["rows"]) for run in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
