"""The reference BCRN: structure against the spec and the official checkpoints, shapes, determinism, input checks."""

from __future__ import annotations

import pytest
import torch

from bcrn_fast.evaluate import default_data_dir
from bcrn_fast.model import BCRN
from bcrn_fast.validation import InputError

DATA_DIR = default_data_dir()
needs_data = pytest.mark.skipif(
    DATA_DIR is None,
    reason="reference data not found: set BCRN_DATA_DIR or provide ../shared/data next to the project",
)


def official_state_dict(scale: int) -> dict[str, torch.Tensor]:
    assert DATA_DIR is not None
    path = DATA_DIR / "bcrn_official" / f"best_epoch_x{scale}.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def upsampler_params(scale: int) -> int:
    c = 3 * scale * scale
    return 64 * c + c * 9 + c  # pw 1x1 (no bias) + depthwise 3x3 + bias


def test_parameter_count_x4_matches_paper() -> None:
    model = BCRN(4)
    assert n_params(model) == 289_232
    assert len(model.state_dict()) == 225


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_count_per_component(scale: int) -> None:
    """Counts from docs/design.md: conv1 832, BCB 43,272 (4,736 + 33,728 + 4,160 + 648), conv2 25,216."""
    model = BCRN(scale)
    assert n_params(model.conv1) == 832
    for block in model.blocks():
        assert n_params(block) == 43_272
        assert n_params(block.conv) == 4_736
        assert n_params(block.convNextBlock) == 33_728
        assert n_params(block.esa) == 4_160
        assert n_params(block.cca) == 648
    assert n_params(model.conv2) == 25_216
    assert n_params(model.upsample_block) == upsampler_params(scale)
    assert n_params(model) == 832 + 6 * 43_272 + 25_216 + upsampler_params(scale)


def test_first_and_last_keys() -> None:
    keys = list(BCRN(4).state_dict())
    assert keys[:4] == ["conv1.pw.weight", "conv1.dw.weight", "conv1.dw.bias", "convNext1.conv.pw.weight"]
    assert keys[-4:] == ["conv2.dw.bias", "upsample_block.0.weight", "upsample_block.1.weight", "upsample_block.1.bias"]
    assert BCRN(4).state_dict()["upsample_block.0.weight"].shape == (48, 64, 1, 1)


@needs_data
@pytest.mark.parametrize("scale", [2, 4])
def test_keys_and_shapes_equal_official(scale: int) -> None:
    official = official_state_dict(scale)
    ours = BCRN(scale).state_dict()
    assert list(ours) == list(official)
    for k, v in official.items():
        assert ours[k].shape == v.shape, k
        assert ours[k].dtype == v.dtype, k


@needs_data
@pytest.mark.parametrize("scale", [2, 4])
def test_official_checkpoint_loads_strict(scale: int) -> None:
    model = BCRN(scale)
    official = official_state_dict(scale)
    result = model.load_state_dict(official, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, official[k]), k
    with torch.inference_mode():
        y = model.eval()(torch.rand(1, 3, 16, 18, generator=torch.Generator().manual_seed(1)))
    assert y.shape == (1, 3, 16 * scale, 18 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape(scale: int) -> None:
    torch.manual_seed(0)
    model = BCRN(scale).eval()
    x = torch.rand(2, 3, 17, 23)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 3, 17 * scale, 23 * scale)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_deterministic_and_batch_independent_on_cpu() -> None:
    torch.manual_seed(0)
    model = BCRN(4).eval()
    x = torch.rand(2, 3, 17, 19)
    with torch.inference_mode():
        y1 = model(x)
        y2 = model(x)
        y_single = model(x[1:2])
    assert torch.equal(y1, y2)
    torch.testing.assert_close(y1[1:2], y_single, rtol=1e-5, atol=1e-6)
    # the two images differ, so a model ignoring its input would fail here
    assert not torch.allclose(y1[0], y1[1])


def test_min_size_15_is_accepted() -> None:
    model = BCRN(2).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 15, 15)).shape == (1, 3, 30, 30)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(3, 20, 20), "4-D"),
        (torch.rand(1, 1, 3, 20, 20), "4-D"),
        (torch.rand(1, 4, 20, 20), "3 channels"),
        (torch.rand(1, 1, 20, 20), "3 channels"),
        (torch.randint(0, 255, (1, 3, 20, 20), dtype=torch.uint8), "floating dtype"),
        (torch.rand(1, 3, 20, 20, dtype=torch.float64), "dtype"),
        (torch.rand(1, 3, 14, 20), "15x15"),
        (torch.rand(1, 3, 20, 10), "15x15"),
        (torch.rand(0, 3, 20, 20), "empty batch"),
    ],
)
def test_bad_inputs_are_rejected(x: torch.Tensor, match: str) -> None:
    model = BCRN(4).eval()
    with pytest.raises(InputError, match=match):
        model(x)


def test_bad_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="scale"):
        BCRN(5)


# ----------------------------------------------------------------------------- vendored BSConvU
BSCONV_CASES = [
    dict(in_channels=5, out_channels=7, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=0, bias=False),
    dict(in_channels=3, out_channels=4, kernel_size=(3, 5), padding=(1, 2), dilation=2, padding_mode="reflect"),
    dict(in_channels=4, out_channels=4, kernel_size=1, with_bn=True, bn_kwargs={"momentum": 0.3}),
]


@pytest.mark.parametrize("kwargs", BSCONV_CASES)
def test_vendored_bsconvu_equals_the_package(kwargs: dict) -> None:
    """bcrn_fast.bsconv.BSConvU (vendored: the GPU image has no bsconv) is the package's class, module for module."""
    package = pytest.importorskip("bsconv.pytorch", reason="the bsconv package (test extra) is not installed")
    from bcrn_fast.bsconv import BSConvU

    torch.manual_seed(0)
    theirs = package.BSConvU(**kwargs).eval()
    ours = BSConvU(**kwargs).eval()
    assert [(n, type(m)) for n, m in ours.named_modules()][1:] == [(n, type(m)) for n, m in theirs.named_modules()][1:]
    assert [(n, type(m).__name__, m.extra_repr()) for n, m in ours.named_children()] == [
        (n, type(m).__name__, m.extra_repr()) for n, m in theirs.named_children()
    ]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, kwargs["in_channels"], 11, 13, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))


def test_model_uses_the_vendored_bsconvu() -> None:
    from bcrn_fast.bsconv import BSConvU

    model = BCRN(4)
    assert type(model.conv1) is BSConvU and type(model.convNext1.conv) is BSConvU
    assert BSConvU.__module__ == "bcrn_fast.bsconv"
