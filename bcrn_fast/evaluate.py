"""Evaluation of a BCRN model on an HR/LR image folder pair, by the paper's protocol.

Per image: the LR file is read as RGB float32 in [0, 1] (``uint8 / 255``),
run at batch 1 under ``torch.inference_mode()``; the output is clamped to
[0, 1], multiplied by 255 and rounded to uint8; the HR file is modcropped to a
multiple of the scale; both are shaved by ``scale`` pixels per border and
reduced to rounded BT.601 Y; then PSNR (peak 255) and SSIM are computed by
:mod:`bcrn_fast.metrics`.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from bcrn_fast.imageio import find_images, read_image, read_rgb_uint8, to_uint8
from bcrn_fast.metrics import evaluate_pair

__all__ = [
    "DATA_DIR_ENV",
    "DatasetError",
    "ImageResult",
    "default_data_dir",
    "evaluate",
    "format_table",
    "mean_result",
    "pair_images",
    "set5_dirs",
]

DATA_DIR_ENV = "BCRN_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DatasetError(ValueError):
    """HR and LR folders that cannot be evaluated together (missing, empty, unpaired, mismatched sizes)."""


@dataclass(frozen=True)
class ImageResult:
    """Metrics for one image: Y-channel PSNR in dB (``inf`` when identical) and mean SSIM."""

    name: str
    psnr: float
    ssim: float


def default_data_dir() -> Path | None:
    """The shared reference-data folder, or ``None`` when it is absent.

    ``$BCRN_DATA_DIR`` when that variable is set (``None`` if it does not name
    a folder), else ``<project root>/../shared/data`` where the project root is
    the folder holding the ``bcrn_fast`` package.
    """
    env = os.environ.get(DATA_DIR_ENV)
    candidate = Path(env).expanduser() if env else PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def set5_dirs(data_dir: Path, scale: int) -> tuple[Path, Path]:
    """``(HR, LR)`` Set5 folders inside a data dir: ``Set5/HR`` and ``Set5/LR_bicubic/X<scale>``."""
    return data_dir / "Set5" / "HR", data_dir / "Set5" / "LR_bicubic" / f"X{scale}"


def pair_images(hr_dir: str | os.PathLike[str], lr_dir: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """Pair the images of two folders by file stem: ``[(stem, hr_path, lr_path), ...]`` sorted by stem.

    Raises :class:`DatasetError` when a folder is missing or empty, when a stem
    appears twice in one folder, or when some image has no partner (naming the
    first few of each side).
    """
    sides = {}
    for label, folder in (("HR", Path(hr_dir)), ("LR", Path(lr_dir))):
        if not folder.is_dir():
            raise DatasetError(f"{label} folder {folder} does not exist or is not a folder")
        files = find_images(folder)
        if not files:
            raise DatasetError(f"{label} folder {folder} holds no .png/.jpg/.jpeg/.bmp images")
        by_stem: dict[str, Path] = {}
        for f in files:
            if f.stem in by_stem:
                raise DatasetError(
                    f"{label} folder {folder} has two images named {f.stem!r}: {by_stem[f.stem].name}, {f.name}"
                )
            by_stem[f.stem] = f
        sides[label] = by_stem
    hr, lr = sides["HR"], sides["LR"]
    only_hr = sorted(set(hr) - set(lr))
    only_lr = sorted(set(lr) - set(hr))
    if only_hr or only_lr:
        parts = []
        if only_hr:
            parts.append(f"{len(only_hr)} HR images without an LR partner: {', '.join(only_hr[:5])}")
        if only_lr:
            parts.append(f"{len(only_lr)} LR images without an HR partner: {', '.join(only_lr[:5])}")
        raise DatasetError(f"HR {hr_dir} and LR {lr_dir} do not pair by file name: " + "; ".join(parts))
    return [(stem, hr[stem], lr[stem]) for stem in sorted(hr)]


def evaluate(
    model: nn.Module,
    hr_dir: str | os.PathLike[str],
    lr_dir: str | os.PathLike[str],
    scale: int,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> list[ImageResult]:
    """PSNR/SSIM of ``model`` on every HR/LR pair (paired by file stem), in file-name order.

    ``model`` must already be on ``device`` with parameters of ``dtype``; each
    LR image is moved there as ``dtype`` and the output is converted back to
    float32 before clamping and rounding. Raises :class:`DatasetError` for
    unpaired folders or an LR image whose ``scale``-times size does not match
    the modcropped HR, and :class:`bcrn_fast.imageio.ImageError` for
    unreadable files.
    """
    pairs = pair_images(hr_dir, lr_dir)
    was_training = model.training
    model.eval()
    results = []
    try:
        with torch.inference_mode():
            for name, hr_path, lr_path in tqdm(
                pairs, desc="eval", unit="img", disable=not progress, file=sys.stderr, leave=False
            ):
                hr, _ = read_rgb_uint8(hr_path)
                lr, _ = read_image(lr_path)
                lh, lw = lr.shape[2], lr.shape[3]
                hh, hw = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
                if (lh * scale, lw * scale) != (hh, hw):
                    raise DatasetError(
                        f"{name}: LR {lw}x{lh} times {scale} is {lw * scale}x{lh * scale}, but the HR image "
                        f"cropped to a multiple of {scale} is {hw}x{hh}"
                    )
                sr = model(lr.to(device=device, dtype=dtype))
                p, s = evaluate_pair(to_uint8(sr), hr, scale)
                results.append(ImageResult(name, p, s))
    finally:
        model.train(was_training)
    return results


def mean_result(results: list[ImageResult], name: str = "mean") -> ImageResult:
    """Arithmetic means of PSNR and SSIM over ``results`` (``inf`` PSNR propagates)."""
    if not results:
        raise ValueError("no results to average")
    return ImageResult(
        name,
        math.fsum(r.psnr for r in results) / len(results),
        math.fsum(r.ssim for r in results) / len(results),
    )


def format_table(results: list[ImageResult]) -> str:
    """A plain-text table: one row per image and a final mean row; PSNR with 3 decimals, SSIM with 4."""
    rows = [*results, mean_result(results)]
    width = max(5, *(len(r.name) for r in rows))
    lines = [f"{'image':<{width}}  {'PSNR (dB)':>9}  {'SSIM':>6}"]
    lines.append("-" * len(lines[0]))
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        lines.append(f"{r.name:<{width}}  {r.psnr:>9.3f}  {r.ssim:>6.4f}")
    return "\n".join(lines)
