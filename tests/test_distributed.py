"""Ray Data engine on a local 2-CPU Ray cluster: outputs equal the local CLI's byte for byte."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bcrn_fast import distributed
from bcrn_fast.checkpoint import save_checkpoint
from bcrn_fast.cli import main
from bcrn_fast.jobs import Job, plan_jobs
from bcrn_fast.validation import InputError
from tests.utils import random_bcrn

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'bcrn_fast[ray]'")
pytest.importorskip("ray.data", reason="needs Ray Data: pip install 'bcrn_fast[ray]'")

# (relative path, height, width, mode): odd sizes, one below 15x15 (padded), a grayscale one
TREE = [
    ("a.png", 17, 20, "RGB"),
    ("b.jpg", 22, 16, "RGB"),
    ("sub/c.png", 15, 19, "L"),
    ("sub/deeper/d.bmp", 12, 18, "RGB"),
    ("sub/e.png", 20, 17, "RGB"),
    ("f.png", 16, 16, "RGB"),
]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 logical CPUs for the whole module (workers inherit TRITON_INTERPRET)."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process by another test")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(random_bcrn(2), tmp_path_factory.mktemp("ckpt") / "x2.safetensors")


def make_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for rel, h, w, mode in TREE:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([128 + 80 * np.sin(rng.uniform(0.1, 0.4) * yy + c) * np.cos(0.2 * xx) for c in range(3)], 2)
        im = Image.fromarray(img.round().clip(0, 255).astype(np.uint8))
        (im.convert("L") if mode == "L" else im).save(path)
    return root


@pytest.fixture(scope="module")
def tree_and_local(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[Path, Path]:
    """The input tree and the local CLI's outputs for it."""
    tree = make_tree(tmp_path_factory.mktemp("in"))
    local = tmp_path_factory.mktemp("local")
    assert main(["upscale", str(tree), "-o", str(local), "-r", "-w", str(weights), "--no-progress"]) == 0
    return tree, local


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_engine_ray_equals_local(
    cluster,
    weights: Path,
    tree_and_local: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree, local = tree_and_local
    (tmp_path / "in").symlink_to(tree)
    monkeypatch.chdir(tmp_path)  # relative paths: the actors must see the same files as the driver
    argv = ["upscale", "in", "-o", "ray", "-r", "-w", str(weights), "--engine", "ray", "--workers", "2"]
    assert main([*argv, "--no-progress"]) == 0
    want = files(local)
    assert len(want) == len(TREE)
    assert files(tmp_path / "ray") == want  # same names (tree mirrored), same bytes, no temporary files left
    captured = capsys.readouterr()
    assert sorted(captured.out.split()) == sorted(str(Path("ray") / k) for k in want)  # printed as given
    assert f"ray: {len(TREE)} written" in captured.err and "worker" in captured.err


def make_video(path: Path, frames: int = 4, h: int = 18, w: int = 20) -> Path:
    av = pytest.importorskip("av", reason="video needs PyAV: pip install 'bcrn_fast[video]'")
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "bgr0"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(frames):
            img = np.stack([128 + 60 * np.sin(0.3 * yy + i + k) * np.cos(0.2 * xx) for k in range(3)], 2)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")))
        c.mux(s.encode(None))
    return path


def decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_corrupt_file_skipped_and_video_as_one_task(
    cluster, weights: Path, tree_and_local: tuple[Path, Path], tmp_path: Path
) -> None:
    tree, local = tree_and_local
    src = tmp_path / "in"
    src.mkdir()
    bad = src / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    clip = make_video(src / "clip.mkv")
    vlocal = tmp_path / "vlocal"
    assert main(["upscale", str(clip), "-o", str(vlocal), "-w", str(weights), "--codec", "ffv1", "--no-progress"]) == 0
    jobs, _ = plan_jobs([tree / "a.png", bad, clip], tmp_path / "out", 2, suffix=".mkv")
    summary = distributed.upscale_with_ray(jobs, weights, keep_going=True, workers=2, video={"codec": "ffv1"})
    assert list(summary.failed) == [str(bad)] and "bad.png" in summary.failed[str(bad)]
    assert "\n" not in summary.failed[str(bad)]
    assert sorted(summary.written) == sorted(str(tmp_path / "out" / n) for n in ("a_x2.png", "clip_x2.mkv"))
    assert (tmp_path / "out" / "a_x2.png").read_bytes() == (local / "a_x2.png").read_bytes()
    got, want = decoded(tmp_path / "out" / "clip_x2.mkv"), decoded(vlocal / "clip_x2.mkv")
    assert len(got) == len(want) == 4 and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "clip_x2.mkv"]  # no temporaries


