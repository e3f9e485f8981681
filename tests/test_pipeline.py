"""The read -> compute -> write pipeline: batching, ordering, back-pressure, errors and accuracy on the CPU."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from bcrn_fast.graphs import GraphedModule
from bcrn_fast.imageio import to_uint8
from bcrn_fast.jobs import pad_to_min_size
from bcrn_fast.model import BCRN
from bcrn_fast.pipeline import (
    Item,
    NonFiniteOutput,
    PipelineStats,
    Recomputed,
    Runner,
    ordered_map,
    prepare_model,
    run_pipeline,
)
from tests.test_graphs import ReplayByRerun


class _Recorder:
    """A stand-in runner: records batch sizes, returns the inputs' first pixel as the 'output'."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, datas: list[torch.Tensor], stats: PipelineStats) -> tuple[list[torch.Tensor], None]:
        self.batches.append(len(datas))
        return [d.flatten()[:1].clone() for d in datas], None


def _img(h: int, w: int, value: float) -> torch.Tensor:
    return torch.full((3, h, w), value)


def test_batches_equal_sizes_and_keeps_order() -> None:
    sizes = [(16, 16)] * 5 + [(20, 16)] * 2 + [(16, 16)]
    source = []
    for i, (h, w) in enumerate(sizes):
        source.append(Item(("img", i), _img(h, w, float(i))))
        if i == 2:
            source.append(Item(("pass", i)))  # e.g. an audio packet: rides along, keeps its place
    got: list[tuple] = []
    rec = _Recorder()
    stats = run_pipeline(iter(source), rec, lambda it, out: got.append((it.key, out)), batch=3, queue_size=2)
    assert rec.batches == [3, 2, 2, 1]  # a new size closes the batch; batch=3 caps it
    assert [k for k, _ in got] == [it.key for it in source]
    assert all(out is None if k[0] == "pass" else float(out) == k[1] for k, out in got)
    assert stats.items == 8 and stats.batches == 4 and stats.wall > 0


def test_back_pressure_bounds_the_read_ahead() -> None:
    read = []

    def source():
        for i in range(40):
            read.append(i)
            yield Item(i, _img(4, 4, i))

    lead = []

    def slow_sink(item: Item, out: torch.Tensor | None) -> None:
        time.sleep(0.005)
        lead.append(len(read) - item.key)

    run_pipeline(source(), _Recorder(), slow_sink, batch=1, queue_size=2)
    # reader <= 2 queued + 1 held in put, compute <= 1, writer queue <= 2 + 1 in hand: never the whole input
    assert max(lead) <= 8


@pytest.mark.parametrize("where", ["source", "runner", "sink"])
@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_errors_stop_every_stage(where: str, exc_type: type[BaseException]) -> None:
    before = threading.active_count()

    def source():
        for i in range(50):
            if where == "source" and i == 5:
                raise exc_type("boom")
            yield Item(i, _img(4, 4, i))

    rec = _Recorder()

    def runner(datas, stats):  # noqa: ANN001, ANN202
        if where == "runner" and len(rec.batches) == 5:
            raise exc_type("boom")
        return rec(datas, stats)

    def sink(item: Item, out: torch.Tensor | None) -> None:
        if where == "sink" and item.key == 5:
            raise exc_type("boom")

    with pytest.raises(exc_type, match="boom"):
        run_pipeline(source(), runner, sink, batch=1, queue_size=2)
    assert threading.active_count() == before  # reader and writer joined


def test_ordered_map_is_ordered_and_bounded() -> None:
    in_flight, peak = [0], [0]
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.002 * (i % 3))
        with lock:
            in_flight[0] -= 1
        return i * i

    assert list(ordered_map(work, range(30), workers=3, ahead=2)) == [i * i for i in range(30)]
    assert peak[0] <= 3


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 20), (10, 12), (15, 2), (15, 15)])
def test_pad_to_min_size(h: int, w: int) -> None:
    x = torch.rand(1, 3, h, w, dtype=torch.float64)
    y, changed = pad_to_min_size(x)
    assert y.shape[-2:] == (max(h, 15), max(w, 15)) and changed == (h < 15 or w < 15)
    assert torch.equal(y[..., :h, :w], x)  # the original stays at the top left
    if 2 <= h < 15 and 2 * h - 1 >= 15:  # one reflection: row h + k mirrors row h - 2 - k
        assert torch.equal(y[..., h, :w], x[..., h - 2, :])


