"""User-defined transformation sets: a list of callables as one family.

>>> import torch
>>> fam = from_callables([lambda x: x, lambda x: x.flip(-1)], names=['same', 'mirror'])
>>> fam.grid(2).tolist()
[0.0, 1.0]
>>> x = torch.rand(2, 3, 4, 4)
>>> bool(torch.equal(fam(x, torch.tensor([0, 1]))[1], x[1].flip(-1)))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from viscope.errors import ViscopeError
from viscope.transforms.base import Family

ImageFn = Callable[[Tensor], Tensor]

# Whole numbers are exact in float32 up to 2**24 (and float32 exists on every device).
_INDEX = torch.float32


class CallableFamily(Family):
    """A family whose parameter ``index`` picks one of the user's callables.

    Each callable maps a (B, C, H, W) batch to a batch of the same shape. ``grid(n)``
    needs ``n`` equal to the number of callables and returns ``0 .. n-1``; ``sample``
    draws indices uniformly. ``apply`` groups images by index, so every callable is
    called once per batch with all the images that use it. Outputs are not clamped.
    """

    name = "custom"
    param_names = ("index",)
    integer = True
    description = "user-supplied callables; the parameter is the callable's index"

    def __init__(self, functions: Sequence[ImageFn], names: Sequence[str] | None = None) -> None:
        """Create the family.

        Args:
            functions: one or more callables (B, C, H, W) -> (B, C, H, W).
            names: a label per callable (default: each callable's ``__name__``).

        Raises:
            ViscopeError: no callables, a non-callable entry, or a wrong number of names.
        """
        fns = list(functions)
        if not fns:
            raise ViscopeError("from_callables needs at least one callable; got none.")
        for i, f in enumerate(fns):
            if not callable(f):
                raise ViscopeError(
                    f"from_callables expects callables (images -> images); entry {i} is a"
                    f" {type(f).__name__}."
                )
        if names is None:
            names = [getattr(f, "__name__", f"f{i}") for i, f in enumerate(fns)]
        if len(names) != len(fns):
            raise ViscopeError(
                f"from_callables got {len(fns)} callables but {len(names)} names; give one"
                " name per callable."
            )
        self.functions: tuple[ImageFn, ...] = tuple(fns)
        self.labels: tuple[str, ...] = tuple(str(n) for n in names)
        self.low = (0.0,)
        self.high = (float(len(fns) - 1),)

    def __len__(self) -> int:
        return len(self.functions)

    def grid(
        self, n: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Return the indices ``0 .. n-1``; ``n`` must equal the number of callables.

        Args:
            n: the number of callables.
            device: device of the result (default CPU).
            dtype: float dtype of the result (default ``torch.get_default_dtype()``).

        Returns:
            Shape (n,).

        Raises:
            ViscopeError: ``n`` differs from the number of callables.
        """
        if n != len(self):
            raise ViscopeError(
                f"This custom family has {len(self)} callables, so grid(n) needs n ="
                f" {len(self)}; got n = {n!r}. Use grid({len(self)})."
            )
        return torch.arange(n, device=device, dtype=dtype or torch.get_default_dtype())

    def _param_dtype(self, images: Tensor) -> torch.dtype:
        """float32, not the images' dtype: bfloat16 holds whole numbers exactly only up to
        256, so it would pick the wrong callable (or none) beyond that."""
        return _INDEX

    def _check_domain(self, p: Tensor) -> None:
        bad = ~(torch.isfinite(p) & (p.round() >= 0) & (p.round() <= len(self) - 1))
        if bool(bad.any()):
            raise ViscopeError(
                f"Custom family indices must be whole numbers in 0..{len(self) - 1}; got"
                f" {p.detach()[bad][0].item()}."
            )

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        index = params.round().long()
        values = torch.unique(index).tolist()
        if len(values) == 1:
            return self._call(values[0], images)
        out = torch.empty_like(images)
        for i in values:
            mask = index == i
            out[mask] = self._call(i, images[mask]).to(out)
        return out

    def _call(self, i: int, images: Tensor) -> Tensor:
        result = self.functions[i](images)
        if not isinstance(result, Tensor) or result.shape != images.shape:
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ViscopeError(
                f"Custom transformation {i} ({self.labels[i]}) must return a tensor of the"
                f" input's shape {tuple(images.shape)}; got {got}. Make it map (B, C, H, W)"
                " to (B, C, H, W), e.g. resize back to the input size."
            )
        return result

    def __repr__(self) -> str:
        return f"CallableFamily({list(self.labels)})"


def from_callables(
    functions: Sequence[ImageFn], names: Sequence[str] | None = None
) -> CallableFamily:
    """Make a family (name ``"custom"``) from a list of image -> image callables.

    Args:
        functions: callables mapping (B, C, H, W) -> (B, C, H, W).
        names: optional label per callable, for tables and figures.

    Returns:
        A :class:`CallableFamily` whose parameter is the callable's index.

    Raises:
        ViscopeError: see :class:`CallableFamily`.
    """
    return CallableFamily(functions, names)
