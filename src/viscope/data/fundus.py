"""Fundus photographs graded for quality: a CSV ``path,grade`` or one folder per class.

Both loaders crop each photograph to its circular field of view and pad it to a square
(:func:`viscope.data.fov.fov_crop`), as fundus work expects, before resizing it. Nothing
here is specific to one dataset: EyeQ's ``image,quality`` labels (0 good, 1 usable,
2 reject) read as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from viscope.data.base import Item, VisionDataset
from viscope.data.files import Size, load_rgb, read_csv_rows, readable, resolve_size
from viscope.data.folder import ImageFolder
from viscope.data.fov import fov_crop, fov_mask
from viscope.data.grades import QUALITY_CLASSES, check_classes, grade_key, grade_lookup, parse_grade
from viscope.errors import ViscopeError

__all__ = [
    "QUALITY_CLASSES",
    "FundusCSV",
    "FundusFolder",
    "fov_crop",
    "fov_mask",
    "grade_lookup",
    "load_fundus",
    "parse_grade",
]

_PATH_COLUMNS = ("path", "image")
_GRADE_COLUMNS = ("grade", "label", "quality")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_SHOW = 5  # rows a warning or error lists
_SKIP = "or pass skip_invalid=True to skip invalid rows"
# what a file of each PIL mode is when it is not 8-bit RGB (None: it is RGB, or palette colour)
_CONVERTED = {
    "1": "greyscale",
    "L": "greyscale",
    "LA": "greyscale",
    "P": None,
    "RGB": None,
    "RGBA": "RGBA",
    "PA": "RGBA",
    "F": "float greyscale",
}


def load_fundus(path: Path, size: Size, crop: bool = True) -> torch.Tensor:
    """Read a photograph as RGB (3, *size) in [0, 1]: FOV-cropped, padded and resized.

    Without ``crop`` it is only resized, as :func:`viscope.data.files.load_rgb` does.

    Raises:
        ViscopeError: The file cannot be decoded (the message names it).
    """
    if not crop:
        return load_rgb(path, size)
    square = fov_crop(load_rgb(path, None))
    if tuple(square.shape[-2:]) == tuple(size):
        return square
    resized = F.interpolate(square[None], size=size, mode="bilinear", antialias=True)
    return resized[0].clamp_(0.0, 1.0)


# --- what every image is -------------------------------------------------------------


def _image_mode(path: Path) -> str:
    """PIL's mode of an image file, from its header.

    Raises:
        ValueError: (or OSError, SyntaxError) the file cannot be read.
    """
    with Image.open(path) as im:
        return str(im.mode)


def _conversion(mode: str) -> str | None:
    """What a file of ``mode`` is when it is not 8-bit RGB (None when it is)."""
    if mode.startswith("I"):
        return "16/32-bit greyscale"
    return _CONVERTED.get(mode, mode)


def warn_converted(modes: Sequence[str], names: Sequence[str], what: str) -> None:
    """Warn once, with a count, about images that are not 8-bit RGB (they are converted).

    Args:
        modes: PIL's mode of each image.
        names: How to name each image in the warning (a row or a file).
        what: Where they come from (``"CSV file 'x'"``).
    """
    found = [(n, _conversion(m)) for n, m in zip(names, modes, strict=True) if _conversion(m)]
    if not found:
        return
    kinds: dict[str, int] = {}
    for _, kind in found:
        kinds[kind] = kinds.get(kind, 0) + 1  # type: ignore[index]
    counts = ", ".join(f"{k}: {c}" for k, c in kinds.items())
    first = ", ".join(f"{n} ({k})" for n, k in found[:_SHOW])
    first += ", ..." if len(found) > _SHOW else ""
    warnings.warn(
        f"Converted {len(found)} of {len(modes)} image(s) in {what} to RGB ({counts}): "
        f"expected RGB fundus photographs; greyscale is repeated in the three channels and "
        f"alpha is dropped. First: {first}.",
        stacklevel=3,
    )


# --- the loaders -------------------------------------------------------------------


def _check_size(size: int | Sequence[int]) -> Size:
    resolved = resolve_size(size)
    if resolved is None:
        raise ViscopeError(
            "Expected size as a positive int or (height, width); got None. Fundus "
            "photographs differ in size, so they are resized: pass e.g. size=128."
        )
    return resolved


class _Invalid(Exception):
    """A row's problem: what is wrong (the text before ``in row N of CSV file ...``)."""


