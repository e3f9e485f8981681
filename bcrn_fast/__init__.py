"""bcrn_fast: fused Triton/CUDA kernels for the BCRN super-resolution network."""

from bcrn_fast.model import BCRN

__all__ = ["BCRN"]
__version__ = "0.1.0"
