"""Triton helpers shared by the kernels with depthwise taps (``bsconv.py``, ``convnext.py``)."""

import triton
import triton.language as tl


@triton.jit
def tap_window(oh, ow, tap, mask, H, W, KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr):
    """Where tap ``tap = kh·K + kw`` of a KxK window (stride S, padding P) reads for output pixel (oh, ow).

    ``ih = oh·S − P + kh``, ``iw = ow·S − P + kw``; ``inside``: ``mask`` and the
    read lies in the H x W image (outside it the load gives the zero padding).
    Shapes broadcast: 1-D pixel vectors with a scalar tap, or ``[P, 1]`` pixels
    with a ``[1, J]`` tap row (the im2col K index).
    """
    ih = oh * STRIDE - PAD + tap // KSIZE
    iw = ow * STRIDE - PAD + tap % KSIZE
    inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return ih, iw, inside
