"""Reading a user's image and mask files: sizes, resizing, and unreadable files."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from viscope.errors import ViscopeError

#: File name endings (lower case) treated as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SKIP_HINT = "Fix or remove the file, or pass skip_corrupt=True to skip unreadable files."
_SHOW = 5  # how many file names an error or warning lists
_ORIENTATION = 0x0112  # EXIF tag; values 5..8 swap width and height
_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16/32-bit greyscale modes

Size = tuple[int, int]


def resolve_size(size: int | Sequence[int] | None) -> Size | None:
    """Turn ``size`` (an int side, ``(height, width)`` or ``None``) into ``(height, width)``.

    Raises:
        ViscopeError: ``size`` is not a positive int, a pair of them, or ``None``.
    """
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return (int(size[0]), int(size[1]))
    raise ViscopeError(
        f"Expected image size as a positive int, (height, width) or None (keep each image's "
        f"own size); got {size!r}."
    )


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names a visible file with an image extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def readable(path: Path) -> bool:
    """Whether ``path`` is an image PIL can parse (``Image.verify``) and decode.

    ``verify`` alone does not decode the pixels (a truncated JPEG passes it), so the file
    is also decoded, as reading it later will.
    """
    try:
        with Image.open(path) as im:
            im.verify()
        _open(path, "RGB")
    except _READ_ERRORS:  # ViscopeError, from _open, is a ValueError
        return False
    return True


def drop_unreadable(paths: Sequence[Path], what: str) -> tuple[list[bool], list[str]]:
    """Check every file; warn once about the unreadable ones.

    Args:
        paths: Files to check.
        what: Where they come from, for the warning (``"image folder 'x'"``).

    Returns:
        ``(keep, skipped)``: one flag per path, and the distinct unreadable paths as strings.
    """
    keep, skipped = find_unreadable(paths)
    warn_skipped(skipped, len(set(paths)), what, stacklevel=4)
    return keep, skipped


def find_unreadable(paths: Sequence[Path]) -> tuple[list[bool], list[str]]:
    """Check each distinct file once: ``(one keep-flag per path, distinct unreadable paths)``."""
    ok = {p: readable(p) for p in dict.fromkeys(paths)}
    return [ok[p] for p in paths], [str(p) for p, good in ok.items() if not good]


def warn_skipped(
    skipped: Sequence[str], files: int, what: str, rows: str = "", stacklevel: int = 3
) -> None:
    """Warn once, if ``skipped`` is not empty, that those of ``files`` files were unreadable.

    ``rows`` (e.g. ``" (dropping 2 of 3 rows)"``) follows the count.
    """
    if skipped:
        more = f" and {len(skipped) - _SHOW} more" if len(skipped) > _SHOW else ""
        warnings.warn(
            f"Skipped {len(skipped)} unreadable image file(s) of {files} in {what}{rows}: "
            f"{', '.join(skipped[:_SHOW])}{more}. The dataset's .skipped lists them all.",
            stacklevel=stacklevel,
        )


def header_size(path: Path) -> Size:
    """``(height, width)`` of an image from its header (the pixels are not decoded).

    Raises:
        ViscopeError: The file cannot be read; the message names it.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except _READ_ERRORS as err:
        raise ViscopeError(f"Cannot read image file '{path}': {err}. {_SKIP_HINT}") from None
    return (height, width)


def check_same_size(paths: Sequence[Path], what: str) -> None:
    """Raise unless all images share one size (needed when ``size=None``).

    Raises:
        ViscopeError: Two sizes differ; the message names one file of each.
    """
    first: tuple[Size, Path] | None = None
    for path in paths:
        hw = header_size(path)
        if first is None:
            first = (hw, path)
        elif hw != first[0]:
            raise ViscopeError(
                f"Expected all images in {what} to share one size when size=None; got "
                f"{first[0][0]}x{first[0][1]} ('{first[1]}') and {hw[0]}x{hw[1]} ('{path}'). "
                "Pass size=<int> or size=(height, width) to resize them."
            )


def _open(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` as shown (EXIF orientation applied) and convert it to ``mode``.

    16-bit greyscale is scaled to 8 bits (PIL's ``convert`` would clip it at 255), except
    for a mask (``mode="L"``) whose values are all 0 or 1. A palette mask keeps its indices
    (not its colours' luminance).
    """
    try:
        with Image.open(path) as im:
            if im.getexif().get(_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            if im.mode in _WIDE_GREY:
                arr = np.asarray(im, dtype=np.float64)
                if mode != "L" or arr.max(initial=0.0) > 1.0:
                    arr = arr / 257.0
                im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
            elif im.mode == "P" and mode == "L":
                im = Image.fromarray(np.asarray(im, dtype=np.uint8), "L")
            elif im.mode in ("RGB", "RGBA") and mode == "L":
                # a colour mask: its brightest channel, so pure red (luminance 76 of 255)
                # is foreground like white
                im = Image.fromarray(np.asarray(im.convert("RGB")).max(axis=2), "L")
            return im.convert(mode)
    except _READ_ERRORS as err:
        raise ViscopeError(f"Cannot read image file '{path}': {err}. {_SKIP_HINT}") from None


def load_rgb(path: Path, size: Size | None) -> torch.Tensor:
    """Read an image as RGB float32 (3, H, W) in [0, 1], resized (bilinear) to ``size``.

    Raises:
        ViscopeError: The file cannot be decoded; the message names it and the way to skip.
    """
    im = _open(path, "RGB")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_mask(path: Path, size: Size | None) -> torch.Tensor:
    """Read a mask as float32 (1, H, W) in {0, 1}, resized (nearest) to ``size``.

    The mask is read as greyscale (a colour mask by its brightest channel, so that a red
    annotation counts like a white one) and thresholded at half its range: values of
    0..255 are scaled to [0, 1] first, while an image whose values are all 0 or 1 (a label
    map saved as 8 or 16 bits, or as palette indices) is used as is; 16-bit values are
    scaled to 8 bits first.

    Raises:
        ViscopeError: The file cannot be decoded; the message names it.
    """
    im = _open(path, "L")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
    arr = np.asarray(im, dtype=np.float32)
    if arr.max(initial=0.0) > 1.0:
        arr = arr / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))[None]
