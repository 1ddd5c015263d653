"""Photometric families: per-pixel colour changes that keep every pixel in place.

Each op is the torchvision ``transforms.v2.functional`` kernel of the same name written
in batched form (one parameter per image, no loop over images; posterize follows the
uint8 kernel); the tests compare them image by image with torchvision. Outputs stay in
[0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from viscope.errors import ViscopeError
from viscope.transforms.base import Family, register_family

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def _per_image(params: Tensor) -> Tensor:
    return params.reshape(-1, 1, 1, 1)


def _check_colour(images: Tensor, family: str) -> None:
    if images.shape[1] not in (1, 3):
        raise ViscopeError(
            f"{family} needs RGB (3-channel) or grayscale (1-channel) images; got"
            f" {images.shape[1]} channels. Drop extra channels (e.g. alpha) with x[:, :3]."
        )


def _luma(images: Tensor) -> Tensor:
    """Grayscale of RGB images, (B, 1, H, W), with torchvision's weights and rounding."""
    r, g, b = images.unbind(dim=1)
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


@register_family
class Brightness(Family):
    """Multiply intensities by ``factor`` and clip: ``clamp(x * factor, 0, 1)``.

    torchvision ``adjust_brightness`` semantics. Default range 0.5 -> 1.5; neutral 1.

    >>> x = torch.full((2, 3, 4, 4), 0.5)
    >>> Brightness()(x, torch.tensor([0.5, 1.5]))[:, 0, 0, 0].tolist()
    [0.25, 0.75]
    """

    name = "brightness"
    param_names = ("factor",)
    low = (0.5,)
    high = (1.5,)
    neutral = (1.0,)
    domain = (0.0, math.inf)
    description = "multiply intensities by a factor (0.5-1.5) and clip"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        return images.mul(_per_image(params)).clamp_(0.0, 1.0)


@register_family
class Contrast(Family):
    """Blend each image with the mean of its grayscale: ``clamp(f x + (1 - f) mean, 0, 1)``.

    torchvision ``adjust_contrast`` semantics: the mean is over all pixels of the ITU-R
    601 grayscale image (of the image itself when it has 1 channel). Default range
    0.5 -> 1.5; neutral 1; factor 0 gives a uniform gray image.

    Raises:
        ViscopeError: from ``apply``, when images have neither 1 nor 3 channels.
    """

    name = "contrast"
    param_names = ("factor",)
    low = (0.5,)
    high = (1.5,)
    neutral = (1.0,)
    domain = (0.0, math.inf)
    description = "blend with the image's mean gray level, factor 0.5-1.5"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        _check_colour(images, self.name)
        # The mean of a weighted channel sum is the weighted sum of channel means: one
        # reduction instead of materialising the grayscale image.
        channel_means = images.mean(dim=(-2, -1))
        if images.shape[1] == 3:
            weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype)
            mean = channel_means @ weights
        else:
            mean = channel_means[:, 0]
        f = _per_image(params)
        return torch.addcmul(_per_image(mean) * (1.0 - f), images, f).clamp_(0.0, 1.0)


@register_family
class Grayscale(Family):
    """Blend towards grayscale: ``(1 - blend) x + blend gray(x)``.

    ``gray`` uses torchvision ``rgb_to_grayscale`` weights (ITU-R 601-2); this equals
    torchvision ``adjust_saturation(x, 1 - blend)``. 1-channel images are returned
    unchanged. Default range 0 -> 1; neutral 0.

    Raises:
        ViscopeError: from ``apply``, when images have neither 1 nor 3 channels.
    """

    name = "grayscale"
    param_names = ("blend",)
    low = (0.0,)
    high = (1.0,)
    neutral = (0.0,)
    domain = (0.0, 1.0)
    description = "blend towards the ITU-R 601 grayscale image, 0 (colour) to 1 (gray)"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        _check_colour(images, self.name)
        if images.shape[1] == 1:
            return images.clone()
        return torch.lerp(images, _luma(images), _per_image(params)).clamp_(0.0, 1.0)


@register_family
class Invert(Family):
    """Blend towards the negative: ``(1 - blend) x + blend (1 - x)``.

    ``blend = 1`` is torchvision ``invert``. Default range 0 -> 1; neutral 0; 0.5 gives
    a uniform 0.5 image.
    """

    name = "invert"
    param_names = ("blend",)
    low = (0.0,)
    high = (1.0,)
    neutral = (0.0,)
    domain = (0.0, 1.0)
    description = "blend towards the negative image, 0 (none) to 1 (inverted)"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        a = _per_image(params)
        # (1 - a) x + a (1 - x) = a + (1 - 2a) x, one fused kernel.
        return torch.addcmul(a, images, 1.0 - 2.0 * a).clamp_(0.0, 1.0)


