"""Geometric families: known answers, matrices, and inverse round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from viscope.errors import ViscopeError
from viscope.transforms import (
    TRANSFORMS,
    GeometricFamily,
    Perspective,
    create,
    list_transforms,
    rescale_matrix,
)

GEOMETRIC = [n for n in list_transforms() if TRANSFORMS.get(n).geometric]
DTYPES = [torch.float32, torch.float64]

# Moderate values per family, so that the round trip keeps a sizeable valid interior.
MILD = {
    "scale": [0.7, 0.9, 1.2, 1.5],
    "perspective": [0.05, 0.1, 0.2, 0.3],
    "rotation": [-150.0, -30.0, 45.0, 90.0],
    "translation": [[0.1, -0.05], [-0.2, 0.0], [0.0, 0.15], [0.125, 0.125]],
    "identity": [0.0, 0.0, 0.0, 0.0],
}


def _smooth(
    b: int, size: int, device: torch.device, dtype: torch.dtype, cycles: float = 1.0
) -> torch.Tensor:
    """Low-frequency images in [0, 1], a different pattern per image and channel."""
    coords = (torch.arange(size, dtype=dtype) + 0.5) / size * (2 * math.pi * cycles)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    phase = torch.arange(b * 3, dtype=dtype).reshape(b, 3, 1, 1)
    img = 0.5 + 0.25 * torch.sin(u + phase) + 0.2 * torch.cos(v - phase)
    return img.to(device)


def _ramp(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A linear image a + bx + cy (bilinear interpolation reproduces it exactly)."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij"
    )

    def ramp(xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return (0.1 + 0.6 * xx / size + 0.3 * yy / size)[None, None]

    return ramp(x, y).to(device), x, y, ramp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotation_by_quarter_turns_equals_rot90(
    k: int, dtype: torch.dtype, device: torch.device
) -> None:
    x = torch.rand(3, 2, 17, 17, dtype=dtype, device=device)
    out = create("rotation").apply(x, 90.0 * k)
    expected = torch.rot90(x, k, dims=(-2, -1))
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [(3, 0), (0, -2), (-4, 5)])
def test_translation_by_whole_pixels_equals_roll(
    shift: tuple[int, int], device: torch.device
) -> None:
    dx, dy = shift
    x = torch.rand(2, 3, 16, 20, device=device)
    out = create("translation").apply(x, torch.tensor([dx / 20, dy / 16]))
    expected = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    rows = slice(max(dy, 0), 16 + min(dy, 0))
    cols = slice(max(dx, 0), 20 + min(dx, 0))
    torch.testing.assert_close(out[..., rows, cols], expected[..., rows, cols], atol=1e-5, rtol=0)
    covered = torch.zeros(16, 20, dtype=torch.bool)
    covered[rows, cols] = True
    assert out[..., ~covered.to(device)].abs().max() < 1e-5, "uncovered pixels must be zero"


@pytest.mark.parametrize("factor", [2.0, 0.5, 1.25])
def test_scale_known_answer_on_a_linear_ramp(factor: float, device: torch.device) -> None:
    size = 32
    img, x, y, ramp = _ramp(size, device, torch.float64)
    out = create("scale").apply(img, factor)[0, 0].cpu()
    c = (size - 1) / 2
    sx, sy = c + (x - c) / factor, c + (y - c) / factor
    inside = (sx >= 0) & (sx <= size - 1) & (sy >= 0) & (sy <= size - 1)
    expected = ramp(sx, sy)[0, 0]
    torch.testing.assert_close(out[inside], expected[inside], atol=1e-9, rtol=0)
    outside = (sx < -1) | (sx > size) | (sy < -1) | (sy > size)
    assert bool(outside.any()) == (factor < 1)
    assert out[outside].abs().sum() == 0


def test_scale_two_equals_upsampled_centre_crop(device: torch.device) -> None:
    x = _smooth(2, 32, device, torch.float32)
    out = create("scale").apply(x, 2.0)
    crop = x[..., 8:24, 8:24]
    expected = F.interpolate(crop, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=2e-2, rtol=0)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_matrix_shapes_and_neutral_value(name: str, device: torch.device) -> None:
    family = create(name)
    params = torch.tensor(MILD[name], device=device, dtype=torch.float64)
    m = family.matrix(params, 24, 32)
    assert m.shape == (4, 3, 3) and m.dtype == torch.float64 and m.device.type == device.type
    neutral = torch.tensor(family.neutral, device=device)
    torch.testing.assert_close(family.matrix(neutral, 24, 32)[0], torch.eye(3, device=device))


@pytest.mark.parametrize("name", GEOMETRIC)
def test_matrix_is_consistent_across_resolutions(name: str, device: torch.device) -> None:
    family = create(name)
    params = torch.tensor(MILD[name], device=device, dtype=torch.float64)
    fine = family.matrix(params, 64, 96)
    torch.testing.assert_close(
        rescale_matrix(fine, (64, 96), (8, 12)), family.matrix(params, 8, 12)
    )


def test_rotation_matrix_turns_the_right_edge_to_the_top() -> None:
    m = create("rotation").matrix(torch.tensor([90.0], dtype=torch.float64), 11, 11)[0]
    right_middle = torch.tensor([10.0, 5.0, 1.0], dtype=torch.float64)
    assert (m @ right_middle).tolist() == pytest.approx([5.0, 0.0, 1.0])


def test_perspective_moves_corners_along_seeded_directions() -> None:
    family = Perspective(seed=0)
    h, w, d = 20, 30, 0.4
    m = family.matrix(torch.tensor([d], dtype=torch.float64), h, w)[0]
    corners = torch.tensor(
        [[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], dtype=torch.float64
    )
    moved = torch.cat([corners, torch.ones(4, 1, dtype=torch.float64)], 1) @ m.T
    moved = moved[:, :2] / moved[:, 2:]
    expected = corners + d * torch.tensor([w / 2, h / 2]) * family.directions
    torch.testing.assert_close(moved, expected)
    torch.testing.assert_close(family.directions.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert torch.equal(Perspective(seed=0).directions, family.directions)
    assert not torch.equal(Perspective(seed=1).directions, family.directions)
    x = torch.rand(1, 3, h, w)
    assert not torch.equal(create("perspective", seed=1)(x, d), family(x, d))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GEOMETRIC)
def test_inverse_undoes_apply_in_the_interior(
    name: str, dtype: torch.dtype, device: torch.device
) -> None:
    family = create(name)
    x = _smooth(4, 32, device, dtype)
    params = torch.tensor(MILD[name], device=device, dtype=dtype)
    back = family.inverse(family.apply(x, params), params)
    valid = family.inverse(family.apply(torch.ones_like(x), params), params) > 1 - 1e-6
    assert back.shape == x.shape and back.dtype == dtype
    assert valid.float().mean() > 0.2
    torch.testing.assert_close(back[valid], x[valid], atol=3e-2, rtol=0)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_inverse_on_a_coarser_feature_map(name: str, device: torch.device) -> None:
    family = create(name)
    # Half a period per image: the remaining error is interpolation (second order), while
    # a misplaced feature grid would leave a first-order error.
    x = _smooth(4, 32, device, torch.float32, cycles=0.5)
    params = torch.tensor(MILD[name], device=device)
    # A stride-4 "layer": average pooling commutes with the warps up to discretisation.
    features = F.avg_pool2d(family.apply(x, params), 4).repeat(1, 3, 1, 1)
    expected = F.avg_pool2d(x, 4).repeat(1, 3, 1, 1)
    ones = F.avg_pool2d(family.apply(torch.ones_like(x), params), 4)
    back = family.inverse(features, params)
    valid = (family.inverse(ones, params) > 1 - 1e-6).repeat(1, 3, 1, 1)
    assert back.shape == (4, 9, 8, 8)
    assert valid.float().mean() > 0.1
    error = (back - expected)[valid].abs().max()
    assert error < 0.03
    if name != "identity":
        assert error < (features - expected)[valid].abs().max() / 3, "inverse must undo the warp"
    same = family.inverse(features, params, image_size=(32, 32))
    torch.testing.assert_close(same, back, atol=1e-5, rtol=0)


def test_inverse_with_image_size_handles_other_aspect_ratios(device: torch.device) -> None:
    family = create("rotation")
    params = torch.tensor([30.0], device=device, dtype=torch.float64)
    features = torch.rand(1, 2, 8, 8, device=device, dtype=torch.float64)
    m = rescale_matrix(family.matrix(params, 32, 64), (32, 64), (8, 8))
    assert not torch.allclose(m, family.matrix(params, 8, 8))
    out = family.inverse(features, params, image_size=(32, 64))
    assert out.shape == features.shape
    with pytest.raises(ViscopeError, match="image_size"):
        family.inverse(features, params, image_size=(32,))


def test_identity_returns_copies(device: torch.device) -> None:
    family = create("identity")
    x = torch.rand(2, 5, 7, 9, device=device)
    for out in (family.apply(x, 3.0), family.inverse(x, torch.zeros(2))):
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("name", GEOMETRIC)
def test_nearest_mode_and_bad_mode(name: str, device: torch.device) -> None:
    family = create(name, mode="nearest")
    assert isinstance(family, GeometricFamily)
    x = (torch.rand(2, 3, 16, 16, device=device) * 4).round() / 4
    out = family.apply(x, torch.tensor(MILD[name][:2], device=device))
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], device=device)
    assert torch.isclose(out[..., None], levels).any(-1).all(), "nearest must not blend values"
    with pytest.raises(ViscopeError, match="mode"):
        create(name, mode="bicubic-ish")


def test_out_of_domain_parameters_raise(device: torch.device) -> None:
    x = torch.rand(1, 3, 8, 8, device=device)
    with pytest.raises(ViscopeError, match="factor"):
        create("scale").apply(x, 0.0)
    with pytest.raises(ViscopeError, match="distortion"):
        create("perspective").apply(x, 0.9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", GEOMETRIC)
def test_half_precision_uses_the_exact_parameters(
    name: str, dtype: torch.dtype, device: torch.device
) -> None:
    # Warps run in float32 whatever the image dtype, so a half-precision batch must give
    # the float32 result rounded to its dtype: the parameters must not be rounded to the
    # image dtype first (bfloat16 turns 100.3 degrees into 100.5), and ``inverse``, which
    # builds its matrix from the exact parameters, must undo the same transformation.
    family = create(name)
    odd = {"rotation": [100.3, -170.7], "scale": [1.37, 0.83], "perspective": [0.33, 0.47]}
    odd["translation"] = [[0.123, -0.2], [0.031, 0.17]]
    odd["identity"] = [0.0, 0.0]
    params = torch.tensor(odd[name], dtype=torch.float64)
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    expected = family.apply(x.float(), params).to(dtype)
    assert torch.equal(family.apply(x, params), expected)


def test_non_square_rotation_turns_about_the_true_centre(device: torch.device) -> None:
    x = torch.rand(2, 3, 16, 20, device=device)
    rotation = create("rotation")
    out = rotation.apply(x, 180.0)
    torch.testing.assert_close(out, x.flip(-2, -1), atol=1e-5, rtol=0)
    m = rotation.matrix(torch.tensor([37.0], dtype=torch.float64), 16, 20)[0]
    centre = torch.tensor([9.5, 7.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(m @ centre, centre)
