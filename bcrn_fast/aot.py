"""Ahead-of-time compilation of every Triton kernel the launchers can pick.

Runs on a CPU-only machine. The fused model and the standalone fused modules
are driven with ``backend="triton"`` on CPU tensors while
``triton.runtime.jit.JITFunction.run`` is replaced by a recorder that does
exactly what the JIT does before compiling on a GPU — bind the arguments,
derive the specialisation (16-byte divisibility of pointers and integers,
constexpr values) with Triton's own binder — and then compiles the kernel for
a :class:`~triton.backends.compiler.GPUTarget` instead of launching it. Every
(kernel, configuration) the launchers choose for the shapes and dtypes driven
here is therefore compiled with the real NVIDIA backend, and its cubin is
inspected with the ``cuobjdump`` Triton ships:

- registers, stack, local memory (spills) and shared memory per kernel;
- whether the PTX holds tensor-core instructions (``mma``/``wgmma``) — every
  GEMM-bearing kernel must, except fp32 ``ieee`` configurations, whose dots
  are exact FMA loops by design.

Besides the cubin's static figures it records Triton's dynamic shared memory
(``CompiledKernel.metadata.shared``, what occupancy depends on) and the Triton
version. The launches are driven once more with the int64 offset path forced
(``WIDE_INDEX``, taken for images whose largest offset reaches 2^31) at the
largest shape, so those variants are checked too. Every row of each kernel
file's ``CONFIGS`` table must be picked by some driven launch (a few standalone
modules also run on a 4x4 map for the small-tile rows), so a new row is a new
compile check.

Run ``python -m bcrn_fast.aot [--archs 80,86,89,90] [--quick] [--json FILE]
[--markdown FILE]`` with ``TRITON_INTERPRET`` unset; ``--quick`` drives two
shapes instead of four (the smallest tiles and the largest; for the CPU
rehearsal of the GPU run). ``--merge A.json B.json --markdown FILE`` writes one
report from several runs (e.g. two Triton versions). This relies on Triton's
JIT internals (``create_function_from_signature``, ``JITFunction._pack_args``),
checked against Triton 3.6 and 3.9.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from bcrn_fast.ops import _common, backends


@dataclass
class KernelReport:
    kernel: str
    arch: int
    config: str  # constexprs and num_warps/num_stages, as compiled
    dtypes: str  # pointer element types
    regs: int
    stack: int
    local: int
    shared: int  # static shared memory of the cubin (cuobjdump SHARED)
    has_dot: bool
    mma: bool
    ieee_dot: bool
    dyn_shared: int = -1  # Triton's dynamic shared memory per program (metadata.shared), bytes
    triton: str = field(default_factory=lambda: _triton_version())

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0

    @property
    def smem_over(self) -> bool:
        """Needs more dynamic shared memory than a block of this arch can have (no launch possible)."""
        return self.dyn_shared > SMEM_LIMIT.get(self.arch, 101376)


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


ARCHS = (80, 86, 89, 90)  # A100; RTX 30xx / A6000; RTX 40xx / L4 / L40S; H100 / H200

# Most dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes): Triton
# refuses to launch a kernel needing more ("out of resources"), so the AOT check counts it as a failure.
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG/STACK/SHARED/LOCAL of the (single) kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        usage[key] = int(m.group(1)) if m else -1
    return usage


class Recorder:
    """Replaces JITFunction.run: compile for each target arch, never launch."""

    def __init__(self, archs: tuple[int, ...]) -> None:
        self.archs = archs
        self.reports: list[KernelReport] = []
        self.rows_hit: set[tuple[str, int]] = set()  # (kernel file, row of its CONFIGS) the launchers looked up
        self._seen: set[str] = set()

    def run(self, fn, *args, grid, warmup, **kwargs):  # noqa: ANN001 - mirrors JITFunction.run
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        kwargs.setdefault("debug", False)
        for arch in self.archs:
            target = GPUTarget("cuda", arch, 32)
            backend = make_backend(target)
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
            consts = {fn.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
            config = (
                ", ".join(f"{k}={v}" for k, v in sorted(consts.items()) if not k.startswith("stride"))
                + f", warps={options.num_warps}, stages={options.num_stages}"
            )
            dtypes = ",".join(sorted({v for v in signature.values() if isinstance(v, str) and v.startswith("*")}))
            key = f"{fn.__name__}|{arch}|{signature}|{constexprs}|{attrs}|{options.num_warps}|{options.num_stages}"
            if key in self._seen:
                continue
            self._seen.add(key)
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
            )
            usage = resource_usage(compiled.asm["cubin"])
            ptx = compiled.asm["ptx"]
            ttir = compiled.asm["ttir"]
            dots = [line for line in ttir.splitlines() if "tt.dot " in line]
            # fp32 dots without an inputPrecision attribute are IEEE (exact FMA loops, no tensor cores)
            fma = [d for d in dots if re.search(r"xf32> \* tensor<[0-9x]+xf32>", d) and "inputPrecision" not in d]
            has_dot = bool(dots)
            self.reports.append(
                KernelReport(
                    kernel=fn.__name__,
                    arch=arch,
                    config=config,
                    dtypes=dtypes,
                    regs=usage["REG"],
                    stack=usage["STACK"],
                    local=usage["LOCAL"],
                    shared=usage["SHARED"],
                    has_dot=has_dot,
                    mma=bool(re.search(r"\b(wgmma|mma)\.", ptx)),
                    ieee_dot=has_dot and len(fma) == len(dots),
                    dyn_shared=int(getattr(compiled.metadata, "shared", -1)),
                )
            )
        return None


@contextlib.contextmanager
def _triton_on_any_device() -> Iterator[None]:
    """Within the block, ``backend="triton"`` accepts CPU tensors: the launches are recorded, nothing runs."""
    original = backends.triton_can_run
    backends.triton_can_run = lambda device: True
    try:
        yield
    finally:
        backends.triton_can_run = original


CONFIG_TABLES = ("bsconv", "convnext", "cca", "esa")  # kernels/<name>.py files with a CONFIGS table


def config_rows() -> list[tuple[str, int, object]]:
    """Every launch-configuration row: (kernel file, index, ``Rule``) of each ``CONFIGS`` table."""
    rows = []
    for name in CONFIG_TABLES:
        table = importlib.import_module(f"bcrn_fast.kernels.{name}").CONFIGS
        rows += [(name, i, rule) for i, rule in enumerate(table)]
    return rows


@contextlib.contextmanager
def _rows_looked_up(hits: set[tuple[str, int]]) -> Iterator[None]:
    """Within the block, each ``CONFIGS`` row a launcher picks is added to ``hits`` (the launch follows)."""
    modules = {name: importlib.import_module(f"bcrn_fast.kernels.{name}") for name in CONFIG_TABLES}
    originals = {name: m.pick for name, m in modules.items()}

    def spy(name: str):  # noqa: ANN202
        def pick(rules, **facts):  # noqa: ANN001, ANN202 - mirrors bcrn_fast.kernels.pick
            config = originals[name](rules, **facts)
            hits.add((name, next(i for i, r in enumerate(rules) if r.config is config)))
            return config

        return pick

    for name, m in modules.items():
        m.pick = spy(name)
    try:
        yield
    finally:
        for name, m in modules.items():
            m.pick = originals[name]


@contextlib.contextmanager
def recording(archs: tuple[int, ...]) -> Iterator[Recorder]:
    """Within the block, Triton launches compile for ``archs`` instead of running."""
    from triton.runtime.jit import JITFunction

    if backends.interpreter_enabled():
        raise RuntimeError("bcrn_fast.aot needs the real Triton compiler: unset TRITON_INTERPRET")
    rec = Recorder(archs)
    original = JITFunction.run
    JITFunction.run = lambda self, *a, grid, warmup, **k: rec.run(self, *a, grid=grid, warmup=warmup, **k)
    try:
        with _triton_on_any_device(), _rows_looked_up(rec.rows_hit):
            yield rec
    finally:
        JITFunction.run = original


# (N, H, W) driven per dtype: 15x15 (pooled ESA map 1x1, the smallest tiles),
# 24x20, 48x40 and 180x320 (every tile-size step of the launch heuristics)
AOT_SHAPES = ((1, 15, 15), (1, 24, 20), (1, 48, 40), (2, 180, 320))
QUICK_SHAPES = ((1, 15, 15), (2, 180, 320))  # --quick: the smallest and the largest tiles
WIDE_SHAPE = (2, 180, 320)  # driven again with the int64 offset path forced (what a > 5.6 M-pixel image takes)
# Standalone BSConv / ConvNeXt / CCA (no ESA, which needs 15x15) on a 4x4 map: the small-tile table rows
SMALL_SHAPE = (1, 4, 4)


@contextlib.contextmanager
def _wide_index_forced() -> Iterator[None]:
    previous = _common.FORCE_WIDE_INDEX
    _common.FORCE_WIDE_INDEX = True
    try:
        yield
    finally:
        _common.FORCE_WIDE_INDEX = previous


def drive_all(
    shapes: tuple[tuple[int, int, int], ...] = AOT_SHAPES,
    wide_shape: tuple[int, int, int] | None = WIDE_SHAPE,
    progress: bool = False,
) -> None:
    """Call every fused entry point once per dtype, precision and shape (kernels are recorded)."""
    from bcrn_fast.fused import BCRNFused, FusedBCB, FusedBSConv, FusedCCA, FusedConvNeXtBlock, FusedESA

    torch.manual_seed(0)
    modes = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"), (torch.bfloat16, "ieee")]
    models = {s: BCRNFused(s, backend="triton") for s in (2, 3, 4)}
    standalone = [
        FusedBSConv(64, 64, 3, padding=1, backend="triton"),
        FusedBSConv(64, 16, 1, backend="triton"),
        FusedBSConv(16, 16, 3, stride=2, backend="triton"),
        FusedBSConv(32, 16, 3, padding=1, backend="triton"),  # a 32-wide tile (K chunk 32): the generic rows
        FusedConvNeXtBlock(backend="triton"),
        FusedCCA(backend="triton"),
        FusedESA(backend="triton"),
        FusedBCB(backend="triton"),
    ]
    small = [m for m in standalone if not isinstance(m, (FusedESA, FusedBCB))]
    runs = [(shape, False) for shape in shapes] + ([(wide_shape, True)] if wide_shape else [])
    with torch.inference_mode():
        for dtype, precision in modes:
            for (n, h, w), wide in runs:
                if progress:
                    print(
                        f"aot: {str(dtype).replace('torch.', '')} {precision} {n}x{h}x{w}"
                        f"{' wide-index' if wide else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
                with _wide_index_forced() if wide else contextlib.nullcontext():
                    for model in models.values():
                        model.to(dtype).set_backend("triton", precision)
                        model(torch.rand(n, 3, h, w, dtype=dtype))
                    for m in standalone:
                        m.to(dtype).set_backend("triton", precision)
                        m(torch.rand(n, _in_channels(m), h, w, dtype=dtype))
            n, h, w = SMALL_SHAPE
            for m in small:
                m.to(dtype).set_backend("triton", precision)
                m(torch.rand(n, _in_channels(m), h, w, dtype=dtype))
        _drive_small_esa_apply()


def _in_channels(module: torch.nn.Module) -> int:
    return module.pw.in_channels if hasattr(module, "pw") else 64


def _drive_small_esa_apply() -> None:
    """esa_apply's launcher on a 4x4 map (the op itself needs 15x15): the fp32 IEEE small-tile row."""
    from bcrn_fast.fused import FusedESA
    from bcrn_fast.ops.esa import esa_apply_triton

    n, h, w = SMALL_SHAPE
    pack = FusedESA()._packed(torch.float32).esa
    t = torch.rand(n, 64, h, w).to(memory_format=torch.channels_last)
    c3 = torch.rand(n, 16, 1, 1).to(memory_format=torch.channels_last)
    out = torch.empty_like(t)
    esa_apply_triton(t, c3, pack.wf, pack.bf, pack.w4, pack.b4, out, 0, None, None, None, None, "ieee")


