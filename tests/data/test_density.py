"""``DensityCSV``: density spellings, DICOM and PNG rows, flipping, masks, bad rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viscope import data
from viscope.data.base import IGNORE, SubsetDataset
from viscope.data.density import DensityCSV, check_two_classes, parse_density
from viscope.data.dicom import write_dicom
from viscope.data.table import CSVDataset
from viscope.errors import ViscopeError

H, W = 10, 12


def _breast(side: str, low: int = 20, high: int = 220) -> np.ndarray:
    """uint8 (H, W): a bright block against the ``side`` edge, a gradient so flips show."""
    arr = np.full((H, W), low, dtype=np.uint8)
    cols = slice(0, 5) if side == "left" else slice(W - 5, W)
    arr[1:9, cols] = high
    arr[0, :] = np.arange(W, dtype=np.uint8) * 3 + low  # top row: a ramp (asymmetric)
    return arr


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr, mode="L").save(path)
    return path


def _mask(path: Path, arr: np.ndarray) -> Path:
    return _png(path, (arr > 0).astype(np.uint8) * 255)


def _csv(folder: Path, text: str, name: str = "list.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """left.png / right.png (breast on that side), masks of the block, DICOMs."""
    for side in ("left", "right"):
        arr = _breast(side)
        _png(tmp_path / f"{side}.png", arr)
        _mask(tmp_path / f"{side}_mask.png", arr == 220)
    return tmp_path


def test_parse_density_spellings() -> None:
    cells = ["A", " b ", "c", "D", "1", "2 ", "3", "4", "3.0", "Density C", "DENSITY_a"]
    assert [parse_density(v) for v in cells] == [0, 1, 2, 3, 0, 1, 2, 3, 2, 2, 0]
    assert [parse_density(v) for v in ("E", "0", "5", "", "AB", "density")] == [None] * 6


def test_mixed_spellings_and_png_pixels(folder: Path) -> None:
    rows = ["a", " B ", "3", "d", "1", "4"]
    text = "path,density,notes\n" + "".join(f"left.png,{d},x\n" for d in rows)
    ds = DensityCSV(_csv(folder, text), size=None)
    assert ds.targets == [0, 1, 2, 3, 0, 3] and ds.classes == ["A", "B", "C", "D"]
    assert not ds.has_masks and ds.mask_available == [False] * 6
    image, label = ds[0]
    expected = _breast("left") / 255.0
    assert image.shape == (3, H, W) and label == 0
    for c in range(3):
        np.testing.assert_allclose(image[c].numpy(), expected, atol=1e-6)
    assert ds.rows == [2, 3, 4, 5, 6, 7]  # spreadsheet rows: the header is row 1


def test_flip_by_intensity_mass_flips_the_mask_too(folder: Path) -> None:
    text = "path,density,mask_path\nleft.png,A,left_mask.png\nright.png,D,right_mask.png\n"
    csv = _csv(folder, text)
    ds = DensityCSV(csv, size=None)
    left_img, _, left_mask = ds[0]
    right_img, _, right_mask = ds[1]
    np.testing.assert_allclose(left_img[0].numpy(), _breast("left") / 255.0, atol=1e-6)
    # the right breast comes back mirrored, ramp included, and its mask with it
    np.testing.assert_allclose(right_img[0].numpy(), _breast("right")[:, ::-1] / 255.0, atol=1e-6)
    assert torch.equal(
        right_mask[0], torch.from_numpy((_breast("right") == 220)[:, ::-1].copy()).float()
    )
    assert torch.equal(left_mask[0], torch.from_numpy(_breast("left") == 220).float())
    kept = DensityCSV(csv, size=None, flip=None)
    np.testing.assert_allclose(kept[1][0][0].numpy(), _breast("right") / 255.0, atol=1e-6)
    other = DensityCSV(csv, size=None, flip="right")
    np.testing.assert_allclose(other[0][0][0].numpy(), _breast("left")[:, ::-1] / 255.0, atol=1e-6)


def test_dicom_rows_flip_by_laterality_tag_over_mass(folder: Path) -> None:
    # stored values 0..4095 (12-bit): the image is bright on the LEFT, but tagged R, so the
    # tag (not the mass) decides: it is flipped. The untagged twin is not.
    stored = (_breast("left").astype(np.uint16) * 16).astype(np.uint16)
    write_dicom(folder / "tagged_r.dcm", stored, bits_stored=12, ImageLaterality="R")
    write_dicom(folder / "untagged", stored, bits_stored=12)  # no extension: found by preamble
    write_dicom(
        folder / "m1_l.dcm", stored[:, ::-1], bits_stored=12, photometric="MONOCHROME1",
        Laterality="L", WindowCenter=2048, WindowWidth=4096,
    )  # fmt: skip
    text = "path,density\ntagged_r.dcm,A\nuntagged,D\nm1_l.dcm,B\n"
    ds = DensityCSV(_csv(folder, text), size=None)
    as_stored = stored / 4095.0
    np.testing.assert_allclose(ds[0][0][1].numpy(), as_stored[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(ds[1][0][1].numpy(), as_stored, atol=1e-6)
    # MONOCHROME1, window covering 0..4095: (x - 2047.5) / 4095 + 0.5, inverted; tagged L
    windowed = 1.0 - np.clip((stored[:, ::-1] - 2047.5) / 4095 + 0.5, 0, 1)
    np.testing.assert_allclose(ds[2][0][0].numpy(), windowed, atol=1e-6)


def test_resize_and_masks_missing_for_some_rows(folder: Path) -> None:
    text = "path,density,mask_path\nleft.png,A,left_mask.png\nleft.png,D,\n"
    ds = DensityCSV(_csv(folder, text), size=(5, 6))
    assert ds.has_masks and ds.mask_available == [True, False]
    image, _, mask = ds[0]
    assert image.shape == (3, 5, 6) and mask.shape == (1, 5, 6)
    # nearest resizing of a 10x12 mask to 5x6 samples every other pixel, from the second
    expected = torch.from_numpy((_breast("left") == 220)[1::2, 1::2]).float()
    assert torch.equal(mask[0], expected)
    _, _, none = ds[1]
    assert none.shape == (1, 5, 6) and bool((none == IGNORE).all())
    no_masks = DensityCSV(_csv(folder, "path,density,mask_path\nleft.png,A,\nleft.png,D,\n"))
    assert not no_masks.has_masks and len(no_masks[0]) == 3


def test_classes_keep_some_densities(folder: Path) -> None:
    text = "path,density\n" + "".join(f"left.png,{d}\n" for d in "ABCDAD")
    ds = DensityCSV(_csv(folder, text), size=8, classes=("A", "D"))
    assert ds.classes == ["A", "D"] and ds.targets == [0, 1, 0, 1] and ds.rows == [2, 5, 6, 7]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (
            ["left.png,A", "left.png,B", "left.png,C", "left.png,D", "left.png,A", "left.png,E"],
            r"^Expected density A-D or 1-4; got 'E' in row 7 of CSV file '.*list\.csv'\. ",
        ),
        (["left.png,A", "gone.png,D"], r"image file 'gone\.png' .* does not exist in row 3 of"),
        (["left.png,A", ",D"], r"column 'path'; got an empty cell in row 3 of"),
        (["left.png,A,left_mask.png", "left.png,D,gone.png"], r"mask file 'gone\.png'.* row 3 "),
        (["left.png,A,left_mask.png", "left.png,D,small.png"], r"be 10x12 .*got 4x4 in row 3 "),
        (["left.png,A", "junk.png,D"], r"Cannot read image file '.*junk\.png'.* in row 3 of"),
        (["left.png,A", "junk.dcm,D"], r"Cannot read DICOM file '.*junk\.dcm'.* in row 3 of"),
    ],
)
def test_bad_rows_are_one_error_naming_the_row(folder: Path, rows: list[str], match: str) -> None:
    _png(folder / "small.png", np.zeros((4, 4), np.uint8))
    (folder / "junk.png").write_bytes(b"not an image" * 20)
    (folder / "junk.dcm").write_bytes(b"not a dicom" * 20)
    header = "path,density,mask_path" if rows[0].count(",") == 2 else "path,density"
    csv = _csv(folder, header + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(ViscopeError, match=match) as err:
        DensityCSV(csv)
    assert "skip_invalid=True" in str(err.value) and "\n" not in str(err.value)


def test_skip_invalid_warns_once_with_the_count(folder: Path) -> None:
    (folder / "junk.png").write_bytes(b"not an image" * 20)
    _png(folder / "small.png", np.zeros((4, 4), np.uint8))
    text = (
        "path,density,mask_path\n"
        "left.png,A,\nright.png,D,\nleft.png,E,\ngone.png,A,\n"
        "junk.png,D,\nleft.png,B,small.png\nright.png,C,right_mask.png\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = DensityCSV(_csv(folder, text), skip_invalid=True)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("Skipped 4 invalid row(s) of 7 in CSV file")
    assert all(f"row {r}:" in message for r in (4, 5, 6, 7))
    assert len(ds) == 3 and ds.rows == [2, 3, 8] and ds.targets == [0, 3, 2]
    assert [s.split(":")[0] for s in ds.skipped] == ["row 4", "row 5", "row 6", "row 7"]


def test_skip_invalid_decodes_pixels_up_front(folder: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "whole.jpg", quality=95)
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # header reads, pixels not
    text = "path,density\nleft.png,A\ntruncated.jpg,D\nright.png,D\n"
    csv = _csv(folder, text)
    assert len(DensityCSV(csv)) == 3  # the header check alone passes it
    with pytest.warns(UserWarning, match=r"Skipped 1 invalid row\(s\) of 3 .*row 3: Cannot decode"):
        ds = DensityCSV(csv, skip_invalid=True)
    assert ds.rows == [2, 4]


def test_one_density_class_is_refused(folder: Path) -> None:
    csv = _csv(folder, "path,density\nleft.png,D\nright.png,4\n")
    with pytest.raises(ViscopeError, match=r"needs at least two classes \(A and D\)"):
        DensityCSV(csv)
    two = DensityCSV(_csv(folder, "path,density\nleft.png,A\nright.png,D\n", "two.csv"))
    with pytest.raises(ViscopeError, match=r"got only D \(1 images\)"):
        check_two_classes(SubsetDataset(two, [1]))
    check_two_classes(two)  # both: no error


def test_header_and_option_errors(folder: Path) -> None:
    with pytest.raises(ViscopeError, match="lacks the column"):
        DensityCSV(_csv(folder, "path,grade\nleft.png,A\n"))
    with pytest.raises(ViscopeError, match="does not exist"):
        DensityCSV(folder / "nope.csv")
    good = _csv(folder, "path,density\nleft.png,A\nright.png,D\n", "good.csv")
    with pytest.raises(ViscopeError, match="flip 'left', 'right' or None"):
        DensityCSV(good, flip="up")
    with pytest.raises(ViscopeError, match="classes to be distinct names"):
        DensityCSV(good, classes=("A", "X"))
    _png(folder / "small.png", np.zeros((4, 4), np.uint8))
    mixed = _csv(folder, "path,density\nleft.png,A\nsmall.png,D\n", "mixed.csv")
    with pytest.raises(ViscopeError, match="share one size when size=None"):
        DensityCSV(mixed, size=None)


def test_create_routes_density_csvs(folder: Path) -> None:
    csv = _csv(folder, "path,density\nleft.png,A\nright.png,D\nleft.png,A\nright.png,d\n")
    ds = data.create(csv, size=8)
    assert isinstance(ds, DensityCSV) and ds.targets == [0, 3, 0, 3]
    (folder / "junk.png").write_bytes(b"not an image" * 20)
    bad = _csv(folder, "path,density\nleft.png,A\nright.png,D\njunk.png,A\n", "bad.csv")
    with pytest.warns(UserWarning, match="Skipped 1 invalid"):
        assert len(data.create(bad, skip_corrupt=True)) == 2
    train = data.create(csv, split="train", fractions=(0.5, 0.0, 0.5), size=8, classes=("A", "D"))
    assert sorted(train.targets) == [0, 1]
    labels = _csv(folder, "path,label\nleft.png,A\n", "labels.csv")
    assert isinstance(data.create(labels), CSVDataset)
