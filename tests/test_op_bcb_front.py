"""bcrn_fast::bcb_front (the BCB's BSConv -> ConvNeXt block + ESA pre-map, one CUDA kernel).

References: ``convnext(bsconv(x))`` of the float64 reference modules with random
weights, and the two-kernel CUDA path (same roundings). Runs through ``target``:
the emulator build of the kernel sources on a CPU host, the extension on a GPU.
Inputs are NaN guard-banded views; outputs are NaN-poisoned, guard-banded buffers.
"""

import pytest
import torch

from bcrn_fast.ops.bcb_front import BcbFrontArgs, bcb_front_cuda, bcb_front_packed
from bcrn_fast.ops.bsconv import bsconv, pack_bsconv
from bcrn_fast.ops.convnext import convnext, pack_convnext, pack_esa_pre
from tests import cuda_fixtures as cf
from tests.cuda_fixtures import block_modules, f32, over_layouts_and_dtypes, rand_input, to_device
from tests.utils import assert_close_to_ref, rel_error


@over_layouts_and_dtypes
@pytest.mark.parametrize("with_scale", [True, False], ids=["scale", "noscale"])
def test_bcb_front(target, layout, dtype, with_scale):
    """One kernel == convnext(bsconv(x)): against float64 and against the two-kernel CUDA path."""
    (n, h, w), channels_last = layout
    dev = target.device
    blk, esa, conv, cp, ep = cf.block_packs(dev, dtype, seed=20)
    bp = pack_bsconv(f32(conv), dtype)
    bp = bp._replace(pw_t=bp.pw_t.to(dev), dw=bp.dw.to(dev), bias=bp.bias.to(dev))
    x, x64 = rand_input((n, 64, h, w), dtype, dev, channels_last)
    scale = scale64 = None
    if with_scale:
        scale = torch.rand((n, 64), generator=torch.Generator().manual_seed(7)) + 0.5
        scale64 = scale.double()
        scale = scale.to(dev)
    t1 = conv(x64 * scale64[:, :, None, None] if with_scale else x64)
    ref = blk(t1)
    out = cf.poisoned((n, 64, h, w), dtype, dev)
    out_a = cf.poisoned((n, 16, h, w), dtype, dev)
    y, a = bcb_front_cuda(BcbFrontArgs(x, bp.pw_t, bp.dw, bp.bias, *cp, *ep, in_scale=scale), out=out, out_a=out_a)
    cf.assert_written_exactly(y, "bcb_front y")
    cf.assert_written_exactly(a, "bcb_front a")
    assert_close_to_ref(y.cpu(), ref, dtype, name="bcb_front y")
    assert_close_to_ref(a.cpu(), esa.conv2.pw(esa.conv1(ref)), dtype, name="bcb_front ESA pre-map")
    t1_k = bsconv(x, bp.pw_t, bp.dw, bp.bias, in_scale=scale, backend="cuda")
    y2, a2 = convnext(t1_k, *cp, *ep, backend="cuda")
    tol = 1e-6 if dtype == torch.float32 else 1e-3  # same roundings; only summation order may differ
    assert rel_error(y.cpu(), y2.cpu().double()) <= tol
    assert rel_error(a.cpu(), a2.cpu().double()) <= tol


def test_bcb_front_custom_op(target):
    """``torch.ops.bcrn_fast.bcb_front`` (packed entry point) and its fake implementation."""
    dev = target.device
    blk, esa, conv = block_modules(30)
    bp = pack_bsconv(f32(conv), torch.float32)
    bp = bp._replace(pw_t=bp.pw_t.to(dev), dw=bp.dw.to(dev), bias=bp.bias.to(dev))
    cp = pack_convnext(f32(blk), torch.float32)
    cp = type(cp)(*to_device(dev, cp))
    ep = pack_esa_pre(f32(esa), torch.float32)
    ep = type(ep)(*to_device(dev, ep))
    x, x64 = rand_input((1, 64, 15, 16), torch.float32, dev, channels_last=True)
    y, a = bcb_front_packed(x, bp, cp, ep, backend="cuda")
    assert_close_to_ref(y.cpu(), blk(conv(x64)), torch.float32, name="bcb_front op")
    assert a.shape == (1, 16, 15, 16) and y.is_contiguous(memory_format=torch.channels_last)
    args = (x.contiguous(), bp.pw_t, bp.dw, bp.bias, *cp, ep.a_w, ep.a_b, None, "ieee", "cuda")
    torch.library.opcheck(torch.ops.bcrn_fast.bcb_front.default, args, test_utils=("test_schema", "test_faketensor"))
