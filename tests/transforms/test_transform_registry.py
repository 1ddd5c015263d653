"""The registry, ``create``, user-defined families and the 2-D parameter lattice."""

from __future__ import annotations

import pytest
import torch

from viscope.errors import ViscopeError
from viscope.transforms import (
    TRANSFORMS,
    CallableFamily,
    Rotation,
    create,
    from_callables,
    lattice_2d,
    list_transforms,
    unit_linspace,
)

EXPECTED = [
    "brightness",
    "contrast",
    "grayscale",
    "invert",
    "posterize",
    "solarize",
    "hue",
    "scale",
    "perspective",
    "rotation",
    "translation",
    "identity",
]


def test_all_families_are_listed_in_order() -> None:
    assert list_transforms() == EXPECTED
    assert TRANSFORMS.get("rotation") is Rotation


def test_unknown_name_suggests_a_close_match() -> None:
    with pytest.raises(ViscopeError, match="Did you mean 'rotation'"):
        create("rotaton")


def test_unknown_option_and_bad_ranges_raise() -> None:
    with pytest.raises(ViscopeError, match="accepts the options"):
        create("rotation", lo=-90)
    with pytest.raises(ViscopeError, match="one number or 2 numbers"):
        create("translation", low=(0.1, 0.2, 0.3))
    with pytest.raises(ViscopeError, match="whole number"):
        create("posterize", low=7.5)
    with pytest.raises(ViscopeError, match="lie in"):
        create("grayscale", high=2.0)
    with pytest.raises(ViscopeError, match="lie in"):
        create("rotation", low=float("inf"))


def test_create_with_a_new_range() -> None:
    family = create("rotation", low=-90, high=90)
    assert family.grid(3).tolist() == [-90.0, 0.0, 90.0]
    assert Rotation.low == (-180.0,), "class defaults are unchanged"
    translation = create("translation", low=-0.1, high=(0.1, 0.2))
    assert translation.low == (-0.1, -0.1) and translation.high == (0.1, 0.2)


def test_posterize_grid_runs_from_mild_to_strong_and_repeats() -> None:
    family = create("posterize")
    assert family.grid(7).tolist() == [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]
    many = family.grid(13)
    assert many[0] == 8 and many[-1] == 2 and len(set(many.tolist())) == 7
    assert (many.diff() <= 0).all()


def test_rotation_and_translation_grid_of_one_is_the_neutral_value() -> None:
    assert create("rotation").grid(1).tolist() == [0.0]
    assert create("translation").grid(1).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8, 13, 50])
def test_lattice_is_distinct_and_evenly_projected(n: int) -> None:
    points = lattice_2d(n)
    assert points.shape == (n, 2) and points.dtype == torch.float64
    assert len({tuple(p) for p in points.tolist()}) == n
    for axis in range(2):
        torch.testing.assert_close(points[:, axis].sort().values, unit_linspace(n))
    if n >= 7:
        # Not collapsed onto a line: the points spread over the square.
        assert abs(torch.corrcoef(points.T)[0, 1]) < 0.9


def test_lattice_of_a_square_number_is_a_grid() -> None:
    points = lattice_2d(9)
    assert points.tolist()[:4] == [[0.0, 0.0], [0.0, 0.5], [0.0, 1.0], [0.5, 0.0]]
    assert lattice_2d(1).tolist() == [[0.5, 0.5]]


def _double(x: torch.Tensor) -> torch.Tensor:
    return (x * 2).clamp(0, 1)


def test_from_callables_applies_each_callable_to_its_group(device: torch.device) -> None:
    calls: list[int] = []

    def mirror(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flip(-1)

    family = from_callables([lambda x: x, mirror, _double], names=["same", "mirror", "double"])
    assert isinstance(family, CallableFamily) and family.name == "custom"
    assert family.grid(3).tolist() == [0.0, 1.0, 2.0]
    x = torch.rand(5, 3, 6, 6, device=device)
    index = torch.tensor([1, 0, 2, 1, 0], device=device)
    out = family.apply(x, index)
    assert calls == [2], "each callable sees its images as one batch"
    fns = family.functions
    for i in range(5):
        torch.testing.assert_close(out[i], fns[int(index[i])](x[i : i + 1])[0])
    torch.testing.assert_close(family(x, 2), _double(x))
    sample = family.sample(64, generator=torch.Generator().manual_seed(0))
    assert set(sample.tolist()) == {0.0, 1.0, 2.0}
    assert family.labels == ("same", "mirror", "double")


def test_from_callables_keeps_gradients(device: torch.device) -> None:
    family = from_callables([lambda x: x * 0.5, lambda x: x.flip(-2)])
    x = torch.rand(4, 1, 5, 5, device=device, requires_grad=True)
    family.apply(x, torch.tensor([0, 1, 0, 1])).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad[0], torch.full_like(x.grad[0], 0.5))
    torch.testing.assert_close(x.grad[1], torch.ones_like(x.grad[1]))


def test_from_callables_errors(device: torch.device) -> None:
    family = from_callables([lambda x: x, lambda x: x[..., :-1]], names=["same", "crop"])
    with pytest.raises(ViscopeError, match="needs n = 2"):
        family.grid(3)
    x = torch.rand(2, 3, 8, 8, device=device)
    with pytest.raises(ViscopeError, match="crop"):
        family.apply(x, torch.tensor([0, 1]))
    with pytest.raises(ViscopeError, match="0..1"):
        family.apply(x, torch.tensor([0, 2]))
    with pytest.raises(ViscopeError, match="at least one"):
        from_callables([])
    with pytest.raises(ViscopeError, match="entry 1"):
        from_callables([lambda x: x, "flip"])  # type: ignore[list-item]
    with pytest.raises(ViscopeError, match="names"):
        from_callables([lambda x: x], names=["a", "b"])
    with pytest.raises(ViscopeError, match="got int"):
        from_callables([lambda x: 3]).apply(x, 0)  # type: ignore[list-item,return-value]


def test_from_callables_indices_survive_half_precision_images(device: torch.device) -> None:
    # bfloat16 holds whole numbers exactly only up to 256: indices must not be cast to
    # the image dtype, or index 257 picks callable 256 and 299 (-> 300) does not exist.
    def constant(i: int):  # noqa: ANN202
        return lambda x: torch.full_like(x, float(i % 100))

    family = from_callables([constant(i) for i in range(300)])
    x = torch.rand(3, 1, 2, 2, device=device).to(torch.bfloat16)
    out = family.apply(x, torch.tensor([257, 258, 299]))
    assert out[:, 0, 0, 0].tolist() == [57.0, 58.0, 99.0]
