"""Unit tests of the benchmark harness logic (CPU, fast): cost model, verification rule, report, CLI."""

from __future__ import annotations

import argparse
import json
import re
import sys

import pytest
import torch

from bcrn_fast import BCRN
from bcrn_fast.benchmarking import cli, costs, report, timing, variants
from bcrn_fast.benchmarking.harness import STATUSES, Bench, Case, Options, Row
from bcrn_fast.benchmarking.variants import TARGETS, VARIANTS, Prepared, Variant
from bcrn_fast.tolerances import TOLERANCE

TINY = Case("model", 2, 16, 16, 1, "fp32")  # smallest legal input: fast on any CPU


# ----------------------------------------------------------------------------- FLOP / byte model
def test_macs_match_architecture_doc():
    """docs/design.md: ~272 K MACs per LR pixel at x4, ~15.7 G for a 320x180 input."""
    total = costs.model_macs(180, 320, scale=4)
    assert total == pytest.approx(15.7e9, rel=0.015)
    asymptotic = costs.model_macs(2000, 2000, scale=4) / 2000**2
    assert asymptotic == pytest.approx(272e3, rel=0.015)


def test_macs_breakdown_matches_architecture_doc():
    h = w = 1000
    p = h * w
    assert costs.module_macs("bcb", h, w) / p == pytest.approx(40e3, rel=0.03)  # "each BCB ~ 40 K"
    gemm = 2 * 64 * 256  # the two 1x1 convs of convNextBlock: "32.8 K"
    assert (costs.module_macs("convnext", h, w) - 9 * 64 * p) / p == gemm == pytest.approx(32.8e3, rel=0.01)
    assert costs.module_macs("bsconv", h, w) / p == pytest.approx(4.7e3, rel=0.01)
    assert gemm / (costs.module_macs("bcb", h, w) / p) == pytest.approx(0.81, abs=0.01)  # 81 % of a BCB
    upsampler = {s: 64 * 3 * s * s + 9 * 3 * s * s for s in (2, 4)}
    assert upsampler[4] == pytest.approx(3.5e3, rel=0.01)  # "upsampler ~ 3.5 K" at x4
    assert costs.model_macs(h, w, 4) - costs.model_macs(h, w, 2) == p * (upsampler[4] - upsampler[2])
    conv1 = 3 * 64 + 9 * 64
    conv2 = costs.model_macs(h, w, 4) / p - conv1 - 6 * costs.module_macs("bcb", h, w) / p - upsampler[4]
    assert conv2 == pytest.approx(25e3, rel=0.01)  # "conv2 ~ 25 K"


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (21, 34)])
def test_analytic_macs_equal_counted_convs(scale, h, w):
    """The closed form equals a per-Conv2d count on the real module (meta device), borders included."""
    x = torch.empty(2, 3, h, w)
    assert costs.count_conv_macs(BCRN(scale), x) == costs.model_macs(h, w, scale, batch=2)
    for name in ("bsconv", "convnext", "esa", "cca", "bcb"):
        module = TARGETS[name].factory(4)
        assert costs.count_conv_macs(module, torch.empty(1, 64, h, w)) == costs.module_macs(name, h, w), name


def test_bytes_model():
    """docs/design.md: a fused design moves "on the order of 1 KB per LR pixel per BCB in fp16"."""
    h = w = 1200
    p = h * w
    fp16 = costs.target_traffic("model", h, w, 4, 1, "fp16")
    bcb = sum(r + wr for name, r, wr in fp16.stages if name.startswith("bcb1 ")) * 2 / p
    assert 600 < bcb < 1200
    assert fp16.elements / p == pytest.approx(3197, rel=0.002)  # documented in benchmarks/NOTES.md
    fp32 = costs.target_traffic("model", h, w, 4, 1, "fp32", params=289_232)
    assert fp32.bytes == 2 * fp16.bytes + 4 * 289_232
    assert costs.target_traffic("model", h, w, 4, 8, "fp16").elements == pytest.approx(8 * fp16.elements, rel=1e-6)


