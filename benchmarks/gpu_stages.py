"""The Python stages of ``benchmarks/gpu_check.sh``, one subcommand each (run as a fresh process per stage).

    python3 benchmarks/gpu_stages.py preflight --pins benchmarks/gpu_image_packages.txt [--expect-gpu]
    python3 benchmarks/gpu_stages.py forward --backend triton|cuda [--sizes 15x15,33x17]
    python3 benchmarks/gpu_stages.py determinism [--batch 8 --size 320x180 --reps 50]
    python3 benchmarks/gpu_stages.py profile --out FILE.md [--sizes 320x180,960x540 --dtype fp16 --candidates-s 25]

Each prints what it found and exits 0 when the stage passed or was skipped with its reason
(a line starting ``SKIPPED:``), 1 when it failed. Without a CUDA device the GPU-only parts skip
(the CPU rehearsal runs this same code); ``--expect-gpu`` turns a missing device into a failure.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.abc
import importlib.metadata
import os
import pkgutil
import platform
import re
import sys
import time
from pathlib import Path

# What the GPU script itself needs from the package: these must import with only the pinned packages.
CORE_MODULES = (
    "bcrn_fast",
    "bcrn_fast.model",
    "bcrn_fast.fused",
    "bcrn_fast.ops",
    "bcrn_fast.ops.cuda_ext",
    "bcrn_fast.kernels.bsconv",
    "bcrn_fast.kernels.convnext",
    "bcrn_fast.kernels.cca",
    "bcrn_fast.kernels.esa",
    "bcrn_fast.benchmarking",
    "bcrn_fast.benchmarking.cli",
    "bcrn_fast.benchmarking.isolated",
    "bcrn_fast.accuracy",
    "bcrn_fast.aot",
    "bcrn_fast.cli",
    "bcrn_fast.evaluate",
)
JIT_KERNELS = ("bcrn_fast.kernels.bsconv:bsconv_kernel", "bcrn_fast.kernels.esa:esa_apply_kernel")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_distributions(pins: Path) -> set[str]:
    """Normalized distribution names of the pin file, plus torch (installed by the script, not from the file)."""
    names = {"torch"}
    for line in pins.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_norm(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return names


def refused_top_levels(pins: Path) -> set[str]:
    """Top-level import names installed here but not by the GPU image: from a distribution the pin file lacks.

    Names not installed at all fail as usual; the standard library and bcrn_fast itself are never refused.
    """
    dists = pinned_distributions(pins) | {"bcrn-fast"}
    refused = set()
    for top, owners in importlib.metadata.packages_distributions().items():
        if not any(_norm(d) in dists for d in owners):
            refused.add(top)
    return refused - set(sys.stdlib_module_names) - {"bcrn_fast"}


class PinnedOnly(importlib.abc.MetaPathFinder):
    """Refuses to import a top-level module the GPU image lacks (as if it were not installed), and records it."""

    def __init__(self, refused: set[str]) -> None:
        self.refuse = refused
        self.refused: list[str] = []

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib protocol)
        top = fullname.split(".", 1)[0]
        if top not in self.refuse:
            return None
        if top not in self.refused:
            self.refused.append(top)
        raise ModuleNotFoundError(f"No module named {top!r} (not in the GPU image's package set)", name=top)


def preflight(args: argparse.Namespace) -> int:
    failures: list[str] = []
    guard = None
    if args.pins:
        guard = PinnedOnly(refused_top_levels(Path(args.pins)))
        sys.meta_path.insert(0, guard)
    interp = os.environ.get("TRITON_INTERPRET")
    print(f"python {platform.python_version()} ({sys.executable})")
    import torch

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "NOT INSTALLED"
        failures.append("triton is not importable")
    import numpy

    cuda = torch.cuda.is_available()
    print(
        f"torch {torch.__version__}  triton {tv}  numpy {numpy.__version__}  CUDA {torch.version.cuda}  "
        f"cuDNN {torch.backends.cudnn.version() if cuda else 'n/a'}"
    )
    if cuda:
        p = torch.cuda.get_device_properties(0)
        print(
            f"device {p.name}  sm_{p.major}{p.minor}  {p.total_memory / 2**30:.0f} GiB  {p.multi_processor_count} SMs"
        )
    else:
        print("device: no CUDA device visible to torch")
        if args.expect_gpu:
            failures.append("no CUDA device visible to torch")
    if interp not in (None, "", "0"):
        msg = f"TRITON_INTERPRET={interp!r} is set: Triton kernels would be interpreted, not compiled"
        if args.expect_gpu:
            failures.append(msg)
        else:
            print(f"note: {msg}")
    else:
        print("TRITON_INTERPRET: unset")

    modules = args.modules.split(",") if args.modules else list(CORE_MODULES)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failures.append(f"import {name} failed: {type(exc).__name__}: {exc}")
    if not args.modules and not failures:  # the rest of the package: optional features may need other packages
        import bcrn_fast

        optional = []
        for info in pkgutil.walk_packages(bcrn_fast.__path__, "bcrn_fast."):
            if info.name in modules or info.name.endswith(".__main__") or info.name.startswith("bcrn_fast.kernels"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                optional.append(f"{info.name} ({type(exc).__name__}: {exc})")
        if optional:
            print("optional modules that do not import with this package set (not used by the GPU check):")
            for line in optional:
                print(f"  {line}")
        try:
            from bcrn_fast.ops import cuda_ext

            info = cuda_ext.info()
            print(
                f"CUDA extension: built={info['built']} archs={info['archs'] or '-'} "
                f"{'' if info['built'] else '(' + str(info['error']) + ')'}"
            )
        except Exception as exc:
            failures.append(f"bcrn_fast.ops.cuda_ext.info() failed: {type(exc).__name__}: {exc}")
        kinds = []
        for spec in JIT_KERNELS:
            mod, attr = spec.split(":")
            try:
                kinds.append(f"{attr}: {type(getattr(importlib.import_module(mod), attr)).__name__}")
            except Exception as exc:
                failures.append(f"{spec}: {type(exc).__name__}: {exc}")
        print("kernels: " + ", ".join(kinds))
        if args.expect_gpu and any(not k.endswith("JITFunction") for k in kinds):
            failures.append("the Triton kernels are not compiled JITFunctions (interpreter active?)")
    if guard is not None and guard.refused:
        print(f"imports refused (not in the GPU image's package set): {', '.join(sorted(guard.refused))}")
    for f in failures:
        print(f"PREFLIGHT FAILED: {f}")
    if not failures:
        print("preflight ok")
    return 1 if failures else 0


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        w, h = item.lower().split("x")
        out.append((int(w), int(h)))
    return out


def _need_cuda() -> bool:
    import torch

    if not torch.cuda.is_available():
        print("SKIPPED: needs a CUDA device")
        return False
    return True


def forward(args: argparse.Namespace) -> int:
    """A small forward of BCRNFused with one backend (run under compute-sanitizer by the script)."""
    if not _need_cuda():
        return 0
    if args.backend == "cuda" and not _cuda_ext_available():
        from bcrn_fast.ops import cuda_ext

        print(f"SKIPPED: the CUDA extension is not available ({cuda_ext.import_error()})")
        return 0
    import torch

    from bcrn_fast.fused import BCRNFused
    from bcrn_fast.model import BCRN

    torch.manual_seed(0)
    ref = BCRN(4).cuda().eval().requires_grad_(False)
    worst = 0.0
    for w, h in _sizes(args.sizes):
        for dtype in (torch.float32, torch.float16):
            fused = BCRNFused.from_reference(copy.deepcopy(ref), backend=args.backend).to(dtype)
            x = torch.rand(1, 3, h, w, device="cuda")
            with torch.inference_mode():
                y = fused(x.to(dtype)).float()
                r = ref(x)
            torch.cuda.synchronize()
            err = float((y - r).norm() / r.norm())
            worst = max(worst, err if dtype == torch.float32 else err / 50)
            print(f"{args.backend} {w}x{h} {dtype}: rel. error {err:.2e}")
    return 0 if worst <= 1e-4 else 1


def determinism(args: argparse.Namespace) -> int:
    """``reps`` forwards of the same input must be bit-identical (the CCA merge order is fixed)."""
    import torch

    from bcrn_fast.fused import BCRNFused
    from bcrn_fast.model import BCRN

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    backends = ["triton"] + (["cuda"] if cuda and _cuda_ext_available() else []) if cuda else ["torch"]
    if not cuda:
        print("SKIPPED (GPU part): needs a CUDA device; checking the control flow with backend=torch on a tiny input")
        args.batch, args.size, args.reps = 2, "24x16", 3
    (w, h), failures = _sizes(args.size)[0], 0
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, h, w, device=device)
    for backend in backends:
        for dtype in (torch.float16, torch.float32) if cuda else (torch.float32,):
            model = BCRNFused.from_reference(BCRN(4).to(device).eval().requires_grad_(False), backend=backend)
            model = model.to(dtype)
            with torch.inference_mode():
                first = model(x.to(dtype)).clone()
                same = sum(bool(torch.equal(model(x.to(dtype)), first)) for _ in range(args.reps - 1))
            ok = same == args.reps - 1
            failures += not ok
            print(
                f"{backend} {dtype} N={args.batch} {w}x{h}: {same + 1}/{args.reps} forwards bit-identical "
                f"{'ok' if ok else 'NOT DETERMINISTIC'}"
            )
    return 1 if failures else 0


def _cuda_ext_available() -> bool:
    from bcrn_fast.ops import cuda_ext

    return cuda_ext.available()


def profile(args: argparse.Namespace) -> int:
    """Per-kernel time of one forward (torch.profiler), plus the compiled Triton kernels' registers and smem."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from bcrn_fast.fused import BCRNFused
    from bcrn_fast.model import BCRN

    out = Path(args.out)
    lines = [
        f"# Per-kernel profile of one BCRNFused x4 forward ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})",
        "",
    ]
    cuda = torch.cuda.is_available()
    if not cuda:
        print("SKIPPED (GPU part): needs a CUDA device; profiling backend=torch on a tiny CPU input (control flow)")
        sizes, dtype, backend, device = [(24, 16)], torch.float32, "torch", "cpu"
    else:
        sizes, dtype, backend, device = (
            _sizes(args.sizes),
            getattr(torch, {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}[args.dtype]),
            "triton",
            "cuda",
        )
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    model = BCRNFused.from_reference(BCRN(4).to(device).eval().requires_grad_(False), backend=backend).to(dtype)
    for w, h in sizes:
        x = torch.rand(1, 3, h, w, device=device, dtype=dtype)
        with torch.inference_mode():
            for _ in range(3):  # JIT compile and warm up outside the profile
                model(x)
            if cuda:
                torch.cuda.synchronize()
            with torch_profile(activities=acts) as prof:
                model(x)
                if cuda:
                    torch.cuda.synchronize()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
        events.sort(key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in events) or 1.0
        lines += [
            f"## {w}x{h} LR, {str(dtype).removeprefix('torch.')}, backend={backend}, device={device}",
            "",
            f"total {'GPU' if cuda else 'CPU'} time {total / 1e3:.3f} ms in {sum(e.count for e in events)} "
            f"{'kernels' if cuda else 'ops'}",
            "",
            "| kernel | calls | total us | us/call | share |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for e in events[:40]:
            t = getattr(e, key)
            lines.append(f"| `{e.key[:90]}` | {e.count} | {t:.1f} | {t / e.count:.1f} | {100 * t / total:.1f}% |")
        lines.append("")
        out.write_text("\n".join(lines) + "\n")  # written per size: a timeout keeps what was measured
        print(f"profiled {w}x{h}: {total / 1e3:.3f} ms")
    if cuda:
        try:  # reads Triton's JIT cache internals: never lose the timings to a Triton version difference
            lines += _triton_metadata()
        except Exception as exc:
            lines += [f"(compiled-kernel metadata unavailable: {type(exc).__name__}: {exc})", ""]
        out.write_text("\n".join(lines) + "\n")
        lines += _timed_candidates(out, lines, time.monotonic() + args.candidates_s)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


def _timed_candidates(out: Path, lines: list[str], deadline: float) -> list[str]:
    """Measured time of the swept launches under the tables' configurations and their rivals
    (``bcrn_fast.occupancy.TIMED``; docs/occupancy.md has the static prediction), written row by row; fp16
    sweeps first (the profiled forwards compiled their other kernels), none started after ``deadline``."""
    import torch

    from bcrn_fast import occupancy

    rows = [
        "## Launch configurations, measured (first such launch of a x4 960x540 forward; docs/occupancy.md)",
        "",
        "| launch | candidate | us | GB/s (input read, outputs written once) |",
        "| --- | --- | ---: | ---: |",
    ]
    for sweep in sorted(occupancy.TIMED, key=lambda name: occupancy.SWEEPS[name].dtype != torch.float16):
        if time.monotonic() > deadline:
            rows.append(f"| {sweep} | (not timed: the stage's --candidates-s budget was spent) | | |")
            continue
        try:
            for r in occupancy.time_candidates(sweep, occupancy.TIMED[sweep], deadline=deadline):
                rows.append(f"| {sweep} | {occupancy.row_label(r)} | {r['ms'] * 1e3:.1f} | {r['gbps']:.0f} |")
                out.write_text("\n".join(lines + rows) + "\n")
        except Exception as exc:  # a candidate that fails to compile must not cost the rest of the profile
            rows.append(f"| {sweep} | (failed: {type(exc).__name__}: {str(exc)[:200]}) | | |")
    return rows + [""]


def _triton_metadata() -> list[str]:
    """n_regs, n_spills and dynamic shared memory (``metadata.shared``) of every compiled bcrn_fast kernel."""
    rows = [
        "## Compiled Triton kernels (from the JIT cache of this process)",
        "",
        "| kernel | constexprs | regs | spills | shared B | warps | stages |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, module in sorted(sys.modules.items()):
        if not name.startswith("bcrn_fast.kernels.") or module is None:
            continue
        for attr, fn in sorted(vars(module).items()):
            caches = getattr(fn, "device_caches", None)
            if not isinstance(caches, dict):
                continue
            for entry in caches.values():
                kernels = entry[0] if isinstance(entry, tuple) else entry
                for kernel in getattr(kernels, "values", lambda: [])():
                    md = getattr(kernel, "metadata", None)
                    consts = getattr(getattr(kernel, "src", None), "constants", {}) or {}
                    cstr = ", ".join(f"{k if isinstance(k, str) else k[0]}={v}" for k, v in list(consts.items())[:8])
                    rows.append(
                        f"| {attr} | {cstr[:120]} | {getattr(kernel, 'n_regs', '?')} | "
                        f"{getattr(kernel, 'n_spills', '?')} | {getattr(md, 'shared', '?')} | "
                        f"{getattr(md, 'num_warps', '?')} | {getattr(md, 'num_stages', '?')} |"
                    )
    return rows + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_stages.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("preflight", help="versions, imports with the GPU image's packages only, JIT kernels")
    p.add_argument("--pins", help="pin file: refuse imports of anything it does not list (as on the GPU machine)")
    p.add_argument("--modules", help="comma-separated modules to import instead of the GPU check's core set")
    p.add_argument("--expect-gpu", action="store_true", help="fail without a CUDA device or with TRITON_INTERPRET set")
    p = sub.add_parser("forward", help="one small forward per size and dtype (for compute-sanitizer)")
    p.add_argument("--backend", required=True, choices=("triton", "cuda"))
    p.add_argument("--sizes", default="15x15,33x17")
    p = sub.add_parser("determinism", help="repeated forwards are bit-identical")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", default="320x180")
    p.add_argument("--reps", type=int, default=50)
    p = sub.add_parser("profile", help="per-kernel torch.profiler table of one forward")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="320x180,960x540")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32", "bf16"))
    p.add_argument("--candidates-s", type=float, default=25.0, help="seconds for timing configuration candidates")
    args = parser.parse_args(argv)
    return {"preflight": preflight, "forward": forward, "determinism": determinism, "profile": profile}[args.stage](
        args
    )


if __name__ == "__main__":
    sys.exit(main())
