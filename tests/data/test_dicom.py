"""DICOM reading: files written here with pydicom, read back to pixels computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from viscope.data.dicom import dicom_size, is_dicom, read_dicom, read_dicom_image, write_dicom
from viscope.errors import ViscopeError

# Stored values spanning a 12-bit range, with values exactly on the window's edges.
STORED = np.array([[0, 1000, 1499, 1500, 1750], [2000, 2250, 2499, 2500, 4095]], dtype=np.uint16)


def _write(path: Path, pixels: np.ndarray, bits: int, photometric: str, **tags: object) -> Path:
    """A greyscale DICOM, written with pydicom's Dataset and FileMetaDataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _linear_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), scaled to [0, 1]: below c - 0.5 - (w - 1) / 2 is 0,
    above c - 0.5 + (w - 1) / 2 is 1, and ((x - (c - 0.5)) / (w - 1) + 0.5) between."""
    out = np.empty(x.shape)
    for idx, v in np.ndenumerate(x.astype(np.float64)):
        if v <= centre - 0.5 - (width - 1) / 2:
            out[idx] = 0.0
        elif v > centre - 0.5 + (width - 1) / 2:
            out[idx] = 1.0
        else:
            out[idx] = (v - (centre - 0.5)) / (width - 1) + 0.5
    return out


def test_monochrome1_with_a_window_is_windowed_then_inverted(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m1.dcm", STORED, 12, "MONOCHROME1", WindowCenter=2000, WindowWidth=1001
    )
    got = read_dicom(path)
    assert got.dtype == np.float32 and got.shape == (2, 5)
    expected = 1.0 - _linear_window(STORED, 2000, 1001)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # by hand: 1500 is (1500 - 1999.5) / 1000 + 0.5 = 0.0005 into the window, inverted
    assert got[0, 3] == pytest.approx(0.9995, abs=1e-6)
    assert got[0, 0] == 1.0 and got[1, 4] == 0.0  # MONOCHROME1: low values are bright


def test_monochrome2_without_a_window_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    sixteen = np.array([[0, 1, 32768], [40000, 65534, 65535]], dtype=np.uint16)
    got = read_dicom(_write(tmp_path / "m2.dcm", sixteen, 16, "MONOCHROME2"))
    np.testing.assert_allclose(got, sixteen / 65535.0, atol=1e-6)
    twelve = read_dicom(_write(tmp_path / "m12.dcm", STORED, 12, "MONOCHROME2"))
    np.testing.assert_allclose(twelve, STORED / 4095.0, atol=1e-6)  # 12 bits span 0..4095


def test_rescale_is_applied_before_the_window(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "r.dcm", STORED, 12, "MONOCHROME2",
        RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3000, WindowWidth=2001,
    )  # fmt: skip
    expected = _linear_window(STORED * 2.0 - 1000, 3000, 2001)
    np.testing.assert_allclose(read_dicom(path), expected, atol=1e-6)


def test_laterality_tags(tmp_path: Path) -> None:
    right = _write(tmp_path / "r.dcm", STORED, 12, "MONOCHROME2", ImageLaterality="R")
    left = _write(tmp_path / "l.dcm", STORED, 12, "MONOCHROME2", Laterality="L")
    none = _write(tmp_path / "n.dcm", STORED, 12, "MONOCHROME2")
    assert read_dicom_image(right).laterality == "R"
    assert read_dicom_image(left).laterality == "L"
    assert read_dicom_image(none).laterality is None


def test_recognised_by_preamble_and_size_from_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "no_extension", STORED, 12, "MONOCHROME2")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert is_dicom(path) and is_dicom(tmp_path / "x.DCM")
    assert not is_dicom(tmp_path / "image.png")
    assert dicom_size(path) == (2, 5)


def test_write_dicom_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "w.dcm"
    write_dicom(path, STORED, bits_stored=12, photometric="MONOCHROME1", ImageLaterality="L")
    ds = pydicom.dcmread(path)
    assert np.array_equal(ds.pixel_array, STORED)
    assert (ds.BitsStored, ds.PhotometricInterpretation, ds.ImageLaterality) == (
        12,
        "MONOCHROME1",
        "L",
    )
    np.testing.assert_allclose(read_dicom(path), 1 - STORED / 4095.0, atol=1e-6)


def test_not_dicom_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"not a dicom file" * 20)
    with pytest.raises(ViscopeError, match=r"Expected a DICOM file at '.*fake\.dcm'"):
        read_dicom(path)


def test_colour_or_multi_frame_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "multi.dcm", STORED, 12, "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.Rows = 1
    ds.save_as(path)
    with pytest.raises(ViscopeError, match=r"one greyscale frame .*\(2 frame\(s\)\)"):
        read_dicom(path)


def test_undecodable_pixel_data_names_the_decoder_to_install(tmp_path: Path) -> None:
    path = _write(tmp_path / "j2k.dcm", STORED, 12, "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not really a codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(
        ViscopeError, match=r"Cannot decode the pixel data .*JPEG 2000.*pylibjpeg"
    ) as err:
        read_dicom(path)
    assert "\n" not in str(err.value)  # one line
