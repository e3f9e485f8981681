"""End-to-end pipeline benchmark: synthetic video and folder, pipelined vs the naive loop in the same run.

``pytest benchmarks/test_bench_pipeline.py --benchmark-only`` times the pipelined runs with
pytest-benchmark and stores the naive loop's rate, the speed-up and the model-busy fraction in
``extra_info``; ``python -m bcrn_fast.pipeline_bench`` prints the same comparison as a table.
No assertion on speed (a benchmark, not a test); outputs are checked against the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcrn_fast import pipeline_bench as pb
from bcrn_fast.imageio import read_image, to_uint8

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# kind -> (make the input in a folder, benchmark it, items, unit of the rates in extra_info)
KINDS = {
    "video": (lambda d: pb.make_video(d / "synthetic.mp4", 64, 48, 12), pb.bench_video, 12, "fps"),
    "folder": (lambda d: pb.make_folder(d / "in", 8, 48, 40), pb.bench_folder, 8, "ips"),
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return pb._model(2, DEVICE, None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_pipeline(benchmark, model, tmp_path: Path, kind: str) -> None:  # noqa: ANN001
    make, bench, items, unit = KINDS[kind]
    if kind == "video":
        pytest.importorskip("av", reason="the video benchmark needs PyAV: pip install 'bcrn_fast[video]'")
    src = make(tmp_path)
    rows = {}

    def run() -> None:
        rows.update((r.variant, r) for r in bench(model, 2, src, tmp_path, DEVICE))

    benchmark.pedantic(run, rounds=1, iterations=1)
    naive = rows["naive loop (NCHW)"]
    best = max((r for k, r in rows.items() if k.startswith("pipelined")), key=lambda r: r.rate)
    assert best.items == naive.items == items
    if kind == "folder":  # the pipelined outputs are the model's
        with torch.inference_mode():
            want = to_uint8(model(read_image(src[3])[0].to(DEVICE))).astype(int)
        got = np.array(Image.open(tmp_path / "pipe_png" / "img003_x2.png")).astype(int)
        assert np.abs(got - want).max() <= 1
    rates = {f"naive_{unit}": naive.rate, f"pipelined_{unit}": best.rate, "speedup": best.rate / naive.rate}
    benchmark.extra_info.update(rates, busy=best.busy)
    print("\n" + pb.format_rows(list(rows.values())))
