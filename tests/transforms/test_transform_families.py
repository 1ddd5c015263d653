"""Contract tests run on every registered family: a new family is tested by registering it."""

from __future__ import annotations

import pytest
import torch

from viscope.errors import ViscopeError
from viscope.transforms import TRANSFORMS, Family, GeometricFamily, create, list_transforms

NAMES = list_transforms()
DTYPES = [torch.float32, torch.float64]


def _images(device: torch.device, dtype: torch.dtype = torch.float32, b: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, 16, 20, generator=g, dtype=dtype).to(device)


def _eight_bit_images(device: torch.device, b: int = 4) -> torch.Tensor:
    """Images on the 1/255 lattice without saturated pixels (see Solarize's docstring)."""
    g = torch.Generator().manual_seed(2)
    return (torch.randint(0, 255, (b, 3, 16, 20), generator=g) / 255.0).to(device)


def _params(family: Family, b: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return family.sample(b, generator=g, device=device)


def _neutral(family: Family, b: int, device: torch.device) -> torch.Tensor:
    value = torch.tensor(family.neutral, device=device)
    return value.expand(b) if family.num_params == 1 else value.expand(b, family.num_params)


def _bounds(family: Family) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.tensor(family.low), torch.tensor(family.high)
    return torch.minimum(lo, hi), torch.maximum(lo, hi)


@pytest.mark.parametrize("name", NAMES)
def test_class_attributes_are_complete(name: str) -> None:
    cls = TRANSFORMS.get(name)
    assert issubclass(cls, Family) and cls.name == name
    k = len(cls.param_names)
    assert k >= 1 and len(cls.low) == k and len(cls.high) == k
    assert cls.neutral is not None and len(cls.neutral) == k
    assert cls.description and "\n" not in cls.description
    assert cls.geometric == issubclass(cls, GeometricFamily)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_apply_keeps_shape_dtype_device_and_unit_range(
    name: str, dtype: torch.dtype, device: torch.device
) -> None:
    family = create(name)
    x = _images(device, dtype)
    out = family.apply(x, _params(family, 4, device))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(x, _images(device, dtype)), "apply must not modify its input"


@pytest.mark.parametrize("name", NAMES)
def test_apply_is_deterministic_and_call_is_apply(name: str, device: torch.device) -> None:
    family = create(name)
    x, p = _images(device), _params(family, 4, device)
    assert torch.equal(family.apply(x, p), family.apply(x, p))
    assert torch.equal(family(x, p), family.apply(x, p))


@pytest.mark.parametrize("name", NAMES)
def test_batched_apply_equals_one_image_at_a_time(name: str, device: torch.device) -> None:
    family = create(name)
    x, p = _images(device), _params(family, 4, device)
    out = family.apply(x, p)
    for i in range(4):
        torch.testing.assert_close(out[i : i + 1], family.apply(x[i : i + 1], p[i : i + 1]))


@pytest.mark.parametrize("name", NAMES)
def test_single_value_is_used_for_every_image(name: str, device: torch.device) -> None:
    family = create(name)
    x, p = _images(device), _params(family, 4, device)
    single = p[0]
    torch.testing.assert_close(family.apply(x, single), family.apply(x, single.expand_as(p)))


@pytest.mark.parametrize("name", NAMES)
def test_neutral_value_leaves_images_unchanged(name: str, device: torch.device) -> None:
    family = create(name)
    x = _eight_bit_images(device)
    out = family.apply(x, _neutral(family, 4, device))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("name", NAMES)
def test_grid_has_n_values_within_range(name: str, n: int, device: torch.device) -> None:
    family = create(name)
    grid = family.grid(n, device=device)
    k = family.num_params
    assert grid.shape == ((n,) if k == 1 else (n, k)) and grid.device.type == device.type
    lo, hi = _bounds(family)
    values = grid.cpu().reshape(n, k)
    assert (values >= lo - 1e-6).all() and (values <= hi + 1e-6).all()
    midpoint = (torch.tensor(family.low) + torch.tensor(family.high)) / 2
    if family.integer:
        midpoint = midpoint.round()
    torch.testing.assert_close(family.grid(1).reshape(k), midpoint.float())
    if k == 1 and n >= 2:
        assert values[0, 0] == family.low[0] and values[-1, 0] == family.high[0]
    if k > 1 and lo.ne(hi).all():
        assert len({tuple(v) for v in values.tolist()}) == n, "grid points must be distinct"


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_within_range_and_reproducible(name: str, device: torch.device) -> None:
    family = create(name)
    a = family.sample(256, generator=torch.Generator().manual_seed(7), device=device)
    b = family.sample(256, generator=torch.Generator().manual_seed(7), device=device)
    c = family.sample(256, generator=torch.Generator().manual_seed(8), device=device)
    assert torch.equal(a, b) and a.device.type == device.type
    k = family.num_params
    assert a.shape == ((256,) if k == 1 else (256, k))
    lo, hi = _bounds(family)
    values = a.cpu().reshape(256, k)
    assert (values >= lo).all() and (values <= hi).all()
    if lo.ne(hi).any():
        assert not torch.equal(a, c)
    if family.integer:
        assert torch.equal(values, values.round())
        assert set(values[:, 0].tolist()) == set(range(int(lo[0]), int(hi[0]) + 1))
    assert family.sample(3, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_works_under_no_grad_and_with_requires_grad(name: str, device: torch.device) -> None:
    family = create(name)
    x, p = _images(device), _params(family, 4, device)
    with torch.no_grad():
        expected = family.apply(x, p)
    leaf = x.clone().requires_grad_(True)
    out = family.apply(leaf, p)
    torch.testing.assert_close(out.detach(), expected)
    out.square().sum().backward()
    assert leaf.grad is not None and leaf.grad.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_is_accepted(name: str, device: torch.device) -> None:
    family = create(name)
    x = _images(device, torch.float16)
    out = family.apply(x, _params(family, 4, device))
    assert out.dtype == torch.float16 and out.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_viscope_errors(name: str, device: torch.device) -> None:
    family = create(name)
    x, p = _images(device), _params(family, 4, device)
    with pytest.raises(ViscopeError, match="shape"):
        family.apply(x, p[:3])
    with pytest.raises(ViscopeError, match=r"\(B, C, H, W\)"):
        family.apply(x[0], p[:1])
    with pytest.raises(ViscopeError, match="uint8"):
        family.apply((x * 255).to(torch.uint8), p)
    with pytest.raises(ViscopeError, match="positive integer"):
        family.grid(0)
    with pytest.raises(ViscopeError, match="lie in"):
        family.apply(x, torch.full_like(p, float("nan")))


@pytest.mark.parametrize("name", NAMES)
def test_range_can_be_overridden(name: str) -> None:
    cls = TRANSFORMS.get(name)
    lo, hi = _bounds(cls())
    low = tuple(float(v) for v in (lo * 3 + hi) / 4)
    high = tuple(float(v) for v in (lo + hi * 3) / 4)
    if cls.integer:
        low, high = tuple(round(v) for v in low), tuple(round(v) for v in high)
    family = create(name, low=low, high=high)
    assert family.low == low and family.high == high
    assert TRANSFORMS.get(name)(low=low, high=high).high == high
    grid = family.grid(4).reshape(4, -1)
    assert torch.equal(grid.min(0).values, torch.tensor(low).minimum(torch.tensor(high)).float())
    assert cls.low != family.low or cls.low == cls.high, "defaults must stay unchanged"
