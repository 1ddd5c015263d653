"""Float (mode "F") and 32-bit integer (mode "I") greyscale files: scaled, not clipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viscope.data.files import load_mask, load_rgb, readable
from viscope.data.folder import ImageFolder
from viscope.errors import ViscopeError


def _save(path: Path, arr: np.ndarray, **params: object) -> Path:
    """Save ``arr`` (float32 -> mode F, int32 -> mode I, uint16 -> I;16) with PIL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **params)
    return path


def _halves(left: float, right: float, dtype: type) -> np.ndarray:
    """A 6 x 8 image whose left half is ``left`` and right half ``right``."""
    arr = np.full((6, 8), right, dtype=dtype)
    arr[:, :4] = left
    return arr


def _rgb_halves(left: float, right: float) -> torch.Tensor:
    """What :func:`load_rgb` should give for :func:`_halves`: the same in 3 channels."""
    return torch.from_numpy(_halves(left, right, np.float32)).expand(3, -1, -1)


def test_float_tiff_in_unit_range_keeps_its_values(tmp_path: Path) -> None:
    path = _save(tmp_path / "f.tiff", _halves(0.25, 0.75, np.float32))
    assert Image.open(path).mode == "F"
    image = load_rgb(path, None)
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    assert torch.allclose(image, _rgb_halves(0.25, 0.75), atol=1e-6)
    # float precision is kept, not rounded to 1/255 steps (0.3 * 255 = 76.5)
    fine = load_rgb(_save(tmp_path / "g.tif", np.full((4, 4), 0.3, np.float32)), None)
    assert torch.allclose(fine, torch.full((3, 4, 4), 0.3), atol=1e-6)


def test_float_tiff_is_resized_like_an_eight_bit_image(tmp_path: Path) -> None:
    arr = np.zeros((8, 8), np.float32)
    arr[:, 4:] = 0.6  # 153 of 255
    image = load_rgb(_save(tmp_path / "f.tif", arr), (4, 2))
    eight = _save(tmp_path / "e.png", np.round(arr * 255).astype(np.uint8))
    reference = load_rgb(eight, (4, 2))  # PIL's bilinear on the 8-bit copy
    assert image.shape == (3, 4, 2)
    assert torch.allclose(image, reference, atol=1 / 255)
    assert image[:, :, 0].lt(0.3).all() and image[:, :, 1].gt(0.3).all()


def test_float_tiff_with_eight_and_sixteen_bit_ranges(tmp_path: Path) -> None:
    eight = load_rgb(_save(tmp_path / "e.tif", _halves(64.0, 200.0, np.float32)), None)
    assert torch.allclose(eight, _rgb_halves(64 / 255, 200 / 255), atol=1e-6)
    deep = load_rgb(_save(tmp_path / "d.tif", _halves(1000.0, 60000.0, np.float32)), None)
    assert torch.allclose(deep, _rgb_halves(1000 / 65535, 60000 / 65535), atol=1e-6)


