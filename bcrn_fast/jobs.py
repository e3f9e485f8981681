"""What ``bcrn-fast upscale`` will do, file by file: planning, output naming and atomic writes.

Shared by the local pipeline (:mod:`bcrn_fast.pipeline`) and the Ray engine
(:mod:`bcrn_fast.distributed`), so both name, skip and write outputs the same way:

- an image ``<rel>/<stem>.<ext>`` becomes ``OUTDIR/<rel>/<stem>_x<S>.png``;
- a video ``<rel>/<stem>.<ext>`` becomes ``OUTDIR/<rel>/<stem>_x<S>.<ext>`` when the
  container can hold the default H.264 stream (else ``.mp4``), or ``.<suffix>`` when given;
- ``<rel>`` is the path below a folder given as input with ``recursive=True`` (the tree is
  mirrored), and empty otherwise; files named directly go to ``OUTDIR`` itself;
- one video given with an ``OUTDIR`` that ends in a video extension is written to that file.

Every output is written through :func:`atomic_output`: a hidden temporary file beside the
destination that is renamed onto it only when complete, so an interrupted or failed run never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast.imageio import IMAGE_EXTENSIONS, atomic_output, read_image, write_png
from bcrn_fast.model import MIN_SIZE
from bcrn_fast.validation import InputError

__all__ = [
    "VIDEO_EXTENSIONS",
    "Job",
    "atomic_output",
    "forward_image",
    "is_video",
    "pad_to_min_size",
    "plan_jobs",
    "upscale_image_file",
]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".flv", ".wmv")
# containers that take an H.264 stream (the default codec); other inputs are written as .mp4
_H264_CONTAINERS = (".mp4", ".m4v", ".mkv", ".mov")


@dataclass(frozen=True)
class Job:
    """One input file and the output it becomes; ``kind`` is ``"image"`` or ``"video"``."""

    src: Path
    dst: Path
    kind: str


def is_video(path: Path) -> bool:
    """True when ``path`` has a video container extension (``.mp4``, ``.mkv``, ``.mov``, ...; any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _is_media(path: Path) -> bool:
    suffix = path.suffix.lower()
    return (suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS) and not path.name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _list_folder(folder: Path, recursive: bool, outdir: Path) -> list[Path]:
    """Media files of ``folder`` (below it with ``recursive``), sorted; hidden ones and, below, ``outdir`` excluded."""
    if recursive:
        found = []
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            base = Path(root)
            if base != folder and _inside(base, outdir):  # never re-upscale our own outputs
                dirs[:] = []
                continue
            found += [base / f for f in sorted(files) if _is_media(base / f) and (base / f).is_file()]
        return found
    return sorted((p for p in folder.iterdir() if _is_media(p) and p.is_file()), key=lambda p: p.name)


def _video_suffix(src: Path, suffix: str | None) -> str:
    if suffix:
        return suffix if suffix.startswith(".") else f".{suffix}"
    return src.suffix if src.suffix.lower() in _H264_CONTAINERS else ".mp4"


def plan_jobs(
    inputs: Sequence[str | Path],
    outdir: Path,
    scale: int,
    *,
    recursive: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
    suffix: str | None = None,
) -> tuple[list[Job], list[Job]]:
    """``(to_run, skipped)``: the jobs for ``inputs`` (files or folders) written under ``outdir``.

    ``skipped`` holds the jobs whose output exists when ``skip_existing`` is set. Raises
    :class:`InputError` (one line) for a missing input, a folder without images or videos, two
    inputs with the same output, an output that is an input, and an existing output without
    ``overwrite`` or ``skip_existing``.
    """
    if skip_existing and overwrite:
        raise InputError("--skip-existing and --overwrite exclude each other; pass one of them")
    if not inputs:
        raise InputError("no inputs given (expected image or video files, or folders of them)")
    outdir = Path(outdir)
    sources: list[tuple[Path, Path]] = []  # (file, folder it is relative to, or its own parent)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _list_folder(p, recursive, outdir)
            if not found:
                what = "below it" if recursive else "in it (pass --recursive to look in subfolders)"
                raise InputError(f"{p}: folder holds no .png/.jpg/.jpeg/.bmp images or videos {what}")
            sources += [(f, p if recursive else f.parent) for f in found]
        elif p.exists():
            sources.append((p, p.parent))
        else:
            raise InputError(f"{p}: no such file or folder")

    single_video_file = (
        len(sources) == 1 and is_video(sources[0][0]) and is_video(outdir) and not outdir.is_dir()
    )  # `upscale clip.mp4 -o clip_big.mkv`
    jobs: list[Job] = []
    seen: set[Path] = set()
    for f, base in sources:
        key = f.resolve()
        if key in seen:  # the same file named twice (directly and through its folder)
            continue
        seen.add(key)
        kind = "video" if is_video(f) else "image"
        if single_video_file:
            dst = outdir
        else:
            rel = f.parent.relative_to(base) if recursive else Path()
            ext = _video_suffix(f, suffix) if kind == "video" else ".png"
            dst = outdir / rel / f"{f.stem}_x{scale}{ext}"
        jobs.append(Job(f, dst, kind))

    by_dst: dict[Path, Path] = {}
    for job in jobs:
        key = job.dst.resolve()
        if key in by_dst:
            raise InputError(f"{by_dst[key]} and {job.src} would both be written to {job.dst}; rename one of them")
        by_dst[key] = job.src
        if key in seen or (job.dst.exists() and any(job.dst.samefile(j.src) for j in jobs)):
            what = "video" if is_video(job.dst) else "image"
            raise InputError(f"{job.dst} is an input {what}; refusing to overwrite it (choose another output folder)")

    existing = [j for j in jobs if j.dst.exists()]
    for j in existing:
        if not j.dst.is_file():
            raise InputError(f"{j.dst} exists and is not a file")
    if existing and not (overwrite or skip_existing):
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(
            f"{existing[0].dst}{more} already exists; pass --overwrite to replace or --skip-existing to keep it"
        )
    if skip_existing:
        done = set(existing)
        return [j for j in jobs if j not in done], existing
    return jobs, []


def pad_to_min_size(x: torch.Tensor, min_size: int = MIN_SIZE) -> tuple[torch.Tensor, bool]:
    """Reflect-pad ``x`` (``[N, C, H, W]``) at the bottom/right up to ``min_size`` per side.

    Returns ``(padded, changed)``. Reflection needs a pad smaller than the side, so short sides
    are reflected repeatedly (3 -> 5 -> 9 -> 15); a 1-pixel side is replicated.
    """
    changed = False
    while x.shape[-2] < min_size or x.shape[-1] < min_size:
        h, w = x.shape[-2:]
        ph = min(max(min_size - h, 0), h - 1) if h > 1 else max(min_size - h, 0)
        pw = min(max(min_size - w, 0), w - 1) if w > 1 else max(min_size - w, 0)
        mode = "replicate" if (h == 1 and ph) or (w == 1 and pw) else "reflect"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
        changed = True
    return x, changed


def _tiled_forward() -> Callable[..., torch.Tensor]:
    try:
        from bcrn_fast.tiling import tiled_forward
    except ImportError as exc:
        raise InputError(f"--tile needs bcrn_fast.tiling.tiled_forward, which cannot be imported ({exc})") from None
    return tiled_forward


def forward_image(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device | str,
    dtype: torch.dtype,
    tile: int | str | None = None,
    max_memory: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``model(x)`` for a host ``[N, 3, H, W]`` float32 batch: padded below 15x15, cropped back.

    With ``tile`` (an int or ``"auto"``) the forward runs through
    :func:`bcrn_fast.tiling.tiled_forward` (``max_memory`` bytes; ``progress(done, total)`` per tile).
    """
    h, w = x.shape[-2:]
    x, _ = pad_to_min_size(x)
    if tile is None:
        y = model(x.to(device=device, dtype=dtype))
    else:
        y = _tiled_forward()(
            model, x.to(dtype=dtype), tile=tile, device=device, max_memory=max_memory, progress=progress
        )
    scale = y.shape[-1] // x.shape[-1]
    return y[..., : h * scale, : w * scale]


def upscale_image_file(
    model: nn.Module,
    job: Job,
    device: torch.device | str,
    dtype: torch.dtype,
    tile: int | str | None = None,
    max_memory: int | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    note: Callable[[str], Any] | None = None,
) -> None:
    """Read ``job.src``, upscale it (reflect-padded when below 15x15), write ``job.dst`` atomically.

    ``note(text)`` receives one line per conversion or padding (e.g. grayscale to RGB). Raises
    :class:`bcrn_fast.imageio.ImageError` for an unreadable input.
    """
    x, text = read_image(job.src)
    notes = [text] if text else []
    h, w = x.shape[-2:]
    if h < MIN_SIZE or w < MIN_SIZE:
        notes.append(f"{w}x{h} is below {MIN_SIZE}x{MIN_SIZE}; reflect-padded to run and cropped back")
    if note:
        for t in notes:
            note(f"{job.src}: {t}")
    with torch.inference_mode():
        y = forward_image(model, x, device, dtype, tile=tile, max_memory=max_memory, progress=progress)
    with atomic_output(job.dst) as tmp:
        write_png(y, tmp)
