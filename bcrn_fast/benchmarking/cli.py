"""``bcrn-fast bench``: compare the reference, torch.compile and the fused backends.

``add_arguments(parser)`` adds the options, ``run(args)`` runs the grid and prints the markdown table (returns 0;
1 if a row was WRONG, CRASHED or TIMEOUT; 2 for bad arguments); ``python -m bcrn_fast.benchmarking`` is the same
command. Sizes are LR ``WIDTHxHEIGHT`` (video convention: ``320x180`` at x4 is a 720p output). Default grids: CPU
``--quick`` 64x64 x4 fp32 (eager, eager_cl, fused_torch); CPU 64x64 and 128x72, x4 and x2, adds inductor and
onnxruntime; CUDA ``--quick`` 320x180 and 960x540, x4, fp32 and fp16; CUDA 256x256 (N=1 and 8), 320x180, 480x270,
960x540, x4 and x2, fp32/fp16/bf16; on CUDA every variant but fused_torch and onnxruntime.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from typing import Any

import torch

from bcrn_fast.benchmarking import report
from bcrn_fast.benchmarking.harness import DTYPES, Bench, Case, Options, Row
from bcrn_fast.benchmarking.variants import ALL_VARIANTS, MODULE_TARGETS, TARGETS, expand_names, resolve_variants
from bcrn_fast.model import MIN_SIZE, SCALES

__all__ = ["add_arguments", "build_cases", "main", "parse_sizes", "run"]

DEFAULT_SIZES = {
    ("cpu", True): "64x64",
    ("cpu", False): "64x64,128x72",
    ("cuda", True): "320x180,960x540",
    ("cuda", False): "256x256,320x180,480x270,960x540",
}
EXTRA_BATCH = {(256, 256): 8}  # default grid: also batch 8 at 256x256


class UsageError(ValueError):
    """A bad option value (reported with exit code 2)."""


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"320x180,960x540"`` -> ``[(320, 180), (960, 540)]`` (width, height); each side >= 15."""
    sizes = []
    for item in filter(None, (s.strip().lower() for s in text.split(","))):
        parts = item.split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise UsageError(f"--sizes: {item!r} is not WIDTHxHEIGHT (e.g. 320x180)")
        w, h = int(parts[0]), int(parts[1])
        if w < MIN_SIZE or h < MIN_SIZE:
            raise UsageError(f"--sizes: {item} is below the {MIN_SIZE}x{MIN_SIZE} minimum BCRN accepts")
        sizes.append((w, h))
    if not sizes:
        raise UsageError("--sizes: no sizes given")
    return sizes


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{name}: expected positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to run")
    g.add_argument(
        "--quick",
        action="store_true",
        help="small grid (CPU: 64x64 x4 fp32, eager vs fused torch, < 1 min; "
        "CUDA: 320x180 and 960x540 x4, fp32+fp16, every variant)",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    g.add_argument("--sizes", help="LR sizes WIDTHxHEIGHT, comma-separated (e.g. 320x180,960x540)")
    g.add_argument("--scales", help=f"upscaling factors, comma-separated, from {SCALES} (default 4,2; quick 4)")
    g.add_argument("--dtypes", help="fp32,fp16,bf16 (default: fp32 on CPU; all three on CUDA, fp32,fp16 with --quick)")
    g.add_argument(
        "--variants",
        help=f"comma list from {', '.join(ALL_VARIANTS)}, or all/default/quick/compile "
        "(eager is always added: it is the baseline)",
    )
    g.add_argument("--batch", help="batch sizes, comma-separated (default 1, plus 8 at 256x256)")
    targets = ", ".join(TARGETS)
    g.add_argument(
        "--targets", default="model", help=f"model and/or modules: {targets}, 'modules' or 'all' (default model)"
    )
    g.add_argument(
        "--weights", help="checkpoint file or folder with best_epoch_x{s}.pth (default: seeded random weights)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    t = parser.add_argument_group("how to time")
    t.add_argument(
        "--timing",
        choices=("loop", "flush"),
        default="loop",
        help="CUDA: loop = back-to-back calls between events (launch overhead included); "
        "flush = one call per event pair after an L2 flush",
    )
    t.add_argument("--budget-s", type=float, help="stop starting new rows after this many seconds (they are SKIPPED)")
    t.add_argument("--max-row-s", type=float, help="seconds of timing per row, at most")
    t.add_argument("--no-profile", action="store_true", help="do not count kernels with torch.profiler")
    t.add_argument(
        "--isolate",
        action="store_true",
        help="run every row in its own process under a timeout (baselines first); a crash or hang is that row's "
        "CRASHED/TIMEOUT status, not the end of the run (what the GPU check uses)",
    )
    t.add_argument(
        "--row-timeout-s",
        type=float,
        help="with --isolate: at most this many seconds per row's process (default: from the variant's build cost)",
    )
    t.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs (on a shared machine 1 is steadier)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", help="folder for <date>_<device>.json and .md (written after every row)")
    o.add_argument("--plot", action="store_true", help="also write a PNG bar chart (needs matplotlib)")
    o.add_argument("--from-json", metavar="JSON", help="print the table of an existing report and exit")


def _resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: only cpu and cuda are supported, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def build_cases(args: argparse.Namespace, device_type: str) -> list[Case]:
    """The grid: targets x scales x sizes x batches x dtypes (display order)."""
    quick = bool(args.quick)
    sizes = parse_sizes(args.sizes or DEFAULT_SIZES[(device_type, quick)])
    scales = _int_list(args.scales or ("4" if quick else "4,2"), "--scales")
    if bad := [s for s in scales if s not in SCALES]:
        raise UsageError(f"--scales: {bad[0]} is not one of {SCALES}")
    dtype_list = args.dtypes or ("fp32" if device_type == "cpu" else "fp32,fp16" if quick else "fp32,fp16,bf16")
    dtypes = expand_names(dtype_list, DTYPES, {}, "--dtypes: {item} is not one of " + ", ".join(DTYPES))
    batch = _int_list(args.batch, "--batch") if args.batch else None
    unknown = "--targets: unknown {item}; choose from " + ", ".join(TARGETS) + ", modules, all"
    targets = expand_names(args.targets, TARGETS, {"modules": MODULE_TARGETS, "all": tuple(TARGETS)}, unknown)
    cases = [
        Case(target, scale, w, h, b, d)
        for target in targets
        for scale in (scales if TARGETS[target].uses_scale else [None])
        for w, h in sizes
        for b in batch or [1, *([EXTRA_BATCH[(w, h)]] if (w, h) in EXTRA_BATCH else [])]
        for d in dtypes
    ]
    return list(dict.fromkeys(cases))


def _config(args: argparse.Namespace, device: torch.device, variants: list[str], options: Options) -> dict[str, Any]:
    timings = {
        "cpu": "time.perf_counter per call under torch.inference_mode",
        "loop": "CUDA events around back-to-back calls from an idle GPU, inputs rotated over "
        f"{options.n_buffers} buffers",
        "flush": "CUDA events per call after a 256 MB L2 flush (do_bench style)",
    }
    timing = timings["cpu" if device.type == "cpu" else options.timing]
    config = dict(argv=sys.argv[1:], quick=bool(args.quick), device=str(device), targets=args.targets)
    config.update(variants=variants, weights=args.weights, seed=args.seed, timing=options.timing)
    config.update(timing_desc=timing + "; median and p20/p80 of the samples", budget_s=options.budget_s)
    return dict(config, n_buffers=options.n_buffers, isolated=bool(args.isolate))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark grid of ``args``, print the table; 0 ok, 1 a variant WRONG/CRASHED/TIMEOUT, 2 bad args."""
    if args.from_json:
        try:
            print(report.markdown(report.load_report(args.from_json)))
        except (OSError, ValueError) as exc:
            _say(f"bcrn-fast: error: bench: cannot read {args.from_json}: {exc}")
            return 2
        return 0
    try:
        device = _resolve_device(args.device)
        cases = build_cases(args, device.type)
        variants = resolve_variants(args.variants, device.type, quick=bool(args.quick))
        if args.threads is not None and args.threads < 1:
            raise UsageError("--threads must be >= 1")
    except ValueError as exc:  # UsageError, or an unknown variant or target
        _say(f"bcrn-fast: error: bench: {exc}")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    given = {"device": device, "seed": args.seed, "weights": args.weights, "timing": args.timing}
    given.update(budget_s=args.budget_s, profile=not args.no_profile)
    if args.max_row_s is not None:
        given["max_row_s"] = args.max_row_s
    options = Options.quick(**given) if args.quick else Options(**given)

    env = report.collect_environment(device)
    config = _config(args, device, variants, options)
    stem = _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S") + "_" + report.device_slug(env)
    total = len(cases) * len(variants)
    _say(
        f"bcrn-fast bench on {env['device_name']}: {len(cases)} cases x {len(variants)} variants = {total} rows "
        f"(torch {env['torch']}, triton {env['triton']})"
    )

    def on_row(row: Row, done: list[Row]) -> None:
        label = f"{row.case.label()} {row.variant}"
        if row.kernels_per_fwd is not None:  # the profiling pass after all timings
            _say(
                f"[profile] {label}: {row.kernels_per_fwd} kernels, {row.launch_calls_per_fwd} launch calls per forward"
            )
        else:
            timing = f"{row.median_ms:.3f} ms" if row.median_ms is not None else (row.reason or "")
            _say(f"[{len(done)}/{total}] {label}: {row.status} {timing}")
        if args.out:
            report.write_report(report.make_report(done, env, config, complete=False), args.out, stem)

    if args.isolate:
        from bcrn_fast.benchmarking.isolated import run_isolated

        rows = run_isolated(cases, variants, options, on_row=on_row, row_timeout_s=args.row_timeout_s)
    else:
        rows = Bench(options).run(cases, variants, on_row=on_row)
    result = report.make_report(rows, env, config, complete=True)
    if args.out:
        json_path, md_path = report.write_report(result, args.out, stem)
        _say(f"wrote {json_path} and {md_path}")
        if args.plot:
            png = report.plot(result, md_path.with_suffix(".png"))
            _say(f"wrote {png}" if png else "--plot: matplotlib is not installed, no plot")
    print(report.markdown(result))
    for line in report.summary_lines(result):
        _say(line)
    return 1 if any(r.status in ("WRONG", "CRASHED", "TIMEOUT") for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bcrn-fast bench", description=__doc__.splitlines()[0].replace("``", ""))
    add_arguments(parser)
    return run(parser.parse_args(argv))
