"""Fused drop-in modules vs their reference modules (module level).

Op-level numerics (odd shapes, guard bands, every option) live in
tests/test_op_*.py; here: the drop-in contract (same state dict both ways,
from_reference shares weights, fuse_), both backends against the float64
reference, gradients, and input checks.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bcrn_fast.fused import (
    FUSED_CLASSES,
    FusedBCB,
    FusedBSConv,
    FusedCCA,
    FusedConvNeXtBlock,
    FusedESA,
)
from bcrn_fast.model import (
    ESA,
    BluePrintShortcutBlock,
    BSConvU,  # the class the reference model is built from
    CCALayer,
    ConvNeXtBlock,
)
from bcrn_fast.ops import esa as esa_op
from bcrn_fast.validation import InputError
from tests.utils import assert_close_to_ref, guarded

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (default init leaves biases small) so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5)
                + 0.05 * torch.randn(p.shape, generator=g)
            )
    return module


CASES = [
    # (reference factory, input channels, min spatial size)
    ("bsconv3", lambda: BSConvU(64, 64, 3, padding=1), 64),
    ("bsconv1", lambda: BSConvU(64, 16, 1), 64),
    ("bsconv_s2", lambda: BSConvU(16, 16, 3, stride=2), 16),
    ("convnext", lambda: ConvNeXtBlock(64), 64),
    ("cca", lambda: CCALayer(64), 64),
    ("esa", lambda: ESA(64), 64),
    ("bcb", lambda: BluePrintShortcutBlock(64), 64),
]


def _reference_output(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    ref64 = copy.deepcopy(ref).double()
    with torch.no_grad():
        return ref64(x.double())


@pytest.mark.parametrize("name,factory,cin", CASES, ids=[c[0] for c in CASES])
def test_state_dict_roundtrip_and_sharing(name, factory, cin):
    ref = _randomize(factory())
    fused_cls = FUSED_CLASSES[type(ref)]
    fused = fused_cls.from_reference(ref, backend="torch")
    assert isinstance(fused, type(ref))
    assert list(fused.state_dict()) == list(ref.state_dict())
    # from_reference shares the very same parameter tensors
    for (k1, p1), (k2, p2) in zip(ref.named_parameters(), fused.named_parameters(), strict=True):
        assert k1 == k2 and p1 is p2
    # load_state_dict works both ways between independently built modules
    fresh = copy.deepcopy(fused)
    _randomize(fresh, seed=1)
    fresh.load_state_dict(ref.state_dict(), strict=True)
    back = _randomize(factory(), seed=2)
    back.load_state_dict(fresh.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name,factory,cin", CASES, ids=[c[0] for c in CASES])
def test_fused_module_matches_reference(name, factory, cin, dtype, backend):
    ref = _randomize(factory()).to(DEVICE)
    fused = FUSED_CLASSES[type(ref)].from_reference(copy.deepcopy(ref), backend=backend).to(dtype)
    torch.manual_seed(3)
    x = torch.rand(2, cin, 17, 23, device=DEVICE)
    expected = _reference_output(ref, x)
    same_dtype = copy.deepcopy(ref).to(dtype)
    with torch.inference_mode():
        # PyTorch's own error in this dtype: the interpreter truncates fp32 -> bf16 (a GPU rounds to
        # nearest), which roughly doubles bf16 error there; the bound is max(contract, 4x PyTorch's)
        torch_same = same_dtype(x.to(dtype))
        out = fused(guarded(x.to(dtype), channels_last=True))
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close_to_ref(out.float(), expected, dtype, torch_same, name=f"{name}/{backend}")


def test_parameter_change_invalidates_packed_weights():
    ref = _randomize(ConvNeXtBlock(64))
    fused = FusedConvNeXtBlock.from_reference(ref, backend="torch")
    x = torch.rand(1, 64, 16, 16)
    with torch.inference_mode():
        before = fused(x)
    with torch.no_grad():
        ref.c1_r_2.bias.add_(1.0)  # shared parameter, changed in place
    with torch.inference_mode():
        after = fused(x)
        expected = ref(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_gradients_use_the_differentiable_reference_path():
    ref = _randomize(BluePrintShortcutBlock(64))
    fused = FusedBCB.from_reference(copy.deepcopy(ref), backend="torch")
    x = torch.rand(1, 64, 16, 16, requires_grad=True)
    with pytest.warns(UserWarning, match="differentiable reference"):
        out = fused(x)
    assert out.grad_fn is not None
    out.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(fused.conv.pw.weight.grad, ref.conv.pw.weight.grad)


@pytest.mark.parametrize(
    "module,x,match",
    [
        (FusedBSConv(64, 64, 3, padding=1), torch.rand(64, 8, 8), "4-D"),
        (FusedBSConv(64, 64, 3, padding=1), torch.rand(1, 32, 8, 8), "64 channels"),
        (FusedConvNeXtBlock(64), torch.rand(1, 64, 8, 8, dtype=torch.float64), "dtype"),
        (FusedESA(64), torch.rand(1, 64, 14, 20), "15x15"),
        (FusedBCB(64), torch.rand(1, 64, 20, 12), "15x15"),
        (FusedCCA(64), torch.rand(1, 64, 8, 8, device="meta"), "weights are on cpu"),
    ],
    ids=["rank", "channels", "dtype", "esa-small", "bcb-small", "device"],
)
def test_input_checks(module, x, match):
    with torch.inference_mode(), pytest.raises(InputError, match=match):
        module(x)


def test_unsupported_reference_configuration_is_refused():
    with pytest.raises(ValueError, match="dilation"):
        FusedBSConv.from_reference(BSConvU(16, 16, 3, padding=2, dilation=2))
    with pytest.raises(TypeError, match="expects a ConvNeXtBlock"):
        FusedConvNeXtBlock.from_reference(CCALayer(64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_input_gives_finite_output(backend):
    block = FusedBCB.from_reference(_randomize(BluePrintShortcutBlock(64)), backend=backend).to(DEVICE)
    cca_ref = _randomize(CCALayer(64)).to(DEVICE)
    cca = FusedCCA.from_reference(copy.deepcopy(cca_ref), backend=backend)
    x = torch.full((1, 64, 15, 15), 0.7, device=DEVICE)
    with torch.inference_mode():
        out = block(x)
        y = cca(x)
    assert torch.isfinite(out).all()
    ref_y = _reference_output(cca_ref, x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref_y, rtol=1e-5, atol=1e-6)


def test_fused_esa_standalone_not_in_place_of_input():
    esa = FusedESA.from_reference(_randomize(ESA(64)), backend="torch")
    x = torch.rand(1, 64, 20, 20)
    keep = x.clone()
    with torch.inference_mode():
        esa(x)
    assert torch.equal(x, keep)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bcb_run_into_shared_scale_and_workspace(backend):
    """FusedBCB.run as BCRNFused calls it: s into a slice of one [N, 384] tensor, the merge in a view of one
    shared workspace; same u and s, bit for bit, as the standalone run (own scale, own workspace)."""
    block = FusedBCB.from_reference(_randomize(BluePrintShortcutBlock(64)), backend=backend).to(DEVICE)
    x = torch.rand(2, 64, 17, 16, device=DEVICE)
    out_own = torch.full((2, 128, 17, 16), float("nan"), device=DEVICE)
    out_shared = out_own.clone()
    scales = torch.full((2, 384), float("nan"), device=DEVICE)
    workspaces = esa_op.apply_workspaces(6, 2, 17, 16, torch.float32, "ieee", torch.device(DEVICE))
    with torch.inference_mode():
        s_own = block.run(x, None, out_own, 64)
        s = block.run(x, None, out_shared, 64, scale=scales[:, 128:192], workspace=workspaces[2])
    assert s.data_ptr() == scales[:, 128:192].data_ptr()
    assert torch.isnan(scales[:, :128]).all() and torch.isnan(scales[:, 192:]).all()
    assert torch.equal(s, s_own) and torch.equal(out_shared[:, 64:], out_own[:, 64:])
    assert torch.isfinite(out_own[:, 64:]).all() and torch.isnan(out_shared[:, :64]).all()


def test_dtype_round_trip_invalidates_packed_weights():
    """.half().float() rounds shared weights in place without bumping their version."""
    ref = _randomize(ConvNeXtBlock(64))
    fused = FusedConvNeXtBlock.from_reference(ref, backend="torch")
    x = torch.rand(1, 64, 16, 16)
    with torch.inference_mode():
        fused(x)  # fills the cache with full-precision weights
    fused.half().float()
    with torch.inference_mode():
        out = fused(x)
        expected = ref(x)  # ref shares the now fp16-rounded parameters
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_cuda_backend_without_extension_or_device_is_a_clear_error():
    from bcrn_fast.ops import cuda_ext

    if torch.cuda.is_available() and cuda_ext.available():
        pytest.skip("the CUDA extension can run here")
    block = FusedConvNeXtBlock(64, backend="cuda")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="backend='cuda' cannot run"):
        block(torch.rand(1, 64, 8, 8))