def test_roofline_and_peaks():
    assert costs.peaks_for_device("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert costs.peaks_for_device("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert costs.peaks_for_device("NVIDIA H200").name == "H200"
    assert costs.peaks_for_device("NVIDIA H200 NVL").name == "H200 NVL"
    assert costs.peaks_for_device("NVIDIA A100-SXM4-80GB") is None
    assert costs.roofline(1e9, 1e9, "fp16", None) is None
    pk = costs.GPU_PEAKS["H100 SXM"]
    r = costs.roofline(2e12, 1e9, "fp32", pk)  # 2 TFLOP at 67 TFLOP/s vs 1 GB at 3.35 TB/s
    assert r.bound == "compute" and r.floor_ms == pytest.approx(2e12 / 67e12 * 1e3)
    r = costs.roofline(1e9, 3.35e9, "fp16", pk)
    assert r.bound == "memory" and r.floor_ms == pytest.approx(1.0)


def test_model_input_is_a_smooth_image():
    x = TARGETS["model"].make_input(2, 40, 64, seed=3)
    assert x.shape == (2, 3, 40, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, TARGETS["model"].make_input(2, 40, 64, seed=3))
    # neighbouring pixels are correlated (photo-like), unlike per-pixel uniform noise
    corr = torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1]
    assert corr > 0.8
    assert TARGETS["esa"].make_input(1, 20, 20, seed=0).shape == (1, 64, 20, 20)