def test_first_failure_stops_without_keep_going(tmp_path: Path) -> None:
    """The driver's fold of the result stream (no cluster needed): stop at the first failed file."""
    jobs, _ = plan_jobs([make_tree(tmp_path / "in")], tmp_path / "out", 2, recursive=True)

    def row(job, status: str, error: str = "") -> dict:
        dst = str(job.dst.resolve())
        return {"src": str(job.src.resolve()), "dst": dst, "status": status, "error": error, "note": ""} | {
            "worker": "w:1",
            "seconds": 0.5,
            "pixels": 10,
        }

    consumed = []

    def stream():
        for r in [
            row(jobs[0], "written"),
            row(jobs[0], "written"),
            row(jobs[1], "failed", "b.jpg: corrupt"),
            row(jobs[2], "written"),
        ]:
            consumed.append(r)
            yield r

    seen = []
    summary = distributed.RayRunSummary()
    with pytest.raises(InputError, match="b.jpg: corrupt"):
        distributed._collect(stream(), jobs, summary, keep_going=False, on_result=seen.append)
    assert len(consumed) == 3  # nothing pulled after the failure
    assert summary.written == [str(jobs[0].dst)]  # the retried duplicate is counted once, as the caller named it
    assert summary.failed == {str(jobs[1].src): "b.jpg: corrupt"} and len(seen) == 2
    kept = distributed.RayRunSummary()
    distributed._collect(iter(consumed + [row(jobs[2], "written")]), jobs, kept, keep_going=True)
    assert len(kept.written) == 2 and len(kept.failed) == 1 and kept.workers["w:1"].images == 2
    assert "2 written" in kept.lines()[0] and "1 failed" in kept.lines()[0]


def test_actor_crash_is_retried_without_lost_or_duplicated_outputs(
    cluster, weights: Path, tree_and_local: tuple[Path, Path], tmp_path: Path
) -> None:
    tree, local = tree_and_local
    marker = tmp_path / "crashed"
    out = tmp_path / "out"
    jobs, _ = plan_jobs([tree], out, 2, recursive=True)
    summary = distributed.upscale_with_ray(jobs, weights, workers=2, keep_going=True, _crash_once=str(marker))
    assert marker.exists(), "the fault injection did not fire: an actor should have died once"
    done = summary.written + summary.existing
    assert sorted(done) == sorted(str(j.dst) for j in jobs)  # every file reported once
    assert not summary.failed
    assert files(out) == files(local)  # all there, identical, no half-written or temporary file


def test_fsspec_uris_equal_local(cluster, weights: Path, tree_and_local: tuple[Path, Path], tmp_path: Path) -> None:
    tree, local = tree_and_local
    out = tmp_path / "uri_out"
    jobs, skipped = distributed.plan_uri_jobs([tree.as_uri()], out.as_uri(), 2, recursive=True)
    assert not skipped and all(str(j.src).startswith("file://") for j in jobs)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    bad_job = Job(bad.as_uri(), out.as_uri() + "/bad_x2.png", "image")  # type: ignore[arg-type]
    summary = distributed.upscale_with_ray([*jobs, bad_job], weights.as_uri(), workers=1, keep_going=True)
    assert len(summary.written) == len(TREE)
    assert list(summary.failed) == [bad.as_uri()] and bad.as_uri() in summary.failed[bad.as_uri()]
    assert files(out) == files(local)
    again, skipped = distributed.plan_uri_jobs([tree.as_uri()], out.as_uri(), 2, recursive=True, skip_existing=True)
    assert not again and len(skipped) == len(TREE)


