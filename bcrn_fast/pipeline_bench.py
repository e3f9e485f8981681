"""End-to-end throughput of ``bcrn-fast upscale``: the pipeline against the naive sequential loop, same run.

``python -m bcrn_fast.pipeline_bench [--device cpu|cuda] [--scale 2] [--frames 24] [--video-size 96x64]
[--images 16] [--image-size 64x48] [--weights W]``

- **video**: a synthetic H.264 clip (written with PyAV first); *naive* decodes a frame, runs the NCHW
  model, converts and encodes it, one after the other in one thread (what the old CLI loop would do);
  *pipelined* is :func:`bcrn_fast.video.upscale_video` (reader/compute/writer threads, the fastest
  accurate layout on the device), shown with the NCHW model too so the layout gain and the overlap
  gain are separate. Decode-only and encode-only passes show what the I/O costs on its own.
- **folder**: synthetic PNGs; *naive* reads, runs and writes each file in turn; *pipelined* is the CLI's
  image path (thread-pool reads, equal sizes batched, writer thread).

Each row: items/s, speed-up over naive, the fraction of the wall time the model was busy (on CUDA
measured with events on the compute stream) and this process's CPU seconds per item (all its threads;
less sensitive than the wall time to other processes on the machine). Variants take turns over
``--repeat`` rounds and each keeps its fastest round. Random weights unless ``--weights``: speed does not depend
on them. The numbers for this project's CPU machine are in docs/video.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bcrn_fast.benchmarking.timing import sync as _sync
from bcrn_fast.imageio import read_image, read_image_array, to_uint8, write_png_atomic
from bcrn_fast.jobs import Job
from bcrn_fast.model import BCRN
from bcrn_fast.pipeline import Item, PipelineStats, Runner, image_item_data, ordered_map, prepare_model, run_pipeline

__all__ = ["BenchRow", "bench_folder", "bench_video", "main", "make_folder", "make_video"]


@dataclass
class BenchRow:
    what: str
    variant: str
    items: int
    seconds: float
    busy: float | None = None
    cpu: float | None = None  # CPU seconds of this process (all threads) per item

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


def _pattern(w: int, h: int, i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [
        128 + 100 * np.sin(0.11 * yy + 0.3 * i),
        128 + 100 * np.cos(0.07 * xx - 0.2 * i),
        100 + 60 * np.sin(0.05 * (xx + yy)),
    ]
    return np.stack(chans, 2).clip(0, 255).astype(np.uint8)


def make_video(path: Path, w: int, h: int, frames: int, fps: int = 24) -> Path:
    """A synthetic H.264 (CRF 16, yuv420p) clip of moving smooth patterns."""
    from bcrn_fast.video import require_av

    av = require_av()
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "16"}
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(_pattern(w, h, i), format="rgb24")
            f.pts = i
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
    return path


def make_folder(folder: Path, n: int, w: int, h: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(_pattern(w, h, i)).save(paths[-1])
    return paths


def _model(scale: int, device: torch.device, weights: str | None) -> BCRN:
    if weights:
        from bcrn_fast.checkpoint import load_checkpoint

        return load_checkpoint(weights, scale, device=device)
    torch.manual_seed(0)
    return BCRN(scale).eval().requires_grad_(False).to(device)


def bench_video(
    model: BCRN, scale: int, src: Path, workdir: Path, device: torch.device, repeat: int = 1
) -> list[BenchRow]:
    """Naive loop, pipelined NCHW, pipelined default layout, and decode/encode-only passes on ``src``."""
    from bcrn_fast.video import require_av, upscale_video

    av = require_av()
    rows = []
    with av.open(str(src)) as c:  # decode only
        t0 = time.perf_counter()
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rows.append(BenchRow("video", "decode only", len(frames), time.perf_counter() - t0))
    n = len(frames)
    h, w = frames[0].shape[:2]

    def encode_all(outs: list[np.ndarray], dst: Path) -> None:
        with av.open(str(dst), "w") as out:
            vs = out.add_stream("libx264", rate=24)
            vs.width, vs.height, vs.pix_fmt = w * scale, h * scale, "yuv420p"
            vs.options = {"crf": "16", "preset": "medium"}
            for i, y in enumerate(outs):
                f = av.VideoFrame.from_ndarray(y, format="rgb24").reformat(format="yuv420p")
                f.pts = i
                out.mux(vs.encode(f))
            out.mux(vs.encode(None))

    big = [np.repeat(np.repeat(f, scale, 0), scale, 1) for f in frames]
    t0 = time.perf_counter()
    encode_all(big, workdir / "encode_only.mp4")
    rows.append(BenchRow("video", "encode only", n, time.perf_counter() - t0))

    def naive() -> BenchRow:  # decode -> NCHW model -> quantize -> encode, one frame at a time, one thread
        t0 = time.perf_counter()
        busy = 0.0
        with av.open(str(src)) as c, av.open(str(workdir / "naive.mp4"), "w") as out:
            vs = out.add_stream("libx264", rate=24)
            vs.width, vs.height, vs.pix_fmt = w * scale, h * scale, "yuv420p"
            vs.options = {"crf": "16", "preset": "medium"}
            for i, frame in enumerate(c.decode(video=0)):
                x = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float().div(255)
                t1 = time.perf_counter()
                with torch.inference_mode():
                    y = to_uint8(model(x.to(device)))
                busy += time.perf_counter() - t1
                f = av.VideoFrame.from_ndarray(y, format="rgb24").reformat(format="yuv420p")
                f.pts = i
                out.mux(vs.encode(f))
            out.mux(vs.encode(None))
        wall = time.perf_counter() - t0
        return BenchRow("video", "naive loop (NCHW)", n, wall, busy / wall)

    _warm(model, frames[0], device)
    timed = [naive]
    variants = [("pipelined, NCHW", model)]
    fast = prepare_model(_clone(model), device)
    if fast is not model:
        variants.append(("pipelined, channels-last" if device.type == "cpu" else "pipelined", fast))
    for name, m in variants:
        runner = Runner(m, device, torch.float32)
        _warm(m, frames[0], device)

        def piped(name: str = name, runner: Runner = runner) -> BenchRow:
            t0 = time.perf_counter()
            dst = workdir / f"{name[:14].replace(' ', '_')}.mp4"
            stats = upscale_video(runner, src, dst, scale, note=lambda _: None)
            return BenchRow("video", name, stats.items, time.perf_counter() - t0, stats.busy)

        timed.append(piped)
    return rows + _interleaved(timed, repeat)


def _warm(model: torch.nn.Module, frame: np.ndarray, device: torch.device) -> None:
    """One untimed forward at the benchmark's size (oneDNN / cuDNN set-up is paid once per shape)."""
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255).to(device)
    from bcrn_fast.pipeline import _channels_last

    if _channels_last(model):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
    _sync(device)


