"""The read -> compute -> write pipeline: batching, ordering, back-pressure, errors and accuracy on the CPU."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from bcrn_fast.imageio import to_uint8
from bcrn_fast.jobs import pad_to_min_size
from bcrn_fast.model import BCRN
from bcrn_fast.pipeline import Item, PipelineStats, Runner, ordered_map, prepare_model, run_pipeline


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
