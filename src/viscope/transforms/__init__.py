"""Named image-transformation families: pure batched ops, parameter grids and samplers.

Images are float tensors in [0, 1] of shape (B, C, H, W). Every family applies one
parameter value per image (``apply(images, params)``), gives evenly spaced values for
measurement (``grid(n)``) and random ones for augmentation (``sample(batch, generator)``);
geometric families also give their pixel-space ``matrix`` and an ``inverse`` that warps
feature maps of any resolution back.

>>> import torch
>>> from viscope.transforms import create
>>> rotation = create("rotation", low=-90, high=90)
>>> x = torch.rand(4, 3, 32, 32)
>>> rotation(x, rotation.grid(4)).shape
torch.Size([4, 3, 32, 32])
"""

from viscope.transforms.base import (
    TRANSFORMS,
    Family,
    check_images,
    lattice_2d,
    register_family,
    unit_linspace,
)
from viscope.transforms.custom import CallableFamily, from_callables
from viscope.transforms.factory import create, list_transforms
from viscope.transforms.geometric import (
    GeometricFamily,
    Identity,
    Perspective,
    Rotation,
    Scale,
    Translation,
    rescale_matrix,
)
from viscope.transforms.photometric import (
    Brightness,
    Contrast,
    Grayscale,
    Hue,
    Invert,
    Posterize,
    Solarize,
)

__all__ = [
    "TRANSFORMS",
    "Brightness",
    "CallableFamily",
    "Contrast",
    "Family",
    "GeometricFamily",
    "Grayscale",
    "Hue",
    "Identity",
    "Invert",
    "Perspective",
    "Posterize",
    "Rotation",
    "Scale",
    "Solarize",
    "Translation",
    "check_images",
    "create",
    "from_callables",
    "lattice_2d",
    "list_transforms",
    "register_family",
    "rescale_matrix",
    "unit_linspace",
]
