"""``DensityCSV``: a user's mammograms listed in a CSV file ``path,density[,mask_path]``.

Each row names an image (PNG/JPEG/TIFF, or DICOM read by :func:`viscope.data.dicom.read_dicom`),
its BI-RADS breast density (``A``-``D`` or ``1``-``4``) and, optionally, a mask of its
dense tissue. Images are flipped so that every breast lies against the same edge.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from viscope.data.base import IGNORE, Item, VisionDataset, labels_of
from viscope.data.dicom import dicom_size, is_dicom, read_dicom_image
from viscope.data.files import (
    IMAGE_EXTENSIONS,
    Size,
    load_mask,
    load_rgb,
    read_csv_rows,
    readable,
    resolve_size,
)
from viscope.data.mammo import check_classes
from viscope.errors import ViscopeError

#: Density classes in label order (label 0 is A).
DENSITY_CLASSES = ("A", "B", "C", "D")
FLIPS = ("left", "right", None)
# "b", " B ", "3", "3.0" and VinDr-Mammo's "DENSITY C" all parse.
_DENSITY = re.compile(r"^(?:density[\s_:-]*)?(?:([a-d])|([1-4])(?:\.0*)?)$", re.IGNORECASE)
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_EXIF_ORIENTATION = 0x0112  # values 5..8 swap width and height
_SHOW = 5  # rows a warning lists
_SKIP = "or pass skip_invalid=True to skip invalid rows"


def parse_density(value: str) -> int | None:
    """Label (0 for A .. 3 for D) of a density cell, or None if it is not one.

    Example:
        >>> [parse_density(v) for v in (" b ", "3", "D", "density a", "E", "5")]
        [1, 2, 3, 0, None, None]
    """
    match = _DENSITY.match(value.strip())
    if match is None:
        return None
    letter, digit = match.groups()
    return "abcd".index(letter.lower()) if letter else int(digit) - 1


def is_density_csv(path: str | PathLike[str]) -> bool:
    """Whether a CSV file's header has a ``density`` column and no ``label`` column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, skipinitialspace=True), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    names = {h.strip().lower() for h in header}
    return "density" in names and "label" not in names


def check_two_classes(dataset: Dataset, where: str = "the dataset") -> None:
    """Raise unless ``dataset`` holds at least two density classes (after any skipping).

    Args:
        dataset: A dataset with ``.targets`` and ``.classes`` (e.g. :class:`DensityCSV`
            or a subset of it).
        where: What the dataset is, for the message (e.g. the CSV file).

    Raises:
        ViscopeError: Fewer than two classes have items.
    """
    labels = labels_of(dataset)
    names = list(getattr(dataset, "classes", []))
    present = sorted({int(t) for t in labels})
    if len(present) < 2:
        got = ", ".join(
            f"{names[k] if k < len(names) else k} ({int((labels == k).sum())} images)"
            for k in present
        )
        raise ViscopeError(
            f"Expected {where} to hold at least two density classes; got only "
            f"{got or 'no images'}. The weak-label pipeline needs at least two classes "
            "(A and D): add images of another density class (A fatty .. D extremely dense)."
        )


@dataclass(frozen=True)
class _Row:
    line: int
    image: Path
    label: int
    mask: Path | None
    dicom: bool


