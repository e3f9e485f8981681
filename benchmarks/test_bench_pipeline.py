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


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return pb._model(2, DEVICE, None)


def test_pipeline_video(benchmark, model, tmp_path: Path) -> None:  # noqa: ANN001
    pytest.importorskip("av", reason="the video benchmark needs PyAV: pip install 'bcrn_fast[video]'")
    src = pb.make_video(tmp_path / "synthetic.mp4", 64, 48, 12)
    rows = {}

    def run() -> None:
        for r in pb.bench_video(model, 2, src, tmp_path, DEVICE):
            rows[r.variant] = r

    benchmark.pedantic(run, rounds=1, iterations=1)
    naive = rows["naive loop (NCHW)"]
    best = max((r for k, r in rows.items() if k.startswith("pipelined")), key=lambda r: r.rate)
    assert best.items == naive.items == 12
    benchmark.extra_info.update(
        naive_fps=naive.rate, pipelined_fps=best.rate, speedup=best.rate / naive.rate, busy=best.busy
    )
    print("\n" + pb.format_rows(list(rows.values())))


def test_pipeline_folder(benchmark, model, tmp_path: Path) -> None:  # noqa: ANN001
    paths = pb.make_folder(tmp_path / "in", 8, 48, 40)
    rows = {}

    def run() -> None:
        for r in pb.bench_folder(model, 2, paths, tmp_path, DEVICE):
            rows[r.variant] = r

    benchmark.pedantic(run, rounds=1, iterations=1)
    with torch.inference_mode():  # the pipelined outputs are the model's
        want = to_uint8(model(read_image(paths[3])[0].to(DEVICE))).astype(int)
    got = np.array(Image.open(tmp_path / "pipe_png" / "img003_x2.png")).astype(int)
    assert np.abs(got - want).max() <= 1
    naive, piped = rows["naive loop (NCHW)"], rows["pipelined"]
    benchmark.extra_info.update(naive_ips=naive.rate, pipelined_ips=piped.rate, speedup=piped.rate / naive.rate)
    print("\n" + pb.format_rows(list(rows.values())))
