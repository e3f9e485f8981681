"""ConvNeXt inverse bottleneck (BCRN's ``convNextBlock``) fused into one Triton kernel.

depthwise 3x3 (+bias) -> 1x1 C->HID (+bias) -> exact GELU -> 1x1 HID->C (+bias)
-> + residual, with the HID-wide hidden tile never leaving the chip, and an
optional epilogue writing the 16-channel ESA pre-map. Launcher, checks and
dispatch: ``bcrn_fast.ops.convnext``.

The GELU is ``h·Φ(h)`` with ``Φ(-|h|) = ½·erfc(|h|/√2) = 2^p(|h|)``: ``p`` a
degree-7 polynomial (weighted minimax fit of ``log2 Φ(-b)`` on ``b ∈ [0, 5.5]``,
constrained to decrease on all of ℝ and to stay below -22 beyond 5.5), so one
``exp2`` (MUFU.EX2) and 7 FMAs replace libdevice's ``erf``. The erf it implies,
``erf(h/√2) = sign(h)·(1 - 2^(1+p(|h|)))``, is within 1e-6 of the exact erf for
every fp32 ``h`` (``tests/test_gelu.py`` sweeps the fp32 values and states the
bound; docs/fused-ops.md, "GELU").
"""

import torch
import triton
import triton.language as tl

from . import Config, Rule, dot_mode, natural_tile, pick, pixel_tile
from .window import tap_window

# p(b) = Σ_k _GELU_P[k]·b^k ≈ log2(½·erfc(b/√2)), fp32 values (exactly representable as written)
_GP0 = tl.constexpr(-0.9999997019767761)
_GP1 = tl.constexpr(-1.1511224508285522)
_GP2 = tl.constexpr(-0.459057480096817)
_GP3 = tl.constexpr(-0.05297335237264633)
_GP4 = tl.constexpr(0.007764660287648439)
_GP5 = tl.constexpr(-0.0006650527939200401)
_GP6 = tl.constexpr(2.1095207557664253e-05)
_GP7 = tl.constexpr(-2.1528349236632494e-07)
_SQRT2 = tl.constexpr(1.4142135623730951)


@triton.jit
def phi_neg(b):
    """``Φ(-b) = ½·erfc(b/√2)`` for ``b >= 0`` (fp32): ``2^p(b)``, p in Horner form (7 FMAs, 1 exp2).

    p decreases on all of ℝ and p(b) < -22 for b > 5.5, so the tail needs no
    cut-off: 2^p(b) falls below 2^-22 there and flushes to 0 for large b
    (p(+inf) = -inf, so GELU(+inf) = +inf).
    """
    r = tl.fma(b, _GP7, _GP6)
    r = tl.fma(r, b, _GP5)
    r = tl.fma(r, b, _GP4)
    r = tl.fma(r, b, _GP3)
    r = tl.fma(r, b, _GP2)
    r = tl.fma(r, b, _GP1)
    r = tl.fma(r, b, _GP0)
    return tl.exp2(r)


@triton.jit
def gelu_fast(h):
    """``GELU(h) = h·Φ(h)`` (exact-erf GELU to |erf error| <= 1e-6): ``h·(1 - Φ(-h))`` for h >= 0, ``h·Φ(h)`` below."""
    q = phi_neg(tl.abs(h))
    return h * tl.where(h >= 0.0, 1.0 - q, q)


@triton.jit
def erf_fast(x):
    """``erf(x) = sign(x)·(1 - 2·Φ(-√2·|x|))``: the erf :func:`gelu_fast` implies, for tests and other users."""
    e = 1.0 - 2.0 * phi_neg(tl.abs(x) * _SQRT2)
    return tl.where(x < 0.0, -e, e)


