"""Reports: derived numbers, the JSON schema, the markdown table, an optional plot.

A report is one JSON object::

    {"schema": "bcrn_fast.bench/1", "created": ISO-8601 UTC, "env": {...},
     "config": {...}, "cost_model": {...}, "complete": bool, "rows": [ {...}, ... ]}

``env`` holds device name, driver, torch/triton/CUDA versions and the git
commit (env.py); each row holds the raw measurement (harness.Row) plus the
fields :func:`annotate` derives: achieved GB/s and TFLOP/s from the stated
byte/FLOP model (costs.py), the roofline floor and the fraction of it
reached, speedup vs eager fp32 and vs the best torch.compile mode of the same
dtype, and peak memory relative to eager of the same dtype.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bcrn_fast.benchmarking.costs import peaks_for_device, roofline
from bcrn_fast.benchmarking.harness import STATUSES, Row
from bcrn_fast.benchmarking.variants import COMPILE_VARIANTS, VARIANTS
from bcrn_fast.tolerances import TOLERANCE

__all__ = [
    "DERIVED_KEYS",
    "ROW_KEYS",
    "SCHEMA",
    "annotate",
    "load_report",
    "make_report",
    "markdown",
    "plot",
    "summary_lines",
    "validate_report",
    "write_report",
]

SCHEMA = "bcrn_fast.bench/1"
ROW_KEYS = tuple(Row.__dataclass_fields__)
DERIVED_KEYS = (
    "achieved_gbps",
    "achieved_tflops",
    "floor_ms",
    "floor_bound",
    "roofline_frac",
    "speedup_vs_eager_fp32",
    "speedup_vs_best_compile",
    "best_compile_variant",
    "mem_ratio_vs_eager",
)
TOP_KEYS = ("schema", "created", "env", "config", "cost_model", "complete", "rows")
ENV_KEYS = ("device", "device_name", "driver", "cuda", "torch", "triton", "python", "git_commit")

COST_MODEL = {
    "flops": "2 x multiply-adds of every convolution of the reference architecture (costs.model_macs / "
    "module_macs; ~272 K MACs per LR pixel at x4); elementwise work not counted",
    "bytes": "minimum DRAM traffic of the fused design of docs/fused-ops.md: each intermediate map written "
    "once and read once per consumer, no concat, CCA scale applied on load, weights once "
    "(costs.target_traffic; element size = storage dtype)",
    "floor": "max(flops / peak_flops[dtype], bytes / peak_hbm_bandwidth); fp32 uses the CUDA-core fp32 peak "
    "(TF32 off); no floor on a CPU",
}


def _case_key(row: dict[str, Any]) -> tuple:
    return (row["target"], row["scale"], row["width"], row["height"], row["batch"])


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "OK" and row.get("median_ms") is not None


def annotate(rows: Iterable[dict[str, Any]], device_name: str | None = None) -> list[dict[str, Any]]:
    """Rows (dicts) with :data:`DERIVED_KEYS` filled in; the input dicts are not modified."""
    rows = [dict(r) for r in rows]
    peaks = peaks_for_device(device_name)
    eager: dict[tuple, dict[str, Any]] = {}
    best_compile: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if not _ok(r):
            continue
        key = (*_case_key(r), r["dtype"])
        if r["variant"] == "eager":
            eager[key] = r
        if r["variant"] in COMPILE_VARIANTS and (
            key not in best_compile or r["median_ms"] < best_compile[key]["median_ms"]
        ):
            best_compile[key] = r
    for r in rows:
        for k in DERIVED_KEYS:
            r[k] = None
        if not _ok(r):
            continue
        ms = r["median_ms"]
        key = (*_case_key(r), r["dtype"])
        if r.get("bytes"):
            r["achieved_gbps"] = r["bytes"] / (ms * 1e-3) / 1e9
        if r.get("flops"):
            r["achieved_tflops"] = r["flops"] / (ms * 1e-3) / 1e12
        if r.get("flops") and r.get("bytes"):
            floor = roofline(r["flops"], r["bytes"], r["dtype"], peaks)
            if floor is not None:
                r["floor_ms"], r["floor_bound"] = floor.floor_ms, floor.bound
                r["roofline_frac"] = floor.floor_ms / ms
        base = eager.get((*_case_key(r), "fp32"))
        if base is not None:
            r["speedup_vs_eager_fp32"] = base["median_ms"] / ms
        best = best_compile.get(key)
        if best is not None:
            r["speedup_vs_best_compile"] = best["median_ms"] / ms
            r["best_compile_variant"] = best["variant"]
        same = eager.get(key)
        if same is not None and same.get("peak_mem_mb") and r.get("peak_mem_mb") is not None:
            r["mem_ratio_vs_eager"] = r["peak_mem_mb"] / same["peak_mem_mb"]
    return rows


def make_report(
    rows: Sequence[Row | dict[str, Any]], env: dict[str, Any], config: dict[str, Any], complete: bool = True
) -> dict[str, Any]:
    """The JSON-ready report of ``rows`` (Row objects or dicts)."""
    raw = [r.to_dict() if isinstance(r, Row) else dict(r) for r in rows]
    peaks = peaks_for_device(env.get("device_name") if env.get("device") == "cuda" else None)
    cost_model = dict(COST_MODEL)
    cost_model["peaks"] = (
        {"name": peaks.name, "hbm_gbps": peaks.hbm_gbps, "tflops": dict(peaks.tflops)} if peaks else None
    )
    cost_model["tolerance"] = dict(TOLERANCE)
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "env": dict(env),
        "config": dict(config),
        "cost_model": cost_model,
        "complete": complete,
        "rows": annotate(raw, env.get("device_name") if env.get("device") == "cuda" else None),
    }


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` listing every way ``report`` departs from the schema."""
    problems: list[str] = []
    for key in TOP_KEYS:
        if key not in report:
            problems.append(f"missing top-level key {key!r}")
    if report.get("schema") != SCHEMA:
        problems.append(f"schema is {report.get('schema')!r}, expected {SCHEMA!r}")
    env = report.get("env") or {}
    for key in ENV_KEYS:
        if key not in env:
            problems.append(f"env lacks {key!r}")
    rows = report.get("rows")
    if not isinstance(rows, list):
        problems.append("rows is not a list")
        rows = []
    for i, r in enumerate(rows):
        missing = [k for k in (*ROW_KEYS, *DERIVED_KEYS) if k not in r]
        if missing:
            problems.append(f"row {i} lacks {missing}")
            continue
        if r["status"] not in STATUSES:
            problems.append(f"row {i}: status {r['status']!r} not in {STATUSES}")
        if r["dtype"] not in TOLERANCE:
            problems.append(f"row {i}: dtype {r['dtype']!r}")
        timed = [k for k in ("median_ms", "p20_ms", "p80_ms") if r[k] is not None]
        if r["status"] == "OK":
            if len(timed) != 3:
                problems.append(f"row {i}: OK but not timed")
            elif not r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]:
                problems.append(f"row {i}: quantiles out of order")
            if r["rel_error"] is None or r["tolerance"] is None or not r["rel_error"] <= r["tolerance"]:
                problems.append(f"row {i}: OK without a passing verification")
        else:
            if timed:
                problems.append(f"row {i}: status {r['status']} but timed")
            if not r["reason"]:
                problems.append(f"row {i}: status {r['status']} without a reason")
    if problems:
        raise ValueError("invalid benchmark report:\n  " + "\n  ".join(problems))


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        report = json.load(fh)
    if report.get("schema") == SCHEMA:  # re-derive: the cost model or peaks table may have been updated
        env = report.get("env", {})
        report["rows"] = annotate(report["rows"], env.get("device_name") if env.get("device") == "cuda" else None)
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


