"""What machine and software a benchmark ran on (recorded in every report)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["collect_environment", "device_slug", "git_commit"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout this package runs from; ``BCRN_GIT_COMMIT`` overrides.

    A GPU machine may get a copy of the tree without ``.git``: then the
    commit is whatever the caller exported, else None.
    """
    env = os.environ.get("BCRN_GIT_COMMIT")
    if env:
        return env, None
    commit = _run(["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT)
    if commit is None:
        return None, None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO_ROOT)
    return commit, bool(status)


def _nvidia_driver() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_environment(device: torch.device) -> dict[str, Any]:
    """Device name, driver, library versions, git commit: the header of every report."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = git_commit()
    env: dict[str, Any] = {
        "device": device.type,
        "device_name": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": dirty,
        "gpu_memory_gb": None,
        "sm": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        env["sm"] = f"{props.major}{props.minor}"
        env["driver"] = _nvidia_driver()
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device_name"] = f"CPU: {env['cpu']} ({torch.get_num_threads()} threads)"
    return env


def device_slug(env: dict[str, Any]) -> str:
    """A file-name-safe device tag, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    if env.get("device") != "cuda":
        return "cpu"
    name = str(env.get("device_name") or "cuda").lower()
    slug = "".join(ch if ch.isalnum() else "-" for ch in name)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-") or "cuda"
