"""BSConvU (pointwise 1x1 then depthwise KxK) fused into one Triton kernel.

Used for every BSConvU of BCRN: the 3x3 convs (pad 1), the 1x1 form, ESA's
stride-2 valid 3x3, the tail ``conv2`` over the 384-channel buffer (CCA scale
on load, GELU, + F0) and the upsampler (pixel shuffle as store addressing).
Launcher, checks and dispatch: ``bcrn_fast.ops.bsconv``.
"""

import torch
import triton
import triton.language as tl

from . import Config, Rule, natural_tile, pick, pixel_tile

_INV_SQRT2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2) for the exact GELU


# Sizes are not specialised on the value 1 (a 1x1 map, ESA's low-res branch of a
# 15x15 input): those rare variants made ptxas spill 8 B, the generic code does not.
@triton.jit(do_not_specialize=["H", "W", "HO", "WO"])
def bsconv_kernel(
    # pointers
    x_ptr,  # [N, CIN, H, W] storage dtype, any strides (NCHW, NHWC, channel slice)
    s_ptr,  # [N, CIN] fp32 per-(n, cin) input scale; read only if HAS_SCALE
    pw_ptr,  # [CIN, COUT] compute dtype, contiguous: pwᵀ
    dw_ptr,  # [KSIZE*KSIZE, COUT] fp32, contiguous: depthwise taps (row-major tap = kh*KSIZE + kw)
    b_ptr,  # [COUT] fp32: depthwise bias
    res_ptr,  # [N, COUT // SHUFFLE², HO*SHUFFLE, WO*SHUFFLE] storage dtype, any strides; read only if HAS_RES
    y_ptr,  # [N, COUT // SHUFFLE², HO*SHUFFLE, WO*SHUFFLE] storage dtype, any strides
    # sizes
    CIN,  # input channels (K of the pointwise GEMM; 3, 16, 64 or 384 in BCRN)
    COUT,  # pointwise/depthwise channels (before the pixel shuffle)
    H,  # input height
    W,  # input width
    HO,  # output height before the shuffle: (H + 2*PAD - KSIZE) // STRIDE + 1
    WO,  # output width before the shuffle
    # strides (elements)
    sxn,  # x, dim N
    sxc,  # x, dim C
    sxh,  # x, dim H
    sxw,  # x, dim W
    ssn,  # s, dim N
    ssc,  # s, dim C
    srn,  # res (output layout, after the shuffle), dim N
    src,  # res (output layout, after the shuffle), dim C
    srh,  # res (output layout, after the shuffle), dim H
    srw,  # res (output layout, after the shuffle), dim W
    syn,  # y (after the shuffle), dim N
    syc,  # y (after the shuffle), dim C
    syh,  # y (after the shuffle), dim H
    syw,  # y (after the shuffle), dim W
    # meta-parameters: constexpr because they fix the tap loop (KSIZE), the
    # address arithmetic (STRIDE, PAD, SHUFFLE), which code exists (ACT,
    # HAS_SCALE, HAS_RES, PRECISION) and the register tile shapes (BLOCK_*)
    KSIZE: tl.constexpr,  # depthwise kernel size (1 or 3)
    STRIDE: tl.constexpr,  # depthwise stride (1 or 2)
    PAD: tl.constexpr,  # zero padding of the depthwise conv
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 exact (erf) GELU
    SHUFFLE: tl.constexpr,  # pixel-shuffle factor r of the store (1 = plain store)
    HAS_SCALE: tl.constexpr,  # multiply x by s[n, :] on load
    HAS_RES: tl.constexpr,  # add res after the activation
    BLOCK_P: tl.constexpr,  # output pixels per program (power of two >= 16)
    BLOCK_K: tl.constexpr,  # input channels per GEMM chunk (power of two, 16..64)
    COUT_PAD: tl.constexpr,  # next power of two >= max(COUT, 16)
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands ("ieee" | "tf32")
    DOT_IN_FP32: tl.constexpr,  # upcast half operands to fp32 before tl.dot: only under the interpreter with
    # bf16, whose dot multiplies raw bf16 bit patterns (Triton 3.9); exact, so results match the GPU path
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets: some tensor's largest element offset is >= 2^31
    # (ops._common.needs_wide_index; e.g. the 384-channel buffer of a > 5.59 M-pixel image); else i32 math
):
    # y[n, o, q] = act(b[o] + Σ_tap dw[tap, o] · Σ_i pw[i, o] · s[n, i] · x[n, i, q·STRIDE − PAD + tap]) + res[n, o, q]
    # (zero padding outside the image; o = c·r² + i·r + j is stored at
    # y[n, c, r·qh + i, r·qw + j] when SHUFFLE = r > 1).
    # One program owns BLOCK_P consecutive output pixels (row-major over
    # HO x WO) of ONE image times all COUT channels: grid = (cdiv(HO·WO, BLOCK_P), N).
    # Per K chunk and tap it loads the shifted input tile [BLOCK_P, BLOCK_K]
    # (masked at borders = zero padding, and for padded channels), scales it,
    # runs the pointwise GEMM against pwᵀ [BLOCK_K, COUT_PAD] on tensor cores
    # and accumulates the result times dw[tap, :] in fp32.
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] output pixel index (< HO·WO < 2^31)
    p_mask = offs_p < HO * WO
    oh = offs_p // WO
    ow = offs_p % WO
    offs_o = tl.arange(0, COUT_PAD)  # [COUT_PAD] output channel
    o_mask = offs_o < COUT
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K] input channel within the chunk
    if WIDE_INDEX:
        # Every in-image offset below is a sum of (row, column, channel) index × stride terms; with int64
        # indices each product and sum is int64 (i32 strides are promoted), so no term can wrap.
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        offs_o = offs_o.to(tl.int64)
        offs_k = offs_k.to(tl.int64)

    x_img = x_ptr + n * sxn
    acc = tl.zeros((BLOCK_P, COUT_PAD), dtype=tl.float32)
    # Both loops are scf.for (not unrolled): one shifted tile is live at a
    # time, which keeps registers bounded and lets the pipeliner prefetch.
    for k0 in range(0, CIN, BLOCK_K):
        ck = k0 + offs_k
        k_mask = ck < CIN
        # pwᵀ chunk [BLOCK_K, COUT_PAD], zero rows/columns for padded channels
        pw = tl.load(pw_ptr + ck[:, None] * COUT + offs_o[None, :], mask=k_mask[:, None] & o_mask[None, :], other=0.0)
        if HAS_SCALE:
            s = tl.load(s_ptr + n * ssn + ck * ssc, mask=k_mask, other=0.0)  # [BLOCK_K] fp32
        for tap in range(KSIZE * KSIZE):
            ih = oh * STRIDE - PAD + tap // KSIZE
            iw = ow * STRIDE - PAD + tap % KSIZE
            inside = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xt = tl.load(
                x_img + (ih * sxh + iw * sxw)[:, None] + (ck * sxc)[None, :],
                mask=inside[:, None] & k_mask[None, :],
                other=0.0,
            )  # [BLOCK_P, BLOCK_K] storage dtype
            if HAS_SCALE:
                xt = (xt.to(tl.float32) * s[None, :]).to(pw.dtype)
            if DOT_IN_FP32:  # exact upcast of the rounded operands (interpreter bf16 workaround)
                part = tl.dot(xt.to(tl.float32), pw.to(tl.float32), input_precision="ieee")
            else:
                part = tl.dot(xt, pw, input_precision=PRECISION)  # [BLOCK_P, COUT_PAD] fp32
            d = tl.load(dw_ptr + tap * COUT + offs_o, mask=o_mask, other=0.0)  # [COUT_PAD] fp32
            acc += part * d[None, :]

    acc += tl.load(b_ptr + offs_o, mask=o_mask, other=0.0)[None, :]
    if ACT == 1:
        # relu that keeps NaN like torch.relu (the GPU's max.f32 returns the non-NaN operand)
        acc = tl.where(acc != acc, acc, tl.maximum(acc, 0.0))
    if ACT == 2:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * _INV_SQRT2))

    # store addressing: channel o -> (c, i, j) = (o // r², (o // r) % r, o % r)
    c = offs_o // (SHUFFLE * SHUFFLE)
    si = (offs_o // SHUFFLE) % SHUFFLE
    sj = offs_o % SHUFFLE
    oh_r = oh * SHUFFLE
    ow_r = ow * SHUFFLE
    mask = p_mask[:, None] & o_mask[None, :]
    if HAS_RES:
        r_off = oh_r[:, None] * srh + ow_r[:, None] * srw + (c * src + si * srh + sj * srw)[None, :]
        acc += tl.load(res_ptr + n * srn + r_off, mask=mask, other=0.0).to(tl.float32)
    y_off = oh_r[:, None] * syh + ow_r[:, None] * syw + (c * syc + si * syh + sj * syw)[None, :]
    tl.store(y_ptr + n * syn + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launch configurations
# From ptxas resource usage of the AOT-compiled kernel (``python -m bcrn_fast.aot``, sm_80, sm_86, sm_89 and
# sm_90 under Triton 3.6 and 3.9); every row is spill-free on all of them. Facts: ``mode`` "ieee" (fp32 FMA
# dots, no tensor cores, nothing to pipeline), "tf32" (fp32) or "half" (fp16/bf16); ``narrow``: the tile is
# at most 16 channels wide (Cout and the K chunk); ``cout_pad``; ``wide``: the int64 offset path (images past
# 2^31 element offsets, more address registers); ``big``: the unshrunk tile reaches [128, 64] elements.
# Tensor-core rows (tf32, half) never shrink with the map: the shrunk tiles are not spill-free under Triton
# 3.6 ([16, 64] tf32 8 B on sm_90, half 32 B on sm_80; [16, 32] tf32 8 B on sm_80).
# fmt: off
CONFIGS = (
    Rule({"narrow": True, "mode": "ieee"}, Config(32, 4, 1, shrink=False, why="ESA low-res branch: [16, 16] spills 8 B on 2 or 4 warps")),  # noqa: E501
    Rule({"narrow": True, "wide": True}, Config(32, 4, 2, shrink=False, why="int64 offsets: 3 stages spill 8 B (tf32, sm_80)")),  # noqa: E501
    Rule({"narrow": True}, Config(32, 4, 3, shrink=False, why="[32, 16] on 4 warps: clean for every dtype and arch")),  # noqa: E501
    Rule({"mode": "ieee", "cout_pad": 64}, Config(16, 4, 1, block_k=32, why="BLOCK_K 64 spills 8 B on sm_86/sm_89 (Triton 3.6, 4 warps; 2 or 8 warps spill on sm_80/sm_90)")),  # noqa: E501
    Rule({"mode": "ieee"}, Config(16, 4, 1, why="FMA dots spill above BLOCK_P 16 at 64 channels")),
    Rule({"mode": "tf32", "cout_pad": 32}, Config(32, 2, 3, shrink=False, why="x3 upsampler: 4 warps spill 8 B on sm_90")),  # noqa: E501
    Rule({"mode": "tf32"}, Config(32, 4, 3, shrink=False, why="BLOCK_P 64 spills on sm_80 even on 8 warps; Cout 16: 2 warps spill on sm_80 (3.6), sm_86/sm_89 (3.9)")),  # noqa: E501
    Rule({"mode": "half", "cout_pad": 32}, Config(64, 4, 3, shrink=False, why="x3 upsampler: [128, 32] on 8 warps spills 8 B on sm_86/sm_89 (Triton 3.6)")),  # noqa: E501
    Rule({"mode": "half", "big": True, "wide": True}, Config(64, 8, 3, shrink=False, why="int64 offsets: 128 pixels spill 8-24 B on sm_80, sm_86/sm_89 (4 or 8 warps)")),  # noqa: E501
    Rule({"mode": "half", "big": True}, Config(128, 8, 3, shrink=False, why="[128, 64] spills on 4 warps")),
    Rule({"mode": "half", "wide": True}, Config(64, 4, 3, shrink=False, why="int64 offsets, 32-wide tiles: [128, 32] on 4 warps spills (Triton 3.9, sm_80/sm_90)")),  # noqa: E501
    Rule({"mode": "half"}, Config(128, 4, 3, shrink=False, why="tiles below [128, 64]: 4 warps, no spills")),
)
# fmt: on


def launch_config(
    hw: int, cout_pad: int, block_k: int, dtype: torch.dtype, precision: str, wide_index: bool = False
) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_K, num_warps, num_stages) of ``CONFIGS`` for an ``hw``-pixel output map."""
    width = max(cout_pad, block_k)
    mode = ("ieee" if precision == "ieee" else "tf32") if dtype == torch.float32 else "half"
    big = natural_tile(None, width) * width >= 128 * 64
    config = pick(CONFIGS, mode=mode, narrow=width <= 16, cout_pad=cout_pad, wide=wide_index, big=big)
    block_k = min(block_k, config.block_k) if config.block_k else block_k
    return pixel_tile(config, hw, width), block_k, config.num_warps, config.num_stages