class _Invalid(Exception):
    """A row's problem: the message's text after ``in row N of CSV file '...'``."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


class DensityCSV(VisionDataset):
    """Mammograms with BI-RADS densities from a CSV file; items ``(image, label[, mask])``.

    Items carry a mask when the CSV has a ``mask_path`` column (an all-IGNORE mask for a
    row without one); ``has_masks`` is true when at least one row has a mask.

    The CSV has a header with the columns ``path`` and ``density`` and optionally
    ``mask_path`` (others are ignored). Density is ``A``-``D`` or ``1``-``4`` (case,
    spaces and a ``DENSITY`` prefix do not matter); labels index ``classes``. Relative
    paths start at the CSV's folder, or at ``root``. Rows are numbered as a spreadsheet
    shows them: the header is row 1.

    Images: PNG/JPEG/TIFF are read by :func:`viscope.data.files.load_rgb`; files ending in
    ``.dcm``/``.dicom`` or carrying the DICOM preamble by
    :func:`viscope.data.dicom.read_dicom` (window applied, MONOCHROME1 inverted). Each is
    resized (bilinear) to ``size``. Masks are resized (nearest) with it and must have its
    original size; a row with an empty ``mask_path`` gets a mask that is all
    :data:`~viscope.data.base.IGNORE`, and ``mask_available[i]`` says whether item ``i``
    has a real one.

    Flipping (``flip="left"``): an image whose breast lies against the right edge is
    mirrored, with its mask. The side comes from the DICOM ``ImageLaterality`` (else
    ``Laterality``) tag, read by the usual storage convention (a left breast, ``L``,
    against the left edge; ``R`` against the right), and otherwise from the image: the
    half (left or right) with more intensity holds the breast.

    Every row is checked at construction (files exist, density parses, headers read,
    mask size matches); pixels are decoded when an item is read, unless
    ``skip_invalid=True``, which decodes every file up front.

    Args:
        csv_path: The CSV file.
        root: Folder that relative paths start from (default: the CSV's folder).
        size: Side of the square images returned, ``(height, width)``, or ``None`` to keep
            the files' own size (then all must share it).
        skip_invalid: Skip invalid rows (missing or unreadable file, unknown density, mask
            of the wrong size) with one warning giving their count and the first ones;
            ``.skipped`` lists them all. Otherwise the first one raises.
        flip: ``"left"`` or ``"right"``: the edge every breast is turned to; ``None``: no
            flipping.
        classes: Density classes to keep (rows of others are left out, not invalid);
            labels index this tuple in its order.

    Raises:
        ViscopeError: The CSV is missing or lacks a column, an option is invalid, a row is
            invalid (naming the CSV file, the row and the value), or fewer than two density
            classes remain (:func:`check_two_classes`).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> for name in ("a.png", "b.png"):
        ...     Image.new("L", (12, 10), 200).save(folder / name)
        >>> _ = (folder / "x.csv").write_text("path,density\\na.png, a \\nb.png,4\\n")
        >>> ds = DensityCSV(folder / "x.csv", size=8)
        >>> ds.targets, ds.classes, tuple(ds[0][0].shape), ds.has_masks
        ([0, 3], ['A', 'B', 'C', 'D'], (3, 8, 8), False)
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        csv_path: str | PathLike[str],
        root: str | PathLike[str] | None = None,
        size: int | Sequence[int] | None = (256, 256),
        skip_invalid: bool = False,
        flip: str | None = "left",
        classes: Sequence[str] = DENSITY_CLASSES,
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise ViscopeError(
                f"CSV file '{csv_path}' does not exist. Expected a CSV with the header "
                "path,density[,mask_path] and one row per image."
            )
        if flip not in FLIPS:
            raise ViscopeError(f"Expected flip 'left', 'right' or None; got {flip!r}.")
        wanted = check_classes(classes)
        base = (Path(root) if root is not None else csv_path.parent).absolute()
        if not base.is_dir():
            raise ViscopeError(f"Expected root to be a folder; got '{base}', which is not one.")
        self.csv_path, self.root, self.flip = csv_path, base, flip
        self.size = resolve_size(size)
        self.classes = wanted
        lines, has_mask_column = _read_rows(csv_path)
        rows, problems, sizes = self._check_rows(lines, skip_invalid)
        self.skipped = [f"row {line}: {what}" for line, what, _ in problems]
        if problems and not skip_invalid:
            line, what, fix = problems[0]
            more = f" ({len(problems) - 1} more invalid row(s))" if len(problems) > 1 else ""
            raise ViscopeError(
                f"{what} in row {line} of CSV file '{csv_path}'{more}. {fix}, {_SKIP}."
            )
        if problems:
            shown = "; ".join(self.skipped[:_SHOW]) + ("; ..." if len(problems) > _SHOW else "")
            warnings.warn(
                f"Skipped {len(problems)} invalid row(s) of {len(problems) + len(rows)} in CSV "
                f"file '{csv_path}': {shown}. The dataset's .skipped lists them all.",
                stacklevel=2,
            )
        if not rows:
            raise ViscopeError(
                f"CSV file '{csv_path}' has no valid rows of the classes {', '.join(wanted)}. "
                "Add rows with density " + " or ".join(wanted) + "."
            )
        if self.size is None and len(set(sizes)) > 1:
            raise ViscopeError(
                f"Expected all images in CSV file '{csv_path}' to share one size when "
                f"size=None; got {sorted(set(sizes))[:3]}. Pass size=<int> or (height, width)."
            )
        self.rows = [r.line for r in rows]
        self.images = [r.image for r in rows]
        self.masks = [r.mask for r in rows]
        self._dicom = [r.dicom for r in rows]
        self.targets = [r.label for r in rows]
        self.mask_available = [m is not None for m in self.masks]
        self._mask_column = has_mask_column
        self.has_masks = any(self.mask_available)
        check_two_classes(self, f"CSV file '{csv_path}'")

    def _check_rows(
        self, lines: list[tuple[int, dict[str, str]]], full: bool
    ) -> tuple[list[_Row], list[tuple[int, str, str]], list[Size]]:
        """Valid rows of the wanted classes, problems ``(line, what, fix)``, image sizes."""
        rows, problems, sizes = [], [], []
        for line, cells in lines:
            try:
                row, hw = self._check_row(line, cells, full)
            except _Invalid as bad:
                problems.append((line, bad.what, bad.fix))
                continue
            if row is not None:
                rows.append(row)
                sizes.append(hw)
        return rows, problems, sizes

    def _check_row(self, line: int, cells: dict[str, str], full: bool) -> tuple[_Row | None, Size]:
        value = cells.get("density", "")
        label = parse_density(value)
        if label is None:
            raise _Invalid(
                f"Expected density A-D or 1-4; got {value!r}",
                "Write A, B, C, D or 1-4 (case and spaces do not matter)",
            )
        name = DENSITY_CLASSES[label]
        if name not in self.classes:
            return None, (0, 0)
        image = self._file(cells.get("path", ""), "image", "path")
        dicom = image.suffix.lower() not in IMAGE_EXTENSIONS and is_dicom(image)
        hw = _size_of(image, dicom, full)
        mask = None
        if cells.get("mask_path", ""):
            mask = self._file(cells["mask_path"], "mask", "mask_path")
            mask_hw = _size_of(mask, False, full)
            if mask_hw != hw:
                raise _Invalid(
                    f"Expected mask '{cells['mask_path']}' to be {hw[0]}x{hw[1]} like its image "
                    f"'{cells['path']}'; got {mask_hw[0]}x{mask_hw[1]}",
                    "Save the mask at its image's original size (they are resized together)",
                )
        return _Row(line, image, self.classes.index(name), mask, dicom), hw

    def _file(self, value: str, what: str, column: str) -> Path:
        if not value:
            raise _Invalid(
                f"Expected a file name in column {column!r}; got an empty cell",
                "Fill it in or remove the row",
            )
        path = Path(value).expanduser()
        full = path if path.is_absolute() else self.root / path
        if not full.is_file():
            raise _Invalid(
                f"Expected the {what} file '{value}' (looked for '{full}'); it does not exist",
                "Relative paths start at the CSV's folder; pass root=... if they start elsewhere",
            )
        return full

    def _item(self, index: int) -> Item:
        try:
            image, side = self._load_image(index)
            mask = None
            if self.masks[index] is not None:
                mask = load_mask(self.masks[index], self.size or tuple(image.shape[-2:]))
        except ViscopeError as err:
            raise ViscopeError(
                f"{err} (row {self.rows[index]} of CSV file '{self.csv_path}')"
            ) from None
        if mask is None:
            mask = torch.full((1, *image.shape[-2:]), IGNORE, dtype=torch.float32)
        if self.flip is not None and side != self.flip:
            image, mask = image.flip(-1), mask.flip(-1)
        if not self._mask_column:
            return image, self.targets[index]
        return image, self.targets[index], mask

    def _load_image(self, index: int) -> tuple[torch.Tensor, str]:
        """The image (3, H, W) and the side its breast lies against (``"left"``/``"right"``)."""
        path = self.images[index]
        laterality = None
        if self._dicom[index]:
            dcm = read_dicom_image(path)
            laterality = dcm.laterality
            grey = Image.fromarray(dcm.pixels, mode="F")
            if self.size is not None and grey.size != (self.size[1], self.size[0]):
                grey = grey.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            pixels = torch.from_numpy(np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0))
            image = pixels.expand(3, -1, -1).contiguous()
        else:
            image = load_rgb(path, self.size)
        if laterality is not None:
            return image, "left" if laterality == "L" else "right"
        return image, breast_side(image)