def _interleaved(fns: list, repeat: int) -> list[BenchRow]:  # noqa: ANN001
    """Each variant's fastest of ``repeat`` rounds, the variants taking turns within a round (A B A B ...),
    so load from other processes on the machine hits them alike; each result goes to stderr as it comes."""
    best: list[BenchRow | None] = [None] * len(fns)
    for r in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            c0 = time.process_time()
            row = fn()
            row.cpu = (time.process_time() - c0) / max(1, row.items)
            print(f"  round {r + 1}: {row.what} {row.variant}: {row.rate:.2f}/s", file=sys.stderr, flush=True)
            if best[i] is None or row.seconds < best[i].seconds:
                best[i] = row
    return [b for b in best if b is not None]


def _clone(model: BCRN) -> BCRN:
    m = BCRN(model.scale if hasattr(model, "scale") else 2)
    m.load_state_dict(model.state_dict())
    return m.eval().requires_grad_(False).to(next(model.parameters()).device)


def bench_folder(
    model: BCRN, scale: int, paths: list[Path], workdir: Path, device: torch.device, repeat: int = 1
) -> list[BenchRow]:
    """Naive read-run-write loop against the CLI's image pipeline on ``paths``."""
    rows = []
    out = workdir / "naive_png"
    out.mkdir(exist_ok=True)
    first = read_image(paths[0])[0][0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()

    def naive() -> BenchRow:
        t0 = time.perf_counter()
        busy = 0.0
        for p in paths:
            x, _ = read_image(p)
            t1 = time.perf_counter()
            with torch.inference_mode():
                y = model(x.to(device))
                _sync(device)
            busy += time.perf_counter() - t1
            write_png_atomic(y, out / f"{p.stem}_x{scale}.png")
        wall = time.perf_counter() - t0
        return BenchRow("folder", "naive loop (NCHW)", len(paths), wall, busy / wall)

    _warm(model, first, device)

    from bcrn_fast.imageio import atomic_output, write_png

    fast = prepare_model(_clone(model), device)
    _warm(fast, first, device)
    runner = Runner(fast, device, torch.float32)
    jobs = [Job(p, workdir / "pipe_png" / f"{p.stem}_x{scale}.png", "image") for p in paths]

    def read(job: Job) -> Item:
        return Item(job, image_item_data(read_image_array(job.src)[0]))

    def write(item: Item, y: torch.Tensor | None) -> None:
        with atomic_output(item.key.dst) as tmp:
            write_png(y.numpy(), tmp)

    def piped() -> BenchRow:
        t0 = time.perf_counter()
        batch = 4 if device.type == "cuda" else 1
        stats: PipelineStats = run_pipeline(ordered_map(read, jobs), runner, write, batch=batch)
        return BenchRow("folder", "pipelined", stats.items, time.perf_counter() - t0, stats.busy)

    return rows + _interleaved([naive, piped], repeat)


def format_rows(rows: list[BenchRow]) -> str:
    """A markdown table: items/s, speed-up over the naive loop of the same kind, model-busy fraction."""
    naive = {r.what: r.rate for r in rows if r.variant.startswith("naive")}
    lines = [
        "| input | variant | items | s | items/s | vs naive | model busy | CPU s/item |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r.rate / naive[r.what]:.2f}x" if r.what in naive and r.busy is not None else ""
        busy = f"{r.busy:.0%}" if r.busy is not None else ""
        cpu = f"{r.cpu:.3f}" if r.cpu is not None else ""
        lines.append(
            f"| {r.what} | {r.variant} | {r.items} | {r.seconds:.2f} | {r.rate:.2f} | {ratio} | {busy} | {cpu} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[BenchRow]:
    device = torch.device(args.device)
    model = _model(args.scale, device, args.weights)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="bcrn_pipeline_bench_") as tmp:
        work = Path(tmp)
        if args.frames:
            src = make_video(work / "synthetic.mp4", *args.video_size, args.frames)
            rows += bench_video(model, args.scale, src, work, device, args.repeat)
        if args.images:
            paths = make_folder(work / "folder", args.images, *args.image_size)
            rows += bench_folder(model, args.scale, paths, work, device, args.repeat)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bcrn_fast.pipeline_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    p.add_argument("--weights", help="checkpoint (default: random weights; speed does not depend on them)")
    p.add_argument("--frames", type=int, default=16, help="frames of the synthetic video (0: no video)")
    p.add_argument("--video-size", type=_size, default=(96, 64), help="WIDTHxHEIGHT of the video (default 96x64)")
    p.add_argument("--images", type=int, default=12, help="images in the synthetic folder (0: no folder)")
    p.add_argument("--image-size", type=_size, default=(64, 48), help="WIDTHxHEIGHT of the images (default 64x48)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; each variant's fastest is kept (default 3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, x{args.scale}")
    print(f"load average before: {load} on {os.cpu_count()} CPUs (other processes slow every row alike)")
    print(format_rows(run(args)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