class FundusCSV(VisionDataset):
    """Fundus photographs graded for quality, listed in a CSV file; items ``(image, label)``.

    The CSV has a header naming a path column (``path`` or ``image``) and a grade column
    (``grade``, ``label`` or ``quality``); other columns are ignored, so EyeQ's
    ``image,quality,DR_grade`` files read as they are. Relative paths start at the CSV's
    folder, or at ``root``. Rows are numbered as a spreadsheet shows them (the header is
    row 1). Grades are read by :func:`parse_grade`: by default integers ``0 .. K-1``
    index ``classes`` and class names map to themselves; ``grades`` maps other values
    (e.g. ``{1: "good", 2: "usable", 3: "reject"}``).

    Every row is checked at construction: its grade parses, its file exists and its
    header reads (with ``skip_invalid=True`` its pixels are decoded too); images that are
    not 8-bit RGB (greyscale, RGBA, 16-bit) are converted, with one warning giving their
    count. Pixels are read when an item is asked for: the FOV crop
    (:func:`viscope.data.fov.fov_crop`, with ``crop``), then a bilinear, antialiased
    resize to ``size``.

    Args:
        csv_path: The CSV file.
        root: Folder that relative paths start from (default: the CSV's folder).
        classes: Class names in label order.
        grades: Cell value -> class name; ``None``: the default mapping above.
        size: Side of the square images returned, or ``(height, width)``.
        crop: Crop each photograph to its field of view and pad it to a square first.
        skip_invalid: Skip rows whose file is missing or unreadable, with one warning
            giving their count and the first ones (``.skipped`` lists them all);
            otherwise the first one raises. A grade that does not parse always raises.

    Raises:
        ViscopeError: The CSV is missing, empty or lacks a column; an option is invalid;
            a grade does not parse (naming its row and the accepted values); a file is
            missing or unreadable (naming its row); or no row is left.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> Image.new("RGB", (12, 10), (200, 90, 40)).save(folder / "a.png")
        >>> _ = (folder / "q.csv").write_text("image,quality\\na.png,0\\na.png,Reject\\n")
        >>> ds = FundusCSV(folder / "q.csv", size=8)
        >>> ds.targets, ds.classes, tuple(ds[1][0].shape), ds.has_masks
        ([0, 2], ['good', 'usable', 'reject'], (3, 8, 8), False)
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        csv_path: str | PathLike[str],
        root: str | PathLike[str] | None = None,
        classes: Sequence[str] | str = QUALITY_CLASSES,
        grades: Mapping[object, str] | None = None,
        size: int | Sequence[int] = 128,
        crop: bool = True,
        skip_invalid: bool = False,
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise ViscopeError(
                f"CSV file '{csv_path}' does not exist. Expected a CSV with the header "
                "path,grade and one row per photograph."
            )
        base = (Path(root) if root is not None else csv_path.parent).absolute()
        if not base.is_dir():
            raise ViscopeError(f"Expected root to be a folder; got '{base}', which is not one.")
        lookup = grade_lookup(classes, grades)
        self.csv_path, self.root, self.crop = csv_path, base, bool(crop)
        self.size = _check_size(size)
        self.classes = check_classes(classes)
        self.has_masks = False
        lines, path_column, grade_column = _read_rows(csv_path)
        labels = self._labels(lines, grade_column, lookup, grades is not None)
        kept, problems = [], []
        for (line, cells), label in zip(lines, labels, strict=True):
            try:
                path, mode = self._file(cells.get(path_column, ""), skip_invalid)
            except _Invalid as bad:
                problems.append(f"row {line}: {bad}")
                continue
            kept.append((line, path, label, mode))
        self.skipped = problems
        where = f"CSV file '{csv_path}'"
        if problems and not skip_invalid:
            more = f" ({len(problems) - 1} more invalid row(s))" if len(problems) > 1 else ""
            row, what = problems[0].split(": ", 1)
            raise ViscopeError(
                f"{what} in {row} of {where}{more}. Relative paths start at the CSV's folder "
                f"(pass root=... if they start elsewhere); fix the row, {_SKIP}."
            )
        if problems:
            shown = "; ".join(problems[:_SHOW]) + ("; ..." if len(problems) > _SHOW else "")
            warnings.warn(
                f"Skipped {len(problems)} invalid row(s) of {len(lines)} in {where}: {shown}. "
                "The dataset's .skipped lists them all.",
                stacklevel=2,
            )
        if not kept:
            raise ViscopeError(f"Every row of {where} is invalid ({problems[0]}, ...).")
        self.rows = [line for line, _, _, _ in kept]
        self.paths = [path for _, path, _, _ in kept]
        self.targets = [label for _, _, label, _ in kept]
        warn_converted([mode for *_, mode in kept], [f"row {line}" for line in self.rows], where)

    def _labels(
        self,
        lines: list[tuple[int, dict[str, str]]],
        column: str,
        lookup: dict[str, int],
        mapped: bool,
    ) -> list[int]:
        """The label of every row; raises naming the first row whose grade does not parse."""
        labels = [lookup.get(grade_key(cells.get(column, ""))) for _, cells in lines]
        bad = [
            (line, cells.get(column, ""))
            for (line, cells), k in zip(lines, labels, strict=True)
            if k is None
        ]
        if bad:
            line, value = bad[0]
            more = (
                f" ({len(bad) - 1} more row(s) with such grades: rows "
                + ", ".join(str(b[0]) for b in bad[1 : 1 + _SHOW])
                + (", ..." if len(bad) > 1 + _SHOW else "")
                + ")"
                if len(bad) > 1
                else ""
            )
            fix = (
                "Fix the grades mapping"
                if mapped
                else "Pass grades={...} mapping your values to the classes, e.g. "
                "grades={0: 'good', 1: 'usable', 2: 'reject'}"
            )
            raise ViscopeError(
                f"Expected a grade among {', '.join(lookup)} (case-insensitive; 1.0 reads as "
                f"1) in column {column!r}; got {value!r} in row {line} of CSV file "
                f"'{self.csv_path}'{more}. {fix}."
            )
        return labels  # type: ignore[return-value]

    def _file(self, value: str, decode: bool) -> tuple[Path, str]:
        """The row's file and its PIL mode; raises :class:`_Invalid` if it cannot be used."""
        if not value:
            raise _Invalid("Expected a file name in the path column; got an empty cell")
        path = Path(value).expanduser()
        full = path if path.is_absolute() else self.root / path
        if not full.is_file():
            raise _Invalid(f"Expected the image file '{value}' (looked for '{full}'); not found")
        try:
            mode = _image_mode(full)
        except _READ_ERRORS as err:
            raise _Invalid(f"Cannot read image file '{full}' ({err})") from None
        if decode and not readable(full):
            raise _Invalid(
                f"Cannot decode image file '{full}' (its header reads, its pixels do not)"
            )
        return full, mode

    def _item(self, index: int) -> Item:
        try:
            image = load_fundus(self.paths[index], self.size, self.crop)
        except ViscopeError as err:
            raise ViscopeError(
                f"{err} (row {self.rows[index]} of CSV file '{self.csv_path}')"
            ) from None
        return image, self.targets[index]


