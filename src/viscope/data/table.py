"""``CSVDataset``: a user's images listed in a CSV file ``path,label[,mask_path]``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from viscope.data.base import Item, VisionDataset
from viscope.data.files import (
    check_same_size,
    find_unreadable,
    load_mask,
    load_rgb,
    read_csv_rows,
    resolve_size,
    warn_skipped,
)
from viscope.errors import ViscopeError

_INT = re.compile(r"^[+-]?\d+$")
_SHOW = 5


class CSVDataset(VisionDataset):
    """Images (and optionally masks) listed in a CSV file; items ``(image, label[, mask])``.

    The CSV has a header with the columns ``path`` and ``label``, and optionally
    ``mask_path`` (other columns are ignored). Relative paths are relative to the CSV's
    folder, or to ``root`` when given. If every label is an integer, labels are used as
    they are and ``classes`` is ``["0", ..., str(max label)]``; otherwise labels are names,
    and ``classes`` is their sorted list. Masks are read as greyscale, resized (nearest)
    and thresholded at half their range (see :func:`viscope.data.files.load_mask`).

    Args:
        csv_path: The CSV file.
        root: Folder that relative paths start from (default: the CSV's folder).
        size: Side of the square images returned, ``(height, width)``, or ``None`` to keep
            the files' own size (then all must share it).
        skip_corrupt: Check every file up front and skip (with one warning) the rows whose
            image or mask PIL cannot parse; otherwise an unreadable file raises when read.

    Raises:
        ViscopeError: The CSV is missing, lacks a required column or value, names a file
            that does not exist, has negative integer labels, or ``size=None`` and the
            images differ in size. The message names the row (line number) or file.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> Image.new("RGB", (12, 10)).save(folder / "a.png")
        >>> _ = (folder / "list.csv").write_text("path,label\\na.png,cat\\n")
        >>> ds = CSVDataset(folder / "list.csv", size=None)
        >>> ds.classes, ds.targets, tuple(ds[0][0].shape)
        (['cat'], [0], (3, 10, 12))
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        csv_path: str | PathLike[str],
        root: str | PathLike[str] | None = None,
        size: int | Sequence[int] | None = 224,
        skip_corrupt: bool = False,
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise ViscopeError(
                f"CSV file '{csv_path}' does not exist. Expected a CSV with the header "
                "path,label[,mask_path] and one row per image."
            )
        # Absolute, so that the paths still hold if the working directory changes later.
        base = (Path(root) if root is not None else csv_path.parent).absolute()
        if not base.is_dir():
            raise ViscopeError(f"Expected root to be a folder; got '{base}', which is not one.")
        self.csv_path, self.root = csv_path, base
        self.size = resolve_size(size)
        rows = _read_rows(csv_path)
        self.has_masks = "mask_path" in rows[0][1]
        images, masks, raw_labels = [], [], []
        for line, row in rows:
            images.append(_resolve(base, row, "path", line, csv_path))
            if self.has_masks:
                masks.append(_resolve(base, row, "mask_path", line, csv_path))
            raw_labels.append(_value(row, "label", line, csv_path))
        self.classes, labels = _encode_labels(raw_labels, [line for line, _ in rows], csv_path)
        self.skipped: list[str] = []
        what = f"CSV '{csv_path}'"
        if skip_corrupt:
            keep, self.skipped = find_unreadable(images + masks)
            ok = [
                keep[i] and (not self.has_masks or keep[len(images) + i])
                for i in range(len(images))
            ]
            dropped = f" (dropping {ok.count(False)} of {len(ok)} rows)"
            warn_skipped(self.skipped, len(set(images + masks)), what, dropped)
            images = [p for p, k in zip(images, ok, strict=True) if k]
            masks = [p for p, k in zip(masks, ok, strict=True) if k] if self.has_masks else []
            labels = [t for t, k in zip(labels, ok, strict=True) if k]
            if not images:
                raise ViscopeError(f"Every row of {what} has an unreadable file.")
        if self.size is None:
            check_same_size(images + masks, what)
        self.images, self.masks = images, masks
        self.targets = labels

    def _item(self, index: int) -> Item:
        image = load_rgb(self.images[index], self.size)
        if not self.has_masks:
            return image, self.targets[index]
        mask = load_mask(self.masks[index], self.size)
        if mask.shape[-2:] != image.shape[-2:]:
            raise ViscopeError(
                f"Expected mask '{self.masks[index]}' to be the size of its image "
                f"'{self.images[index]}' ({image.shape[-2]}x{image.shape[-1]}); got "
                f"{mask.shape[-2]}x{mask.shape[-1]}. Pass a size to resize both."
            )
        return image, self.targets[index], mask


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows as ``(line number, {column: stripped value})``; checks the header."""

    def check(header: list[str]) -> None:
        missing = [c for c in ("path", "label") if c not in header]
        if missing:
            raise ViscopeError(
                f"CSV file '{csv_path}' lacks the column(s) {', '.join(missing)}: its header is "
                f"{','.join(header) or '(empty)'}. Expected the header path,label[,mask_path]."
            )

    return read_csv_rows(csv_path, check, expected="Expected a UTF-8 text file with the "
                         "header path,label[,mask_path]")[0]


def _value(row: dict[str, str], column: str, line: int, csv_path: Path) -> str:
    value = row.get(column, "")
    if not value:
        raise ViscopeError(
            f"CSV file '{csv_path}' line {line}: expected a value in column {column!r}; "
            "got an empty cell. Fill it in or remove the row."
        )
    return value


def _resolve(base: Path, row: dict[str, str], column: str, line: int, csv_path: Path) -> Path:
    path = Path(_value(row, column, line, csv_path)).expanduser()
    full = path if path.is_absolute() else base / path
    if not full.is_file():
        raise ViscopeError(
            f"CSV file '{csv_path}' line {line}: {column} '{path}' not found (looked for "
            f"'{full}'). Relative paths start from the CSV's folder; pass root=... if they "
            "start elsewhere."
        )
    return full


def _encode_labels(raw: list[str], lines: list[int], csv_path: Path) -> tuple[list[str], list[int]]:
    """``(classes, label per row)``: integers as they are, names as sorted indices."""
    if all(_INT.match(v) for v in raw):
        values = [int(v) for v in raw]
        negative = [(ln, v) for ln, v in zip(lines, values, strict=True) if v < 0]
        if negative:
            where = ", ".join(f"line {ln}: {v}" for ln, v in negative[:_SHOW])
            raise ViscopeError(
                f"CSV file '{csv_path}': expected integer labels >= 0; got {where}. "
                "Use 0..K-1 or class names."
            )
        return [str(k) for k in range(max(values) + 1)], values
    classes = sorted(set(raw))
    lookup = {name: k for k, name in enumerate(classes)}
    return classes, [lookup[v] for v in raw]