def _overflowing_loader(monkeypatch: pytest.MonkeyPatch, dtypes: tuple) -> list:
    """Models loaded in ``dtypes`` put an inf into their output (a stand-in for fp16 overflow); the dtypes loaded."""
    import bcrn_fast.checkpoint as checkpoint

    real, loaded = checkpoint.load_checkpoint, []

    def load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = real(*args, **kwargs)
        loaded.append(kwargs.get("dtype"))
        if kwargs.get("dtype") in dtypes:
            model.upsample_block.register_forward_hook(
                lambda mod, inputs, out: out.index_fill(-1, out.new_zeros(1, dtype=torch.long), float("inf"))
            )
        return model

    monkeypatch.setattr(checkpoint, "load_checkpoint", load)
    return loaded


def test_worker_reruns_a_non_finite_half_output_in_fp32(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray worker (``BCRNUpscaler``, called in-process here) re-runs a half output that is not finite in fp32
    like the local pipeline: a note, the fp32 PNG, the fp32 model loaded once on need; "auto" on a CPU worker
    is fp32; when fp32 is not finite either the file fails and nothing is written."""
    src = tmp_path / "a.png"
    make_tree(tmp_path / "t")
    src.write_bytes((tmp_path / "t" / "a.png").read_bytes())
    batch = {"src": [str(src)], "kind": ["image"]}
    want = distributed.BCRNUpscaler(str(weights), device="cpu", dtype="fp32")(
        {**batch, "dst": [str(tmp_path / "w.png")]}
    )
    assert want["status"] == ["written"] and distributed.BCRNUpscaler(str(weights), dtype="auto").dtype == torch.float32

    loaded = _overflowing_loader(monkeypatch, (torch.float16,))
    worker = distributed.BCRNUpscaler(str(weights), device="cpu", dtype="fp16")
    got = worker({**batch, "dst": [str(tmp_path / "o.png")]})
    assert got["status"] == ["written"], got["error"]
    assert got["note"] == ["fp16 output is not finite; re-ran it in fp32 and wrote that result"]
    assert loaded == [torch.float16, torch.float32]
    assert np.array_equal(np.array(Image.open(tmp_path / "o.png")), np.array(Image.open(tmp_path / "w.png")))

    monkeypatch.undo()
    _overflowing_loader(monkeypatch, (torch.float16, torch.float32))
    got = distributed.BCRNUpscaler(str(weights), device="cpu", dtype="fp16")(
        {**batch, "dst": [str(tmp_path / "f.png")]}
    )
    assert got["status"] == ["failed"] and not (tmp_path / "f.png").exists()
    assert got["error"] == [f"{src}: output is not finite in fp16 nor in the fp32 re-run; nothing written"]


def test_worker_takes_the_cli_precision(weights: Path) -> None:
    """--precision reaches the Ray worker's fused model (the fp32 dot mode), like the local CLI's."""
    for precision in ("ieee", "tf32"):
        worker = distributed.BCRNUpscaler(str(weights), device="cpu", backend="torch", precision=precision)
        assert worker.model.precision == precision


def test_without_ray_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(distributed.RayUnavailable, match=r"pip install 'bcrn_fast\[ray\]'") as info:
        distributed.require_ray()
    assert "\n" not in str(info.value)


def test_gpu_flags_are_checked() -> None:
    with pytest.raises(InputError, match="reserves GPUs but --device is cpu"):
        distributed.upscale_with_ray([], "w.pth", device="cpu", gpus_per_worker=1)
    with pytest.raises(InputError, match="needs --gpus-per-worker > 0"):
        distributed.upscale_with_ray([], "w.pth", device="cuda", gpus_per_worker=0)
