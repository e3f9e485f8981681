"""The int64 offset path (``WIDE_INDEX``) of the bsconv and ESA kernels, and when the launchers pick it.

A kernel computes its in-image offsets in i32 unless some tensor it touches has
a largest element offset >= 2^31 (``ops._common.needs_wide_index``): the
384-channel feature buffer of BCRNFused crosses that at 5.59 M LR pixels per
image. Allocating such a tensor is out of the question here, so:

- the wide path is forced on small inputs (``_common.FORCE_WIDE_INDEX``) and must
  match the float64 reference and the i32 path bit for bit;
- the decision for a 3840x2160 LR image is shown on meta tensors: a BCRNFused
  forward on the meta device with every kernel replaced by a recorder, so each
  launcher runs its real argument logic and nothing is allocated or launched.
"""

from __future__ import annotations

import copy
import importlib
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from bcrn_fast.kernels.bsconv import dataflow

from bcrn_fast.ops import _common, backends
from bcrn_fast.ops import bsconv as bsconv_op
from bcrn_fast.ops.bsconv import BSConvArgs, bsconv_triton
from bcrn_fast.ops.cca import pack_cca
from bcrn_fast.ops.esa import esa_apply_triton, esa_pool_triton, pack_esa
from tests import test_op_bsconv as tb
from tests import test_op_esa as te
from tests.utils import assert_close_to_ref, guarded

HAS_TRITON = backends.triton_can_run(torch.device(tb.DEVICE))
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")

KERNELS = {
    "bsconv": ("bsconv_kernel", "depthwise_kernel"),
    "esa": ("esa_pool_kernel", "esa_low_kernel", "esa_apply_kernel"),
    "convnext": ("convnext_kernel",),
    "cca": ("cca_scale_kernel", "channel_scale_kernel"),
}


class LaunchRecorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` records the launch, or forwards it."""

    def __init__(self, name: str, kernel=None, log: list | None = None):  # noqa: ANN001 - a JITFunction
        self.name, self.kernel, self.log = name, kernel, log if log is not None else []

    def __getitem__(self, grid):  # noqa: ANN001 - a Triton grid
        def launch(*args, **kwargs):
            self.log.append((self.name, kwargs.get("WIDE_INDEX")))
            if self.kernel is not None:
                return self.kernel[grid](*args, **kwargs)
            return None

        return launch


def _spy(monkeypatch, log: list, forward: bool) -> None:
    """Replace every kernel of bcrn_fast.kernels by a recorder (forwarding to the real kernel or not)."""
    for module_name, names in KERNELS.items():
        module = importlib.import_module(f"bcrn_fast.kernels.{module_name}")
        for name in names:
            kernel = getattr(module, name)
            monkeypatch.setattr(module, name, LaunchRecorder(name, kernel if forward else None, log))


def _run_op_bodies(monkeypatch) -> None:
    """Call each custom op's Python body directly (module attribute and ``torch.ops.bcrn_fast``).

    On the meta device the dispatcher would run the ops' fake (shape-only)
    implementations; the bodies run the real backend choice and launchers.
    """
    from torch._library.custom_ops import CustomOpDef

    ops = {}
    for name in ("bsconv", "convnext", "bcb_front", "esa", "cca"):
        module = importlib.import_module(f"bcrn_fast.ops.{name}")
        for attr, value in list(vars(module).items()):
            if isinstance(value, CustomOpDef):
                ops[value._name] = value._init_fn
                monkeypatch.setattr(module, attr, value._init_fn)
    monkeypatch.setattr(torch.ops, "bcrn_fast", SimpleNamespace(**ops))


# --------------------------------------------------------------------------- the decision


def test_needs_wide_index_from_shapes_and_strides():
    huge = torch.empty_strided((1, 384, 2160, 3840), (384 * 2160 * 3840, 1, 384 * 3840, 384), device="meta")
    assert _common.max_element_offset(huge) == 384 * 2160 * 3840 - 1
    assert _common.needs_wide_index(huge)
    assert _common.needs_wide_index(None, huge[:, 320:384])  # the last block's slice still spans the buffer
    assert not _common.needs_wide_index(torch.empty(1, 64, 2160, 3840, device="meta"))  # 5.3e8 < 2^31
    assert not _common.needs_wide_index(torch.empty(8, 384, 540, 960, device="meta"))  # 1.59e9: batch of 960x540
    edge = torch.empty_strided((2, 1), (2**31 - 1, 1), device="meta")  # largest offset exactly 2^31 - 1
    assert not _common.needs_wide_index(edge)
    assert _common.needs_wide_index(torch.empty_strided((2, 2), (2**31 - 1, 1), device="meta"))
    assert not _common.needs_wide_index(torch.empty(0, 2**40, device="meta"), None)  # empty: nothing to address


def test_bcrn_fused_4k_picks_wide_index_without_allocating(monkeypatch):
    """3840x2160 LR through BCRNFused on the meta device: the launches that touch the 384-channel buffer go wide."""
    from bcrn_fast.fused import BCRNFused

    log: list = []
    _spy(monkeypatch, log, forward=False)
    monkeypatch.setattr(backends, "triton_can_run", lambda device: True)  # backend="triton" on meta tensors
    _run_op_bodies(monkeypatch)
    model = BCRNFused(2, backend="triton").half().to("meta")
    with torch.inference_mode():
        y = model(torch.empty(1, 3, 2160, 3840, dtype=torch.float16, device="meta"))
    assert y.shape == (1, 3, 4320, 7680) and y.device.type == "meta"
    wide = Counter(name for name, flag in log if flag)
    narrow = Counter(name for name, flag in log if flag is False)
    # exactly the launches on the 384-channel buffer: blocks 2..6 read their input slice from it, conv2's
    # pointwise pass reads all of it, every ESA writes its u into it
    assert wide == {"bsconv_kernel": 6, "esa_apply_kernel": 6}, log
    # the 64-channel maps (conv1, the ESA low-res branch, conv2's depthwise pass over z, the upsampler's two
    # passes; the pools) keep i32 offsets
    assert narrow["bsconv_kernel"] > 0 and narrow["depthwise_kernel"] == 2 and narrow["esa_pool_kernel"] == 6, log

    log.clear()
    with torch.inference_mode():
        model(torch.empty(1, 3, 540, 960, dtype=torch.float16, device="meta"))
    assert log and not any(flag for _, flag in log), f"960x540 must keep i32 offsets: {log}"


# --------------------------------------------------------------------------- the wide path, forced


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["tail_cin384", "up_x3", "esa_stride2_valid", "bcb_conv_scale_relu"])
def test_bsconv_wide_index_matches_reference(monkeypatch, case, dtype):
    pack, x, s, res, act, ref64, ref_dt, out_shape = tb._build(case, dtype)
    args = BSConvArgs(
        x, pack.pw_t, pack.dw, pack.bias, s, res, pack.ksize, pack.stride, pack.padding, act, pack.shuffle
    )
    # the i32 run uses the tiles the int64 path picks, so the offsets are the only difference (the
    # interpreter's numpy matmul rounds differently for another tile height)
    launch_config = bsconv_op._launch_config
    monkeypatch.setattr(bsconv_op, "_launch_config", lambda *a: launch_config(*a[:5], True, *a[6:]))
    narrow = bsconv_triton(args, out=tb._poisoned_out(out_shape, dtype, pack.shuffle))

    log: list = []
    _spy(monkeypatch, log, forward=True)
    monkeypatch.setattr(_common, "FORCE_WIDE_INDEX", True)
    out = tb._poisoned_out(out_shape, dtype, pack.shuffle)
    y = bsconv_triton(args, out=out)
    two_pass = dataflow(x.shape[1], pack.pw_t.shape[1], pack.ksize) == "two_pass"
    assert log == [("bsconv_kernel", True)] + [("depthwise_kernel", True)] * two_pass
    tb._check_guard_untouched(out)
    assert_close_to_ref(y, ref64, dtype, ref_dt, name=f"bsconv[triton, wide] {case}")
    assert torch.equal(y, narrow), "int64 offsets changed the result"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_esa_wide_index_matches_reference(monkeypatch, dtype):
    n, h, w, cbuf, offset = 1, 47, 33, 384, 320  # the model's 384-channel buffer, last block; 6x4 pooled map
    esa, cca, t, c3, u64, s64 = te.apply_refs(n, h, w)
    u_same, s_same = te.apply_refs(n, h, w, dtype)
    wts, cw = pack_esa(esa, dtype), pack_cca(cca)
    a = guarded(te.pre_map(esa, t).to(dtype))
    pool64 = torch.nn.functional.max_pool2d(esa.conv2.dw(te.pre_map(esa, t)), kernel_size=7, stride=3)
    pool_same = torch.nn.functional.max_pool2d(copy.deepcopy(esa.conv2.dw).to(dtype)(a), kernel_size=7, stride=3)
    tin, c3in = guarded(t.to(dtype), channels_last=True), guarded(c3.to(dtype))

    def run():
        v = esa_pool_triton(a, wts.pool_dw, wts.pool_b)
        out = te.poisoned(n, cbuf, h, w, dtype, channels_last=True)
        s = esa_apply_triton(tin, c3in, wts.wf, wts.bf, wts.w4, wts.b4, out, offset, *cw)
        return v, out, s

    v_narrow, out_narrow, s_narrow = run()
    log: list = []
    _spy(monkeypatch, log, forward=True)
    monkeypatch.setattr(_common, "FORCE_WIDE_INDEX", True)
    v, out, s = run()
    assert log == [("esa_pool_kernel", True), ("esa_apply_kernel", True)]
    assert torch.isnan(out[:, :offset]).all(), "esa_apply wrote outside its channel slice"
    u = out[:, offset:]
    assert_close_to_ref(v, pool64, dtype, pool_same, name="esa_pool[wide]")
    assert_close_to_ref(u, u64, dtype, u_same, name="esa_apply u[wide]")
    assert_close_to_ref(s, s64, dtype, s_same, name="esa_apply s[wide]")
    assert torch.equal(v, v_narrow), "int64 offsets changed esa_pool"
    assert torch.equal(u, out_narrow[:, offset:]), "int64 offsets changed esa_apply's u"
    assert torch.equal(s, s_narrow), "int64 offsets changed the CCA scale"
