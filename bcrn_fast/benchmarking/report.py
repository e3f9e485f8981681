"""Reports: the environment, derived numbers, the JSON schema, the markdown table, an optional plot.

A report is one JSON object::

    {"schema": "bcrn_fast.bench/1", "created": ISO-8601 UTC, "env": {...},
     "config": {...}, "cost_model": {...}, "complete": bool, "rows": [ {...}, ... ]}

``env`` (:func:`collect_environment`) holds device name, driver, torch/triton/CUDA versions and the git commit; each
row holds the raw measurement (harness.Row) plus the fields :func:`annotate` derives: achieved GB/s and TFLOP/s from
the stated byte/FLOP model (costs.py), the roofline floor and the fraction of it reached, speedup vs eager fp32 and
vs the best torch.compile mode of the same dtype, and peak memory relative to eager of the same dtype.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from bcrn_fast.benchmarking.costs import peaks_for_device, roofline
from bcrn_fast.benchmarking.harness import Row
from bcrn_fast.benchmarking.variants import COMPILE_VARIANTS, VARIANTS
from bcrn_fast.tolerances import TOLERANCE

__all__ = ["SCHEMA", "annotate", "collect_environment", "device_slug", "load_report", "make_report", "markdown"]
__all__ += ["plot", "summary_lines", "write_report"]

SCHEMA = "bcrn_fast.bench/1"
DERIVED_KEYS = ("achieved_gbps", "achieved_tflops", "floor_ms", "floor_bound", "roofline_frac")
DERIVED_KEYS += ("speedup_vs_eager_fp32", "speedup_vs_best_compile", "best_compile_variant", "mem_ratio_vs_eager")
COST_MODEL = {
    "flops": "2 x multiply-adds of every convolution of the reference architecture (costs.model_macs / "
    "module_macs; ~272 K MACs per LR pixel at x4); elementwise work not counted",
    "bytes": "minimum DRAM traffic of the fused design of docs/fused-ops.md: each intermediate map written "
    "once and read once per consumer, no concat, CCA scale applied on load, weights once "
    "(costs.target_traffic; element size = storage dtype)",
    "floor": "max(flops / peak_flops[dtype], bytes / peak_hbm_bandwidth); fp32 uses the CUDA-core fp32 peak "
    "(TF32 off); no floor on a CPU",
}
_REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- environment
def _run(*cmd: str) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=_REPO_ROOT, capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout this package runs from; ``BCRN_GIT_COMMIT`` overrides (a GPU
    machine may get a copy of the tree without ``.git``: then the commit is what the caller exported)."""
    if os.environ.get("BCRN_GIT_COMMIT"):
        return os.environ["BCRN_GIT_COMMIT"], None
    commit = _run("git", "rev-parse", "HEAD")
    return (commit, bool(_run("git", "status", "--porcelain", "--untracked-files=no"))) if commit else (None, None)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def collect_environment(device: torch.device) -> dict[str, Any]:
    """Device name, driver, library versions, git commit: the header of every report."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = git_commit()
    env: dict[str, Any] = {"device": device.type, "device_name": None, "driver": None, "cuda": torch.version.cuda}
    env.update(cudnn=None, torch=torch.__version__, triton=triton_version, python=platform.python_version())
    env.update(platform=platform.platform(), cpu=_cpu_name(), cpu_threads=torch.get_num_threads())
    env.update(git_commit=commit, git_dirty=dirty, gpu_memory_gb=None, sm=None)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
        env.update(device_name=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
        env.update(sm=f"{props.major}{props.minor}", driver=driver and driver.splitlines()[0].strip())
        env.update(cudnn=torch.backends.cudnn.version())
    else:
        env["device_name"] = f"CPU: {env['cpu']} ({torch.get_num_threads()} threads)"
    return env


def device_slug(env: dict[str, Any]) -> str:
    """A file-name-safe device tag, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    if env.get("device") != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", str(env.get("device_name") or "cuda").lower()).strip("-") or "cuda"


def _gpu_name(report_or_env: dict[str, Any]) -> str | None:
    env = report_or_env.get("env", report_or_env)
    return env.get("device_name") if env.get("device") == "cuda" else None


