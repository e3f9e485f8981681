"""Video in, video out: frames, sizes, timing, copied audio, lossless exactness, interrupts (PyAV, CPU)."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from bcrn_fast.checkpoint import load_checkpoint
from bcrn_fast.cli import main
from bcrn_fast.imageio import to_uint8
from tests.test_cli import REF, one_error_line, overflow_in, weights  # noqa: F401 - weights is a fixture

av = pytest.importorskip("av", reason="video tests need PyAV: pip install 'bcrn_fast[video]'")


def make_video(
    path: Path,
    w: int,
    h: int,
    n: int,
    fps: int,
    codec: str,
    pix_fmt: str,
    audio: str,
    tags: tuple[int, int] | None = None,
) -> Path:
    """A moving smooth pattern, ``n`` frames at ``fps``, with a 440 Hz mono ``audio`` track of the same length.

    ``tags=(colorspace, color_range)`` converts the frames with that matrix and range and tags the stream so.
    """
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if tags:
            vs.codec_context.colorspace, vs.codec_context.color_range = tags
        aus = out.add_stream(audio, rate=48000)
        aus.layout = "mono"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            chans = [128 + 120 * np.sin(0.4 * yy + 0.3 * i), 128 + 120 * np.cos(0.3 * xx - 0.2 * i), 40 + 0 * xx]
            frame = av.VideoFrame.from_ndarray(np.stack(chans, 2).clip(0, 255).astype(np.uint8), format="rgb24")
            if tags:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=tags[0], dst_color_range=tags[1])
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        fmt = aus.codec_context.format.name
        total = 48000 * n // fps
        tone = np.sin(2 * np.pi * 440 * np.arange(total) / 48000)[None]
        for s0 in range(0, total, 1024):
            chunk = tone[:, s0 : s0 + 1024]
            samples = (chunk * 3000).astype(np.int16) if fmt == "s16" else chunk.astype(np.float32)
            af = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
            af.sample_rate, af.pts = 48000, s0
            out.mux(aus.encode(af))
        out.mux(aus.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {  # odd frame counts, two sizes, two containers, lossy and lossless
        "h264": make_video(d / "walk.mp4", 32, 24, 9, 24, "libx264", "yuv420p", "aac"),
        "ffv1": make_video(d / "talk.mkv", 20, 18, 5, 25, "ffv1", "bgr0", "flac"),
    }


def _streams(path: Path, tags: tuple[int, int] | None = None) -> dict:
    """Frames decoded to RGB with ``tags=(colorspace, range)`` (default: the stream's own), audio packets, facts."""
    conv = {"src_colorspace": tags[0], "src_color_range": tags[1]} if tags else {}
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="rgb24", **conv)) for f in c.decode(vs)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
        vs = c.streams.video[0]
        cc = vs.codec_context
        return {
            "frames": frames,
            "audio": audio,
            "size": (cc.width, cc.height),
            "fps": Fraction(vs.average_rate),
            "duration": float(frames[-1][0] * vs.time_base) + 1 / float(vs.average_rate),
            "codec": cc.name,
            "colorspace": int(cc.colorspace),
            "range": int(cc.color_range),
        }


