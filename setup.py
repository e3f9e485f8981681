"""Build script for bcrn_fast.

The Python package is ``bcrn_fast``; the Triton kernels live in the top-level
``kernels/`` folder and install as ``bcrn_fast.kernels`` so nothing called
``kernels`` lands in site-packages.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["bcrn_fast", "bcrn_fast.*"]) + ["bcrn_fast.kernels"]

setup(
    name="bcrn_fast",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for the BCRN super-resolution network",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"bcrn_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy",
        "bsconv>=0.4",
        "pillow",
        "tqdm",
        "safetensors",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff"],
    },
    entry_points={"console_scripts": ["bcrn-fast = bcrn_fast.cli:main"]},
)