# ----------------------------------------------------------------------------- derived numbers, JSON
def _case_key(row: dict[str, Any], dtype: str | None = None) -> tuple:
    """A row's case and dtype (or the case with ``dtype`` instead)."""
    return (row["target"], row["scale"], row["width"], row["height"], row["batch"], dtype or row["dtype"])


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "OK" and row.get("median_ms") is not None


def annotate(rows: Iterable[dict[str, Any]], device_name: str | None = None) -> list[dict[str, Any]]:
    """Rows (dicts) with :data:`DERIVED_KEYS` filled in; the input dicts are not modified."""
    rows = [dict(r) for r in rows]
    peaks = peaks_for_device(device_name)
    eager: dict[tuple, dict[str, Any]] = {}
    best_compile: dict[tuple, dict[str, Any]] = {}
    for r in filter(_ok, rows):
        key, best = _case_key(r), best_compile.get(_case_key(r))
        if r["variant"] == "eager":
            eager[key] = r
        if r["variant"] in COMPILE_VARIANTS and (best is None or r["median_ms"] < best["median_ms"]):
            best_compile[key] = r
    for r in rows:
        r.update(dict.fromkeys(DERIVED_KEYS))
        if not _ok(r):
            continue
        ms, key = r["median_ms"], _case_key(r)
        if r.get("bytes"):
            r["achieved_gbps"] = r["bytes"] / (ms * 1e-3) / 1e9
        if r.get("flops"):
            r["achieved_tflops"] = r["flops"] / (ms * 1e-3) / 1e12
        floor = roofline(r["flops"], r["bytes"], r["dtype"], peaks) if r.get("flops") and r.get("bytes") else None
        if floor is not None:
            r["floor_ms"], r["floor_bound"], r["roofline_frac"] = floor.floor_ms, floor.bound, floor.floor_ms / ms
        if (base := eager.get(_case_key(r, "fp32"))) is not None:
            r["speedup_vs_eager_fp32"] = base["median_ms"] / ms
        if (best := best_compile.get(key)) is not None:
            r["speedup_vs_best_compile"], r["best_compile_variant"] = best["median_ms"] / ms, best["variant"]
        same = eager.get(key)
        if same is not None and same.get("peak_mem_mb") and r.get("peak_mem_mb") is not None:
            r["mem_ratio_vs_eager"] = r["peak_mem_mb"] / same["peak_mem_mb"]
    return rows


