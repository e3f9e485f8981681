"""Reading and writing images for the CLI and the evaluation, with Pillow.

Images enter the model as float32 ``[1, 3, H, W]`` RGB tensors in [0, 1]
(``uint8 / 255``) and leave it as ``HxWx3`` uint8 arrays
(``round(255 * clamp(x, 0, 1))``), the protocol the BCRN authors use.
Anything that is not 8-bit RGB (grayscale, palette, RGBA, CMYK, 16-bit, ...)
is converted to RGB and reported with a one-line note; unreadable inputs raise
:class:`ImageError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageError",
    "atomic_output",
    "find_images",
    "image_size",
    "read_image",
    "read_image_array",
    "read_rgb_uint8",
    "to_uint8",
    "write_png",
    "write_png_atomic",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# Pillow modes holding 16-bit (or wider integer) grayscale samples in 0..65535.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

_MODE_NAMES = {
    "1": "1-bit black-and-white",
    "L": "grayscale (L)",
    "LA": "grayscale+alpha (LA)",
    "La": "grayscale+alpha (La)",
    "P": "palette (P)",
    "PA": "palette+alpha (PA)",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGBX",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "LAB",
    "HSV": "HSV",
}
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _is_16bit_tile(im: Image.Image) -> bool:
    """True when Pillow decodes this file from 16-bit samples (e.g. a 48-bit RGB PNG, raw mode ``RGB;16B``)."""
    for tile in getattr(im, "tile", None) or []:
        args = getattr(tile, "args", None)
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


class ImageError(ValueError):
    """An image file that cannot be read or used (missing, a directory, corrupt, unsupported, too small)."""


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path} is not a regular file")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, without decoding the pixels.

    Raises :class:`ImageError` for a missing file, a directory or a file that
    Pillow does not recognise as an image.
    """
    p = Path(path)
    _check_file(p)
    try:
        with Image.open(p) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{p}: not a readable image ({_one_line(exc)})") from None


def read_image_array(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Decode an image to ``HxWx3`` RGB.

    Returns ``(array, note)``: ``array`` is uint8 for 8-bit images and float32
    in [0, 1] (``value / 65535``) for 16-bit grayscale ones, so no precision is
    lost; ``note`` is ``None`` for 8-bit RGB input and otherwise one line saying
    what was converted (e.g. ``"converted grayscale (L) image to RGB"``).
    Raises :class:`ImageError` with a one-line message for a missing file, a
    directory, or an unreadable, truncated or unsupported image.
    """
    p = Path(path)
    _check_file(p)
    try:
        with Image.open(p) as im:
            wide = _is_16bit_tile(im)  # must be read before load() empties im.tile
            im.load()
            mode = im.mode
            if mode == "RGB":
                return np.array(im, dtype=np.uint8), ("reduced 16-bit RGB to 8 bits per channel" if wide else None)
            if mode in _WIDE_GRAY_MODES:
                gray = np.array(im).astype(np.float32)
                if gray.size and (gray.min() < 0 or gray.max() > 65535):
                    raise ImageError(f"{p}: unsupported {mode} image with values outside 0..65535")
                rgb = np.repeat((gray / np.float32(65535.0))[..., None], 3, axis=2)
                return rgb, f"converted 16-bit grayscale ({mode}) image to RGB"
            if mode == "F":
                raise ImageError(f"{p}: 32-bit floating-point images are not supported; save it as 8-bit RGB")
            what = f"{'16-bit ' if wide else ''}{_MODE_NAMES.get(mode, mode)} image"
            alpha = mode in _ALPHA_MODES
            if mode == "P" and "transparency" in im.info:
                conv = im.convert("RGBA").convert("RGB")
                what, alpha = "palette (P) image with transparency", True
            else:
                conv = im.convert("RGB")
            return np.array(conv, dtype=np.uint8), f"converted {what} to RGB" + ("; alpha dropped" if alpha else "")
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{p}: cannot read image ({_one_line(exc)})") from None


def read_image(path: str | os.PathLike[str]) -> tuple[torch.Tensor, str | None]:
    """Read an image as a float32 ``[1, 3, H, W]`` RGB tensor in [0, 1] (``uint8 / 255``).

    Returns ``(tensor, note)``, ``note`` as in :func:`read_image_array`
    (``None`` when the file already is 8-bit RGB). Raises :class:`ImageError`.
    """
    arr, note = read_image_array(path)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.to(torch.float32) / 255.0 if arr.dtype == np.uint8 else t.to(torch.float32)
    return t.permute(2, 0, 1).unsqueeze(0).contiguous(), note


def read_rgb_uint8(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Read an image as an ``HxWx3`` uint8 RGB array (16-bit input is rounded to 8 bits)."""
    arr, note = read_image_array(path)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * np.float32(255.0), 0.0, 255.0).round().astype(np.uint8)
    return arr, note


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """``round(255 * clamp(x, 0, 1))`` of a ``[1, 3, H, W]`` or ``[3, H, W]`` image as ``HxWx3`` uint8.

    Computed in float32 (lower-precision tensors are upcast first), rounding
    half to even, exactly as the protocol's ``tensor2np``.
    """
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"to_uint8 takes a single image, got a batch of shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"to_uint8 expects [1, 3, H, W] or [3, H, W], got shape {tuple(tensor.shape)}")
    t = t.to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return t.permute(1, 2, 0).contiguous().numpy()


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``dst`` (same extension); rename it onto ``dst`` on success.

    The folder is created when missing. The finished file is flushed to disk before the
    ``os.replace``; on any exception (``KeyboardInterrupt`` included) the temporary file is
    removed and ``dst`` is left as it was. Listings (:func:`find_images`) skip hidden files,
    so a temporary file is never taken for an input.
    """
    dest = Path(dst)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.{secrets.token_hex(6)}.tmp{dest.suffix}")
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"{dest}: nothing was written")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _as_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = to_uint8(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected an HxWx3 or HxW uint8 image, got {arr.dtype} array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def write_png(image: np.ndarray | torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` (``HxWx3``/``HxW`` uint8 array or image tensor) as a PNG at ``path`` (not atomic)."""
    arr = _as_uint8(image)
    with open(path, "wb") as fh:
        Image.fromarray(arr).save(fh, format="PNG")
    return Path(path)


def write_png_atomic(image: np.ndarray | torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as a PNG at ``path`` atomically and return the path.

    ``image`` is an ``HxWx3`` (or ``HxW``) uint8 array or an image tensor
    (converted with :func:`to_uint8`). The PNG goes through :func:`atomic_output`:
    a hidden temporary file in the destination folder, flushed to disk and then
    moved over ``path`` with ``os.replace``, so an interrupted run never leaves a
    half-written output. An existing ``path`` is replaced (callers decide whether
    that is allowed).
    """
    arr = _as_uint8(image)
    with atomic_output(path) as tmp:
        write_png(arr, tmp)
    return Path(path)


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Files in ``folder`` (not recursive) ending in .png/.jpg/.jpeg/.bmp, any case, sorted by name.

    Hidden files (names starting with ``.``, such as :func:`atomic_output`'s temporaries) are skipped.

    Raises :class:`ImageError` when ``folder`` does not exist or is not a folder.
    """
    d = Path(folder)
    if not d.exists():
        raise ImageError(f"{d}: no such folder")
    if not d.is_dir():
        raise ImageError(f"{d} is not a folder")
    return sorted(
        (p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )
