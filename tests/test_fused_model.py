"""BCRNFused vs the reference BCRN: random weights, official weights, Set5, compile."""

from __future__ import annotations

import copy
import importlib
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from bcrn_fast import BCRN
from bcrn_fast.fused import BCRNFused, FusedBCB, FusedBSConv, fuse_
from bcrn_fast.ops import backends
from bcrn_fast.validation import InputError
from tests.utils import CPU_ONLY_ON_GPU, QUICK, assert_close_to_ref, guarded, random_bcrn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _data_dir() -> Path | None:
    root = os.environ.get("BCRN_DATA_DIR") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return Path(root) if Path(root, "bcrn_official").is_dir() else None


DATA = _data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="official weights/Set5 not found (set BCRN_DATA_DIR)")


def _official(scale: int) -> BCRN:
    sd = torch.load(DATA / "bcrn_official" / f"best_epoch_x{scale}.pth", map_location="cpu", weights_only=True)
    model = BCRN(scale)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _ref64(model: BCRN, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def test_same_state_dict_as_reference():
    ref = random_bcrn(4)
    fused = BCRNFused(4)
    assert list(fused.state_dict()) == list(ref.state_dict())
    fused.load_state_dict(ref.state_dict(), strict=True)
    ref2 = BCRN(4)
    ref2.load_state_dict(fused.state_dict(), strict=True)
    assert sum(p.numel() for p in fused.parameters()) == 289_232
    assert all(isinstance(getattr(fused, f"convNext{k}"), FusedBCB) for k in range(1, 7))
    assert isinstance(fused.conv1, FusedBSConv) and isinstance(fused.conv2, FusedBSConv)


def test_model_pack_follows_only_the_upsampler_weights():
    """The model's own pack (the upsampler) is keyed on the upsampler's 3 parameters, not all 225; an in-place
    edit there or in a block is still seen (the block's children key their own packs)."""
    ref = random_bcrn(2).to(DEVICE)
    fused = BCRNFused.from_reference(ref, backend="torch")
    x = torch.rand(1, 3, 16, 15, device=DEVICE)
    with torch.inference_mode():
        fused(x)
    ((key, _),) = fused._pack_cache.values()
    assert len(key[1]) == len(list(ref.upsample_block.parameters())) == 3
    for param in (ref.upsample_block[1].bias, ref.convNext3.conv.dw.weight):
        with torch.no_grad():
            param.add_(0.25)
        with torch.inference_mode():
            assert_close_to_ref(fused(x), _ref64(ref, x), torch.float32, name="after an in-place weight edit")


# (scale, dtype, shape): the interpreter is slow on a whole model, so the Triton
# cases spread shapes over scales and dtypes; the torch backend runs them all.
TRITON_CASES = [
    (4, torch.float32, (2, 17, 23)),
    (4, torch.float16, (1, 15, 15)),
    (3, torch.float32, (1, 15, 15)),
    (3, torch.float16, (1, 17, 23)),
    (2, torch.float32, (1, 31, 20)),
    (2, torch.float16, (2, 15, 16)),
    (4, torch.bfloat16, (1, 16, 15)),
]
if QUICK:
    TRITON_CASES = TRITON_CASES[:2]
TORCH_CASES = [
    (s, d, shape)
    for s in (2, 3, 4)
    for d in (torch.float32, torch.float16, torch.bfloat16)
    for shape in ((1, 15, 15), (2, 17, 23), (1, 31, 20))
]
CASES = [("triton", *c) for c in TRITON_CASES] + [("torch", *c) for c in TORCH_CASES]


@pytest.mark.parametrize(
    "backend,scale,dtype,shape",
    CASES,
    ids=[f"{b}-x{s}-{str(d)[6:]}-{'x'.join(map(str, sh))}" for b, s, d, sh in CASES],
)
def test_bcrn_fused_matches_reference(scale, dtype, backend, shape):
    ref = random_bcrn(scale).to(DEVICE)
    fused = BCRNFused.from_reference(ref, backend=backend).to(dtype)
    torch.manual_seed(1)
    x = torch.rand(*shape[:1], 3, *shape[1:], device=DEVICE)
    expected = _ref64(ref, x)
    with torch.inference_mode():
        out = fused(guarded(x.to(dtype)))
        same = copy.deepcopy(ref).to(dtype)(x.to(dtype))  # PyTorch's own error in this dtype
    assert out.shape == (shape[0], 3, scale * shape[1], scale * shape[2])
    assert_close_to_ref(out.float(), expected, dtype, same, name=f"BCRNFused x{scale} {backend}")


def test_built_under_inference_mode():
    with torch.inference_mode():
        model = BCRNFused(2, backend="torch")
        out = model(torch.rand(1, 3, 15, 15))
    assert out.shape == (1, 3, 30, 30) and torch.isfinite(out).all()


def test_fuse_in_place_shares_weights():
    model = random_bcrn(2)
    params = {k: p for k, p in model.named_parameters()}
    x = torch.rand(1, 3, 16, 18)
    with torch.no_grad():
        expected = model(x)
    same = fuse_(model, backend="torch")
    assert same is model and isinstance(model, BCRNFused)
    for k, p in model.named_parameters():
        assert p is params[k]
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_fuse_in_place_inside_a_container():
    holder = torch.nn.Sequential(random_bcrn(2))
    fuse_(holder, backend="torch")
    assert isinstance(holder[0], BCRNFused)


# aten ops that launch no device kernel (allocation, views, metadata)
NO_KERNEL_OPS = {
    "aten::empty",
    "aten::empty_strided",
    "aten::new_empty",
    "aten::as_strided",
    "aten::slice",
    "aten::select",
    "aten::narrow",
    "aten::view",
    "aten::permute",
    "aten::t",
    "aten::transpose",
    "aten::expand",
    "aten::alias",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::reshape",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::lift_fresh",
    "aten::detach",
    "aten::zeros",  # counted as its zero_
}


@pytest.mark.skipif(not backends.triton_can_run(torch.device(DEVICE)), reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_kernels_per_forward(monkeypatch):
    """One x4 forward on the Triton backend: <= 40 kernels (Triton launches + torch kernels), no cat, one zero
    fill (the six CCA merges' counters), one esa_low launch per block instead of three BSConvs.

    Every ``@triton.jit`` function of ``bcrn_fast.kernels`` is replaced by a recorder (nothing runs, so the
    outputs are garbage, but every launcher and host op runs as in a real forward); torch's profiler lists
    the aten ops.
    """
    launches: Counter = Counter()

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getitem__(self, grid):  # noqa: ANN001 - a Triton grid
            return lambda *args, **kwargs: launches.update([self.name])

    # import every kernel module before patching any: one importing another's helpers must get the real ones
    modules = [importlib.import_module(f"bcrn_fast.kernels.{m}") for m in ("bsconv", "convnext", "cca", "esa")]
    for module in modules:
        for name, obj in list(vars(module).items()):
            if isinstance(obj, (JITFunction, InterpretedFunction)):
                monkeypatch.setattr(module, name, Recorder(name))
    model = BCRNFused.from_reference(random_bcrn(4), backend="triton").to(DEVICE)
    x = torch.rand(2, 3, 24, 20, device=DEVICE)
    with torch.inference_mode():
        model(x)  # packs the weights (their copies are not per-forward work)
        launches.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x)
    aten = Counter(e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in NO_KERNEL_OPS)
    assert launches["esa_low_kernel"] == launches["esa_pool_kernel"] == launches["esa_apply_kernel"] == 6, launches
    assert "aten::cat" not in aten, aten
    assert aten["aten::zero_"] + aten["aten::fill_"] == 1, aten  # one counter fill for the six blocks
    total = sum(launches.values()) + sum(aten.values())
    assert total <= 40, f"{total} kernels per forward: {dict(launches)} + {dict(aten)}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bcrn_fused_cuda_backend_matches_reference(target, dtype):
    """BCRNFused(backend="cuda"): bcb_front, bsconv and cca on the extension (its emulator build on a CPU host),
    ESA on Triton."""
    if target.device.type == "cpu" and not backends.interpreter_enabled():
        # ESA has no CUDA kernel: its ops run on Triton, which takes CPU tensors only through the interpreter
        pytest.skip(CPU_ONLY_ON_GPU if torch.cuda.is_available() else "ESA runs on Triton: needs TRITON_INTERPRET=1")
    torch.manual_seed(0)
    ref = BCRN(2)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    device = target.device
    ref = ref.to(device)
    fused = BCRNFused.from_reference(ref, backend="cuda").to(dtype)
    x = torch.rand(1, 3, 15, 17, device=device)
    with torch.no_grad():
        expected = copy.deepcopy(ref).double()(x.double())
    with torch.inference_mode():
        out = fused(guarded(x.to(dtype)))
    assert_close_to_ref(out.float(), expected, dtype, name="BCRNFused cuda backend")


def test_input_checks():
    model = BCRNFused(2, backend="torch")
    with torch.inference_mode():
        with pytest.raises(InputError, match="15x15"):
            model(torch.rand(1, 3, 14, 40))
        with pytest.raises(InputError, match="3 channels"):
            model(torch.rand(1, 4, 20, 20))
        with pytest.raises(InputError, match="4-D"):
            model(torch.rand(3, 20, 20))
        with pytest.raises(InputError, match="dtype"):
            model(torch.rand(1, 3, 20, 20, dtype=torch.float16))
    with pytest.raises(ValueError, match="backend"):
        BCRNFused(2, backend="vulkan")


def test_constant_image_is_finite():
    model = BCRNFused.from_reference(random_bcrn(4), backend="torch")
    with torch.inference_mode():
        out = model(torch.full((1, 3, 16, 16), 0.5))
    assert torch.isfinite(out).all()


@needs_data
@pytest.mark.parametrize("scale", [2, 4])
def test_official_weights_on_set5_crops_triton(scale):
    """Interpreter run of the Triton kernels with the official weights on a Set5 LR crop."""
    from bcrn_fast.imageio import read_image

    ref = _official(scale).to(DEVICE)
    fused = BCRNFused.from_reference(ref, backend="triton")
    lr_dir = DATA / "Set5" / "LR_bicubic" / f"X{scale}"
    names = sorted(p.name for p in lr_dir.iterdir())[: 1 if QUICK else 2]
    for name in names:
        x, _ = read_image(lr_dir / name)
        x = x[:, :, 10:34, 7:33].to(DEVICE)  # 24 x 26 crop: the interpreter is slow at full size
        expected = _ref64(ref, x)
        with torch.no_grad():
            ref32 = ref(x)  # PyTorch's own fp32 error sets the floor: the trained net amplifies rounding
        for dtype in (torch.float32, torch.float16):
            with torch.inference_mode():
                out = fused.to(dtype)(x.to(dtype))
            same = ref32 if dtype == torch.float32 else None
            assert_close_to_ref(out.float(), expected, dtype, same, name=f"Set5 {name} x{scale}")
        fused.float()


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("scale,expected_psnr", [(4, 32.208), (2, 37.954)])
def test_torch_backend_reproduces_set5(scale, expected_psnr):
    from bcrn_fast.evaluate import evaluate

    model = BCRNFused.from_reference(_official(scale), backend="torch")
    hr = DATA / "Set5" / "HR"
    lr = DATA / "Set5" / "LR_bicubic" / f"X{scale}"
    results = evaluate(model, hr, lr, scale, progress=False)
    mean = sum(r.psnr for r in results) / len(results)
    assert abs(mean - expected_psnr) < 1e-3, f"mean PSNR {mean:.4f} dB vs paper protocol {expected_psnr}"


def test_torch_compile_fullgraph_no_graph_break():
    model = BCRNFused.from_reference(random_bcrn(2), backend="torch")
    x = torch.rand(1, 3, 16, 17)
    with torch.inference_mode():
        expected = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        out = compiled(x)
    torch.testing.assert_close(out, expected)


@pytest.mark.slow
def test_torch_compile_inductor_cpu():
    model = BCRNFused.from_reference(random_bcrn(2), backend="torch")
    x = torch.rand(1, 3, 16, 17)
    with torch.inference_mode():
        expected = model(x)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        with torch.inference_mode():
            out = compiled(x)
    except Exception as exc:  # pragma: no cover - environment without a C++ toolchain
        if "compiler" in str(exc).lower() and "not found" in str(exc).lower():
            pytest.skip(f"inductor CPU backend unavailable: {exc}")
        raise
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_data
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (Set5 on the GPU kernels)")
@pytest.mark.parametrize("scale", [2, 4])
def test_gpu_set5_psnr_within_contract(scale):
    """Precision contract on the user-level metric: mean Set5 PSNR of the fused
    model within 0.005 dB of the fp32 reference in fp32 and fp16, 0.02 dB in bf16."""
    from bcrn_fast.evaluate import evaluate
    from bcrn_fast.ops import cuda_ext

    hr = DATA / "Set5" / "HR"
    lr = DATA / "Set5" / "LR_bicubic" / f"X{scale}"
    ref = _official(scale).cuda()

    def mean_psnr(model, dtype):
        results = evaluate(model, hr, lr, scale, device="cuda", dtype=dtype, progress=False)
        return sum(r.psnr for r in results) / len(results)

    baseline = mean_psnr(ref, torch.float32)
    backends = ["triton"] + (["cuda"] if cuda_ext.available() else [])
    limits = {torch.float32: 0.005, torch.float16: 0.005, torch.bfloat16: 0.02}
    report = []
    for backend in backends:
        for dtype, limit in limits.items():
            fused = BCRNFused.from_reference(copy.deepcopy(ref), backend=backend).to(dtype)
            got = mean_psnr(fused, dtype)
            report.append(f"{backend} {dtype}: {got:.4f} dB (ref fp32 {baseline:.4f})")
            assert abs(got - baseline) <= limit, "\n".join(report)
    print("\n".join(report))