# ----------------------------------------------------------------------------- formatting
def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def _sig(x: float | None) -> str:
    """3 significant digits without exponents for ordinary magnitudes (12345 -> 12345, 0.0123 -> 0.0123)."""
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 0.001 or x == 0:
        return f"{x:.3g}"
    return f"{x:.1e}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def _pct(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f} %" if x >= 0.001 else f"{100 * x:.2g} %"


def _kernels(r: dict[str, Any]) -> str:
    if r.get("kernels_per_fwd") is None:
        return "n/a"
    calls = r.get("launch_calls_per_fwd")
    return f"{r['kernels_per_fwd']}" + ("" if calls is None else f" ({calls})")


_LEFT = ("target", "scale", "LR WxH", "dtype", "variant", "status")  # text columns; numbers align right


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    cols = [(w, h not in _LEFT) for w, h in zip(widths, header, strict=True)]  # (width, align right)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, (w, r) in zip(cells, cols, strict=True)) + " |"

    return [line(header), "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in cols) + " |"] + [
        line(r) for r in rows
    ]


def _case_label(r: dict[str, Any]) -> tuple[str, str, str, str]:
    scale = f"x{r['scale']}" if r.get("scale") else "–"
    return r["target"], scale, f"{r['width']}x{r['height']}", str(r["batch"])