def test_one_tolerance_table_for_benchmarks_and_export():
    """The numbers every benchmark row and the ONNX export are verified with (bcrn_fast.tolerances)."""
    from bcrn_fast import export
    from bcrn_fast.benchmarking import harness

    assert TOLERANCE == {"fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2}
    assert harness.TOLERANCE is export.TOLERANCE is TOLERANCE


# ----------------------------------------------------------------------------- timing helpers
def test_quantiles_and_plan():
    vals = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert timing.quantile(vals, 0.5) == 3.0
    assert timing.quantile(vals, 0.2) == pytest.approx(1.8)
    assert timing.quantile(vals, 0.8) == pytest.approx(4.2)
    res = timing.TimingResult(vals)
    assert res.p20_ms <= res.median_ms <= res.p80_ms
    reps, inner = timing.plan(0.1, target_sample_ms=20, reps=25, max_row_s=2)
    assert inner == 200 and 3 <= reps <= 25
    reps, inner = timing.plan(1000, target_sample_ms=20, reps=25, max_row_s=2)
    assert (reps, inner) == (3, 1)


# ----------------------------------------------------------------------------- verify before timing
def _fake_variant(name: str, transform) -> Variant:
    def build(ctx):
        module = ctx.fresh_reference()
        return Prepared(lambda x: transform(module(x)))

    return Variant(name, "test variant", build)


@pytest.fixture
def bench(monkeypatch):
    b = Bench(Options.quick(device=torch.device("cpu"), n_buffers=2, cpu_reps=3, max_row_s=0.2))
    monkeypatch.setitem(VARIANTS, "wrong", _fake_variant("wrong", lambda y: y * 1.001))
    monkeypatch.setitem(VARIANTS, "close", _fake_variant("close", lambda y: y + 1e-7 * y.abs().max()))
    monkeypatch.setitem(VARIANTS, "nan", _fake_variant("nan", lambda y: y * float("nan")))
    monkeypatch.setitem(VARIANTS, "shape", _fake_variant("shape", lambda y: y[..., 1:]))

    def broken(ctx):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(VARIANTS, "broken", Variant("broken", "raises", broken))
    return b


@pytest.mark.parametrize(
    ("name", "status", "needle"),
    [
        ("wrong", "WRONG", "relative error"),
        ("nan", "WRONG", "relative error inf"),
        ("shape", "WRONG", "shape"),
        ("broken", "CRASHED", "kernel exploded"),
    ],
)
def test_wrong_variant_is_rejected_and_never_timed(bench, monkeypatch, name, status, needle):
    def no_timing(*a, **k):
        raise AssertionError("a variant that failed verification reached the timer")

    monkeypatch.setattr(timing, "time_cpu", no_timing)
    monkeypatch.setattr(timing, "time_cuda", no_timing)
    row = bench.run_one(TINY, name)
    assert row.status == status
    assert needle in row.reason
    assert row.median_ms is None and row.p20_ms is None and row.images_per_s is None
    assert bench.timer_calls == 0


def test_correct_variants_are_verified_then_timed(bench):
    for name in ("eager", "close"):
        row = bench.run_one(TINY, name)
        assert row.status == "OK", row.reason
        assert row.rel_error <= row.tolerance == TOLERANCE["fp32"]
        assert row.p20_ms <= row.median_ms <= row.p80_ms
        assert row.compile_s > 0 and row.flops == 2 * costs.model_macs(16, 16, 2)
    assert bench.timer_calls == 2


def test_time_prepared_refuses_unverified_rows(bench):
    with pytest.raises(RuntimeError, match="verification"):
        bench.time_prepared(TINY, Prepared(lambda x: x), Row.for_case(TINY, "eager"))


def test_skips_on_cpu(bench):
    for name in ("fused_triton", "fused_triton_graph", "inductor_reduce_overhead", "cudagraphs"):
        row = bench.run_one(TINY, name)
        assert row.status == "SKIPPED" and "CUDA" in row.reason
    row = bench.run_one(Case("model", 2, 16, 16, 1, "fp16"), "eager")
    assert row.status == "SKIPPED" and "half precision" in row.reason
    assert variants.resolve_variants(None, "cpu") == ["eager", "eager_cl", "inductor", "onnxruntime", "fused_torch"]
    assert variants.resolve_variants("fused_torch", "cpu")[0] == "eager"  # the baseline is always there
    with pytest.raises(ValueError, match="unknown variant"):
        variants.resolve_variants("nope", "cpu")


def test_time_budget_skips_late_rows(bench):
    bench.options.budget_s = 0.0
    rows = bench.run([TINY], ["eager", "close"])
    assert [r.status for r in rows] == ["SKIPPED", "SKIPPED"]
    assert "time budget" in rows[0].reason


# ----------------------------------------------------------------------------- report
TOP_KEYS = ("schema", "created", "env", "config", "cost_model", "complete", "rows")
ENV_KEYS = ("device", "device_name", "driver", "cuda", "torch", "triton", "python", "git_commit")


def validate_report(rep):
    """Raise ``ValueError`` listing every way ``rep`` departs from the schema (the report invariants)."""
    problems = [f"missing top-level key {key!r}" for key in TOP_KEYS if key not in rep]
    if rep.get("schema") != report.SCHEMA:
        problems.append(f"schema is {rep.get('schema')!r}, expected {report.SCHEMA!r}")
    problems += [f"env lacks {key!r}" for key in ENV_KEYS if key not in (rep.get("env") or {})]
    rows = rep.get("rows")
    if not isinstance(rows, list):
        problems, rows = [*problems, "rows is not a list"], []
    for i, r in enumerate(rows):
        if missing := [k for k in (*Row.__dataclass_fields__, *report.DERIVED_KEYS) if k not in r]:
            problems.append(f"row {i} lacks {missing}")
            continue
        ok, status, timed = r["status"] == "OK", r["status"], [r["p20_ms"], r["median_ms"], r["p80_ms"]]
        verified = r["rel_error"] is not None and r["tolerance"] is not None and r["rel_error"] <= r["tolerance"]
        checks = {
            f"status {status!r} not in {STATUSES}": status not in STATUSES,
            f"dtype {r['dtype']!r}": r["dtype"] not in TOLERANCE,
            "OK but not timed": ok and None in timed,
            "quantiles out of order": ok and None not in timed and timed != sorted(timed),
            "OK without a passing verification": ok and not verified,
            f"status {status} but timed": not ok and any(t is not None for t in timed),
            f"status {status} without a reason": not ok and not r["reason"],
        }
        problems += [f"row {i}: {what}" for what, bad in checks.items() if bad]
    if problems:
        raise ValueError("invalid benchmark report:\n  " + "\n  ".join(problems))


ENV = {
    "device": "cuda",
    "device_name": "NVIDIA H100 80GB HBM3",
    "driver": "580.1",
    "cuda": "13.0",
    "torch": "2.11",
    "triton": "3.6",
    "python": "3.12",
    "git_commit": "abc",
    "git_dirty": False,
}


def _row(variant, dtype, ms, mem=100.0, **kw):
    r = Row(
        "model",
        4,
        320,
        180,
        1,
        dtype,
        variant,
        status="OK",
        rel_error=0.0,
        tolerance=TOLERANCE["fp32"],
        median_ms=ms,
        p20_ms=ms * 0.9,
        p80_ms=ms * 1.1,
        peak_mem_mb=mem,
        compile_s=1.0,
        flops=2 * costs.model_macs(180, 320, 4),
        bytes=costs.target_traffic("model", 180, 320, 4, 1, dtype).bytes,
    )
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def _synthetic_rows():
    return [
        _row("eager", "fp32", 10.0, mem=400.0),
        _row("inductor", "fp32", 5.0),
        _row("inductor_max_autotune", "fp32", 4.0),
        _row("fused_triton", "fp32", 2.0, mem=100.0),
        Row(
            "model",
            4,
            320,
            180,
            1,
            "fp32",
            "fused_cuda",
            status="WRONG",
            reason="relative error 3e-2 > 1e-04",
            rel_error=3e-2,
            tolerance=TOLERANCE["fp32"],
        ),
        Row("model", 4, 320, 180, 1, "fp32", "cudagraphs", status="SKIPPED", reason="time budget"),
        _row("eager", "fp16", 8.0, mem=200.0),
        _row("fused_triton", "fp16", 1.0, mem=50.0),
    ]


def test_annotate_speedups_and_roofline():
    rows = report.annotate([r.to_dict() for r in _synthetic_rows()], ENV["device_name"])
    by = {(r["variant"], r["dtype"]): r for r in rows}
    fused = by[("fused_triton", "fp32")]
    assert fused["speedup_vs_eager_fp32"] == pytest.approx(5.0)
    assert fused["speedup_vs_best_compile"] == pytest.approx(2.0)
    assert fused["best_compile_variant"] == "inductor_max_autotune"
    assert fused["mem_ratio_vs_eager"] == pytest.approx(0.25)
    floor = max(fused["flops"] / 67e12, fused["bytes"] / 3350e9) * 1e3
    assert fused["floor_ms"] == pytest.approx(floor)
    assert fused["roofline_frac"] == pytest.approx(floor / 2.0)
    assert fused["achieved_gbps"] == pytest.approx(fused["bytes"] / 2e-3 / 1e9)
    half = by[("fused_triton", "fp16")]
    assert half["speedup_vs_eager_fp32"] == pytest.approx(10.0)
    assert half["speedup_vs_best_compile"] is None  # no compile row in fp16
    assert half["mem_ratio_vs_eager"] == pytest.approx(0.25)  # vs eager of the same dtype
    assert by[("fused_cuda", "fp32")]["speedup_vs_eager_fp32"] is None


def test_report_json_schema_roundtrip(tmp_path):
    rep = report.make_report(_synthetic_rows(), ENV, {"quick": True})
    validate_report(rep)
    json_path, md_path = report.write_report(rep, tmp_path, "run")
    loaded = report.load_report(json_path)
    validate_report(loaded)
    assert loaded["rows"] == json.loads(json.dumps(rep["rows"]))
    assert md_path.read_text().startswith("# BCRN benchmark")
    for key in ("device_name", "driver", "torch", "triton", "cuda", "git_commit"):
        assert key in loaded["env"]
    for key in (
        "scale",
        "width",
        "height",
        "batch",
        "dtype",
        "variant",
        "status",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "images_per_s",
        "out_mpix_per_s",
        "compile_s",
        "peak_mem_mb",
        "kernels_per_fwd",
    ):
        assert key in loaded["rows"][0]


@pytest.mark.parametrize("corrupt", ["missing", "timed_failure", "untimed_ok", "bad_status"])
def test_validate_report_catches_schema_errors(corrupt):
    rep = report.make_report(_synthetic_rows(), ENV, {})
    if corrupt == "missing":
        del rep["rows"][0]["median_ms"]
    elif corrupt == "timed_failure":
        rep["rows"][4]["median_ms"] = 1.0
    elif corrupt == "untimed_ok":
        rep["rows"][0]["p80_ms"] = None
    else:
        rep["rows"][0]["status"] = "GREAT"
    with pytest.raises(ValueError, match="invalid benchmark report"):
        validate_report(rep)


def test_markdown_table_format():
    rep = report.make_report(_synthetic_rows(), ENV, {"timing_desc": "cuda events"})
    md = report.markdown(rep)
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("| model") or ln.startswith("| target")]
    assert len({ln.count("|") for ln in table}) <= 2  # floors table and results table, each rectangular
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| target | scale | LR WxH") and "variant" in ln)
    assert set(lines[header + 1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    assert len(lines[header]) == len(lines[header + 1]) == len(lines[header + 2])
    fused = next(ln for ln in lines if "| fused_triton " in ln and "fp32" in ln)
    assert "2.00" in fused and "5.00x" in fused and "2.00x" in fused and "(0.25x)" in fused
    assert "| WRONG [1]" in md and "1. relative error 3e-2 > 1e-04" in md
    assert "| SKIPPED [2]" in md and "2. time budget" in md
    assert "H100 SXM" in md and "memory floor ms" in md
    assert "fused_triton is 5.00x eager" in md


def test_markdown_on_cpu_says_na():
    env = dict(ENV, device="cpu", device_name="CPU: test")
    rows = [_row("eager", "fp32", 10.0, peak_mem_mb=None), _row("fused_torch", "fp32", 5.0, peak_mem_mb=None)]
    md = report.markdown(report.make_report(rows, env, {}))
    assert "roofline peaks: n/a" in md
    results = [ln for ln in md.splitlines() if ln.startswith("| model") and "fused_torch" in ln][0]
    assert "n/a" in results and "2.00x" in results


def test_markdown_collapses_groups_skipped_for_one_reason():
    rows = [_row("eager", "fp32", 10.0)] + [
        Row("model", 4, 320, 180, 1, "fp16", v, status="SKIPPED", reason="half precision is benchmarked on CUDA only")
        for v in ("eager", "fused_torch", "inductor")
    ]
    md = report.markdown(report.make_report(rows, dict(ENV, device="cpu"), {}))
    skipped = [ln for ln in md.splitlines() if "SKIPPED" in ln]
    assert len(skipped) == 1 and "(all 3)" in skipped[0]


def test_count_launch_events():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from bcrn_fast.benchmarking.harness import count_launch_events

    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    events = [
        SimpleNamespace(name=n, device_type=d)
        for n, d in [
            ("aten::conv2d", cpu),
            ("cudaLaunchKernel", cpu),
            ("cuLaunchKernelEx", cpu),
            ("cudaGraphLaunch", cpu),
            ("void cudnn::conv_kernel", gpu),
            ("bsconv_kernel", gpu),
            ("Memcpy HtoD (Pageable -> Device)", gpu),
            ("Memset (Device)", gpu),
            ("cudaDeviceSynchronize", cpu),
        ]
    ]
    assert count_launch_events(events) == (2, 3)


def test_fp32_strict_turns_tf32_off_and_restores():
    from bcrn_fast.benchmarking.harness import fp32_strict

    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    with fp32_strict():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    assert (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    ) == before


def test_plot_is_optional(tmp_path):
    rep = report.make_report(_synthetic_rows(), ENV, {})
    png = report.plot(rep, tmp_path / "p.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert png is None
    else:
        assert png is not None and png.stat().st_size > 0


def test_plot_groups_keep_targets_apart():
    """Module rows of different targets at the same size are separate bar groups (not overwritten)."""
    rows = [
        Row("bsconv", None, 64, 64, 1, "fp16", "eager", status="OK", median_ms=1.0).to_dict(),
        Row("convnext", None, 64, 64, 1, "fp16", "eager", status="OK", median_ms=2.0).to_dict(),
        Row("convnext", None, 64, 64, 1, "fp16", "fused_triton", status="OK", median_ms=0.5).to_dict(),
        Row("model", 4, 64, 64, 1, "fp16", "eager", status="SKIPPED", reason="time budget").to_dict(),
    ]
    assert report.plot_groups(rows) == {
        "bsconv 64x64 N1 fp16": {"eager": 1.0},
        "convnext 64x64 N1 fp16": {"eager": 2.0, "fused_triton": 0.5},
    }


def test_fmt_ms():
    assert [report.fmt_ms(x) for x in (None, 0.01234, 1.234, 12.34, 123.4)] == ["–", "0.012", "1.23", "12.3", "123"]


# ----------------------------------------------------------------------------- CLI
def _args(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_parse_sizes_is_width_by_height():
    assert cli.parse_sizes("320x180, 960x540") == [(320, 180), (960, 540)]
    for bad in ("320", "10x200", "axb", ""):
        with pytest.raises(cli.UsageError):
            cli.parse_sizes(bad)
    cases = cli.build_cases(_args("--sizes", "256x256,320x180", "--scales", "4"), "cuda")
    assert {(c.width, c.height, c.batch) for c in cases} == {(256, 256, 1), (256, 256, 8), (320, 180, 1)}
    assert {c.dtype for c in cases} == {"fp32", "fp16", "bf16"}
    assert {c.dtype for c in cli.build_cases(_args("--quick"), "cpu")} == {"fp32"}


def test_cli_run_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.run(
        _args(
            "--device",
            "cpu",
            "--quick",
            "--sizes",
            "16x16",
            "--scales",
            "2",
            "--variants",
            "eager,fused_triton",
            "--out",
            str(out),
        )
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| model  | x2    | 16x16" in stdout and "needs a CUDA device" in stdout
    [json_path] = out.glob("*_cpu.json")
    rep = json.loads(json_path.read_text())
    validate_report(rep)
    assert rep["complete"] and [r["variant"] for r in rep["rows"]] == ["eager", "fused_triton"]
    assert rep["rows"][0]["status"] == "OK" and rep["rows"][1]["status"] == "SKIPPED"
    assert json_path.with_suffix(".md").exists()
    assert cli.run(_args("--from-json", str(json_path))) == 0
    assert "16x16" in capsys.readouterr().out


def test_cli_bad_arguments_return_2(capsys):
    assert cli.run(_args("--device", "cpu", "--sizes", "8x8")) == 2
    assert cli.run(_args("--device", "cpu", "--variants", "warp_drive")) == 2
    assert cli.run(_args("--device", "cpu", "--scales", "5")) == 2
    assert "bcrn-fast: error: bench:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one process per row (--isolate)
def _case32() -> Case:
    return Case("model", 4, 32, 18, 1, "fp32")


def test_isolated_order_runs_baselines_before_fused_rows_and_slow_compiles_last():
    from bcrn_fast.benchmarking.isolated import isolated_order

    cases = [_case32(), Case("model", 4, 32, 18, 1, "fp16")]
    variants = ["inductor_max_autotune", "fused_triton", "fused_cuda", "inductor", "eager", "fused_triton_graph"]
    jobs = [(c, v) for c in cases for v in variants]
    order = [jobs[i][1] for i in isolated_order(jobs)]
    assert (
        order
        == ["eager"] * 2
        + ["inductor"] * 2
        + ["fused_triton"] * 2
        + ["fused_triton_graph"] * 2
        + ["fused_cuda"] * 2
        + ["inductor_max_autotune"] * 2
    )


def test_isolated_row_runs_in_a_child_and_matches_the_in_process_result(tmp_path):
    from bcrn_fast.benchmarking.isolated import run_isolated

    opts = Options.quick(device=torch.device("cpu"), n_buffers=2, cpu_reps=2, max_row_s=0.1, profile=False)
    seen = []
    rows = run_isolated([_case32()], ["eager", "fused_triton"], opts, on_row=lambda r, done: seen.append(r.status))
    assert [r.variant for r in rows] == ["eager", "fused_triton"]
    assert rows[0].status == "OK" and rows[0].median_ms > 0 and rows[0].rel_error <= TOLERANCE["fp32"]
    assert rows[1].status == "SKIPPED" and "CUDA" in rows[1].reason  # decided in the parent: no child started
    assert seen == ["OK", "SKIPPED"]


@pytest.mark.parametrize(
    ("script", "status", "needle"),
    [
        ("import os, signal; print('kernel launch'); os.kill(os.getpid(), signal.SIGSEGV)", "CRASHED", "SIGSEGV"),
        ("import sys; print('CUDA error: an illegal memory access'); sys.exit(3)", "CRASHED", "illegal memory"),
        ("import time; time.sleep(60)", "TIMEOUT", "ran past 2 s"),
    ],
)
def test_isolated_row_that_dies_or_hangs_gets_an_honest_status(monkeypatch, script, status, needle):
    """A child that segfaults, exits without a row, or hangs is CRASHED/TIMEOUT, and the next row still runs."""
    from bcrn_fast.benchmarking import isolated

    real_cmd, real_timeout = isolated._child_command, isolated.row_timeout
    faulty = "eager"  # the first row in run order: the row after it must still be measured

    def cmd(spec, result):
        return (
            [sys.executable, "-c", script] if f'"variant": "{faulty}"' in spec.read_text() else real_cmd(spec, result)
        )

    monkeypatch.setattr(isolated, "_child_command", cmd)
    monkeypatch.setattr(isolated, "row_timeout", lambda v, o, cap=None: 2.0 if v == faulty else real_timeout(v, o, cap))
    opts = Options.quick(device=torch.device("cpu"), n_buffers=2, cpu_reps=2, max_row_s=0.1, profile=False)
    rows = isolated.run_isolated([_case32()], [faulty, "fused_torch"], opts)
    by = {r.variant: r for r in rows}
    assert by[faulty].status == status and needle in by[faulty].reason
    assert by[faulty].median_ms is None
    assert by["fused_torch"].status == "OK", by["fused_torch"].reason


def test_release_after_a_cuda_fault_does_not_raise(monkeypatch):
    b = Bench(Options.quick(device=torch.device("cpu")))
    b.device = torch.device("cuda")  # pretend: only _release's CUDA branch is exercised

    def fault():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "empty_cache", fault)
    b._release()
    assert "illegal memory access" in b.release_error


def test_fused_availability_uses_the_backends_real_check():
    from bcrn_fast.benchmarking.variants import fused_backend_unavailable
    from bcrn_fast.ops.backends import BackendUnavailable, resolve_backend

    cpu = torch.device("cpu")
    assert fused_backend_unavailable("torch", cpu) is None
    assert "CUDA device" in fused_backend_unavailable("triton", cpu)
    why = fused_backend_unavailable("cuda", cpu)
    assert why is not None and "backend='cuda' cannot run" in why
    with pytest.raises(BackendUnavailable, match=re.escape(why)):
        resolve_backend("cuda", cpu)  # the same message a fused module raises


def test_onnxruntime_variant_skips_with_its_reason_or_matches_eager(bench):
    row = bench.run_one(_case32(), "onnxruntime")
    if row.status == "SKIPPED":
        assert "onnxruntime" in row.reason or "build_ort_session" in row.reason
    else:
        assert row.status == "OK" and row.rel_error <= TOLERANCE["fp32"], row.reason
