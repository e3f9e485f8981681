"""Every benchmark row in its own process (``--isolate``): one fault cannot cost the other rows.

On a GPU a kernel that faults leaves the CUDA context unusable for the rest of its process, and a kernel that hangs
stops everything after it. So the parent never touches the GPU: it orders the rows
(:data:`~bcrn_fast.benchmarking.variants.ISOLATED_ORDER`: baselines first, fused rows next, slow compile modes last)
and runs ``python -m bcrn_fast.benchmarking.isolated SPEC.json RESULT.json`` per row under a timeout. The row is the
child's own (made by :meth:`Bench.run_one`, kernels counted after its timing), or TIMEOUT when the child ran past its
limit (its process group is killed), or CRASHED with the exit code or signal and its last output line when it died
without a row. Rows share only the disk caches (Triton's, Inductor's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bcrn_fast.benchmarking.harness import Bench, Case, OnRow, Options, Row
from bcrn_fast.benchmarking.variants import ISOLATED_ORDER, VARIANTS

__all__ = ["isolated_order", "row_timeout", "run_isolated"]

_STARTUP_S = 30.0  # a child's own start: import torch, CUDA context, reference model and output
_CPU_SLOWDOWN = 3.0  # CPU rows (rehearsals, CI) run on small shared machines: allow more


def isolated_order(jobs: Sequence[tuple[Case, str]]) -> list[int]:
    """Indices of ``jobs`` in run order: by :data:`ISOLATED_ORDER` rank of the variant, then grid order."""
    rank = {name: i for i, name in enumerate(ISOLATED_ORDER)}
    return sorted(range(len(jobs)), key=lambda i: (rank.get(jobs[i][1], len(rank)), i))


def row_timeout(variant: str, options: Options, cap_s: float | None = None) -> float:
    """Seconds a row's process may take: start-up + twice the variant's build estimate + the timing budget."""
    est = VARIANTS[variant].est_build_s if variant in VARIANTS else 30.0
    limit = (_STARTUP_S + 2 * est + 4 * options.max_row_s + 10) * (_CPU_SLOWDOWN if options.device.type == "cpu" else 1)
    return limit if cap_s is None else min(limit, cap_s)


def _child_command(spec: Path, result: Path) -> list[str]:
    return [sys.executable, "-m", "bcrn_fast.benchmarking.isolated", str(spec), str(result)]


def _run_child(case: Case, variant: str, options: Options, timeout_s: float, workdir: Path) -> Row:
    spec, result = workdir / "spec.json", workdir / "row.json"
    result.unlink(missing_ok=True)
    opts = dict(dataclasses.asdict(options), device=str(options.device), budget_s=None)  # the parent owns the budget
    spec.write_text(json.dumps({"case": dataclasses.asdict(case), "variant": variant, "options": opts}))
    t0 = time.monotonic()
    # own process group, so a timeout also ends the compile workers a child started
    cmd = _child_command(spec, result)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, timed_out = "", False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig in (signal.SIGTERM, signal.SIGKILL):  # ProcessLookupError: the group has gone already
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, sig)
                out, _ = proc.communicate(timeout=5)
                break
    elapsed = time.monotonic() - t0
    lines = (out or "").splitlines()
    if lines:
        sys.stderr.write("".join(f"    | {ln}\n" for ln in lines[-40:]))
        sys.stderr.flush()
    if timed_out:
        return Row.for_case(case, variant, "TIMEOUT", f"its process ran past {timeout_s:.0f} s and was killed")
    if result.exists():
        return Row(**json.loads(result.read_text()))
    rc = proc.returncode
    how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}"
    last = next((ln.strip()[:300] for ln in reversed(lines) if ln.strip()), "(no output)")
    return Row.for_case(
        case, variant, "CRASHED", f"its process died ({how}) after {elapsed:.0f} s without a result: {last}"
    )


def run_isolated(
    cases: Sequence[Case],
    variants: Sequence[str],
    options: Options,
    on_row: OnRow | None = None,
    row_timeout_s: float | None = None,
) -> list[Row]:
    """All rows of ``cases`` x ``variants`` (display order), each run in a fresh process.

    ``options.budget_s`` bounds the whole run: a row whose timeout no longer fits is SKIPPED with the
    reason. ``row_timeout_s`` caps every row's limit. Skips are decided here, without starting a child.
    """
    jobs = [(case, v) for case in cases for v in variants]
    probe = Bench(options)  # skips and the budget only: it never builds a model here
    with tempfile.TemporaryDirectory(prefix="bcrn_bench_row_") as tmp:
        rows, _ = probe.schedule(
            jobs,
            isolated_order(jobs),
            need_s=lambda v: row_timeout(v, options, row_timeout_s),
            execute=lambda case, v, limit: _run_child(case, v, options, limit, Path(tmp)),
            on_row=on_row,
        )
    return rows


def _child(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    case = Case(**spec["case"])
    options = Options(**dict(spec["options"], device=torch.device(spec["options"]["device"])))
    bench = Bench(options)
    row = bench.run_one(case, spec["variant"])
    if row.status == "OK" and options.device.type == "cuda" and options.profile:
        bench.profile_row(case, row)  # in this process after its timing: never perturbs another row
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(row.to_dict()))
    tmp.replace(result_path)  # a row file is complete or absent
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m bcrn_fast.benchmarking.isolated SPEC.json RESULT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(sys.argv[1], sys.argv[2]))
