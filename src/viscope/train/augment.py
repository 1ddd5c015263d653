"""Augmentation on the batch: one transformation family, random parameters per image.

Training augments whole batches on the model's device (no per-image CPU work in the
data loader): :class:`BatchAugment` draws one parameter per image from the family's range
with its own seeded generator, optionally leaves each image untouched with probability
``1 - p``, and applies the family's pure batched op. The parameters of the last call are
kept (``last_params``, ``last_applied``) so that what the model saw can be replayed.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import Tensor

from viscope import transforms
from viscope.errors import ViscopeError
from viscope.transforms import Family

AugmentArg = str | Family | None


def resolve_family(augment: AugmentArg) -> Family | None:
    """Turn ``None``, a family name or a :class:`Family` into a family (or ``None``).

    Args:
        augment: ``None`` (no augmentation), a name from
            :func:`viscope.transforms.list_transforms` (its default range), or a family
            instance (its own range, e.g. ``transforms.create("rotation", low=-45, high=45)``).

    Returns:
        The family, or ``None`` for no augmentation.

    Raises:
        ViscopeError: an unknown name or an object that is not a family.
    """
    if augment is None or isinstance(augment, Family):
        return augment
    if isinstance(augment, str):
        return transforms.create(augment)
    raise ViscopeError(
        f"Expected augment to be None, a transformation name or a Family; got "
        f"{type(augment).__name__}. Pass e.g. augment='rotation'."
    )


def describe_family(family: Family | None) -> dict[str, object] | None:
    """Plain-data description of a family (name, class, range) for run records.

    Args:
        family: the family or ``None``.

    Returns:
        ``{"name", "class", "low", "high"}``, plus ``"options"`` with the constructor
        options that differ from their defaults (e.g. ``{"mode": "nearest"}``), or
        ``None`` for no family.
    """
    if family is None:
        return None
    described: dict[str, object] = {
        "name": family.name or type(family).__name__,
        "class": f"{type(family).__module__}.{type(family).__qualname__}",
        "low": list(family.low),
        "high": list(family.high),
    }
    options = _non_default_options(family)
    if options:
        described["options"] = options
    return described


def _non_default_options(family: Family) -> dict[str, object]:
    """Constructor options other than the range, kept as same-named attributes, whose
    plain values differ from the defaults (interpolation mode, perspective's seed)."""
    try:
        parameters = inspect.signature(type(family)).parameters
    except (TypeError, ValueError):
        return {}
    options: dict[str, object] = {}
    for name, parameter in parameters.items():
        if name in ("low", "high") or not hasattr(family, name):
            continue
        value = getattr(family, name)
        if not isinstance(value, str | int | float | bool) or value == parameter.default:
            continue
        options[name] = value
    return options


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy's ``SeedSequence`` hashing).

    >>> mix_seed(0, 1) == mix_seed(0, 1) != mix_seed(1, 0)
    True
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class BatchAugment:
    """Apply ``family`` to a batch with random per-image parameters from its range.

    Randomness comes only from :attr:`generator`, a CPU ``torch.Generator``; parameters
    are drawn there and moved to the images' device, so the same seed gives the same
    parameters on any device.

    Args:
        family: the transformation family.
        p: probability that an image is transformed (``1.0``: every image). An image
            that is not transformed is passed on unchanged, and ``last_applied`` says which.
        seed: seed of the generator (reseed with :meth:`reseed`).

    Attributes:
        last_params: the parameters drawn at the last call, (B,) or (B, k), on the CPU
            (drawn for every image, used only where ``last_applied``).
        last_applied: bool (B,) mask of the images transformed at the last call.

    Raises:
        ViscopeError: ``p`` is not in [0, 1].

    Example:
        >>> aug = BatchAugment(transforms.create("invert"), seed=0)
        >>> x = torch.rand(4, 3, 8, 8)
        >>> y = aug(x)
        >>> torch.equal(y, aug.family.apply(x, aug.last_params))
        True
    """

    def __init__(self, family: Family, p: float = 1.0, seed: int = 0) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ViscopeError(
                f"Expected augment_p, the probability of augmenting an image, in [0, 1]; "
                f"got {p!r}. Use 1.0 to augment every image."
            )
        self.family = family
        self.p = float(p)
        self.generator = torch.Generator(device="cpu")
        self.reseed(seed)
        self.last_params: Tensor | None = None
        self.last_applied: Tensor | None = None

    def reseed(self, seed: int) -> None:
        """Restart the parameter stream from ``seed``."""
        self.generator.manual_seed(int(seed))

    def __call__(self, images: Tensor) -> Tensor:
        """Return the augmented batch (a new tensor; ``images`` is not modified).

        Args:
            images: float (B, C, H, W) in [0, 1], any device.

        Returns:
            The batch with each selected image transformed by its own parameter.
        """
        b = images.shape[0]
        # drawn on the CPU and handed over as such: apply validates them there, with no
        # device sync, and moves them to the images' device
        params = self.family.sample(b, self.generator, device="cpu", dtype=images.dtype)
        if self.p >= 1.0:
            applied = torch.ones(b, dtype=torch.bool, device=images.device)
            out = self.family.apply(images, params)
        else:
            # Which images to transform is decided on the CPU, so no device sync is needed.
            chosen = torch.rand(b, generator=self.generator) < self.p
            picked = chosen.nonzero()[:, 0]  # CPU, to index the CPU parameters
            index = picked.to(images.device)
            applied = chosen.to(images.device)
            out = images.clone()
            if len(index):
                out[index] = self.family.apply(images[index], params[picked])
        self.last_params = params
        self.last_applied = applied
        return out

    def __repr__(self) -> str:
        return f"BatchAugment({self.family!r}, p={self.p})"
