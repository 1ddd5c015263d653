"""Reading DICOM images (mammograms) through pydicom: grey levels as displayed, in [0, 1].

A DICOM file stores raw detector values; what a radiologist sees is those values passed
through the modality LUT (rescale slope/intercept or a LUT sequence), then the VOI LUT or
window (centre/width) chosen for display, and, for ``MONOCHROME1``, inverted (high values
are dark). :func:`read_dicom` applies those steps with pydicom's own functions and scales
the result to [0, 1] by the range the VOI step outputs, or, without a VOI step, by the
range the stored bit depth allows (12-bit data spans 0..4095, not 0..65535).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from viscope.errors import ViscopeError

#: File name endings always read as DICOM (others are recognised by their preamble).
DICOM_EXTENSIONS = (".dcm", ".dicom")
_DECODE_HINT = (
    "Install the decoder pydicom names (for JPEG and JPEG 2000: pip install pylibjpeg "
    "pylibjpeg-libjpeg pylibjpeg-openjpeg) or convert the file to PNG."
)


@dataclass(frozen=True)
class DicomImage:
    """A DICOM image as displayed, and the tags a loader needs.

    Attributes:
        pixels: float32 (H, W) in [0, 1], 1 brightest as displayed.
        laterality: ``"L"`` or ``"R"`` from ``ImageLaterality`` (or ``Laterality``), else None.
    """

    pixels: np.ndarray
    laterality: str | None


def is_dicom(path: str | PathLike[str]) -> bool:
    """Whether ``path`` ends in ``.dcm``/``.dicom`` or starts with the DICOM preamble (``DICM``)."""
    from pydicom.misc import is_dicom as has_preamble

    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        return path.is_file() and has_preamble(path)
    except OSError:
        return False


def dicom_size(path: str | PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of a DICOM image from its header (the pixels are not read).

    Raises:
        ViscopeError: The file is not DICOM, or has no ``Rows``/``Columns``.
    """
    ds = _dcmread(Path(path), header_only=True)
    try:
        return int(ds.Rows), int(ds.Columns)
    except AttributeError:
        raise ViscopeError(
            f"Expected DICOM file '{path}' to hold an image; it has no Rows/Columns tags "
            "(a structured report or presentation state?). List image files only."
        ) from None


def read_dicom(path: str | PathLike[str]) -> np.ndarray:
    """Read a greyscale DICOM image as displayed: float32 (H, W) in [0, 1].

    Steps: ``pixel_array``; the modality LUT (``pydicom.pixels.apply_modality_lut``); the
    VOI LUT or first window (``apply_voi_lut``, which prefers a VOI LUT sequence to
    centre/width); scaling to [0, 1] by the range that step outputs (for a window, the
    range of the stored bit depth after rescaling, as pydicom maps the window onto; for a
    VOI LUT sequence, its entries' bit depth); without a VOI step, by the range of the
    stored bit depth after the modality LUT; ``MONOCHROME1`` is inverted (``1 - x``).

    Args:
        path: The DICOM file.

    Returns:
        float32 (H, W) in [0, 1].

    Raises:
        ViscopeError: The file is not DICOM, its pixel data cannot be decoded (a missing
            decoder is named), or it is not a single greyscale frame.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = Path(tmp.name) / "x.dcm"
        >>> write_dicom(path, np.array([[0, 4095]], np.uint16), bits_stored=12)
        >>> read_dicom(path).tolist()
        [[0.0, 1.0]]
        >>> tmp.cleanup()
    """
    return read_dicom_image(path).pixels


def read_dicom_image(path: str | PathLike[str]) -> DicomImage:
    """Like :func:`read_dicom`, with the image's laterality tag (for flipping)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    ds = _dcmread(path, header_only=False)
    try:
        raw = ds.pixel_array
    except (AttributeError, KeyError) as err:
        raise ViscopeError(
            f"Expected DICOM file '{path}' to hold pixel data; got none ({_one_line(err)}). "
            "List image files only."
        ) from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many kinds for undecodable data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ViscopeError(
            f"Cannot decode the pixel data of DICOM file '{path}' (transfer syntax {name}): "
            f"{_one_line(err)}. {_DECODE_HINT}"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or raw.ndim != 2:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        raise ViscopeError(
            f"Expected DICOM file '{path}' to hold one greyscale frame (MONOCHROME1/2); got "
            f"{photometric} with pixel array shape {tuple(raw.shape)} ({frames} frame(s)). "
            "Export a single 2-D view (e.g. the synthesised 2-D image of a tomosynthesis)."
        )
    try:
        values = apply_modality_lut(raw, ds)
        low, high = _stored_range(ds)
        if ds.get("VOILUTSequence"):
            depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            values, low, high = apply_voi_lut(values, ds), 0.0, float(2**depth - 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            values = apply_voi_lut(values, ds)  # mapped onto (low, high), as pydicom does
    except (ValueError, TypeError, AttributeError, IndexError, NotImplementedError) as err:
        raise ViscopeError(
            f"Cannot apply the LUT/window of DICOM file '{path}': {_one_line(err)}. Check "
            "its Window Center/Width, Rescale and VOI LUT tags."
        ) from None
    scaled = (np.asarray(values, dtype=np.float64) - low) / (high - low)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    pixels = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).strip().upper()
    return DicomImage(pixels=pixels, laterality=side if side in ("L", "R") else None)


def _stored_range(ds: object) -> tuple[float, float]:
    """The (low, high) values the modality LUT can output, as pydicom's windowing assumes.

    A modality LUT sequence outputs 0 .. 2**bits - 1 (its descriptor's bits); otherwise
    the stored bit depth's range (signed or not) goes through the rescale slope/intercept.
    """
    get = ds.get  # type: ignore[attr-defined]
    if get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])  # type: ignore[attr-defined]
        return 0.0, float(2**bits - 1)
    bits = int(get("BitsStored", get("BitsAllocated", 16)))
    if int(get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = get("RescaleSlope"), get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = (v * float(slope) + float(intercept) for v in (low, high))
    return min(low, high), max(low, high)


def _dcmread(path: Path, header_only: bool) -> object:
    """``pydicom.dcmread`` with its failures turned into one ViscopeError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise ViscopeError(
            f"Expected a DICOM file at '{path}'; it has no DICOM preamble. Check the path, or "
            "convert the image to PNG."
        ) from None
    except (OSError, ValueError, EOFError, KeyError, TypeError) as err:
        raise ViscopeError(
            f"Cannot read DICOM file '{path}': {_one_line(err)}. Check the file."
        ) from None


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (pydicom's list one reason per line)."""
    return " ".join(str(err).split()).rstrip(".")


def write_dicom(
    path: str | PathLike[str],
    pixels: np.ndarray,
    bits_stored: int = 16,
    photometric: str = "MONOCHROME2",
    **tags: object,
) -> None:
    """Write a minimal uncompressed greyscale DICOM mammogram (for tests and examples).

    Args:
        path: Where to write.
        pixels: uint16 (H, W) stored values.
        bits_stored: The stored bit depth (``BitsStored``).
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        **tags: Further tags, e.g. ``WindowCenter=2048, ImageLaterality="R"``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "MG"
    arr = np.ascontiguousarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
