"""``CSVDataset`` on tiny CSV files and images written in ``tmp_path``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from viscope.data import CSVDataset
from viscope.errors import ViscopeError

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture
def table(tmp_path: Path, write_png: Callable, write_mask: Callable) -> Path:
    """data/list.csv naming data/img/*.png (string labels) and data/masks/*.png."""
    data = tmp_path / "data"
    write_png(data / "img" / "a.png", RED)
    write_png(data / "img" / "b.png", BLUE)
    write_png(data / "img" / "c.png", RED)
    write_mask(data / "masks" / "a.png", (2, 6, 3, 9))  # 4 rows x 6 cols
    write_mask(data / "masks" / "b.png", (0, 10, 0, 6), on=1)  # a 0/1 label map
    write_mask(data / "masks" / "c.png", (0, 0, 0, 0))
    csv = data / "list.csv"
    csv.write_text(
        "path,label,mask_path\n"
        "img/a.png,zebra,masks/a.png\n"
        "img/b.png,ant,masks/b.png\n"
        "\n"
        "img/c.png, zebra ,masks/c.png\n"
    )
    return csv


def test_string_labels_map_to_sorted_classes(table: Path) -> None:
    ds = CSVDataset(table, size=None)
    assert ds.classes == ["ant", "zebra"]
    assert ds.targets == [1, 0, 1]
    assert ds.has_masks and len(ds) == 3
    image, label, mask = ds[0]
    assert image.shape == (3, 10, 12) and label == 1
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    assert mask.shape == (1, 10, 12) and mask.dtype == torch.float32
    expected = torch.zeros(1, 10, 12)
    expected[:, 2:6, 3:9] = 1
    assert torch.equal(mask, expected)


def test_zero_one_mask_files_and_empty_masks(table: Path) -> None:
    ds = CSVDataset(table, size=None)
    assert ds[1][2][:, :, :6].sum() == 60 and ds[1][2][:, :, 6:].sum() == 0
    assert ds[2][2].sum() == 0


def test_resize_uses_nearest_for_masks(table: Path) -> None:
    ds = CSVDataset(table, size=(5, 6))
    image, _, mask = ds[0]
    assert image.shape == (3, 5, 6) and mask.shape == (1, 5, 6)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum() == 2 * 3  # the 4x6 block halves to 2x3
    images, labels, masks = next(iter(DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 3, 5, 6) and masks.shape == (3, 1, 5, 6)
    assert labels.tolist() == [1, 0, 1]


def test_integer_labels_and_root(tmp_path: Path, table: Path) -> None:
    csv = tmp_path / "elsewhere" / "ints.csv"
    csv.parent.mkdir()
    csv.write_text("label,path,extra\n2,img/a.png,x\n0,img/b.png,y\n")
    ds = CSVDataset(csv, root=table.parent, size=4)
    assert ds.classes == ["0", "1", "2"] and ds.targets == [2, 0]
    assert not ds.has_masks and len(ds[0]) == 2
    assert ds[0][0].shape == (3, 4, 4)


def test_absolute_paths(tmp_path: Path, table: Path) -> None:
    csv = tmp_path / "abs.csv"
    csv.write_text(f"path,label\n{table.parent / 'img' / 'b.png'},7\n")
    assert CSVDataset(csv, size=4).targets == [7]


def test_missing_columns(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("file,class\nimg/a.png,cat\n")
    with pytest.raises(ViscopeError, match=r"bad\.csv' lacks the column\(s\) path, label"):
        CSVDataset(csv)


def test_missing_image_file_names_row_and_file(table: Path) -> None:
    table.write_text("path,label\nimg/a.png,x\nimg/gone.png,y\n")
    with pytest.raises(ViscopeError, match=r"line 3: path 'img/gone\.png' not found"):
        CSVDataset(table)


def test_missing_mask_and_empty_cells(table: Path) -> None:
    table.write_text("path,label,mask_path\nimg/a.png,x,\n")
    with pytest.raises(ViscopeError, match=r"line 2: expected a value in column 'mask_path'"):
        CSVDataset(table)
    table.write_text("path,label\nimg/a.png,\n")
    with pytest.raises(ViscopeError, match=r"line 2: expected a value in column 'label'"):
        CSVDataset(table)


def test_missing_csv_and_empty_csv(tmp_path: Path) -> None:
    with pytest.raises(ViscopeError, match=r"nope\.csv' does not exist.*path,label"):
        CSVDataset(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(ViscopeError, match="no rows"):
        CSVDataset(tmp_path / "empty.csv")


def test_negative_integer_labels(table: Path) -> None:
    table.write_text("path,label\nimg/a.png,-1\n")
    with pytest.raises(ViscopeError, match="line 2: -1"):
        CSVDataset(table)


def test_corrupt_image_raises_naming_the_file(table: Path, garbage: bytes) -> None:
    (table.parent / "img" / "b.png").write_bytes(garbage)
    ds = CSVDataset(table, size=8)
    assert ds[0][0].shape == (3, 8, 8)
    hint = r"skip_corrupt=True \(--skip-corrupt on the command line\)"
    with pytest.raises(ViscopeError, match=r"img/b\.png.*" + hint):
        ds[1]


def test_skip_corrupt_drops_rows_with_a_bad_image_or_mask(table: Path, garbage: bytes) -> None:
    (table.parent / "img" / "b.png").write_bytes(garbage)
    (table.parent / "masks" / "c.png").write_bytes(garbage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CSVDataset(table, size=8, skip_corrupt=True)
    assert len(caught) == 1
    assert "Skipped 2 unreadable" in str(caught[0].message)
    assert "b.png" in str(caught[0].message)
    assert len(ds) == 1 and ds.targets == [1] and ds.classes == ["ant", "zebra"]
    assert [Path(p).parent.name + "/" + Path(p).name for p in ds.skipped] == [
        "img/b.png",
        "masks/c.png",
    ]


def test_palette_mask_uses_its_indices(table: Path) -> None:
    # A 0/1 label map saved as a palette PNG whose colour 1 is dark red (luminance 38).
    arr = np.zeros((10, 12), dtype=np.uint8)
    arr[:, :6] = 1
    palette = Image.fromarray(arr, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0])
    palette.save(table.parent / "masks" / "b.png")
    mask = CSVDataset(table, size=None)[1][2]
    assert mask[:, :, :6].sum() == 60 and mask[:, :, 6:].sum() == 0


def test_sixteen_bit_masks(table: Path) -> None:
    for name, on in (("a", 65535), ("b", 1)):
        arr = np.zeros((10, 12), dtype=np.uint16)
        arr[2:6, 3:9] = on
        Image.fromarray(arr).save(table.parent / "masks" / f"{name}.png")
    low = np.zeros((10, 12), dtype=np.uint16)
    low[2:6, 3:9] = 1000  # under half of the 16-bit range
    Image.fromarray(low).save(table.parent / "masks" / "c.png")
    ds = CSVDataset(table, size=None)
    expected = torch.zeros(1, 10, 12)
    expected[:, 2:6, 3:9] = 1
    assert torch.equal(ds[0][2], expected) and torch.equal(ds[1][2], expected)
    assert ds[2][2].sum() == 0


def test_exif_rotated_image_stays_aligned_with_its_mask(table: Path) -> None:
    # The image is stored 10 wide x 12 high with orientation 8 (shown 12 wide x 10 high);
    # the mask was drawn on the image as shown.
    stored = Image.new("RGB", (12, 10), (255, 0, 0))
    stored.paste((0, 0, 255), (3, 2, 9, 6))  # blue where mask a.png is on
    exif = Image.Exif()
    exif[0x0112] = 8
    stored.transpose(Image.Transpose.ROTATE_270).save(
        table.parent / "img" / "a.jpg", exif=exif, quality=100, subsampling=0
    )
    table.write_text("path,label,mask_path\nimg/a.jpg,x,masks/a.png\n")
    image, _, mask = CSVDataset(table, size=None)[0]
    assert image.shape == (3, 10, 12) and mask.shape == (1, 10, 12)
    on = mask[0] == 1
    assert image[2][on].mean() > 0.8 and image[2][~on].mean() < 0.3
    image, _, mask = CSVDataset(table, size=(5, 6))[0]  # bilinear blurs the block's edge
    on = mask[0] == 1
    assert image[2][on].mean() > 0.6 and image[2][~on].mean() < 0.25


def test_non_utf8_csv_raises_naming_the_file(tmp_path: Path, write_png: Callable) -> None:
    write_png(tmp_path / "a.png")
    csv = tmp_path / "latin.csv"
    csv.write_bytes("path,label\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ViscopeError, match=r"latin\.csv.*UTF-8"):
        CSVDataset(csv)


def test_relative_csv_survives_a_change_of_working_directory(
    table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(table.parent.parent)
    ds = CSVDataset(Path(table.parent.name) / table.name, size=8)
    monkeypatch.chdir(table.parent / "img")
    assert ds[0][0].shape == (3, 8, 8) and ds[0][2].sum() > 0


def test_skip_corrupt_counts_each_file_once_and_reports_rows(table: Path, garbage: bytes) -> None:
    (table.parent / "masks" / "c.png").write_bytes(garbage)
    table.write_text(
        "path,label,mask_path\n"
        "img/a.png,x,masks/c.png\n"
        "img/b.png,y,masks/c.png\n"
        "img/c.png,y,masks/a.png\n"
    )
    with pytest.warns(UserWarning) as caught:
        ds = CSVDataset(table, size=8, skip_corrupt=True)
    message = str(caught[0].message)
    assert "Skipped 1 unreadable image file(s) of 5" in message, message
    assert "2 of 3 rows" in message, message
    assert [Path(p).name for p in ds.skipped] == ["c.png"] and len(ds) == 1


def test_colour_masks_count_by_their_brightest_channel(table: Path) -> None:
    # pure red (luminance 76 of 255) and pure blue (29) annotations on black, RGB and RGBA
    for name, colour, mode in (("a", (255, 0, 0), "RGB"), ("b", (0, 0, 255, 255), "RGBA")):
        arr = np.zeros((10, 12, len(mode)), dtype=np.uint8)
        arr[2:6, 3:9] = colour
        Image.fromarray(arr, mode=mode).save(table.parent / "masks" / f"{name}.png")
    ds = CSVDataset(table, size=None)
    expected = torch.zeros(1, 10, 12)
    expected[:, 2:6, 3:9] = 1
    assert torch.equal(ds[0][2], expected) and torch.equal(ds[1][2], expected)
