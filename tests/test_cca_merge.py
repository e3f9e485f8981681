"""The two-level CCA merge tree (``kernels/cca.py::cca_merge_tile``): exact, order-free, shallow.

- many partials and several groups on small maps (tiles and groups shrunk
  through the launcher's overrides): ``s`` equals the float64 reference CCA;
- the result does not depend on the order programs finish in: a test kernel
  runs the real helpers with tile ``perm[k]`` in program ``k`` (the
  interpreter runs programs in grid order, so ``perm`` IS the arrival order;
  on a GPU it only adds scheduling noise) and every order is bit-identical;
- the merge depth at 960x540 is at most 8 dependent steps (4 with the
  launcher's choice; the one-level merge took 127);
- pixel counts are integers: a merge over more than 2^24 pixels (a synthetic
  workspace, nothing that size allocated) matches float64, and images beyond
  ``MAX_PIXELS`` are rejected with ``InputError``.
"""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from bcrn_fast.kernels import cca as K

from bcrn_fast.ops import _common, backends
from bcrn_fast.ops.cca import (
    MAX_PIXELS,
    MERGE_BLOCK,
    SQUEEZE,
    cca_scale,
    cca_scale_triton,
    cca_workspace,
    cca_workspace_size,
    cca_workspaces,
    launch_settings,
    merge_group,
    merge_steps,
    pack_cca,
)
from bcrn_fast.ops.esa import apply_launch_config
from bcrn_fast.validation import InputError
from tests.test_op_cca import cca_ref, random_cca, random_map
from tests.utils import assert_close_to_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not backends.triton_can_run(DEVICE), reason="Triton needs CUDA or TRITON_INTERPRET=1")

# (N, H, W, BLOCK_P, BLOCK_T, G): T tiles, NG = cdiv(T, G) groups, a partial last tile and a short last group
CASES = [
    (2, 40, 39, 16, 8, 32),  # T = 98: groups 32, 32, 32, 2; 4 + 1 merge steps
    (1, 41, 40, 16, 4, 12),  # T = 103: 9 groups (last 7 tiles), 3 + 3 steps
    (1, 23, 29, 16, 32, 64),  # T = 42: one group, the degenerate tree
]
# smaller maps for the arrival-order runs (5 runs each under the interpreter)
ORDER_CASES = [
    (2, 24, 23, 16, 4, 8),  # T = 35: groups 8, 8, 8, 8, 3; 2 + 2 merge steps
    (1, 30, 29, 16, 4, 12),  # T = 55: groups 12 x 4 and 7; 3 + 2 steps
]