def make_report(
    rows: Sequence[Row | dict[str, Any]], env: dict[str, Any], config: dict[str, Any], complete: bool = True
) -> dict[str, Any]:
    """The JSON-ready report of ``rows`` (Row objects or dicts)."""
    raw = [r.to_dict() if isinstance(r, Row) else dict(r) for r in rows]
    peaks = peaks_for_device(_gpu_name(env))
    cost_model = dict(COST_MODEL, tolerance=dict(TOLERANCE))
    cost_model["peaks"] = (
        {"name": peaks.name, "hbm_gbps": peaks.hbm_gbps, "tflops": dict(peaks.tflops)} if peaks else None
    )
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "env": dict(env),
        "config": dict(config),
        "cost_model": cost_model,
        "complete": complete,
        "rows": annotate(raw, _gpu_name(env)),
    }


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    if report.get("schema") == SCHEMA:  # re-derive: the cost model or peaks table may have been updated
        report["rows"] = annotate(report["rows"], _gpu_name(report))
    return report


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` (atomically); return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / f"{stem}.json", out / f"{stem}.md")
    for path, text in zip(paths, (json.dumps(report, indent=1) + "\n", markdown(report)), strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


# ----------------------------------------------------------------------------- markdown
def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


_FORMATS = {  # how a number is shown; None is "–" (or "n/a" where asked)
    "sig": lambda x: f"{x:.0f}" if x >= 100 else f"{x:.3g}" if x >= 0.001 or x == 0 else f"{x:.1e}",
    "ratio": lambda x: f"{x:.2f}x",
    "pct": lambda x: f"{100 * x:.1f} %" if x >= 0.001 else f"{100 * x:.2g} %",
    "int": lambda x: f"{x:.0f}",
    "s": lambda x: f"{x:.1f}",
}


def _fmt(x: float | None, kind: str, none: str = "–") -> str:
    return none if x is None else _FORMATS[kind](x)


_LEFT = ("target", "scale", "LR WxH", "dtype", "variant", "status")  # text columns; numbers align right
FLOORS_HEADER = "target|scale|LR WxH|N|dtype|GFLOP|MB moved|compute floor ms|memory floor ms|floor ms".split("|")
RESULTS_HEADER = (
    "target|scale|LR WxH|N|dtype|variant|status|median ms|p20–p80 ms|img/s|out MP/s|vs eager fp32|vs best compile|"
    "GB/s|TFLOP/s|% of floor|peak MB (vs eager)|kernels/fwd (launch calls)|compile s"
).split("|")
_NUMBERS = (("images_per_s", "sig"), ("out_mpix_per_s", "sig"), ("speedup_vs_eager_fp32", "ratio"))
_NUMBERS += (("speedup_vs_best_compile", "ratio"), ("achieved_gbps", "sig"), ("achieved_tflops", "sig"))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    cols = [(w, h not in _LEFT) for w, h in zip(widths, header, strict=True)]  # (width, align right)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, (w, r) in zip(cells, cols, strict=True)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in cols) + " |"
    return [line(header), rule, *map(line, rows)]


def _case_label(r: dict[str, Any]) -> tuple[str, str, str, str]:
    scale = f"x{r['scale']}" if r.get("scale") else "–"
    return r["target"], scale, f"{r['width']}x{r['height']}", str(r["batch"])


def _title(r: dict[str, Any], batch: str) -> str:
    """``"<target> [xS] WxH <batch><N> <dtype>"``: a case and dtype in one line."""
    return " ".join(x for x in _case_label(r)[:3] if x != "–") + f" {batch}{r['batch']} {r['dtype']}"


def _groups(rows: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by case and dtype, in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_case_key(r), []).append(r)
    return groups


def floors_table(report: dict[str, Any]) -> list[str]:
    """Per case and dtype: the two numbers to beat (GFLOP, MB moved) and the floor they imply."""
    peaks = peaks_for_device(_gpu_name(report))
    body = []
    for group in _groups(r for r in report["rows"] if r.get("flops") is not None).values():
        r = group[0]
        floor = roofline(r["flops"], r["bytes"], r["dtype"], peaks)
        cells = [*_case_label(r), r["dtype"], f"{r['flops'] / 1e9:.2f}", f"{r['bytes'] / 1e6:.1f}"]
        if floor is None:
            cells += ["n/a"] * 3
        else:
            cells += [fmt_ms(floor.compute_ms), fmt_ms(floor.memory_ms), f"{fmt_ms(floor.floor_ms)} ({floor.bound})"]
        body.append(cells)
    return _table(FLOORS_HEADER, body)


def _results_row(r: dict[str, Any], notes: dict[str, int]) -> list[str]:
    ok, status = r["status"] == "OK", r["status"]
    if not ok:  # a numbered note per distinct reason
        status += f" [{notes.setdefault(r.get('reason') or '', len(notes) + 1)}]"
    mem = _fmt(r.get("peak_mem_mb"), "int", "n/a")
    mem += "" if r.get("mem_ratio_vs_eager") is None else f" ({r['mem_ratio_vs_eager']:.2f}x)"
    kernels, calls = r.get("kernels_per_fwd"), r.get("launch_calls_per_fwd")
    kernels = "n/a" if kernels is None else f"{kernels}" + ("" if calls is None else f" ({calls})")
    band = "–" if r.get("p20_ms") is None else f"{fmt_ms(r['p20_ms'])}–{fmt_ms(r['p80_ms'])}"
    cells = [*_case_label(r), r["dtype"], r["variant"], status, fmt_ms(r.get("median_ms")), band]
    cells += [_fmt(r.get(k), kind) for k, kind in _NUMBERS]
    cells += [_fmt(r.get("roofline_frac"), "pct", "n/a"), mem, kernels] if ok else ["–"] * 3
    return [*cells, _fmt(r.get("compile_s"), "s")]


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report: header, floors, results table, notes for non-OK rows."""
    env, cfg = report.get("env", {}), report.get("config", {})
    peaks = report.get("cost_model", {}).get("peaks")
    commit = (env.get("git_commit") or "unknown") + (" (+ uncommitted changes)" if env.get("git_dirty") else "")
    lines = [
        f"# BCRN benchmark — {env.get('device_name') or env.get('device')}",
        "",
        f"- created {report.get('created')}; git {commit}",
        f"- torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda') or 'n/a'}, "
        f"driver {env.get('driver') or 'n/a'}, python {env.get('python')}",
        f"- timing: {cfg.get('timing_desc', cfg.get('timing', ''))}; warm-up and compilation excluded "
        "(compile s = build + first call)",
        "- every OK row was verified against the fp32 eager reference (TF32 off) before timing: rel. Frobenius "
        "error <= " + ", ".join(f"{k} {v:.0e}" for k, v in TOLERANCE.items()),
    ]
    if peaks:
        tflops = ", ".join(f"{k} {v:g}" for k, v in peaks["tflops"].items())
        lines.append(f"- roofline peaks ({peaks['name']}): HBM {peaks['hbm_gbps']:.0f} GB/s; dense {tflops} TFLOP/s")
    else:
        lines.append("- roofline peaks: n/a on this device (floors and % of floor not computed)")
    if not report.get("complete", True):
        lines.append("- **partial report**: the run stopped before every row was measured")
    notes: dict[str, int] = {}
    body = [_results_row(r, notes) for r in _collapse_skipped(report["rows"])]
    lines += ["", "## Two numbers to beat", "", *floors_table(report), ""]
    lines += ["## Results", "", *_table(RESULTS_HEADER, body), ""]
    if notes:
        lines += ["Notes:", "", *(f"{n}. {reason}" for reason, n in notes.items()), ""]
    if summary := summary_lines(report):
        lines += ["## Summary", "", *(f"- {s}" for s in summary), ""]
    return "\n".join(lines)


def _collapse_skipped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the table: a case/dtype whose variants were all skipped for one reason becomes one row."""
    out = []
    for group in _groups(rows).values():
        if len(group) > 1 and all(r["status"] == "SKIPPED" for r in group) and len({r["reason"] for r in group}) == 1:
            out.append(dict(group[0], variant=f"(all {len(group)})", compile_s=None))
        else:
            out.extend(group)
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per case and dtype: ms per image of eager vs the fused variants and the fastest row."""
    out = []
    for rs in _groups(report["rows"]).values():
        ok = [r for r in rs if _ok(r)]
        if not ok:
            continue
        per_img = {r["variant"]: r["median_ms"] / r["batch"] for r in ok}
        parts = [f"{v} {fmt_ms(ms)} ms/img" for v, ms in per_img.items() if v == "eager" or v.startswith("fused")]
        text = f"{_title(rs[0], 'N=')}: " + ", ".join(parts)
        if "eager" in per_img:
            fused = [v for v in per_img if v.startswith("fused")]
            if fused:
                best = min(fused, key=per_img.__getitem__)
                text += f"; {best} is {per_img['eager'] / per_img[best]:.2f}x eager"
            fastest = min(ok, key=lambda r: r["median_ms"])["variant"]
            text += f"; fastest: {fastest} ({per_img['eager'] / per_img[fastest]:.2f}x eager)"
        out.append(text)
    return out


def plot_groups(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The chart's bar groups: ``"<target> [xS] WxH N<batch> <dtype>"`` -> {variant: median ms} of the OK rows."""
    groups: dict[str, dict[str, float]] = {}
    for r in filter(_ok, rows):
        groups.setdefault(_title(r, "N"), {})[r["variant"]] = r["median_ms"]
    return groups


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """A bar chart of median ms per variant and case (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = plot_groups(report["rows"])
    if not groups:
        return None
    variants = [v for v in VARIANTS if any(v in g for g in groups.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(groups)), 4))
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs = [i + j * width for i, g in enumerate(groups.values()) if v in g]
        ax.bar(xs, [g[v] for g in groups.values() if v in g], width, label=v)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], list(groups), rotation=20, ha="right")
    ax.set_ylabel("median ms (log)")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title(str(report.get("env", {}).get("device_name")))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
