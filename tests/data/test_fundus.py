"""Fundus loaders: the FOV crop on synthetic discs, grades, bad rows, non-RGB files, folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viscope.data.fov import fov_box, fov_crop, fov_mask, pad_square
from viscope.data.fundus import FundusCSV, FundusFolder
from viscope.data.grades import QUALITY_CLASSES, grade_lookup, parse_grade
from viscope.errors import ViscopeError

COLOUR = (0.8, 0.45, 0.2)  # a fundus-like orange
GARBAGE = b"this is not an image\x00\x01\x02" * 10


def _disc(height: int, width: int, cy: int, cx: int, r: int) -> np.ndarray:
    """bool (H, W): the pixels within ``r`` of ``(cy, cx)``."""
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _fundus(height: int, width: int, cy: int, cx: int, r: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W): an orange disc with a dark 'vessel' and texture, on a noisy black border."""
    rng = np.random.default_rng(seed)
    inside = _disc(height, width, cy, cx, r)
    shade = 0.75 + 0.25 * rng.random((height, width))
    shade[cy - 1 : cy + 2, :] *= 0.4  # a vessel across the disc
    rgb = np.stack([c * shade * inside for c in COLOUR])
    rgb += 0.02 * rng.random(rgb.shape) * ~inside  # dim noise outside the FOV
    return torch.from_numpy(rgb.astype(np.float32))