@pytest.mark.parametrize(
    ("values", "shown"),
    [((-0.5, 0.75), "from -0.5 to 0.75"), ((0.0, 70000.0), "from 0 to 70000")],
)
def test_float_tiff_out_of_range_says_range_and_fix(
    tmp_path: Path, values: tuple[float, float], shown: str
) -> None:
    path = _save(tmp_path / "odd.tif", _halves(*values, np.float32))
    for load in (load_rgb, load_mask):
        with pytest.raises(
            ViscopeError, match=rf"float.*odd\.tif.*{shown}.*Rescale it to \[0, 1\]"
        ):
            load(path, None)
    assert not readable(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_nan_or_inf_names_the_file(tmp_path: Path, bad: float) -> None:
    arr = np.full((4, 4), 0.5, np.float32)
    arr[1, 2] = bad
    path = _save(tmp_path / "holes.tif", arr)
    with pytest.raises(ViscopeError, match=r"finite.*holes\.tif.*NaN or infinite"):
        load_rgb(path, None)
    with pytest.raises(ViscopeError, match=r"holes\.tif"):
        load_mask(path, None)


def test_int32_tiff_eight_and_sixteen_bit_ranges(tmp_path: Path) -> None:
    path = _save(tmp_path / "i8.tif", _halves(0, 255, np.int32))
    assert Image.open(path).mode == "I"
    assert torch.equal(load_rgb(path, None), _rgb_halves(0.0, 1.0))
    mid = load_rgb(_save(tmp_path / "m.tif", _halves(128, 51, np.int32)), None)
    assert torch.allclose(mid, _rgb_halves(128 / 255, 51 / 255), atol=1e-6)
    # 16-bit values: 8 bits, as for I;16 (1000 / 257 = 3.9 -> 4; 65535 -> 255)
    deep = load_rgb(_save(tmp_path / "i16.tif", _halves(1000, 65535, np.int32)), None)
    assert torch.allclose(deep, _rgb_halves(4 / 255, 1.0), atol=1e-6)


@pytest.mark.parametrize(("values", "shown"), [((-1, 5), "from -1 to 5"), ((0, 70000), "to 70000")])
def test_int32_tiff_out_of_range_is_an_error(
    tmp_path: Path, values: tuple[int, int], shown: str
) -> None:
    path = _save(tmp_path / "wide.tif", _halves(*values, np.int32))
    with pytest.raises(ViscopeError, match=rf"32-bit integer.*wide\.tif.*{shown}"):
        load_rgb(path, None)


def test_sixteen_bit_pgm_stays_sixteen_bit_when_dark(tmp_path: Path) -> None:
    # PIL opens a 16-bit PGM as mode "I"; its values are 16-bit even when all <= 255,
    # so it loads like the same values in a 16-bit PNG (I;16), not brightened 257 times.
    arr = _halves(0, 200, np.uint16)
    pgm = _save(tmp_path / "dark.pgm", arr)
    assert Image.open(pgm).mode == "I"
    png = _save(tmp_path / "dark.png", arr)
    image = load_rgb(pgm, None)
    assert torch.equal(image, load_rgb(png, None))
    assert torch.allclose(image, _rgb_halves(0.0, 1 / 255), atol=1e-6)  # 200/257 -> 1


def test_masks_from_float_tiffs(tmp_path: Path) -> None:
    expected = torch.from_numpy(_halves(0, 1, np.float32))[None]
    for name, values in (
        ("labels", (0.0, 1.0)),
        ("probabilities", (0.2, 0.7)),  # [0, 1]: threshold 0.5
        ("eight", (100.0, 130.0)),  # 0..255: threshold 127.5
        ("sixteen", (30000.0, 40000.0)),  # 0..65535: threshold 32767.5
    ):
        mask = load_mask(_save(tmp_path / f"{name}.tif", _halves(*values, np.float32)), None)
        assert torch.equal(mask, expected), name
    low = load_mask(_save(tmp_path / "low.tif", _halves(0.1, 0.4, np.float32)), None)
    assert low.sum() == 0


def test_masks_from_int32_tiffs(tmp_path: Path) -> None:
    expected = torch.from_numpy(_halves(0, 1, np.float32))[None]
    for name, values in (
        ("labels", (0, 1)),
        ("eight", (0, 255)),
        ("eight_mid", (127, 128)),
        ("sixteen", (1000, 40000)),
    ):
        mask = load_mask(_save(tmp_path / f"{name}.tif", _halves(*values, np.int32)), None)
        assert torch.equal(mask, expected), name
    resized = load_mask(tmp_path / "sixteen.tif", (3, 4))
    assert torch.equal(resized, torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(1, 3, -1))


def test_low_sixteen_bit_mask_is_background(tmp_path: Path) -> None:
    # 300 of 65535 rounds to 1 of 255; that must not read as the label 1.
    mask = load_mask(_save(tmp_path / "faint.png", _halves(0, 300, np.uint16)), None)
    assert mask.sum() == 0


def test_truncated_float_tiff_cannot_be_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = _save(tmp_path / "full.tif", rng.random((64, 64), dtype=np.float32))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[:2000])
    for load in (load_rgb, load_mask):
        with pytest.raises(ViscopeError, match=r"Cannot read image file '.*cut\.tif'"):
            load(cut, None)
    assert readable(full) and not readable(cut)


def test_image_folder_reads_float_tiffs_and_skips_bad_ones(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "x.tif", np.full((5, 6), 0.25, np.float32))
    _save(tmp_path / "b" / "y.tiff", np.full((5, 6), 0.75, np.float32))
    _save(tmp_path / "b" / "z.tif", np.full((5, 6), -2.0, np.float32))
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable.*z\.tif"):
        ds = ImageFolder(tmp_path, size=None, skip_corrupt=True)
    assert len(ds) == 2 and [ds[i][1] for i in range(2)] == [0, 1]
    assert torch.allclose(ds[0][0], torch.full((3, 5, 6), 0.25), atol=1e-6)
    assert torch.allclose(ds[1][0], torch.full((3, 5, 6), 0.75), atol=1e-6)
