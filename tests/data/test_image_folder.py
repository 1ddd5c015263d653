"""``ImageFolder`` on tiny folders written in ``tmp_path``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from viscope.data import ImageFolder
from viscope.errors import ViscopeError

BLUE = (0, 0, 255)


def test_classes_labels_and_pixels(folder: Path) -> None:
    ds = ImageFolder(folder, size=None)
    assert ds.classes == ["cat", "dog"]  # sorted by name, not by creation order
    assert ds.targets == [0, 0, 0, 1, 1]
    assert [p.name for p, _ in ds.samples] == ["c1.png", "c2.png", "c3.png", "d1.png", "d2.png"]
    assert not ds.has_masks and ds.skipped == []
    image, label = ds[0]
    assert image.shape == (3, 10, 12) and image.dtype == torch.float32 and label == 0
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    rgba = ds[1][0]
    assert rgba.shape == (3, 10, 12) and torch.allclose(rgba[0], torch.ones(10, 12))
    grey = ds[2][0]
    assert grey.shape == (3, 10, 12) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    assert torch.allclose(ds[4][0].mean(dim=(1, 2)), torch.tensor([0.0, 0.0, 1.0]))


def test_resize(folder: Path) -> None:
    square = ImageFolder(folder, size=8)
    assert square[3][0].shape == (3, 8, 8)
    assert torch.allclose(square[3][0][2], torch.ones(8, 8))
    assert ImageFolder(folder, size=(6, 9))[0][0].shape == (3, 6, 9)
    batch, labels = next(iter(DataLoader(square, batch_size=5)))
    assert batch.shape == (5, 3, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1]


def test_corrupt_file_raises_naming_the_file(corrupt_folder: Path) -> None:
    ds = ImageFolder(corrupt_folder, size=8)  # files are only read on access by default
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.name == "bad.png"]
    assert len(ds) == 6 and len(bad) == 1
    hint = r"skip_corrupt=True \(--skip-corrupt on the command line\)"
    with pytest.raises(ViscopeError, match=r"bad\.png.*" + hint):
        ds[bad[0]]
    with pytest.raises(ViscopeError, match=r"bad\.png"):
        ImageFolder(corrupt_folder, size=None)  # reading sizes touches every file


def test_skip_corrupt_warns_once_and_skips(corrupt_folder: Path, garbage: bytes) -> None:
    (corrupt_folder / "cat" / "bad2.jpg").write_bytes(garbage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(corrupt_folder, size=8, skip_corrupt=True)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Skipped 2 unreadable" in message and "bad.png" in message and "bad2.jpg" in message
    assert sorted(Path(p).name for p in ds.skipped) == ["bad.png", "bad2.jpg"]
    assert len(ds) == 5 and ds.targets == [0, 0, 0, 1, 1]
    assert all(ds[i][0].shape == (3, 8, 8) for i in range(len(ds)))


def test_no_warning_when_nothing_is_corrupt(folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ImageFolder(folder, skip_corrupt=True)) == 5


def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ViscopeError, match=r"nowhere' does not exist.*root/<class name>/<image"):
        ImageFolder(missing)


def test_empty_root_and_loose_images(tmp_path: Path, write_png: Callable) -> None:
    with pytest.raises(ViscopeError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    write_png(tmp_path / "loose.png")
    with pytest.raises(ViscopeError, match=r"image files directly in it \(loose\.png"):
        ImageFolder(tmp_path)


def test_class_folder_without_images(folder: Path) -> None:
    (folder / "empty").mkdir()
    with pytest.raises(ViscopeError, match=r"empty' has no image files"):
        ImageFolder(folder)


def test_mixed_sizes_need_a_size(folder: Path, write_png: Callable) -> None:
    write_png(folder / "dog" / "big.png", BLUE, size_wh=(20, 16))
    with pytest.raises(ViscopeError, match=r"share one size.*10x12.*16x20.*big\.png"):
        ImageFolder(folder, size=None)
    assert ImageFolder(folder, size=16)[3][0].shape == (3, 16, 16)


@pytest.mark.parametrize("size", [0, -3, (4,), "32", 2.5])
def test_bad_size(folder: Path, size: object) -> None:
    with pytest.raises(ViscopeError, match="Expected image size"):
        ImageFolder(folder, size=size)  # type: ignore[arg-type]


def test_skip_corrupt_skips_a_truncated_jpeg(folder: Path) -> None:
    # Image.verify() does not decode JPEG data: a truncated JPEG passes it but fails later.
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / "a.jpg")
    data = (folder / "a.jpg").read_bytes()
    (folder / "dog" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "a.jpg").unlink()
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable.*cut\.jpg"):
        ds = ImageFolder(folder, size=8, skip_corrupt=True)
    assert [Path(p).name for p in ds.skipped] == ["cut.jpg"] and len(ds) == 5
    assert all(ds[i][0].shape == (3, 8, 8) for i in range(len(ds)))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((6, 5), 32768, dtype=np.uint16)).save(root / "a" / "half.png")
    Image.fromarray(np.full((6, 5), 65535, dtype=np.uint16)).save(root / "a" / "white.png")
    ds = ImageFolder(root, size=None)
    half, white = ds[0][0], ds[1][0]
    assert half.shape == (3, 6, 5)
    assert torch.allclose(half, torch.full_like(half, 0.5), atol=1 / 255)
    assert torch.equal(white, torch.ones_like(white))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 12 wide x 10 high, left half blue; orientation 6 shows it rotated 90 degrees
    # clockwise: 10 wide x 12 high, top half blue.
    root = tmp_path / "phone"
    (root / "a").mkdir(parents=True)
    stored = Image.new("RGB", (12, 10), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 6, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(root / "a" / "photo.jpg", exif=exif, quality=100)
    image = ImageFolder(root, size=None)[0][0]
    assert image.shape == (3, 12, 10)
    assert image[2, :5].mean() > 0.9 and image[2, 7:].mean() < 0.1
    assert image[0, 7:].mean() > 0.9


def test_paths_survive_a_change_of_working_directory(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder.parent)
    ds = ImageFolder(folder.name, size=8)
    monkeypatch.chdir(folder / "cat")
    assert ds[3][0].shape == (3, 8, 8)