def _bbox(on: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)``, bottom/right exclusive, of the True pixels."""
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def _png(path: Path, rgb: torch.Tensor | np.ndarray, mode: str | None = None) -> Path:
    arr = rgb.permute(1, 2, 0).numpy() if isinstance(rgb, torch.Tensor) else rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.asarray(arr) * 255).astype(np.uint8)).save(path)
    if mode is not None:
        Image.open(path).convert(mode).save(path)
    return path


# --- the field of view ----------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.0, 0.02, 0.1])
def test_fov_crop_fits_an_off_centre_disc(margin: float) -> None:
    height, width, cy, cx, r = 90, 140, 52, 88, 30
    image = _fundus(height, width, cy, cx, r)
    out = fov_crop(image, margin=margin)
    pad = round(margin * (2 * r + 1))
    side = 2 * r + 1 + 2 * pad
    assert out.shape == (3, side, side)
    assert _bbox(out[0].numpy() > 0.1) == (pad, pad, side - pad, side - pad)
    # the crop copies the pixels as they are (the box lies inside the image here)
    expected = image[:, cy - r - pad : cy + r + 1 + pad, cx - r - pad : cx + r + 1 + pad]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_fov_crop_disc_clipped_top_and_bottom_pads_rows() -> None:
    # EyeQ-like: the disc is taller than the image, so the FOV spans the full height
    height, width, cy, cx, r = 60, 120, 30, 50, 36
    image = _fundus(height, width, cy, cx, r)
    top, left, bottom, right = fov_box(image, margin=0.0)
    assert (top, bottom) == (0, height)
    assert (left, right) == (cx - r, cx + r + 1)
    out = fov_crop(image, margin=0.0)
    side = right - left
    assert out.shape == (3, side, side)
    rows = (side - height) // 2
    assert out[:, :rows].abs().sum() == 0 and out[:, rows + height :].abs().sum() == 0
    np.testing.assert_array_equal(out[:, rows : rows + height], image[:, :, left:right])


@pytest.mark.parametrize("shape", [(50, 70), (64, 64), (80, 30)])
def test_fov_crop_of_an_already_cropped_image_only_pads(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(0.3 + 0.6 * rng.random((3, *shape)).astype(np.float32))
    image[:, 10:13] *= 0.3  # a dark vessel is not a border
    out = fov_crop(image)
    side = max(shape)
    expected = torch.zeros(3, side, side)
    top, left = (side - shape[0]) // 2, (side - shape[1]) // 2
    expected[:, top : top + shape[0], left : left + shape[1]] = image
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(pad_square(image), expected, rtol=0, atol=0)


def test_fov_mask_is_the_disc_up_to_its_edge() -> None:
    height, width, cy, cx, r = 90, 140, 40, 60, 25
    mask = fov_mask(_fundus(height, width, cy, cx, r))
    assert mask.shape == (1, height, width) and set(mask.unique().tolist()) <= {0.0, 1.0}
    inner, outer = _disc(height, width, cy, cx, r - 1), _disc(height, width, cy, cx, r + 2)
    on = mask[0].numpy() > 0
    assert on[inner].all() and not on[~outer].any()  # the vessel's gap is filled too


def test_fov_on_a_large_photograph_is_found_on_a_reduced_copy() -> None:
    height, width, cy, cx, r = 700, 1100, 360, 500, 300
    image = _fundus(height, width, cy, cx, r)
    factor = 3  # ceil(1100 / 512)
    top, left, bottom, right = fov_box(image, margin=0.0)
    expected = (cy - r, cx - r, cy + r + 1, cx + r + 1)
    for got, want in zip((top, left, bottom, right), expected, strict=True):
        assert abs(got - want) <= factor
    assert fov_mask(image).shape == (1, height, width)


def test_fov_of_a_black_image_is_the_whole_image() -> None:
    image = torch.zeros(3, 20, 30)
    assert fov_box(image) == (0, 0, 20, 30)
    assert fov_mask(image).sum() == 0
    assert fov_crop(image).shape == (3, 30, 30)


def test_fov_threshold_given_and_bad_arguments() -> None:
    image = _fundus(60, 80, 30, 40, 20)
    image[:, 28:33, 60:75] = 0.2  # a dim label: out at threshold 0.3 (disc luminance ~0.5)
    assert fov_box(image, threshold=0.3, margin=0.0)[3] <= 62
    with pytest.raises(ViscopeError, match=r"\(3, H, W\)"):
        fov_crop(image[:1])
    with pytest.raises(ViscopeError, match="threshold"):
        fov_crop(image, threshold=1.5)
    with pytest.raises(ViscopeError, match="margin"):
        fov_crop(image, margin=-0.1)


# --- grades ----------------------------------------------------------------------------


def test_parse_grade_eyeq_integers_names_and_floats() -> None:
    cells = ["0", "1", "2", "1.0", " 2 ", "+0", "Good", "USABLE", " reject", 1, 2.0]
    assert [parse_grade(v) for v in cells] == [0, 1, 2, 1, 2, 0, 0, 1, 2, 1, 2]
    assert [parse_grade(v) for v in ("3", "-1", "1.5", "", "bad", "nan")] == [None] * 6


def test_parse_grade_with_a_mapping() -> None:
    one_based = {1: "good", 2: "Usable", "3.0": "reject"}
    assert [parse_grade(v, grades=one_based) for v in ("1", "2.0", "3", "0")] == [0, 1, 2, None]
    assert parse_grade("reject", grades=one_based) == 2  # names still map to themselves
    binary = {"gradable": "good", "ungradable": "bad"}
    assert parse_grade("Ungradable", ("good", "bad"), binary) == 1
    with pytest.raises(ViscopeError, match="not in"):
        grade_lookup(QUALITY_CLASSES, {0: "great"})
    with pytest.raises(ViscopeError, match="another"):
        grade_lookup(QUALITY_CLASSES, {1: "good", "1.0": "reject"})
    with pytest.raises(ViscopeError, match="distinct"):
        grade_lookup(("good", "Good"))


# --- FundusCSV ---------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """disc.png (a disc in a 50x80 image), flat.png (an already-cropped 40x40)."""
    _png(tmp_path / "disc.png", _fundus(50, 80, 25, 30, 20))
    _png(tmp_path / "flat.png", np.full((40, 40, 3), 0.5))
    return tmp_path


def _csv(folder: Path, text: str, name: str = "labels.csv") -> Path:
    (folder / name).write_text(text)
    return folder / name


def test_csv_eyeq_layout_targets_and_cropped_items(photos: Path) -> None:
    text = ",image,quality,DR_grade\n0,disc.png,0,2\n1,flat.png,1.0,0\n\n2,disc.png,Reject,1\n"
    ds = FundusCSV(_csv(photos, text), size=32)
    assert ds.targets == [0, 1, 2] and ds.classes == list(QUALITY_CLASSES)
    assert ds.rows == [2, 3, 5] and not ds.has_masks and len(ds) == 3
    assert ds.paths == [photos / "disc.png", photos / "flat.png", photos / "disc.png"]
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    # the 41-px disc (+1 px margin a side) fills the output: its box spans it within 2 px
    top, left, bottom, right = _bbox(image[0].numpy() > 0.3)
    assert max(top, left) <= 2 and min(bottom, right) >= 30
    # the flat image is already square and has no border: only resized
    torch.testing.assert_close(ds[1][0], torch.full((3, 32, 32), 128 / 255), atol=1e-6, rtol=0)


def test_csv_without_crop_resizes_like_pil(photos: Path) -> None:
    ds = FundusCSV(_csv(photos, "path,grade\ndisc.png,good\n"), size=(20, 30), crop=False)
    expected = np.asarray(
        Image.open(photos / "disc.png").resize((30, 20), Image.Resampling.BILINEAR), np.float32
    )
    np.testing.assert_allclose(ds[0][0].permute(1, 2, 0).numpy(), expected / 255, atol=1e-6)


def test_csv_paths_start_at_root_and_grades_mapping(photos: Path, tmp_path: Path) -> None:
    other = tmp_path / "lists"
    other.mkdir()
    ds = FundusCSV(
        _csv(other, "path,label\ndisc.png,3\nflat.png,1\n"),
        root=photos,
        grades={1: "good", 2: "usable", 3: "reject"},
        size=16,
    )
    assert ds.targets == [2, 0]


def test_csv_bad_grade_names_its_row_and_the_accepted_values(photos: Path) -> None:
    text = "path,grade\ndisc.png,0\ndisc.png,3\nflat.png,1.5\nflat.png,2\n"
    with pytest.raises(ViscopeError) as err:
        FundusCSV(_csv(photos, text), skip_invalid=True)  # a bad grade is never skipped
    message = str(err.value)
    assert "row 3" in message and "'3'" in message and "rows 4" in message
    assert "0, 1, 2, good, usable, reject" in message and "grades=" in message
    assert "\n" not in message
    with pytest.raises(ViscopeError, match=r"among 1, 2, 3, good.*got '0' in row 2"):
        FundusCSV(
            _csv(photos, "path,grade\ndisc.png,0\n"), grades={1: "good", 2: "usable", 3: "reject"}
        )


def test_csv_missing_file_raises_naming_the_row_or_is_skipped_with_one_warning(
    photos: Path,
) -> None:
    (photos / "broken.png").write_bytes(GARBAGE)
    text = "path,grade\ndisc.png,0\nnope.png,1\nflat.png,2\nbroken.png,1\n,0\n"
    csv = _csv(photos, text)
    with pytest.raises(ViscopeError) as err:
        FundusCSV(csv)
    message = str(err.value)
    assert "nope.png" in message and "row 3" in message and "2 more invalid" in message
    assert "skip_invalid=True" in message and "\n" not in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FundusCSV(csv, skip_invalid=True, size=16)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "Skipped 3 invalid row(s) of 5" in text and "row 3" in text and "row 5" in text
    assert ds.targets == [0, 2] and ds.rows == [2, 4] and len(ds.skipped) == 3


def test_csv_greyscale_rgba_and_16_bit_are_converted_with_one_warning(photos: Path) -> None:
    grey = np.zeros((30, 40), np.uint8)
    grey[5:25, 10:30] = 180
    Image.fromarray(grey).save(photos / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(photos / "deep.png")  # 16-bit
    Image.open(photos / "disc.png").convert("RGBA").save(photos / "alpha.png")
    text = "path,grade\ngrey.png,0\ndeep.png,1\nalpha.png,2\ndisc.png,0\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FundusCSV(_csv(photos, text), size=20, crop=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Converted 3 of 4" in message and "greyscale: 1" in message and "RGBA: 1" in message
    assert "16/32-bit greyscale: 1" in message and "row 2" in message
    expected = np.asarray(Image.fromarray(grey).resize((20, 20), Image.Resampling.BILINEAR))
    for index in (0, 1):  # the 16-bit file holds the same picture
        image = ds[index][0]
        assert image.shape == (3, 20, 20) and torch.equal(image[0], image[2])
        np.testing.assert_allclose(image[1].numpy(), expected / 255, atol=1.5 / 255)
    rgb = np.asarray(Image.open(photos / "disc.png").resize((20, 20), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ds[2][0].permute(1, 2, 0).numpy(), rgb / 255, atol=1e-6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("path,grade\n", "no rows"),
        ("file,grade\ndisc.png,0\n", r"none of the columns path, image.*path \(or image\)"),
        ("path,score\ndisc.png,0\n", "none of the columns grade, label, quality"),
        ("path,image,grade\ndisc.png,disc.png,0\n", "2 of the columns path, image"),
    ],
)
def test_csv_empty_or_without_the_columns(photos: Path, text: str, match: str) -> None:
    with pytest.raises(ViscopeError, match=match):
        FundusCSV(_csv(photos, text))


def test_csv_bad_options(photos: Path) -> None:
    csv = _csv(photos, "path,grade\ndisc.png,0\n")
    with pytest.raises(ViscopeError, match="does not exist"):
        FundusCSV(photos / "none.csv")
    with pytest.raises(ViscopeError, match="size=128"):
        FundusCSV(csv, size=None)  # type: ignore[arg-type]
    with pytest.raises(ViscopeError, match="root"):
        FundusCSV(csv, root=photos / "nowhere")


# --- FundusFolder ------------------------------------------------------------------------


def test_folder_labels_follow_the_given_classes_and_items_are_cropped(tmp_path: Path) -> None:
    for k, name in enumerate(("Good", "usable", "reject")):
        _png(tmp_path / name / f"{k}.png", _fundus(50, 80, 25, 30 + 10 * k, 20, seed=k))
    _png(tmp_path / "reject" / "deep" / "x.png", _fundus(40, 40, 20, 20, 15))
    ds = FundusFolder(tmp_path, classes=QUALITY_CLASSES, size=24)
    assert ds.classes == list(QUALITY_CLASSES) and ds.targets == [0, 2, 2, 1]
    image, label = ds[0]
    assert image.shape == (3, 24, 24) and label == 0
    top, left, bottom, right = _bbox(image[0].numpy() > 0.3)
    assert max(top, left) <= 2 and min(bottom, right) >= 22
    plain = FundusFolder(tmp_path, size=24)  # sorted sub-folder names, as ImageFolder
    assert plain.classes == ["Good", "reject", "usable"] and plain.targets == [0, 1, 1, 2]
    torch.testing.assert_close(plain[0][0], image)
    with pytest.raises(ViscopeError, match="usable"):
        FundusFolder(tmp_path, classes=("good", "reject"))


def test_folder_skips_unreadable_and_warns_about_greyscale(tmp_path: Path) -> None:
    _png(tmp_path / "good" / "a.png", _fundus(30, 40, 15, 20, 12))
    _png(tmp_path / "reject" / "b.png", _fundus(30, 40, 15, 20, 12), mode="L")
    (tmp_path / "reject" / "c.png").write_bytes(GARBAGE)
    with pytest.raises(ViscopeError, match="skip_invalid=True"):
        FundusFolder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FundusFolder(tmp_path, skip_invalid=True, size=16)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "Converted 1 of 2" in messages[0] and "b.png (greyscale)" in messages[0]
    assert "Skipped 1 unreadable" in messages[1] and "c.png" in messages[1]
    assert ds.targets == [0, 1] and torch.equal(ds[1][0][0], ds[1][0][1])
