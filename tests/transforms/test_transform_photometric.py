"""Photometric families against torchvision's functional kernels, one image at a time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from viscope.errors import ViscopeError
from viscope.transforms import create

DTYPES = [torch.float32, torch.float64]
Reference = Callable[[torch.Tensor, float], torch.Tensor]

REFERENCES: dict[str, Reference] = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "grayscale": lambda img, a: TF.adjust_saturation(img, 1.0 - a),
    "invert": lambda img, a: (1.0 - a) * img + a * TF.invert(img),
    "solarize": TF.solarize,
    "hue": TF.adjust_hue,
}


def _images(device: torch.device, dtype: torch.dtype, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, channels, 12, 10, generator=g, dtype=dtype)
    x[0, :, :2] = 1.0  # saturated pixels exercise clamping and solarize's >= edge case
    x[1, :, :2] = 0.0
    return x.to(device)


def _values(name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The grid plus values beyond it (still inside the family's domain)."""
    family = create(name)
    grid = family.grid(4, dtype=dtype, device=device)
    extra = {"brightness": [0.0, 3.0], "contrast": [0.0, 4.0], "solarize": [0.0, 0.3],
             "hue": [-0.1, 0.25]}
    tail = torch.tensor(extra.get(name, [0.3, 0.9]), dtype=dtype, device=device)
    return torch.cat([grid, tail])


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_torchvision_per_image(
    name: str, dtype: torch.dtype, channels: int, device: torch.device
) -> None:
    family = create(name)
    x = _images(device, dtype, channels)
    params = _values(name, dtype, device)
    out = family.apply(x, params)
    for img, value, got in zip(x, params.tolist(), out, strict=True):
        expected = REFERENCES[name](img, value)
        torch.testing.assert_close(got, expected.to(dtype), atol=2e-6, rtol=0)


@pytest.mark.parametrize("bits", [8, 7, 5, 3, 2, 1, 0])
def test_posterize_matches_torchvision_on_uint8(bits: int, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    u8[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    expected = TF.posterize(u8, bits).float() / 255.0
    out = create("posterize").apply((u8.float() / 255.0).to(device), float(bits))
    torch.testing.assert_close(out.cpu(), expected, atol=1e-7, rtol=0)


def test_posterize_rounds_bits_and_quantises_off_lattice_values(device: torch.device) -> None:
    family = create("posterize")
    x = torch.tensor([0.1, 0.5, 0.99]).reshape(1, 1, 1, 3).to(device)
    expected = family.apply(x, 4.0)
    torch.testing.assert_close(family.apply(x, 4.2), expected)
    # round(255 x) = 26, 128, 252 -> top 4 bits: 16, 128, 240.
    torch.testing.assert_close(expected.flatten().cpu(), torch.tensor([16, 128, 240]) / 255.0)


def test_solarize_threshold_one_flips_only_exact_ones(device: torch.device) -> None:
    x = torch.tensor([0.0, 0.5, 0.999, 1.0]).reshape(1, 1, 1, 4).to(device)
    out = create("solarize").apply(x, 1.0)
    assert out.flatten().tolist() == pytest.approx([0.0, 0.5, 0.999, 0.0])


def test_grayscale_full_blend_is_rgb_to_grayscale(device: torch.device) -> None:
    x = _images(device, torch.float32)
    out = create("grayscale").apply(x, 1.0)
    expected = TF.rgb_to_grayscale(x, num_output_channels=3)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["contrast", "grayscale", "hue"])
def test_colour_families_refuse_other_channel_counts(name: str, device: torch.device) -> None:
    x = torch.rand(2, 4, 8, 8, device=device)
    with pytest.raises(ViscopeError, match="4 channels"):
        create(name).apply(x, 0.5)


def test_brightness_gradient_is_the_factor_where_unclipped(device: torch.device) -> None:
    x = torch.tensor([0.2, 0.9]).reshape(1, 1, 1, 2).to(device).requires_grad_(True)
    create("brightness").apply(x, 1.5).sum().backward()
    assert x.grad is not None
    assert x.grad.flatten().tolist() == pytest.approx([1.5, 0.0])


@pytest.mark.parametrize("name", ["brightness", "contrast", "grayscale", "invert"])
def test_gradients_match_out_of_place_formulas(name: str, device: torch.device) -> None:
    # Saturated pixels excluded: there the kernels clip (clamp passes no gradient at the
    # bound) while the invert reference formula does not.
    x = torch.rand(6, 3, 12, 10, dtype=torch.float64, device=device) * 0.98 + 0.01
    params = _values(name, torch.float64, device)
    leaf = x.clone().requires_grad_(True)
    create(name).apply(leaf, params).square().sum().backward()
    ref_leaf = x.clone().requires_grad_(True)
    ref = torch.stack(
        [REFERENCES[name](img, v) for img, v in zip(ref_leaf, params.tolist(), strict=True)]
    )
    ref.square().sum().backward()
    assert leaf.grad is not None and ref_leaf.grad is not None
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["brightness", "contrast", "grayscale", "invert", "posterize", "solarize"]
)
def test_large_batch_is_fast(name: str, device: torch.device) -> None:
    family = create(name)
    x = torch.rand(256, 3, 224, 224, device=device)
    params = family.sample(256, device=device)
    family.apply(x, params)
    start = time.perf_counter()
    family.apply(x, params)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("bits", [8, 5, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_posterize_on_8_bit_levels_is_exact_in_every_dtype(
    dtype: torch.dtype, bits: int, device: torch.device
) -> None:
    # Every 8-bit level k / 255 survives rounding to any float dtype (even bfloat16)
    # closely enough to be recovered, so bits = 8 must return the input bit for bit and
    # other bits the uint8 answer rounded to the dtype.
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = (u8.double() / 255.0).to(device, dtype)
    expected = (TF.posterize(u8, bits).double() / 255.0).to(device, dtype)
    out = create("posterize").apply(x, float(bits))
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    if bits == 8:
        assert torch.equal(out, x)


def test_hue_turns_primaries_round_the_circle_and_keeps_grays(device: torch.device) -> None:
    # Known answers: a third of a turn maps red -> green -> blue -> red; gray has no hue.
    x = torch.zeros(4, 3, 1, 1, device=device)
    x[0, 0] = x[1, 1] = x[2, 2] = 1.0
    x[3] = 0.4
    out = create("hue").apply(x, torch.full((4,), 1 / 3, device=device))[..., 0, 0]
    expected = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0.4, 0.4, 0.4]],
                            dtype=torch.float32, device=device)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