@triton.jit
def convnext_kernel(
    # pointers
    t_ptr,  # [N, C, H, W] storage dtype, any strides: block input (and residual)
    dw_ptr,  # [9, C] fp32, contiguous: depthwise 3x3 taps (tap = kh*3 + kw)
    bd_ptr,  # [C] fp32: depthwise bias
    w1_ptr,  # [C, HID] compute dtype, contiguous: expand weight W1ᵀ
    b1_ptr,  # [HID] fp32
    w2_ptr,  # [HID, C] compute dtype, contiguous: reduce weight W2ᵀ
    b2_ptr,  # [C] fp32
    aw_ptr,  # [C, E] compute dtype, contiguous: folded ESA pre-map A; read only if HAS_ESA
    ab_ptr,  # [E] fp32: folded ESA pre-map bias a0; read only if HAS_ESA
    y_ptr,  # [N, C, H, W] storage dtype, any strides: block output
    a_ptr,  # [N, E, H, W] storage dtype, any strides: ESA pre-map; written only if HAS_ESA
    # sizes
    C,  # feature channels (64 in BCRN)
    HID,  # hidden channels (4·C = 256 in BCRN)
    E,  # ESA pre-map channels (16 in BCRN)
    H,  # height
    W,  # width
    # strides (elements)
    stn,  # t, dim N
    stc,  # t, dim C
    sth,  # t, dim H
    stw,  # t, dim W
    syn,  # y, dim N
    syc,  # y, dim C
    syh,  # y, dim H
    syw,  # y, dim W
    san,  # a, dim N
    sac,  # a, dim C
    sah,  # a, dim H
    saw,  # a, dim W
    # meta-parameters: constexpr because they fix register tile shapes
    # (BLOCK_*, *_PAD), which code exists (HAS_ESA) and the dot mode (PRECISION)
    HAS_ESA: tl.constexpr,  # also write a = yᵀ·A + a0
    BLOCK_P: tl.constexpr,  # pixels per program (power of two >= 16)
    C_PAD: tl.constexpr,  # next power of two >= max(C, 16)
    HID_BLOCK: tl.constexpr,  # hidden channels per chunk (power of two >= 16; 64)
    E_PAD: tl.constexpr,  # next power of two >= max(E, 16)
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands ("ieee" | "tf32")
    DOT_IN_FP32: tl.constexpr,  # upcast half operands to fp32 before tl.dot: only under the interpreter with
    # bf16, whose dot multiplies raw bf16 bit patterns (Triton 3.9); exact, so results match the GPU path
    WIDE_INDEX: tl.constexpr,  # int64 pixel/channel offsets: some element offset of t, y or a reaches 2^31
):
    # z = b_d + Σ_tap dw[tap] ⊙ t[p + tap]                    (3x3, pad 1, zero outside)
    # y = t + Σ_chunks GELU(z·W1[:, chunk] + b1[chunk])·W2[chunk, :] + b2
    # a = y·A + a0                                             (if HAS_ESA)
    # One program owns BLOCK_P consecutive pixels (row-major over H x W) of ONE
    # image times all C channels: grid = (cdiv(H·W, BLOCK_P), N). z, the
    # hidden chunk h [BLOCK_P, HID_BLOCK] and the accumulator stay on chip in
    # fp32; GEMM operands are rounded to the compute dtype right before tl.dot.
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] pixel index
    offs_c = tl.arange(0, C_PAD)  # [C_PAD] channel
    if WIDE_INDEX:  # every offset below is then formed in int64 (pixel index · stride can pass 2^31)
        offs_p = offs_p.to(tl.int64)
        offs_c = offs_c.to(tl.int64)
    p_mask = offs_p < H * W
    qh = offs_p // W
    qw = offs_p % W
    c_mask = offs_c < C

    # depthwise 3x3, software-pipelined over the taps (num_stages=2: tap k+1's
    # shifted tile is loaded while tap k accumulates). Fully unrolled
    # (tl.static_range) the 9 loads of a [128, 64] tile spill 440-1200 B at 255 registers.
    t_img = t_ptr + n * stn
    z = tl.zeros((BLOCK_P, C_PAD), dtype=tl.float32)
    for tap in tl.range(9, num_stages=2):
        ih, iw, inside = tap_window(qh, qw, tap, p_mask, H, W, 3, 1, 1)  # ih = qh - 1 + tap // 3, ...
        tt = tl.load(
            t_img + (ih * sth + iw * stw)[:, None] + (offs_c * stc)[None, :],
            mask=inside[:, None] & c_mask[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_P, C_PAD]
        d = tl.load(dw_ptr + tap * C + offs_c, mask=c_mask, other=0.0)  # [C_PAD] fp32
        z += tt * d[None, :]
    z += tl.load(bd_ptr + offs_c, mask=c_mask, other=0.0)[None, :]
    zc = z.to(w1_ptr.dtype.element_ty)  # GEMM operand in the compute dtype

    # inverse bottleneck, hidden dimension in chunks of HID_BLOCK
    acc = tl.zeros((BLOCK_P, C_PAD), dtype=tl.float32)
    for h0 in range(0, HID, HID_BLOCK):
        offs_h = h0 + tl.arange(0, HID_BLOCK)  # [HID_BLOCK]
        h_mask = offs_h < HID
        w1 = tl.load(
            w1_ptr + offs_c[:, None] * HID + offs_h[None, :], mask=c_mask[:, None] & h_mask[None, :], other=0.0
        )  # [C_PAD, HID_BLOCK]
        if DOT_IN_FP32:  # exact upcast of the rounded operands (interpreter bf16 workaround)
            h = tl.dot(zc.to(tl.float32), w1.to(tl.float32), input_precision="ieee")
        else:
            h = tl.dot(zc, w1, input_precision=PRECISION)  # [BLOCK_P, HID_BLOCK] fp32
        h += tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0)[None, :]
        h = gelu_fast(h)  # GELU(h) = h·Φ(h), |erf error| <= 1e-6 (module docstring)
        w2 = tl.load(
            w2_ptr + offs_h[:, None] * C + offs_c[None, :], mask=h_mask[:, None] & c_mask[None, :], other=0.0
        )  # [HID_BLOCK, C_PAD]
        if DOT_IN_FP32:
            acc = tl.dot(h.to(w2.dtype).to(tl.float32), w2.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(h.to(w2.dtype), w2, acc, input_precision=PRECISION)

    # residual: the centre tap again (an L1/L2 hit), loaded late to keep it out of the GEMM loop's registers
    pc_mask = p_mask[:, None] & c_mask[None, :]
    resid = tl.load(t_img + (qh * sth + qw * stw)[:, None] + (offs_c * stc)[None, :], mask=pc_mask, other=0.0)
    y = resid.to(tl.float32) + (acc + tl.load(b2_ptr + offs_c, mask=c_mask, other=0.0)[None, :])
    yq = y.to(y_ptr.dtype.element_ty)  # the stored (rounded) block output
    y_off = qh[:, None] * syh + qw[:, None] * syw + offs_c[None, :] * syc
    tl.store(y_ptr + n * syn + y_off, yq, mask=pc_mask)

    if HAS_ESA:
        # ESA pre-map from the stored y (storage dtype == compute dtype)
        offs_e = tl.arange(0, E_PAD)
        e_mask = offs_e < E
        aw = tl.load(
            aw_ptr + offs_c[:, None] * E + offs_e[None, :], mask=c_mask[:, None] & e_mask[None, :], other=0.0
        )  # [C_PAD, E_PAD]
        if DOT_IN_FP32:
            a = tl.dot(yq.to(aw.dtype).to(tl.float32), aw.to(tl.float32), input_precision="ieee")
        else:
            a = tl.dot(yq.to(aw.dtype), aw, input_precision=PRECISION)  # [BLOCK_P, E_PAD] fp32
        a += tl.load(ab_ptr + offs_e, mask=e_mask, other=0.0)[None, :]
        a_off = qh[:, None] * sah + qw[:, None] * saw + offs_e[None, :] * sac
        tl.store(a_ptr + n * san + a_off, a.to(a_ptr.dtype.element_ty), mask=p_mask[:, None] & e_mask[None, :])


# --------------------------------------------------------------------------- launch configurations
# From ptxas resource usage of the AOT-compiled kernel (C 64, HID 256; sm_80/86/90, Triton 3.6 and 3.9).
# Facts: ``mode`` "ieee" / "tf32" (fp32) or "half"; ``wide``: the int64 offset path; ``big``: the unshrunk
# tile is [128, 64]; ``esa``: the ESA pre-map epilogue is on (every block of the model). ``block_k``: the
# hidden chunk HID_BLOCK (0: 64); 3 stages (Triton's default) pipeline the hidden-chunk loop.
# The two big rows were chosen by ``python -m bcrn_fast.occupancy`` (docs/occupancy.md): half [128, 64] with
# 64-wide hidden chunks needs 131-194 registers, 1 program (8 warps) per SM; 32-wide chunks fit 109-128
# registers, 2 programs (16 warps) per SM on sm_80/86/90 without spills, at the same L2 weight traffic and
# +4-6 % instructions. tf32 [64, 4 warps] re-read 1.1 GB of fp32 W1/W2 from L2 per 960x540 launch and left
# sm_86 4 warps per SM (80 KiB shared); [128, 8 warps] halves that, holds 8 warps per SM on all three and
# issues 2-3 % fewer instructions on sm_90.
# fmt: off
CONFIGS = (
    Rule({"mode": "ieee", "wide": True}, Config(16, 8, 3, why="int64 offsets: 4 warps spill 8 B on sm_86/sm_89 (Triton 3.9)")),  # noqa: E501
    Rule({"mode": "ieee"}, Config(16, 4, 3, why="FMA dots (no tensor cores) spill above BLOCK_P 16")),
    Rule({"mode": "tf32", "big": True, "esa": True}, Config(128, 8, 3, why="tf32 with the ESA epilogue (the model's blocks): 146-196 registers, 96-129 KiB shared, 1 program of 8 warps per SM, half the L2 weight reads of [64, 4 warps]; without the epilogue it puts 8-16 B on the stack on sm_86 (Triton 3.9; also with 32-wide chunks or 2 stages)")),  # noqa: E501
    Rule({"mode": "tf32"}, Config(64, 4, 3, why="tf32 tiles below 128 pixels or without the ESA epilogue: BLOCK_P 64 on 4 warps, no spills")),  # noqa: E501
    Rule({"mode": "half", "big": True}, Config(128, 8, 3, block_k=32, why="half: 32-wide hidden chunks, 109-128 registers: 2 programs (16 warps) per SM; 64-wide chunks need 131-194 (1 per SM)")),  # noqa: E501
    Rule({"mode": "half"}, Config(128, 4, 3, why="tiles below 128 pixels: 4 warps")),
)
# fmt: on


def launch_config(
    hw: int, dtype: torch.dtype, precision: str, wide_index: bool = False, has_esa: bool = True
) -> tuple[int, ...]:
    """(BLOCK_P, HID_BLOCK cap, num_warps, num_stages, maxnreg) of ``CONFIGS`` for an ``hw``-pixel map (C = 64)."""
    mode = dot_mode(dtype, precision)
    config = pick(CONFIGS, mode=mode, wide=wide_index, big=natural_tile(hw, 64) == 128, esa=has_esa)
    return pixel_tile(config, hw, 64), config.block_k or 64, config.num_warps, config.num_stages, config.maxnreg
