"""benchmarks/gpu_check.sh: the CPU rehearsal catches the two faults that would have wasted the first GPU run.

(a) a package the GPU image lacks, needed at import (bsconv was one): the preflight imports with the pinned
    package set only (benchmarks/gpu_image_packages.txt) and fails naming the package;
(b) a test module forcing ``TRITON_INTERPRET=1`` (the GPU tests would check the interpreter again): the
    rehearsal's ``pytest --collect-only`` with ``BCRN_REHEARSE_GPU=1`` fails.

Only the cheap stages run here, against temporary copies, with this interpreter standing in for the
rehearsal venv (``BCRN_REHEARSE_PYTHON``); CI runs the whole rehearsal once in ``.ci/run``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="gpu_check.sh needs bash")


def rehearse(out: Path, stages: str, **env: str) -> tuple[int, str, dict]:
    full = dict(os.environ, BCRN_REHEARSE_PYTHON=sys.executable, GPU_CHECK_STAGES=stages, **env)
    full.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", str(out)], env=full, capture_output=True, text=True, timeout=300
    )
    summary = json.loads((out / "summary.json").read_text())
    return proc.returncode, proc.stdout + proc.stderr, {s["stage"]: s["status"] for s in summary["stages"]}


def probe_package(tmp_path: Path, name: str, body: str) -> Path:
    pkg = tmp_path / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    return tmp_path / "site"


def test_preflight_fails_on_an_import_the_gpu_image_lacks(tmp_path):
    pytest.importorskip("bsconv", reason="needs an installed package outside the GPU image's set (bsconv)")
    site = probe_package(tmp_path, "needs_bsconv", "from bsconv.pytorch import BSConvU  # the fault found in review\n")
    rc, log, stages = rehearse(
        tmp_path / "out", "preflight", PYTHONPATH=str(site), GPU_CHECK_PREFLIGHT_MODULES="needs_bsconv"
    )
    assert rc == 1, log
    assert stages["preflight"] == "FAILED"
    assert "No module named 'bsconv' (not in the GPU image's package set)" in log
    assert "gpu_check.sh: preflight failed" in log  # and nothing after it ran


def test_preflight_passes_when_every_import_is_in_the_gpu_image(tmp_path):
    site = probe_package(tmp_path, "needs_numpy", "import numpy\nimport torch\n")
    rc, log, stages = rehearse(
        tmp_path / "out", "preflight", PYTHONPATH=str(site), GPU_CHECK_PREFLIGHT_MODULES="needs_numpy"
    )
    assert rc == 0, log
    assert stages["preflight"] == "ok" and "preflight ok" in log


def test_bcrn_fast_itself_imports_with_only_the_gpu_image_packages(tmp_path):
    """The real package: every module the GPU check uses imports with the pinned set (no bsconv, av, ray...)."""
    rc, log, stages = rehearse(tmp_path / "out", "preflight")
    assert rc == 0, log
    assert stages["preflight"] == "ok"


def _tests_copy(tmp_path: Path, module_body: str) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_probe.py").write_text(module_body + "\n\ndef test_nothing():\n    assert True\n")
    return tests


def test_collect_fails_when_a_test_module_forces_the_interpreter(tmp_path):
    tests = _tests_copy(tmp_path, 'import os\n\nos.environ.setdefault("TRITON_INTERPRET", "1")  # the fault')
    rc, log, stages = rehearse(tmp_path / "out", "collect", GPU_CHECK_TESTS_DIR=str(tests))
    assert rc == 1, log
    assert stages["collect"] == "FAILED"
    assert "changed TRITON_INTERPRET" in (tmp_path / "out" / "tests.log").read_text()


def test_collect_passes_for_a_clean_test_module(tmp_path):
    tests = _tests_copy(tmp_path, "import os")
    rc, log, stages = rehearse(tmp_path / "out", "collect", GPU_CHECK_TESTS_DIR=str(tests))
    assert rc == 0, log
    assert stages["collect"] == "ok"


def test_gpu_mode_refuses_to_run_without_a_gpu_or_data(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs DATA_DIR" in proc.stderr
    if shutil.which("nvidia-smi") is None:
        proc = subprocess.run(
            ["bash", str(SCRIPT), str(tmp_path / "out"), str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1 and "use --rehearse" in proc.stdout + proc.stderr


def test_pin_file_keeps_the_gpu_images_versions_and_lacks_what_it_lacks():
    pins = (ROOT / "benchmarks" / "gpu_image_packages.txt").read_text().splitlines()
    reqs = {line.split("==")[0].lower(): line.split("==")[1] for line in pins if "==" in line and "#" not in line}
    assert reqs["triton"] == "3.6.0"
    assert reqs["numpy"] == "2.3.5"  # the Triton 3.6 interpreter fails with NumPy >= 2.4 (documented deviation)
    assert not {"bsconv", "av", "ray", "ruff", "torch"} & set(reqs)