def compile_all(
    archs: tuple[int, ...] = ARCHS, quick: bool = False, progress: bool = False
) -> tuple[list[KernelReport], list[dict]]:
    """The compiled kernel configurations, and every ``CONFIGS`` row with whether a launch compiled it."""
    with recording(archs) as rec:
        drive_all(QUICK_SHAPES if quick else AOT_SHAPES, progress=progress)
    rows = [
        {"table": name, "row": i, "when": rule.when, "config": repr(rule.config), "compiled": (name, i) in rec.rows_hit}
        for name, i, rule in config_rows()
    ]
    return rec.reports, rows


def failures(reports: list[KernelReport]) -> list[KernelReport]:
    """Configurations that spill / use local memory, run a tensor-core GEMM without mma/wgmma, or exceed
    the arch's shared memory per block."""
    return [r for r in reports if r.spills or r.smem_over or (r.has_dot and not r.ieee_dot and not r.mma)]


def format_report(reports: list[KernelReport]) -> str:
    """One markdown row per (kernel, arch, dtypes, config); specialisations that differ
    only in divisibility hints are merged, showing the worst registers/stack/local/shared."""
    groups: dict[tuple, list[KernelReport]] = {}
    for r in reports:
        groups.setdefault((r.kernel, r.arch, r.dtypes, r.config), []).append(r)
    lines = [
        "| kernel | arch | dtypes | config | variants | regs | stack | local | static smem | dyn smem | dot | mma |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (kernel, arch, dtypes, config), rs in sorted(groups.items()):
        dot = "ieee-fma" if all(r.ieee_dot for r in rs) else ("yes" if rs[0].has_dot else "-")
        mma = "yes" if all(r.mma for r in rs) else "no"
        lines.append(
            f"| {kernel} | sm_{arch} | {dtypes} | {config} | {len(rs)} | {max(r.regs for r in rs)} | "
            f"{max(r.stack for r in rs)} | {max(r.local for r in rs)} | {max(r.shared for r in rs)} | "
            f"{max(r.dyn_shared for r in rs)} | {dot} | {mma} |"
        )
    return "\n".join(lines)


def format_summary(runs: list[dict]) -> str:
    """Per (Triton version, arch, kernel): configurations, failing ones, worst registers and dynamic shared memory."""
    lines = [
        "| Triton | arch | kernel | configs | failing | max regs | max dyn smem (B) | tensor-core GEMMs with mma |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        reports = [KernelReport(**r) for r in run["reports"]]
        for arch in sorted({r.arch for r in reports}):
            for kernel in sorted({r.kernel for r in reports}):
                rs = [r for r in reports if r.arch == arch and r.kernel == kernel]
                if not rs:
                    continue
                tc = [r for r in rs if r.has_dot and not r.ieee_dot]
                mma = f"{sum(r.mma for r in tc)}/{len(tc)}" if tc else "-"
                lines.append(
                    f"| {run['triton']} | sm_{arch} | {kernel} | {len(rs)} | {len(failures(rs))} | "
                    f"{max(r.regs for r in rs)} | {max(r.dyn_shared for r in rs)} | {mma} |"
                )
    return "\n".join(lines)


HEADER = """# Ahead-of-time compile report (Triton kernels, {archs})

Generated on a CPU-only machine by `python -m bcrn_fast.aot` (one run per Triton version, merged with
`python -m bcrn_fast.aot --merge RUN.json ... --markdown docs/aot-report.md`); `tests/test_aot.py` re-runs it in CI
and fails on any spill/local memory, a non-IEEE GEMM without `mma`/`wgmma`, or more dynamic shared memory than
the arch allows a block (sm_80 163 KiB, sm_86/sm_89 99 KiB, sm_90 227 KiB). The launchers are driven for every dtype
x precision x tile-size step, plus once with the int64 offset path forced (`WIDE_INDEX=True`, taken for images whose
largest element offset reaches 2^31). `static smem`: the cubin's static SHARED (cuobjdump); `dyn smem`: Triton's
dynamic shared memory per program (`metadata.shared`, what occupancy depends on). `variants` counts specialisations
that differ only in divisibility hints (worst case shown). `ieee-fma`: fp32 IEEE dots, exact FMA loops by design (no
tensor cores).
"""


def format_document(runs: list[dict]) -> str:
    """The whole markdown report for one or more runs (each: triton, archs, quick, wall_s, date, reports)."""
    archs = sorted({a for run in runs for a in run["archs"]})
    parts = [HEADER.format(archs=", ".join(f"sm_{a}" for a in archs)), "## Summary", ""]
    for run in runs:
        reports = [KernelReport(**r) for r in run["reports"]]
        parts.append(
            f"- Triton {run['triton']} ({run['date']}): {len(reports)} kernel configurations compiled for "
            f"{', '.join(f'sm_{a}' for a in run['archs'])}{' (--quick)' if run.get('quick') else ''}, "
            f"{len(failures(reports))} failing; wall time {run['wall_s']:.0f} s."
        )
    parts += ["", format_summary(runs), ""]
    for run in runs:
        parts += [f"## Triton {run['triton']}", "", format_report([KernelReport(**r) for r in run["reports"]]), ""]
    return "\n".join(parts)


def _parse_archs(text: str) -> tuple[int, ...]:
    try:
        archs = tuple(int(a.strip().removeprefix("sm_")) for a in text.split(",") if a.strip())
    except ValueError:
        raise SystemExit(f"--archs: expected comma-separated SM versions like 80,86,89,90, got {text!r}") from None
    if not archs or any(a < 70 for a in archs):
        raise SystemExit(f"--archs: expected SM versions >= 70 (e.g. 80,86,89,90), got {text!r}")
    return archs


def _write_atomic(path: str, text: str) -> None:
    """Write via a temporary file, so an interrupted run never leaves half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bcrn_fast.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--archs",
        "--arch",
        dest="archs",
        default=",".join(map(str, ARCHS)),
        help=f"comma-separated SM versions (default {','.join(map(str, ARCHS))})",
    )
    parser.add_argument("--quick", action="store_true", help=f"drive {len(QUICK_SHAPES)} shapes, not {len(AOT_SHAPES)}")
    parser.add_argument("--json", help="write the run (Triton version, wall time, per-kernel rows) as JSON here")
    parser.add_argument("--markdown", help="write the markdown report here")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge earlier --json runs instead of compiling")
    parser.add_argument("--note", help="with --merge: a paragraph placed above the summary (e.g. run times)")
    args = parser.parse_args(argv)
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path) as f:
                runs.append(json.load(f))
        doc = format_document(runs)
        if args.note:
            doc = doc.replace("\n## Summary\n", f"\n{args.note}\n\n## Summary\n", 1)
        if args.markdown:
            _write_atomic(args.markdown, doc)
        else:
            print(doc)
        return 1 if any(failures([KernelReport(**r) for r in run["reports"]]) for run in runs) else 0

    archs = _parse_archs(args.archs)
    start = time.monotonic()
    reports, rows = compile_all(archs, quick=args.quick, progress=True)
    run = {
        "triton": _triton_version(),
        "torch": torch.__version__,
        "archs": list(archs),
        "quick": args.quick,
        "wall_s": round(time.monotonic() - start, 1),
        "date": time.strftime("%Y-%m-%d"),
        "reports": [asdict(r) for r in reports],
        "rows": rows,
    }
    print(format_report(reports))
    if args.markdown:
        _write_atomic(args.markdown, format_document([run]))
    if args.json:
        _write_atomic(args.json, json.dumps(run, indent=1))
    bad = failures(reports)
    for r in bad:
        print(
            f"FAIL {r.kernel} sm_{r.arch} {r.dtypes} {r.config}: stack={r.stack} local={r.local} mma={r.mma} "
            f"dyn_shared={r.dyn_shared} (limit {SMEM_LIMIT.get(r.arch, 101376)})",
            file=sys.stderr,
        )
    missed = [r for r in rows if not r["compiled"]]
    for r in missed:
        print(f"FAIL kernels/{r['table']}.py CONFIGS[{r['row']}] {r['when']}: never compiled", file=sys.stderr)
    print(
        f"{len(reports)} kernel configurations compiled with Triton {run['triton']} for "
        f"{','.join(map(str, archs))} in {run['wall_s']:.0f} s, {len(bad)} failing; "
        f"{len(rows) - len(missed)}/{len(rows)} config-table rows compiled",
        file=sys.stderr,
    )
    return 1 if bad or missed else 0


if __name__ == "__main__":
    sys.exit(main())