def breast_side(image: torch.Tensor) -> str:
    """``"left"`` or ``"right"``: the half of ``image`` (C, H, W) with more intensity.

    The breast is bright on a dark background, so its side holds more of the image's
    intensity; a centre column of an odd width counts for neither half.
    """
    width = image.shape[-1]
    left = float(image[..., : width // 2].sum())
    right = float(image[..., width - width // 2 :].sum())
    return "left" if left >= right else "right"


def _size_of(path: Path, dicom: bool, full: bool) -> Size:
    """``(height, width)`` of an image file as stored (EXIF orientation applied).

    Reads the header only, unless ``full``, which decodes the pixels too.

    Raises:
        _Invalid: The file cannot be read.
    """
    if dicom:
        try:
            if full:
                return tuple(read_dicom_image(path).pixels.shape)  # type: ignore[return-value]
            return dicom_size(path)
        except ViscopeError as err:
            raise _Invalid(
                f"Cannot read DICOM file '{path}' ({err})", "Fix or replace it"
            ) from None
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except _READ_ERRORS as err:
        raise _Invalid(f"Cannot read image file '{path}' ({err})", "Fix or replace it") from None
    if full and not readable(path):
        raise _Invalid(
            f"Cannot decode image file '{path}' (its header reads, its pixels do not)",
            "Fix or replace it",
        )
    return (height, width)


def _read_rows(csv_path: Path) -> tuple[list[tuple[int, dict[str, str]]], bool]:
    """Rows as ``(spreadsheet row number, {column: stripped value})``, and whether the
    header has ``mask_path``.

    Raises:
        ViscopeError: The file is not UTF-8 CSV, lacks ``path`` or ``density``, or has no rows.
    """

    def check(header: list[str]) -> bool:
        missing = [c for c in ("path", "density") if c not in header]
        if missing:
            raise ViscopeError(
                f"CSV file '{csv_path}' lacks the column(s) {', '.join(missing)}: its header "
                f"is {','.join(header) or '(empty)'}. Expected the header "
                "path,density[,mask_path]."
            )
        return "mask_path" in header

    return read_csv_rows(csv_path, check, lower=True, expected="Expected a UTF-8 text file "
                         "with the header path,density[,mask_path]")
