"""Video in, video out with PyAV (the optional extra ``pip install 'bcrn_fast[video]'``).

One pass over the input container: the reader thread of :func:`bcrn_fast.pipeline.run_pipeline`
demuxes it, decodes the first video stream and converts each frame to RGB; audio and subtitle
packets pass through untouched; the writer thread converts the upscaled RGB frames back to the
encoder's pixel format, encodes them and muxes them with the copied packets into a temporary
file that replaces the destination only once it is complete (:func:`bcrn_fast.imageio.atomic_output`).

Colour: the YUV -> RGB matrix and range are the stream's own (``colorspace``/``color_range``
tags); an untagged stream gets what players assume (BT.709 from 720 lines up, else BT.601;
limited range). The output is converted with the same matrix and range and tagged with them
(and with the input's primaries and transfer), so it displays like the input. RGB pixel formats
(``bgr0``, ``gbrp``) skip the matrix entirely: the lossless round trip.

Timing: output frames keep the input frames' timestamps in the input stream's time base
(variable frame rate survives), the average frame rate is copied, and ``--frames A:B`` keeps
frames ``A..B-1`` (decode order = presentation order), shifting timestamps so the clip starts at 0;
copied packets are cut at packet boundaries to the same time span.

Default encoding: H.264 (``libx264``), CRF 16, preset ``medium``, ``yuv420p`` (visually lossless
and playable everywhere; pass ``--pix-fmt yuv444p`` to keep full chroma, ``--codec ffv1`` for
lossless, whose default pixel format is ``bgr0``, i.e. RGB).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcrn_fast.imageio import atomic_output
from bcrn_fast.model import MIN_SIZE
from bcrn_fast.pipeline import Item, PipelineStats, run_pipeline
from bcrn_fast.validation import InputError

__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_CRF",
    "VideoError",
    "VideoInfo",
    "default_pix_fmt",
    "parse_frames",
    "probe",
    "require_av",
    "upscale_video",
]

DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 16
DEFAULT_PRESET = "medium"
_CRF_CODECS = ("libx264", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1")
_RGB_FORMATS = ("rgb24", "bgr24", "bgr0", "rgb0", "gbrp", "gbrp10le", "gbrp16le", "bgra", "rgba")
# Colorspace (AVColorSpace) values that swscale knows -> itself; 6 (SMPTE170M) is BT.601 too, 10 is BT.2020 CL
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_BT709, _BT601, _MPEG, _JPEG = 1, 5, 1, 2


class VideoError(InputError):
    """A video that cannot be read, converted or written (one-line message)."""


def require_av() -> Any:
    """Import PyAV or raise :class:`InputError` saying how to install it."""
    try:
        import av
    except ImportError:
        raise InputError("video needs PyAV, which is not installed: pip install 'bcrn_fast[video]'") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reads from a file's first video stream."""

    width: int
    height: int
    fps: Fraction
    frames: int  # exact when the container says, else estimated from the duration
    duration: float  # seconds
    time_base: Fraction
    pix_fmt: str
    codec: str
    matrix: int  # the colorspace the YUV -> RGB conversion uses
    full_range: bool
    other_streams: tuple[str, ...]  # "audio:aac", "subtitle:mov_text", ...


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def probe(path: Path) -> VideoInfo:
    """Header facts of ``path``'s first video stream; :class:`VideoError` when it has none or is unreadable."""
    av = require_av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream")
            vs = c.streams.video[0]
            cc = vs.codec_context
            fps = Fraction(vs.average_rate or vs.guessed_rate or 25)
            if vs.duration is not None and vs.time_base:
                duration = float(vs.duration * vs.time_base)
            else:
                duration = float(c.duration or 0) / 1e6
            frames = int(vs.frames) or max(1, round(duration * fps))
            matrix = _MATRICES.get(int(cc.colorspace or 2), _BT709 if cc.height >= 720 else _BT601)
            others = tuple(f"{s.type}:{s.codec_context.name}" for s in c.streams if s.type in ("audio", "subtitle"))
            return VideoInfo(
                width=cc.width,
                height=cc.height,
                fps=fps,
                frames=frames,
                duration=duration,
                time_base=Fraction(vs.time_base),
                pix_fmt=cc.format.name if cc.format else "unknown",
                codec=cc.name,
                matrix=matrix,
                full_range=int(cc.color_range or 0) == _JPEG or (cc.format is not None and "yuvj" in cc.format.name),
                other_streams=others,
            )
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{path}: cannot read video ({_one_line(exc)})") from None