def floors_table(report: dict[str, Any]) -> list[str]:
    """Per case and dtype: the two numbers to beat (GFLOP, MB moved) and the floor they imply."""
    env = report.get("env", {})
    peaks = peaks_for_device(env.get("device_name") if env.get("device") == "cuda" else None)
    seen: dict[tuple, dict[str, Any]] = {}
    for r in report["rows"]:
        if r.get("flops") is not None:
            seen.setdefault((*_case_key(r), r["dtype"]), r)
    body = []
    for r in seen.values():
        floor = roofline(r["flops"], r["bytes"], r["dtype"], peaks)
        cells = [*_case_label(r), r["dtype"], f"{r['flops'] / 1e9:.2f}", f"{r['bytes'] / 1e6:.1f}"]
        if floor is None:
            cells += ["n/a"] * 3
        else:
            cells += [fmt_ms(floor.compute_ms), fmt_ms(floor.memory_ms), f"{fmt_ms(floor.floor_ms)} ({floor.bound})"]
        body.append(cells)
    return _table(FLOORS_HEADER, body)


FLOORS_HEADER = "target|scale|LR WxH|N|dtype|GFLOP|MB moved|compute floor ms|memory floor ms|floor ms".split("|")
RESULTS_HEADER = (
    "target|scale|LR WxH|N|dtype|variant|status|median ms|p20–p80 ms|img/s|out MP/s|vs eager fp32|vs best compile|"
    "GB/s|TFLOP/s|% of floor|peak MB (vs eager)|kernels/fwd (launch calls)|compile s"
).split("|")


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report: header, floors, results table, notes for non-OK rows."""
    env, cfg, rows = report.get("env", {}), report.get("config", {}), report["rows"]
    peaks_info = report.get("cost_model", {}).get("peaks")
    lines = [f"# BCRN benchmark — {env.get('device_name') or env.get('device')}", ""]
    commit = env.get("git_commit") or "unknown"
    if env.get("git_dirty"):
        commit += " (+ uncommitted changes)"
    lines += [
        f"- created {report.get('created')}; git {commit}",
        f"- torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda') or 'n/a'}, "
        f"driver {env.get('driver') or 'n/a'}, python {env.get('python')}",
        f"- timing: {cfg.get('timing_desc', cfg.get('timing', ''))}; warm-up and compilation excluded "
        "(compile s = build + first call)",
        "- every OK row was verified against the fp32 eager reference (TF32 off) before timing: rel. Frobenius "
        "error <= " + ", ".join(f"{k} {v:.0e}" for k, v in TOLERANCE.items()),
    ]
    if peaks_info:
        tf = peaks_info["tflops"]
        lines.append(
            f"- roofline peaks ({peaks_info['name']}): HBM {peaks_info['hbm_gbps']:.0f} GB/s; dense "
            + ", ".join(f"{k} {v:g}" for k, v in tf.items())
            + " TFLOP/s"
        )
    else:
        lines.append("- roofline peaks: n/a on this device (floors and % of floor not computed)")
    if not report.get("complete", True):
        lines.append("- **partial report**: the run stopped before every row was measured")
    lines += ["", "## Two numbers to beat", "", *floors_table(report), ""]

    notes: dict[str, int] = {}
    body = []
    for r in _collapse_skipped(rows):
        status = r["status"]
        if status != "OK":
            reason = r.get("reason") or ""
            n = notes.setdefault(reason, len(notes) + 1)
            status = f"{status} [{n}]"
        mem = "n/a" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
        if r.get("mem_ratio_vs_eager") is not None:
            mem += f" ({r['mem_ratio_vs_eager']:.2f}x)"
        band = "–" if r.get("p20_ms") is None else f"{fmt_ms(r['p20_ms'])}–{fmt_ms(r['p80_ms'])}"
        ok = r["status"] == "OK"
        cells = [*_case_label(r), r["dtype"], r["variant"], status, fmt_ms(r.get("median_ms")), band]
        cells += [_sig(r.get(k)) for k in ("images_per_s", "out_mpix_per_s")]
        cells += [_ratio(r.get(k)) for k in ("speedup_vs_eager_fp32", "speedup_vs_best_compile")]
        cells += [_sig(r.get(k)) for k in ("achieved_gbps", "achieved_tflops")]
        cells += [_pct(r.get("roofline_frac")), mem, _kernels(r)] if ok else ["–"] * 3
        body.append([*cells, _num(r.get("compile_s"), "{:.1f}")])
    lines += ["## Results", "", *_table(RESULTS_HEADER, body), ""]
    if notes:
        lines += ["Notes:", ""]
        lines += [f"{n}. {reason}" for reason, n in notes.items()]
        lines.append("")
    summary = summary_lines(report)
    if summary:
        lines += ["## Summary", "", *(f"- {s}" for s in summary), ""]
    return "\n".join(lines)


def _collapse_skipped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the table: a case/dtype whose variants were all skipped for one reason becomes one row."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((*_case_key(r), r["dtype"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) > 1 and all(r["status"] == "SKIPPED" for r in group) and len({r["reason"] for r in group}) == 1:
            out.append(dict(group[0], variant=f"(all {len(group)})", compile_s=None))
        else:
            out.extend(group)
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per case and dtype: ms per image of eager vs the fused variants and the fastest row."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in report["rows"]:
        groups.setdefault((*_case_key(r), r["dtype"]), []).append(r)
    out = []
    for (_t, _s, _w, _h, _b, dtype), rs in groups.items():
        ok = [r for r in rs if _ok(r)]
        if not ok:
            continue
        label = " ".join(x for x in _case_label(rs[0])[:3] if x != "–") + f" N={rs[0]['batch']} {dtype}"
        per_img = {r["variant"]: r["median_ms"] / r["batch"] for r in ok}
        parts = [f"{v} {fmt_ms(per_img[v])} ms/img" for v in per_img if v == "eager" or v.startswith("fused")]
        fastest = min(ok, key=lambda r: r["median_ms"])
        text = f"{label}: " + ", ".join(parts)
        if "eager" in per_img:
            fused = [v for v in per_img if v.startswith("fused")]
            if fused:
                best = min(fused, key=per_img.__getitem__)
                text += f"; {best} is {per_img['eager'] / per_img[best]:.2f}x eager"
            text += f"; fastest: {fastest['variant']} ({per_img['eager'] / per_img[fastest['variant']]:.2f}x eager)"
        out.append(text)
    return out


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """A bar chart of median ms per variant and case (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups: dict[str, dict[str, float]] = {}
    for r in report["rows"]:
        if _ok(r):
            label = " ".join(x for x in _case_label(r)[1:3] if x != "–") + f" N{r['batch']} {r['dtype']}"
            groups.setdefault(label, {})[r["variant"]] = r["median_ms"]
    if not groups:
        return None
    variants = [v for v in VARIANTS if any(v in g for g in groups.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(groups)), 4))
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs = [i + j * width for i, g in enumerate(groups.values()) if v in g]
        ys = [g[v] for g in groups.values() if v in g]
        ax.bar(xs, ys, width, label=v)
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
