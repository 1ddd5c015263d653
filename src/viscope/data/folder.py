"""``ImageFolder``: a user's images laid out as ``root/<class name>/<image file>``."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from viscope.data.base import Item, VisionDataset
from viscope.data.files import (
    IMAGE_EXTENSIONS,
    check_same_size,
    drop_unreadable,
    is_image_file,
    load_rgb,
    resolve_size,
)
from viscope.errors import ViscopeError


def _layout_hint(root: Path) -> str:
    return (
        f"Expected a folder laid out as root/<class name>/<image file>, e.g. "
        f"'{root / 'cat' / '001.png'}' and '{root / 'dog' / '001.png'}'."
    )


class ImageFolder(VisionDataset):
    """Images in one sub-folder per class; items ``(image, label)``.

    Classes are the sub-folder names, sorted; images are found recursively inside each
    class folder (hidden files and folders are ignored), converted to RGB and resized
    (bilinear) to ``size``.

    Args:
        root: The folder that holds one sub-folder per class.
        size: Side of the square images returned, ``(height, width)``, or ``None`` to keep
            the files' own size (then all must share it).
        skip_corrupt: Check every file up front and skip (with one warning) those that PIL
            cannot parse; otherwise an unreadable file raises when it is read.

    Raises:
        ViscopeError: ``root`` is missing or not laid out as expected, a class folder has
            no images, or ``size=None`` and the images differ in size.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = Path(tmp.name)
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (12, 10)).save(root / name / "a.png")
        >>> ds = ImageFolder(root, size=8)
        >>> ds.classes, ds.targets, tuple(ds[0][0].shape)
        (['cat', 'dog'], [0, 1], (3, 8, 8))
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        root: str | PathLike[str],
        size: int | Sequence[int] | None = 224,
        skip_corrupt: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            state = "is a file, not a folder" if root.exists() else "does not exist"
            raise ViscopeError(f"Image folder '{root}' {state}. {_layout_hint(root)}")
        root = root.absolute()  # the paths still hold if the working directory changes later
        self.root = root
        self.size = resolve_size(size)
        class_dirs = sorted(
            (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.name,
        )
        if not class_dirs:
            loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
            found = (
                f"image files directly in it ({', '.join(loose[:3])}, ...)"
                if loose
                else ("no class sub-folders")
            )
            raise ViscopeError(f"Image folder '{root}' has {found}. {_layout_hint(root)}")
        samples: list[tuple[Path, int]] = []
        for label, folder in enumerate(class_dirs):
            files = sorted(
                p
                for p in folder.rglob("*")
                if p.is_file() and is_image_file(p) and not _hidden(p, folder)
            )
            if not files:
                raise ViscopeError(
                    f"Class folder '{folder}' has no image files (expected names ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder."
                )
            samples += [(p, label) for p in files]
        self.skipped: list[str] = []
        what = f"image folder '{root}'"
        if skip_corrupt:
            keep, self.skipped = drop_unreadable([p for p, _ in samples], what)
            samples = [s for s, ok in zip(samples, keep, strict=True) if ok]
            if not samples:
                raise ViscopeError(f"Every image file in {what} is unreadable.")
        if self.size is None:
            check_same_size([p for p, _ in samples], what)
        self.samples = samples
        self.classes = [d.name for d in class_dirs]
        self.has_masks = False
        self.targets = [label for _, label in samples]

    def _item(self, index: int) -> Item:
        path, label = self.samples[index]
        return load_rgb(path, self.size), label


def _hidden(path: Path, top: Path) -> bool:
    """Whether any part of ``path`` below ``top`` starts with a dot."""
    return any(part.startswith(".") for part in path.relative_to(top).parts)
