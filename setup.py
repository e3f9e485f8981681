"""Build script for bcrn_fast.

The Python package is ``bcrn_fast``; the Triton kernels live in the top-level
``kernels/`` folder and install as ``bcrn_fast.kernels`` so nothing called
``kernels`` lands in site-packages.

The optional CUDA extension ``bcrn_fast._C`` (sources in ``csrc/``) is built
with nvcc by ``csrc/build.py`` when nvcc is found (BCRN_NVCC, CUDA_HOME,
CUDA_PATH, PATH or /usr/local/cuda); it links neither libtorch nor libcudart.so, so one build serves every
torch version. Environment:

- ``BCRN_CUDA_ARCHS="90"`` (or ``"80;90"``, ``"8.6"``...): compute capabilities
  to build; default sm_80, sm_86, sm_89, sm_90 (+ PTX of the newest);
- ``BCRN_NO_CUDA=1``: skip the extension;
- ``MAX_JOBS``: parallel nvcc processes (default: one per CPU, at most one per file).

Without nvcc, or when its build fails, setup prints why and goes on: the
package works without ``_C`` (``bcrn_fast.ops.cuda_ext.available()`` is False).
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
packages = find_packages(include=["bcrn_fast", "bcrn_fast.*"]) + ["bcrn_fast.kernels"]


def _cuda_build_module():
    spec = importlib.util.spec_from_file_location("bcrn_cuda_build", ROOT / "csrc" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _cuda_sources() -> list[str]:
    """The extension's sources as listed once, in ``csrc/build.py`` (the binding first, then the kernels)."""
    cuda_build = _cuda_build_module()
    return [f"csrc/{name}" for name in (cuda_build.BINDING_SOURCE, *cuda_build.KERNEL_SOURCES)]


class BuildExtWithNvcc(build_ext):
    """``build_ext`` that builds ``bcrn_fast._C`` with nvcc, or explains why not and skips it."""

    def build_extension(self, ext):
        if ext.name != "bcrn_fast._C":
            return super().build_extension(ext)
        if os.environ.get("BCRN_NO_CUDA", "0") not in ("", "0"):
            return self._skip("BCRN_NO_CUDA is set")
        try:
            cuda_build = _cuda_build_module()
        except Exception as exc:  # e.g. pybind11 missing from the build environment
            return self._skip(f"cannot load csrc/build.py ({exc})")
        nvcc = cuda_build.find_nvcc()
        if nvcc is None:
            return self._skip("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        out = Path(self.get_ext_fullpath(ext.name))
        try:
            res = cuda_build.build_extension(
                out,
                Path(self.build_temp) / "bcrn_cuda",
                jobs=self.parallel if isinstance(self.parallel, int) and self.parallel > 0 else None,
                verbose=bool(self.verbose),
            )
        except Exception as exc:
            return self._skip(f"the nvcc build failed:\n{exc}")
        print(
            f"bcrn_fast: built the CUDA extension {out.name} for sm_{', sm_'.join(res.archs)} "
            f"with {nvcc} in {res.seconds:.0f} s (resource report: {res.resource_report})",
            file=sys.stderr,
        )

    def _skip(self, why):
        print(
            f"bcrn_fast: NOT building the CUDA extension bcrn_fast._C: {why}. The package works without it "
            "(Triton and PyTorch backends); bcrn_fast.ops.cuda_ext.available() will be False.",
            file=sys.stderr,
        )


setup(
    name="bcrn_fast",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for the BCRN super-resolution network",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"bcrn_fast.kernels": "kernels"},
    # optional: a missing or failed build leaves the package working (see BuildExtWithNvcc)
    ext_modules=[
        Extension(
            "bcrn_fast._C",
            sources=_cuda_sources(),
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExtWithNvcc},
    install_requires=[
        "torch>=2.6",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy",
        "pillow",
        "tqdm",
        "safetensors",
    ],
    extras_require={
        # pybind11: the CUDA-extension tests build it (and its CPU emulator) themselves;
        # bsconv: only to prove the vendored bcrn_fast.bsconv.BSConvU equals the package's (tests/test_model.py)
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff", "pybind11>=2.12", "bsconv>=0.4"],
        # optional features (each one's module says what it needs it for; CI installs and tests them all)
        "video": ["av>=12"],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"],
        "ray": ["ray[data]>=2.40"],
        "all": ["av>=12", "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1", "ray[data]>=2.40"],
    },
    entry_points={"console_scripts": ["bcrn-fast = bcrn_fast.cli:main"]},
)
