"""Reading a user's image and mask files: sizes, resizing, and unreadable files."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

from viscope.errors import ViscopeError

#: File name endings (lower case) treated as images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SKIP_HINT = (
    "Fix or remove the file, or pass skip_corrupt=True (--skip-corrupt on the command line) "
    "to skip unreadable files."
)
_SHOW = 5  # how many file names an error or warning lists
_ORIENTATION = 0x0112  # EXIF tag; values 5..8 swap width and height
_WIDE_GREY = ("F", "I", "I;16", "I;16B", "I;16L", "I;16N")  # float, 16/32-bit greyscale
# Formats whose mode "I" holds 16-bit samples: PGM (and PNG in older Pillow) open as "I".
_SIXTEEN_BIT_FORMATS = ("PNG", "PPM")

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


def _unit_grey(im: Image.Image, path: Path, fmt: str | None) -> np.ndarray:
    """Pixels of a float or 16/32-bit greyscale image as float64 in [0, 1].

    The rule is the one :func:`load_rgb` documents: 16-bit modes (and mode ``"I"`` from a
    16-bit file format ``fmt``) span 0..65535; otherwise a float image within [0, 1] is used as is,
    then values within 0..255 are 8-bit and values within 0..65535 are 16-bit.

    Raises:
        ViscopeError: A pixel is NaN or infinite, or values fall outside 0..65535.
    """
    arr = np.asarray(im, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ViscopeError(
            f"Expected finite pixel values in image file '{path}'; got NaN or infinite "
            "values. Replace them (e.g. with 0) and save the image again."
        )
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 65535:
        kind = "float" if im.mode == "F" else "32-bit integer"
        raise ViscopeError(
            f"Expected the {kind} greyscale image file '{path}' to hold values in [0, 1], "
            f"0..255 or 0..65535; got values from {lo:g} to {hi:g}. Rescale it to [0, 1] "
            "(e.g. (x - min) / (max - min)) and save it again."
        )
    if im.mode.startswith("I;16") or (im.mode == "I" and fmt in _SIXTEEN_BIT_FORMATS):
        return arr / 65535.0
    if im.mode == "F" and hi <= 1.0:
        return arr
    return arr / (255.0 if hi <= 255 else 65535.0)


def _from_wide_grey(im: Image.Image, path: Path, fmt: str | None, mask: bool) -> Image.Image:
    """A float/16/32-bit greyscale image as ``"L"`` (8 bits), a 0/1 mask, or ``"F"`` in [0, 1].

    A mask (``mask=True``) whose values are all 0 or 1 keeps them as labels; any other is
    thresholded here at half its range, so that 16-bit precision decides, not 8-bit
    rounding. An image in mode ``"F"`` stays float (full precision) in [0, 1].
    """
    unit = _unit_grey(im, path, fmt)
    if mask:
        raw = np.asarray(im)
        on = raw == 1 if np.isin(raw, (0, 1)).all() else unit >= 0.5
        return Image.fromarray(on.astype(np.uint8))
    if im.mode == "F":
        return Image.fromarray(unit.astype(np.float32))
    return Image.fromarray(np.round(unit * 255.0).astype(np.uint8))


def _open(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` as shown (EXIF orientation applied) and convert it to ``mode``.

    Float and 16/32-bit greyscale are scaled by the rule :func:`load_rgb` documents (PIL's
    ``convert`` would clip them at 255); for ``mode="RGB"`` a float image comes back in
    mode ``"F"`` with values in [0, 1] (so that its precision is kept), and for a mask
    (``mode="L"``) such an image comes back as 0/1. A palette mask keeps its indices (not
    its colours' luminance).

    Raises:
        ViscopeError: The file cannot be decoded, or its float/32-bit values are NaN,
            infinite or out of range; the message names it.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format  # a transposed copy has none
            if im.getexif().get(_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            if im.mode in _WIDE_GREY:
                im = _from_wide_grey(im, path, fmt, mask=mode == "L")
                if im.mode == "F":
                    return im
            elif im.mode == "P" and mode == "L":
                im = Image.fromarray(np.asarray(im, dtype=np.uint8), "L")
            elif im.mode in ("RGB", "RGBA") and mode == "L":
                # a colour mask: its brightest channel, so pure red (luminance 76 of 255)
                # is foreground like white
                im = Image.fromarray(np.asarray(im.convert("RGB")).max(axis=2), "L")
            return im.convert(mode)
    except ViscopeError:
        raise  # already names the file and the fix
    except _READ_ERRORS as err:
        raise ViscopeError(f"Cannot read image file '{path}': {err}. {_SKIP_HINT}") from None


def load_rgb(path: Path, size: Size | None) -> torch.Tensor:
    """Read an image as RGB float32 (3, H, W) in [0, 1], resized (bilinear) to ``size``.

    Greyscale is repeated in the three channels. Greyscale wider than 8 bits is scaled,
    not clipped, by one rule:

    * 16-bit modes (``I;16``, and ``I`` from a 16-bit format such as PGM) span 0..65535.
    * Float (mode ``F``, e.g. a float TIFF): values all within [0, 1] are used as they are
      (at float precision); otherwise values within 0..255 are read as 8-bit, and values
      within 0..65535 as 16-bit.
    * 32-bit integer (mode ``I``, e.g. an int32 TIFF): values within 0..255 are 8-bit,
      values within 0..65535 are 16-bit.
    * NaN or infinite pixels, negative values and values above 65535 are an error: rescale
      the image to [0, 1] and save it again.

    Integer images end up with 8-bit precision (1/255 steps); float images keep theirs.

    Raises:
        ViscopeError: The file cannot be decoded (the message names it and the way to
            skip), or it is a float/32-bit image with NaN, infinite or out-of-range values.
    """
    im = _open(path, "RGB")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32)
    if im.mode == "F":  # float greyscale, already in [0, 1]
        grey = torch.from_numpy(np.clip(arr, 0.0, 1.0))
        return grey.expand(3, -1, -1).contiguous()
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1).contiguous()


def load_mask(path: Path, size: Size | None) -> torch.Tensor:
    """Read a mask as float32 (1, H, W) in {0, 1}, resized (nearest) to ``size``.

    The mask is read as greyscale (a colour mask by its brightest channel, so that a red
    annotation counts like a white one) and thresholded at half its range: values of
    0..255 are scaled to [0, 1] first, while an image whose values are all 0 or 1 (a label
    map saved as 8, 16 or 32 bits, as floats, or as palette indices) is used as is. Float
    and 16/32-bit masks are scaled to [0, 1] by the rule :func:`load_rgb` documents and
    then thresholded at 0.5: a float mask in [0, 1] (e.g. probabilities) at 0.5, values
    within 0..255 at 127.5, 16-bit ones at 32767.5.

    Raises:
        ViscopeError: The file cannot be decoded, or it is a float/32-bit image with NaN,
            infinite or out-of-range values; the message names it.
    """
    im = _open(path, "L")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
    arr = np.asarray(im, dtype=np.float32)
    if arr.max(initial=0.0) > 1.0:
        arr = arr / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))[None]


_H = TypeVar("_H")
CSVRows = list[tuple[int, dict[str, str]]]


def read_csv_rows(csv_path: Path, check_header: Callable[[list[str]], _H], *, expected: str,
                  what: str = "images", lower: bool = False) -> tuple[CSVRows, _H]:
    """The rows of a UTF-8 CSV file as ``(line number, {column: stripped value})``, blank
    lines skipped, after ``check_header`` has accepted the header (the loaders of CSV
    files share this; each checks its own columns).

    Args:
        csv_path: the file.
        check_header: called with the header's stripped column names before any row is
            read; raises for a header it refuses, returns what the caller needs of it.
        expected: what the file should be, said when it cannot be read as CSV.
        what: what a row lists, said when there is none.
        lower: compare column names in lower case.

    Returns:
        The rows and what ``check_header`` returned.

    Raises:
        ViscopeError: not UTF-8 CSV, a header ``check_header`` refuses, or no rows.
    """
    def name(h: str | None) -> str:
        h = (h or "").strip()
        return h.lower() if lower else h

    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            checked = check_header([name(h) for h in (reader.fieldnames or [])])
            rows = []
            for raw in reader:
                cells = {name(k): (v.strip() if isinstance(v, str) else "")
                         for k, v in raw.items()}
                if any(cells.values()):  # blank lines are skipped
                    rows.append((reader.line_num, cells))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ViscopeError(
            f"Cannot read CSV file '{csv_path}': {err}. {expected}; save it as UTF-8."
        ) from None
    if not rows:
        raise ViscopeError(f"CSV file '{csv_path}' has a header but no rows of {what}.")
    return rows, checked