def parse_frames(spec: str | None) -> tuple[int, int | None] | None:
    """``"A:B"`` -> ``(A, B)`` (frames A..B-1; either side may be empty); ``None`` -> ``None``."""
    if spec is None:
        return None
    a, sep, b = spec.partition(":")
    try:
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else None
    except ValueError:
        start, stop, sep = -1, None, ""
    if not sep or start < 0 or (stop is not None and stop <= start):
        raise InputError(f"--frames expects A:B with 0 <= A < B (frames A..B-1; A: or :B also work), got {spec!r}")
    return start, stop


def default_pix_fmt(codec: str) -> str:
    """The pixel format used when ``--pix-fmt`` is not given: RGB for lossless ffv1, else ``yuv420p``."""
    return "bgr0" if codec == "ffv1" else "yuv420p"


def _frame_source(
    path: Path, info: VideoInfo, frames: tuple[int, int | None] | None, copied: dict[int, Any]
) -> Iterator[Item]:
    """Items in decode order: RGB frames (``key=("frame", pts, index)``, ``index`` counted from the file's
    first frame) and copied packets (``key=("packet", pkt, stream_index, t0)``)."""
    av = require_av()
    start, stop = frames or (0, None)
    t_start = start / info.fps  # the kept span, in seconds, for the copied streams
    t_stop = None if stop is None else stop / info.fps
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            others = [c.streams[i] for i in copied]
            first_pts: int | None = None
            index = 0
            for packet in c.demux(vs, *others):
                if packet.stream.index != vs.index:
                    if packet.dts is None or packet.pts is None:
                        continue  # the demuxer's end-of-stream marker
                    t = float(packet.pts * packet.time_base)
                    if frames and (t < t_start or (t_stop is not None and t >= t_stop)):
                        continue
                    # the stream index is read here: the input container may be closed when the writer muxes
                    yield Item(("packet", packet, packet.stream.index, t_start if frames else 0.0))
                    continue
                for frame in packet.decode():
                    if index < start:
                        index += 1
                        continue
                    if stop is not None and index >= stop:
                        return
                    rgb = frame.to_ndarray(
                        format="rgb24",
                        src_colorspace=info.matrix,
                        src_color_range=_JPEG if info.full_range else _MPEG,
                        interpolation="BICUBIC",
                    )
                    pts = frame.pts if frame.pts is not None else index
                    first_pts = pts if first_pts is None else first_pts
                    yield Item(
                        ("frame", pts - (first_pts if frames else 0), index),
                        torch.from_numpy(np.ascontiguousarray(rgb)),
                    )
                    index += 1
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot decode video ({_one_line(exc)})") from None


class _Encoder:
    """The output container: one encoded video stream plus the copied streams; used by the writer thread."""

    def __init__(
        self,
        tmp: Path,
        src: Path,
        info: VideoInfo,
        scale: int,
        codec: str,
        crf: int | None,
        pix_fmt: str,
        preset: str | None,
        note: Callable[[str], Any],
    ) -> None:
        av = require_av()
        self.av = av
        self.out = av.open(str(tmp), "w")
        self.copied: dict[int, Any] = {}
        w, h = info.width * scale, info.height * scale
        if pix_fmt in ("yuv420p", "yuvj420p", "nv12", "yuv422p") and (w % 2 or h % 2):
            note(f"{src}: {w}x{h} output is odd-sized; encoding yuv444p instead of {pix_fmt}")
            pix_fmt = "yuv444p"
        try:
            vs = self.out.add_stream(codec, rate=info.fps)
        except (av.error.FFmpegError, ValueError) as exc:
            self.out.close()
            raise VideoError(f"cannot use codec {codec!r} ({_one_line(exc)}); try libx264, libx265 or ffv1") from None
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.time_base = info.time_base
        vs.codec_context.time_base = info.time_base
        self.rgb_out = pix_fmt in _RGB_FORMATS
        self.matrix, self.range = info.matrix, (_JPEG if info.full_range else _MPEG)
        opts = {}
        if crf is not None and codec in _CRF_CODECS:
            opts["crf"] = str(crf)
            if codec == "libvpx-vp9":
                opts["b"] = "0"
        elif crf is not None:
            note(f"{src}: --crf does not apply to {codec}; ignored")
        if preset and codec in ("libx264", "libx265"):
            opts["preset"] = preset
        vs.options = opts
        cc = vs.codec_context
        if not self.rgb_out:
            cc.colorspace, cc.color_range = self.matrix, self.range
        self.vs, self.pix_fmt = vs, pix_fmt
        self.frames = 0

    def copy_streams(self, src_container: Any, path: Path, note: Callable[[str], Any]) -> dict[int, Any]:
        """Add a stream for every audio/subtitle stream of the input the output container can take."""
        suffix = Path(self.out.name).suffix.lower()
        for s in src_container.streams:
            if s.type not in ("audio", "subtitle"):
                continue
            name = s.codec_context.name
            if s.type == "subtitle" and suffix not in (".mkv", ".webm") and name != "mov_text":
                note(f"{path}: {name} subtitles cannot go into {suffix}; dropped (use an .mkv output to keep them)")
                continue
            try:
                self.copied[s.index] = self.out.add_stream_from_template(s)
            except (self.av.error.FFmpegError, ValueError) as exc:
                note(f"{path}: cannot copy {s.type} stream #{s.index} ({name}): {_one_line(exc)}; dropped")
        return self.copied

    def __call__(self, item: Item, out: torch.Tensor | None) -> None:
        kind = item.key[0]
        if kind == "packet":
            _, packet, index, t0 = item.key
            ostream = self.copied[index]
            if t0:
                shift = round(t0 / packet.time_base)
                packet.pts -= shift
                packet.dts -= shift
            packet.stream = ostream
            self.out.mux(packet)
            return
        frame = self.av.VideoFrame.from_ndarray(out.numpy(), format="rgb24")
        if self.rgb_out:
            frame = frame.reformat(format=self.pix_fmt)
        else:
            frame = frame.reformat(
                format=self.pix_fmt,
                dst_colorspace=self.matrix,
                dst_color_range=self.range,
                interpolation="BICUBIC",
            )
        frame.pts = item.key[1]
        frame.time_base = self.vs.codec_context.time_base
        self.out.mux(self.vs.encode(frame))
        self.frames += 1

    def finish(self) -> None:
        self.out.mux(self.vs.encode(None))
        self.out.close()

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - the temporary file is removed anyway
            pass


def upscale_video(
    runner: Callable[..., Any],
    src: Path,
    dst: Path,
    scale: int,
    *,
    codec: str = DEFAULT_CODEC,
    crf: int | None = None,
    pix_fmt: str | None = None,
    preset: str | None = DEFAULT_PRESET,
    frames: tuple[int, int | None] | None = None,
    batch: int = 1,
    queue_size: int = 8,
    progress: bool = False,
    note: Callable[[str], Any] = print,
) -> PipelineStats:
    """Upscale every frame of ``src`` (or ``frames``) with ``runner`` and write ``dst`` atomically.

    ``runner`` is a :class:`bcrn_fast.pipeline.Runner`. ``crf`` defaults to 16 for the CRF codecs.
    Audio and subtitle streams are copied packet for packet. Raises :class:`VideoError`, or
    :class:`bcrn_fast.pipeline.NonFiniteOutput` naming the frame whose output was not finite even
    in fp32 (a frame re-run in fp32 gets one ``note``: ``"<src>: frame <i>: ..."``).
    """
    av = require_av()
    from tqdm import tqdm

    info = probe(src)
    if info.width < MIN_SIZE or info.height < MIN_SIZE:
        note(f"{src}: {info.width}x{info.height} is below {MIN_SIZE}x{MIN_SIZE}; frames are reflect-padded and cropped")
    if crf is None and codec in _CRF_CODECS:
        crf = DEFAULT_CRF
    total = info.frames
    if frames:
        total = max(0, min(total, frames[1] if frames[1] is not None else total) - frames[0])
    with atomic_output(dst) as tmp:
        enc = _Encoder(tmp, src, info, scale, codec, crf, pix_fmt or default_pix_fmt(codec), preset, note)
        try:
            with av.open(str(src)) as c:
                copied = enc.copy_streams(c, src, note)
            bar = tqdm(total=total, desc=src.name, unit="frame", disable=not progress, dynamic_ncols=True)

            def sink(item: Item, out: torch.Tensor | None) -> None:
                if item.error is not None:  # a frame that could not be computed: the video fails
                    raise item.error
                enc(item, out)
                if item.key[0] == "frame":
                    bar.update(1)

            try:
                stats = run_pipeline(
                    _frame_source(src, info, frames, copied),
                    runner,
                    sink,
                    batch=batch,
                    queue_size=queue_size,
                    label=lambda key: f"{src}: frame {key[2]}",
                    note=note,
                )
            finally:
                bar.close()
            if enc.frames == 0:
                raise VideoError(
                    f"{src}: no frames decoded" + (f" in --frames {frames[0]}:{frames[1]}" if frames else "")
                )
            enc.finish()
        except av.error.FFmpegError as exc:
            enc.abort()
            raise VideoError(f"{dst}: cannot encode video ({_one_line(exc)})") from None
        except BaseException:
            enc.abort()
            raise
    return stats