@register_family
class Posterize(Family):
    """Keep the top ``bits`` bits of each 8-bit intensity.

    Semantics of torchvision ``posterize`` on uint8 images: ``q = round(255 x)`` (the
    8-bit value; rounding makes ``k / 255`` map back to ``k`` exactly), then the low
    ``8 - bits`` bits are cleared and the result divided by 255. So ``bits = 8`` leaves
    8-bit images (values ``k / 255``) unchanged, and only quantises others to 1/255.
    (torchvision's float kernel, ``floor(x 2^bits) / 2^bits``, is not the identity at 8
    bits, which is why it is not used.) Parameters are rounded to whole bits.

    Default range 8 -> 2 (mildest first, so ``low > high``); neutral 8. ``grid(n)``
    rounds ``linspace(8, 2, n)``, so it repeats values when ``n > 7``; ``sample`` draws
    each of 2..8 with equal probability.
    """

    name = "posterize"
    param_names = ("bits",)
    low = (8.0,)
    high = (2.0,)
    neutral = (8.0,)
    domain = (0.0, 8.0)
    integer = True
    description = "keep the top bits of each 8-bit intensity, 8 (none) to 2 bits"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        # Half precision cannot hold 255 x or k / 255 exactly: quantise in float32.
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        # Whole bits have no gradient; detaching lets the steps below run in place.
        step = torch.exp2(8.0 - _per_image(params.detach().to(work.dtype)).round())
        # Integers below 256 and powers of two: the division and floor are exact.
        levels = work.mul(255.0).round_().div_(step).floor_()
        return levels.mul_(step).div_(255.0).clamp_(0.0, 1.0).to(images.dtype)


@register_family
class Solarize(Family):
    """Invert every pixel at or above ``threshold``: ``where(x >= t, 1 - x, x)``.

    torchvision ``solarize`` semantics, including ``>=``: at ``threshold = 1`` only
    pixels exactly equal to 1.0 change (to 0), so the mildest setting is the identity
    only for images without saturated pixels. Default range 1 -> 0.5 (mildest first, so
    ``low > high``); ``neutral`` is 1 with that caveat.
    """

    name = "solarize"
    param_names = ("threshold",)
    low = (1.0,)
    high = (0.5,)
    neutral = (1.0,)
    domain = (0.0, 1.0)
    description = "invert pixels at or above a threshold, 1 (none) to 0.5"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        return torch.where(images >= _per_image(params), 1.0 - images, images)


@register_family
class Hue(Family):
    """Rotate every pixel's hue by ``shift`` turns: HSV ``h -> (h + shift) mod 1``.

    torchvision ``adjust_hue`` semantics (saturation and value kept; grays unchanged;
    1-channel images returned unchanged), written here in batched form with one shift
    per image: torchvision's kernel takes one float for the whole batch. Default range
    -0.5 -> 0.5 (the whole colour circle, so both ends give the same image); neutral 0.
    Mostly a view for self-supervised pre-training (``viscope.train.ssl``), where colour
    would otherwise be the easiest cue to match two views by.

    >>> red = torch.zeros(1, 3, 1, 1); red[:, 0] = 1.0
    >>> Hue()(red, torch.tensor([1 / 3]))[0, :, 0, 0].tolist()  # red -> green
    [0.0, 1.0, 0.0]

    Raises:
        ViscopeError: from ``apply``, when images have neither 1 nor 3 channels.
    """

    name = "hue"
    param_names = ("shift",)
    low = (-0.5,)
    high = (0.5,)
    neutral = (0.0,)
    domain = (-0.5, 0.5)
    description = "rotate the hue by a fraction of the colour circle, -0.5 to 0.5"

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        _check_colour(images, self.name)
        if images.shape[1] == 1:
            return images.clone()
        r, g, b = images.unbind(dim=1)
        value, _ = images.max(dim=1)
        spread = value - images.min(dim=1).values
        flat = spread == 0
        safe = torch.where(flat, torch.ones_like(spread), spread)
        # Hue in sixths of a turn, from whichever channel is the maximum (red first on
        # ties, as torchvision; tied channels give the same hue anyway).
        sixths = torch.where(
            value == r, ((g - b) / safe).remainder(6.0),
            torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
        sixths = (sixths + 6.0 * _per_image(params)[:, 0]).remainder(6.0)
        saturation = torch.where(flat, torch.zeros_like(spread), spread / torch.where(
            value == 0, torch.ones_like(value), value))
        # HSV -> RGB as channel n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + h) mod 6
        # for n = 5, 3, 1 (red, green, blue): one expression for all three channels.
        n = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype)
        k = (n.view(1, 3, 1, 1) + sixths.unsqueeze(1)).remainder(6.0)
        ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
        out = value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)
        return out.clamp_(0.0, 1.0)