@triton.jit
def _permuted_cca_kernel(
    x_ptr, perm_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, ws_ptr, cnt_ptr,
    W, HW, T, G, N, sxn, sxc, sxh, sxw, ssn, ssc,
    C: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """cca_scale_kernel's body with tile ``perm[program]``: program order = arrival order in the interpreter."""
    n = tl.program_id(1)
    tile = tl.load(perm_ptr + n * T + tl.program_id(0))
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, C)
    pmask = offs_p < HW
    ptrs = x_ptr + n * sxn + (offs_p // W)[:, None] * sxh + (offs_p % W)[:, None] * sxw + offs_c[None, :] * sxc
    x = tl.load(ptrs, mask=pmask[:, None], other=0.0).to(tl.float32)
    mean, m2 = K.cca_tile_partials(x, pmask, tl.minimum(HW - tile * BLOCK_P, BLOCK_P))
    K.cca_merge_tile(
        ws_ptr, cnt_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, mean, m2, n, N, tile, T, G, HW, ssn, ssc,
        BLOCK_P, BLOCK_T, C, R,
    )  # fmt: skip


def run_permuted(x: torch.Tensor, weights, perm: torch.Tensor, block_p: int, block_t: int, group: int) -> torch.Tensor:
    n, c, h, w = x.shape
    tiles = triton.cdiv(h * w, block_p)
    s = torch.full((n, c), float("nan"), dtype=torch.float32, device=x.device)
    ws, cnt = cca_workspace(n, tiles, x.device, group)
    _permuted_cca_kernel[(tiles, n)](
        x, perm.to(torch.int32).to(x.device).contiguous(), *weights, s, ws, cnt,
        w, h * w, tiles, group, n, *x.stride(), *s.stride(),
        C=c, R=SQUEEZE, BLOCK_P=block_p, BLOCK_T=block_t,
    )  # fmt: skip
    return s


def arrival_orders(n: int, tiles: int, group: int) -> dict[str, torch.Tensor]:
    """Tile orders per image: in order, reversed, random, and each group's first tile arriving last."""
    g = torch.Generator().manual_seed(7)
    ident = torch.arange(tiles)
    firsts_last = torch.cat([ident[ident % group != 0], ident[ident % group == 0]])
    orders = {
        "in order": ident,
        "reversed": ident.flip(0),
        "random": torch.randperm(tiles, generator=g),
        "group heads last": firsts_last,
    }
    # each image its own order (image 1 gets a different random one)
    return {k: torch.stack([v] + [torch.randperm(tiles, generator=g) for _ in range(n - 1)]) for k, v in orders.items()}


@needs_triton
@pytest.mark.parametrize("n,h,w,block_p,block_t,group", CASES)
def test_merge_tree_matches_float64(n, h, w, block_p, block_t, group):
    cca = random_cca()
    x = random_map(n, h, w)
    ref64 = cca_ref(cca, x)
    tiles = triton.cdiv(h * w, block_p)
    assert tiles > 3 * block_t or tiles <= group  # many partials (or the one-group case)
    s = cca_scale_triton(x.float(), *pack_cca(cca), block_p=block_p, block_t=block_t, group=group)
    assert_close_to_ref(s, ref64, torch.float32, name=f"cca merge tree T={tiles} G={group}")


@needs_triton
@pytest.mark.parametrize("n,h,w,block_p,block_t,group", ORDER_CASES)
def test_merge_tree_independent_of_arrival_order(n, h, w, block_p, block_t, group):
    cca = random_cca(2)
    x = random_map(n, h, w, seed=4).float()
    weights = pack_cca(cca)
    tiles = triton.cdiv(h * w, block_p)
    want = cca_scale_triton(x, *weights, block_p=block_p, block_t=block_t, group=group)
    for name, perm in arrival_orders(n, tiles, group).items():
        s = run_permuted(x, weights, perm, block_p, block_t, group)
        assert torch.equal(s, want), f"arrival order '{name}' changed s (max diff {(s - want).abs().max():.3g})"


def test_merge_depth_at_960x540():
    """The launcher's tree at 960x540: <= 8 dependent steps (one level: cdiv(4050, 32) = 127)."""
    hw = 960 * 540
    # cca_scale and tf32 esa_apply: 128-pixel tiles; half and fp32 IEEE esa_apply: 64
    configs = {
        "cca_scale": launch_settings(hw, 64)[:1],
        "esa_apply tf32": apply_launch_config(hw, 64, torch.float32, "tf32"),
        "esa_apply half": apply_launch_config(hw, 64, torch.float16, "ieee"),
        "esa_apply ieee": apply_launch_config(hw, 64, torch.float32, "ieee"),
    }
    wants = {128: (128, 4050, 64, 4), 64: (64, 8100, 64, 6)}
    assert [block_p for block_p, *_ in configs.values()] == [128, 128, 64, 64]
    for block_p, *_ in configs.values():
        want = wants[block_p]
        tiles = triton.cdiv(hw, block_p)
        group = merge_group(tiles)
        steps = merge_steps(tiles, group)
        assert (block_p, tiles, group, steps) == want
        assert steps <= 8
        # the launcher's G is the best two-level tree: no multiple of BLOCK_T does better
        assert steps == min(merge_steps(tiles, k * MERGE_BLOCK) for k in range(1, tiles // MERGE_BLOCK + 2))
    assert triton.cdiv(4050, MERGE_BLOCK) == 127  # what the one-level merge needed


@triton.jit
def _chan_merge_kernel(ws_ptr, out_ptr, first, count, HW, UNIT, BLOCK_T: tl.constexpr, C: tl.constexpr):
    mean, m2 = K._chan_merge(ws_ptr, first, count, HW, UNIT, BLOCK_T, C)
    offs = tl.arange(0, C)
    tl.store(out_ptr + offs, mean)
    tl.store(out_ptr + C + offs, m2)


@needs_triton
def test_counts_exact_beyond_2_24_pixels():
    """Partials of 2^22 pixels each, 2^24 + 2^22 + 3 pixels in all: integer counts, float64-exact merge."""
    unit, c, block_t = 2**22, 64, 2
    hw = 4 * unit + unit + 3  # 5 full partials' worth + a 3-pixel one: counts pass 2^24
    parts = triton.cdiv(hw, unit)
    counts = np.array([min(unit, hw - j * unit) for j in range(parts)], dtype=np.float64)
    g = np.random.default_rng(3)
    means = g.normal(0.0, 2.0, (parts, c)).astype(np.float32)
    means[-1] += 1.0e3  # the 3-pixel partial far off: its weight 3 / hw must be right
    m2s = (counts[:, None] * g.uniform(0.5, 1.5, (parts, c))).astype(np.float32)
    ws = torch.from_numpy(np.stack([means, m2s], axis=1)).to(DEVICE)  # [parts, 2, C]
    out = torch.empty(2 * c, dtype=torch.float32, device=DEVICE)
    _chan_merge_kernel[(1,)](ws, out, 0, parts, hw, unit, BLOCK_T=block_t, C=c)
    m64, q64 = means.astype(np.float64), m2s.astype(np.float64)
    mean = (counts[:, None] * m64).sum(0) / hw
    m2 = q64.sum(0) + (counts[:, None] * (m64 - mean) ** 2).sum(0)
    got = out.cpu().numpy().astype(np.float64)
    np.testing.assert_allclose(got[:c], mean, rtol=4 * 2.0**-24 * parts, atol=1e-6)
    np.testing.assert_allclose(got[c:], m2, rtol=8 * 2.0**-24 * parts)


def test_too_many_pixels_rejected():
    x = torch.empty(1, 64, 2**16, 2**15, device="meta")  # 2^31 pixels: nothing allocated
    assert x.shape[2] * x.shape[3] > MAX_PIXELS
    pack = type(pack_cca(random_cca()))(*(p.to("meta") for p in pack_cca(random_cca())))
    with pytest.raises(InputError, match="pixels per image"):
        cca_scale(x, pack, backend="torch")
    with pytest.raises(InputError, match="pixels per image"):
        cca_scale_triton(x, *pack)


@needs_triton
def test_wide_index_path_is_bit_identical(monkeypatch):
    """cca_scale / channel_scale with int64 offsets forced (``FORCE_WIDE_INDEX``) give the same bits as i32."""
    from bcrn_fast.ops.cca import channel_scale_triton

    cca = random_cca()
    x = random_map(2, 19, 21).half().contiguous(memory_format=torch.channels_last)
    weights = pack_cca(cca)
    s_narrow = cca_scale_triton(x, *weights, block_p=16, block_t=4, group=8)
    y_narrow = channel_scale_triton(x, s_narrow)
    monkeypatch.setattr(_common, "FORCE_WIDE_INDEX", True)
    assert _common.needs_wide_index(x)  # what both launchers ask
    assert torch.equal(cca_scale_triton(x, *weights, block_p=16, block_t=4, group=8), s_narrow)
    assert torch.equal(channel_scale_triton(x, s_narrow), y_narrow)


def test_workspaces_share_one_allocation_and_one_fill():
    """BCRNFused's six merges: disjoint, correctly sized views of one partials and one zeroed counter tensor."""
    tiles, group = 98, 32
    size = cca_workspace_size(2, tiles, group)
    assert size == (2 * (98 + 4) * 2 * 64, 2 * (1 + 4))  # 4 groups: tile then group partials; image then groups
    spaces = cca_workspaces(6, 2, tiles, DEVICE, group)
    assert len(spaces) == 6
    for k, (ws, cnt) in enumerate(spaces):
        assert ws.shape == (size[0],) and ws.dtype == torch.float32 and ws.is_contiguous()
        assert cnt.shape == (size[1],) and cnt.dtype == torch.int32 and not cnt.any()
        assert ws.untyped_storage().data_ptr() == spaces[0].partials.untyped_storage().data_ptr()
        assert cnt.untyped_storage().data_ptr() == spaces[0].counters.untyped_storage().data_ptr()
        assert cnt.data_ptr() == spaces[0].counters.data_ptr() + k * size[1] * 4  # back to back, no overlap
    one = cca_workspace(2, tiles, DEVICE, group)
    assert one.partials.shape == (size[0],) and one.counters.shape == (size[1],)