def _model() -> BCRN:
    torch.manual_seed(0)
    m = BCRN(2).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_cpu_runner_matches_the_reference_nchw_model() -> None:
    """Channels-last, batched, uint8 and float inputs: each output within 1 step of model(x) on its own."""
    ref = _model()
    fast = prepare_model(_model(), torch.device("cpu"))
    runner = Runner(fast, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(1)
    frames = [torch.randint(0, 256, (17, 19, 3), dtype=torch.uint8, generator=g) for _ in range(3)]
    stats = PipelineStats()
    outs, ready = runner(frames, stats)
    assert ready is None and len(outs) == 3 and stats.compute > 0
    floats = [f.permute(2, 0, 1).float() / 255 for f in frames]
    outs_f, _ = runner(floats[:1], PipelineStats())
    with torch.inference_mode():
        for f, out in zip(floats, outs, strict=True):
            want = to_uint8(ref(f[None])).astype(int)
            assert out.shape == (34, 38, 3) and out.dtype == torch.uint8
            assert (out.numpy().astype(int) - want).__abs__().max() <= 1
        assert torch.equal(outs_f[0], outs[0])


# ---------------------------------------------------------------- non-finite half outputs: the fp32 re-run


def _overflowing(model: BCRN, dtypes: tuple[torch.dtype, ...], item: int) -> BCRN:
    """``model`` whose output has an inf at pixel (0, 0) of batch item ``item`` when it runs in one of
    ``dtypes`` (a stand-in for fp16 overflow); the hook sits on the upsampler, so tiled runs see it too."""

    def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.dtype in dtypes and out.shape[0] > item:
            out = out.clone()
            out[item, :, 0, 0] = float("inf")
        return out

    model.upsample_block.register_forward_hook(hook)
    return model


def _frames(n: int, h: int = 17, w: int = 19, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for _ in range(n)]


def _want(model: nn.Module, frames: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """``model`` on the batch of ``frames`` (batched, as half precision rounds per batch shape), uint8 HWC."""
    x = torch.stack(frames).permute(0, 3, 1, 2).to(torch.float32).div(255).to(dtype)
    with torch.inference_mode():
        y = model(x).float()
    return [torch.from_numpy(to_uint8(y[i : i + 1])) for i in range(len(frames))]


class _Fallback:
    """A fallback factory that counts how often it is asked to build the fp32 model."""

    def __init__(self) -> None:
        self.builds = 0
        self.model = _model()

    def __call__(self) -> nn.Module:
        self.builds += 1
        return self.model


@pytest.mark.parametrize(("dtype", "graph"), [(torch.float16, False), (torch.bfloat16, True)], ids=["eager", "graphed"])
def test_half_runner_reruns_non_finite_items_in_fp32(dtype: torch.dtype, graph: bool) -> None:
    """The bad item comes back as the fp32 model's output, the others as the half model's; the fp32 model
    is built once, on first need; with the half model graphed, the re-run never goes through a graph."""
    half = _overflowing(_model().to(dtype), (dtype,), item=1)
    model = GraphedModule(half, clone=False, capturer=ReplayByRerun()) if graph else half
    fallback = _Fallback()
    runner = Runner(model, torch.device("cpu"), dtype, fallback=fallback)
    for seed in (1, 2) if graph else (1,):  # graphed: the second batch replays the graph of the first
        frames = _frames(3, seed=seed)
        outs, ready = runner(frames, PipelineStats())
        assert ready is None and fallback.builds == 1 and runner.reruns == seed
        assert isinstance(outs[1], Recomputed) and outs[1].dtype == dtype
        assert torch.equal(outs[1].out, _want(fallback.model, frames[1:2])[0])
        want = _want(half, frames, dtype)
        for i in (0, 2):
            assert isinstance(outs[i], torch.Tensor) and torch.equal(outs[i], want[i])
    if graph:
        assert model.captures == 1 and [k[2] for k in model._graphs] == [dtype]


def test_tiled_half_runner_reruns_in_fp32() -> None:
    half = _overflowing(_model().bfloat16(), (torch.bfloat16,), item=0)  # every tile overflows
    fallback = _Fallback()
    runner = Runner(half, torch.device("cpu"), torch.bfloat16, tile=12, fallback=fallback)
    frames = _frames(2, 26, 23)
    outs, _ = runner(frames, PipelineStats())
    assert fallback.builds == 1 and all(isinstance(o, Recomputed) for o in outs)
    for o, f in zip(outs, frames, strict=True):  # exact tiling: the fp32 whole-image result, to rounding
        assert (o.out.int() - _want(fallback.model, [f])[0].int()).abs().max() <= 1


def test_fp32_rerun_not_finite_and_no_fallback() -> None:
    """Not finite in fp32 either: Recomputed(None); no fallback given: a clear error, nothing returned."""
    fallback = _Fallback()
    _overflowing(fallback.model, (torch.float32,), item=0)
    half = _overflowing(_model().half(), (torch.float16,), item=0)
    outs, _ = Runner(half, torch.device("cpu"), torch.float16, fallback=fallback)(_frames(1), PipelineStats())
    assert outs == [Recomputed(None, torch.float16)]
    with pytest.raises(NonFiniteOutput, match="fp16 output of item 0 of the batch is not finite"):
        Runner(half, torch.device("cpu"), torch.float16)(_frames(1), PipelineStats())


def test_fp32_runner_never_reruns() -> None:
    """fp32 outputs are not checked: an inf is quantized like any value and no fp32 model is built."""
    model = _overflowing(_model(), (torch.float32,), item=0)
    fallback = _Fallback()
    frames = _frames(2)
    outs, _ = Runner(model, torch.device("cpu"), torch.float32, fallback=fallback)(frames, PipelineStats())
    assert fallback.builds == 0 and all(isinstance(o, torch.Tensor) for o in outs)
    assert torch.equal(outs[0], _want(model, frames)[0]) and int(outs[0][0, 0, 0]) == 255


def test_pipeline_reports_reruns_and_fails_unfixable_items() -> None:
    """A Recomputed result reaches the sink as its output with one named note; a failed re-run becomes
    the item's NonFiniteOutput error (output None), as an unreadable file would."""

    def runner(datas, stats):  # noqa: ANN001, ANN202 - value 1: re-run worked, 2: it did not
        outs = []
        for d in datas:
            v = int(d.flatten()[0])
            outs.append(Recomputed(d * 10, torch.float16) if v == 1 else Recomputed(None, torch.bfloat16) if v else d)
        return outs, None

    got, notes = [], []
    source = [Item(i, _img(4, 4, float(i))) for i in range(3)]
    run_pipeline(
        iter(source),
        runner,
        lambda it, out: got.append((it.key, out, it.error)),
        batch=3,
        label=lambda key: f"item {key}",
        note=notes.append,
    )
    assert notes == ["item 1: fp16 output is not finite; re-ran it in fp32 and wrote that result"]
    assert [k for k, _, _ in got] == [0, 1, 2]
    assert torch.equal(got[0][1], _img(4, 4, 0.0)) and got[0][2] is None
    assert torch.equal(got[1][1], _img(4, 4, 10.0)) and got[1][2] is None
    assert got[2][1] is None and isinstance(got[2][2], NonFiniteOutput)
    assert str(got[2][2]) == "item 2: output is not finite in bf16 nor in the fp32 re-run; nothing written"
