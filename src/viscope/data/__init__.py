"""Built-in datasets (no download) and loaders for a user's own folders and CSV files.

Every dataset is a map-style torch ``Dataset`` of ``(image, label)`` or
``(image, label, mask)`` items (images float32 (3, H, W) in [0, 1], masks float32
(1, H, W) in {0, 1}, labels ints), with ``.classes``, ``.has_masks`` and ``.targets``.

>>> from viscope.data import create, list_datasets
>>> list_datasets()
['shapes', 'digits', 'color-digits', 'faces', 'mammo', 'retina-quality']
>>> val = create("digits", split="val")
>>> len(val), val.classes[9]
(270, '9')
"""

from viscope.data.base import IGNORE, SubsetDataset, VisionDataset, labels_of
from viscope.data.density import DensityCSV, check_two_classes, is_density_csv
from viscope.data.dicom import read_dicom
from viscope.data.digits import ColorDigitsDataset, DigitsDataset
from viscope.data.factory import DATASETS, create, list_datasets
from viscope.data.files import IMAGE_EXTENSIONS
from viscope.data.folder import ImageFolder
from viscope.data.fundus import FundusCSV, FundusFolder, fov_crop, fov_mask, parse_grade
from viscope.data.mammo import MammoDataset
from viscope.data.retina import RetinaQuality
from viscope.data.shapes import SHAPES, UNIT_AREA, ShapeParams, ShapesDataset, render, sample_params
from viscope.data.splits import DEFAULT_FRACTIONS, split_indices
from viscope.data.table import CSVDataset

__all__ = [
    "DATASETS",
    "DEFAULT_FRACTIONS",
    "IGNORE",
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "UNIT_AREA",
    "CSVDataset",
    "ColorDigitsDataset",
    "DensityCSV",
    "DigitsDataset",
    "FundusCSV",
    "FundusFolder",
    "ImageFolder",
    "MammoDataset",
    "RetinaQuality",
    "ShapeParams",
    "ShapesDataset",
    "SubsetDataset",
    "VisionDataset",
    "check_two_classes",
    "create",
    "fov_crop",
    "fov_mask",
    "is_density_csv",
    "labels_of",
    "list_datasets",
    "parse_grade",
    "read_dicom",
    "render",
    "sample_params",
    "split_indices",
]