def _read_rows(csv_path: Path) -> tuple[list[tuple[int, dict[str, str]]], str, str]:
    """Rows as ``(spreadsheet row, {column: stripped value})``, the path and grade columns.

    Raises:
        ViscopeError: The file is empty, not UTF-8 CSV, lacks a column or names two of
            one kind, or has no rows.
    """
    expected = (
        "Expected a header with path (or image) and grade (or label, quality), e.g. path,grade"
    )

    def check(header: list[str]) -> tuple[str, str]:
        if not header:  # no header line at all
            raise ViscopeError(f"CSV file '{csv_path}' is empty. {expected}.")
        columns = []
        for kind in (_PATH_COLUMNS, _GRADE_COLUMNS):
            found = [c for c in kind if c in header]
            if len(found) != 1:
                got = "none of" if not found else f"{len(found)} of"
                raise ViscopeError(
                    f"CSV file '{csv_path}' has {got} the columns {', '.join(kind)}: its "
                    f"header is {','.join(header) or '(empty)'}. {expected} (one of each)."
                )
            columns.append(found[0])
        return columns[0], columns[1]

    rows, (path_column, grade_column) = read_csv_rows(
        csv_path, check, expected=expected, what="photographs", lower=True)
    return rows, path_column, grade_column


class FundusFolder(ImageFolder):
    """Fundus photographs in one sub-folder per class; items ``(image, label)``.

    The layout and file discovery are :class:`viscope.data.folder.ImageFolder`'s; each
    photograph is cropped to its field of view, padded to a square and resized as in
    :class:`FundusCSV`. Images that are not 8-bit RGB are converted with one warning.

    Args:
        root: The folder that holds one sub-folder per class.
        classes: Class names in label order; each sub-folder must be one of them (case
            does not matter), and a class may have no folder. ``None``: the sub-folder
            names, sorted.
        size: Side of the square images returned, or ``(height, width)``.
        crop: Crop each photograph to its field of view and pad it to a square first.
        skip_invalid: Decode every file up front and skip the unreadable ones with one
            warning; otherwise an unreadable header raises here and bad pixels when read.

    Raises:
        ViscopeError: As :class:`~viscope.data.folder.ImageFolder`, or a sub-folder is not
            one of ``classes``, or a file cannot be read (without ``skip_invalid``).
    """

    def __init__(
        self,
        root: str | PathLike[str],
        classes: Sequence[str] | str | None = None,
        size: int | Sequence[int] = 128,
        crop: bool = True,
        skip_invalid: bool = False,
    ) -> None:
        size = _check_size(size)
        super().__init__(root, size=size, skip_corrupt=skip_invalid)
        self.crop = bool(crop)
        if classes is not None:
            names = check_classes(classes)
            index = {n.lower(): k for k, n in enumerate(names)}
            unknown = [c for c in self.classes if c.lower() not in index]
            if unknown:
                raise ViscopeError(
                    f"Expected the sub-folders of '{self.root}' to be among the classes "
                    f"{', '.join(names)}; got {', '.join(unknown)}. Rename or remove them, or "
                    "pass classes=... naming them."
                )
            relabel = [index[c.lower()] for c in self.classes]
            self.samples = [(p, relabel[k]) for p, k in self.samples]
            self.targets = [k for _, k in self.samples]
            self.classes = names
        modes = []
        for path, _ in self.samples:
            try:
                modes.append(_image_mode(path))
            except _READ_ERRORS as err:
                raise ViscopeError(
                    f"Cannot read image file '{path}' ({err}). Fix or remove it, or pass "
                    "skip_invalid=True to skip unreadable files."
                ) from None
        warn_converted(
            modes,
            [str(p.relative_to(self.root)) for p, _ in self.samples],
            f"image folder '{self.root}'",
        )

    def _item(self, index: int) -> Item:
        path, label = self.samples[index]
        return load_fundus(path, self.size, self.crop), label