def _block_means(a: np.ndarray, k: int = 8) -> np.ndarray:
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    return a[:h, :w].reshape(h // k, k, w // k, k, 3).astype(float).mean((1, 3))


def _upscale_frames(weights: Path, frames: list[np.ndarray]) -> list[np.ndarray]:  # noqa: F811
    model = load_checkpoint(weights)
    with torch.inference_mode():
        return [to_uint8(model(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255)) for f in frames]


def test_lossless_video_is_each_frame_upscaled(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    clips: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = clips["ffv1"]
    out_dir = tmp_path / "out"
    args = ["upscale", str(src), "-o", str(out_dir), "--weights", str(weights), *REF, "--codec", "ffv1", "--batch", "3"]
    assert main(args) == 0
    dst = out_dir / "talk_x2.mkv"
    assert capsys.readouterr().out.split() == [str(dst)]
    assert [p.name for p in out_dir.iterdir()] == ["talk_x2.mkv"]
    a, b = _streams(src), _streams(dst)
    assert len(b["frames"]) == len(a["frames"]) == 5
    assert b["size"] == (40, 36) and b["fps"] == a["fps"] == 25 and b["codec"] == "ffv1"
    assert [p for p, _ in b["frames"]] == [p for p, _ in a["frames"]]  # timestamps kept
    assert b["duration"] == pytest.approx(a["duration"], abs=1e-3)
    assert b["audio"] == a["audio"] and len(b["audio"]) > 1  # copied packet for packet
    want = _upscale_frames(weights, [f for _, f in a["frames"]])
    for (_, got), ref in zip(b["frames"], want, strict=True):
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1

    # --frames A:B keeps frames A..B-1, starting at time 0, with the audio of that span
    assert main([*args, "--frames", "2:5", "-o", str(tmp_path / "cut.mkv")]) == 0
    c = _streams(tmp_path / "cut.mkv")
    assert len(c["frames"]) == 3 and c["frames"][0][0] == 0
    for (_, got), ref in zip(c["frames"], want[2:5], strict=True):
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert 0 < len(c["audio"]) < len(a["audio"]) and set(c["audio"]) <= set(a["audio"])


def test_default_h264_keeps_timing_audio_and_colour(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    clips: dict[str, Path],
) -> None:
    src = clips["h264"]
    assert main(["upscale", str(src), "-o", str(tmp_path), "--weights", str(weights), *REF, "--no-progress"]) == 0
    a, b = _streams(src), _streams(tmp_path / "walk_x2.mp4")
    assert b["codec"] == "h264" and b["size"] == (64, 48)
    assert len(b["frames"]) == 9 and b["fps"] == 24
    assert b["duration"] == pytest.approx(a["duration"], abs=1e-3)
    assert b["audio"] == a["audio"]
    assert (b["colorspace"], b["range"]) == (5, 1)  # untagged SD input: BT.601 limited both ways, and tagged so
    want = _upscale_frames(weights, [f for _, f in a["frames"]])
    # The random-weight model's output is pixel noise, which 4:2:0 chroma cannot hold; 8x8 means (what
    # colour and brightness are made of) must survive: a wrong range or matrix shifts them by 5-20 levels,
    # all blocks the same way. Codec loss moves single blocks by up to ~4.3 levels (seen on CI; 2.5-3.8
    # here) but their average per channel by < 1, so the frame average carries the tight bound.
    for (_, got), ref in zip(b["frames"], want, strict=True):
        d = _block_means(got) - _block_means(ref)
        assert np.abs(d.reshape(-1, 3).mean(0)).max() < 2, "colour/brightness shifted: range or matrix"
        assert np.abs(d).max() < 6


def _nearest_x2(datas: list[torch.Tensor], stats: object) -> tuple[list[torch.Tensor], None]:
    """A stand-in for the model that keeps colours: nearest-neighbour x2 of uint8 HWC frames."""
    return [d.repeat_interleave(2, 0).repeat_interleave(2, 1) for d in datas], None


@pytest.mark.parametrize(("tags", "pix_fmt"), [((1, 2), "yuv444p"), ((5, 1), "yuv444p"), ((1, 1), "yuv420p")])
def test_colour_matrix_and_range_follow_the_stream_tags(
    tmp_path: Path, tags: tuple[int, int], pix_fmt: str, clips: dict[str, Path]
) -> None:
    """A tagged input is decoded with its matrix and range, and re-encoded (and tagged) with them."""
    from bcrn_fast.video import upscale_video

    src = make_video(tmp_path / "in.mkv", 24, 16, 2, 30, "ffv1", pix_fmt, "flac", tags=tags)
    dst = tmp_path / "out.mkv"
    upscale_video(_nearest_x2, src, dst, 2, codec="ffv1", pix_fmt=pix_fmt, note=pytest.fail)
    a, b = _streams(src, tags=tags), _streams(dst, tags=tags)
    assert (b["colorspace"], b["range"]) == tags
    other = (5 if tags[0] == 1 else 1, 3 - tags[1])  # the other matrix and the other range
    for (_, fin), (_, fout), (_, bad) in zip(
        a["frames"], b["frames"], _streams(dst, tags=other)["frames"], strict=True
    ):
        want = fin.repeat(2, 0).repeat(2, 1).astype(int)
        k = 8 if pix_fmt == "yuv420p" else 1  # 4:2:0 keeps colour only on average
        assert np.abs(_block_means(fout, k) - _block_means(want, k)).max() <= 2.5
        assert np.abs(_block_means(bad, k) - _block_means(want, k)).max() > 8  # a wrong matrix/range is seen


def test_interrupt_leaves_no_output(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    clips: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bcrn_fast.pipeline import Runner

    calls = []
    real = Runner.__call__

    def interrupted(self, datas, stats):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if Ctrl-C arrived mid-video
        return real(self, datas, stats)

    monkeypatch.setattr(Runner, "__call__", interrupted)
    out_dir = tmp_path / "out"
    assert main(["upscale", str(clips["h264"]), "-o", str(out_dir), "--weights", str(weights), *REF]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not any(out_dir.rglob("*"))  # neither the output nor its temporary file


def test_video_errors_are_one_line(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    clips: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["upscale", str(clips["ffv1"]), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]
    assert main([*base, "--codec", "no-such-codec"]) == 2
    assert "cannot use codec 'no-such-codec'" in one_error_line(capsys.readouterr().err)
    assert main([*base, "--frames", "5:2"]) == 2
    assert "--frames expects A:B" in one_error_line(capsys.readouterr().err)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    assert main(["upscale", str(broken), "-o", str(tmp_path / "o"), "--weights", str(weights), *REF]) == 2
    assert "broken.mp4: cannot read video" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    assert main(base) == 2
    assert "pip install 'bcrn_fast[video]'" in one_error_line(capsys.readouterr().err)


def test_video_frame_rerun_in_fp32(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    clips: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Frame 1 overflows in fp16: one note names it and the lossless output holds the fp32 run's frame 1
    and the fp16 run's other frames; when fp32 overflows too, the video fails naming the frame."""
    src = clips["ffv1"]
    base = ["upscale", str(src), "--weights", str(weights), *REF, "--codec", "ffv1", "--frames", "0:3"]
    assert main([*base, "-o", str(tmp_path / "fp32.mkv"), "--dtype", "fp32"]) == 0
    assert main([*base, "-o", str(tmp_path / "fp16.mkv"), "--dtype", "fp16"]) == 0
    capsys.readouterr()
    half_calls = []

    def frame_1_in_fp16(y: torch.Tensor) -> bool:  # the CPU batch is one frame
        if y.dtype != torch.float16:
            return False
        half_calls.append(1)
        return len(half_calls) == 2

    loaded = overflow_in(monkeypatch, frame_1_in_fp16)
    assert main([*base, "-o", str(tmp_path / "mixed.mkv"), "--dtype", "fp16"]) == 0
    assert loaded == [torch.float16, torch.float32]
    err = capsys.readouterr().err.strip()
    assert err == f"bcrn-fast: note: {src}: frame 1: fp16 output is not finite; re-ran it in fp32 and wrote that result"
    fp32, fp16, mixed = (_streams(tmp_path / f"{n}.mkv")["frames"] for n in ("fp32", "fp16", "mixed"))
    assert len(mixed) == 3 and not np.array_equal(fp32[1][1], fp16[1][1])
    for i, (pts, got) in enumerate(mixed):
        want = fp32[i] if i == 1 else fp16[i]
        assert pts == want[0] and np.array_equal(got, want[1])

    half_calls.clear()
    monkeypatch.undo()
    overflow_in(monkeypatch, lambda y: frame_1_in_fp16(y) or y.dtype == torch.float32)
    assert main([*base, "-o", str(tmp_path / "bad.mkv"), "--dtype", "fp16"]) == 2
    why = "output is not finite in fp16 nor in the fp32 re-run; nothing written"
    assert one_error_line(capsys.readouterr().err) == f"bcrn-fast: error: {src}: frame 1: {why}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16.mkv", "fp32.mkv", "mixed.mkv"]  # no partial file
