"""The :class:`Family` protocol, the ``TRANSFORMS`` registry and parameter generators.

A transformation family is one pure batched op, ``apply(images, params)``, plus two
parameter generators over one range: ``grid(n)`` (evenly spaced, for measurement) and
``sample(batch, generator)`` (uniform, for augmentation). Randomness lives only in
``sample``; ``apply`` is deterministic, so parameters can be stored and replayed.

Ranges: ``low`` is where ``grid`` starts and ``high`` where it ends (one value per
parameter). Most families have ``low < high``; ``posterize`` (bits 8 -> 2) and
``solarize`` (threshold 1 -> 0.5) run from the mildest to the strongest setting, so for
them ``low > high``. ``sample`` draws uniformly between the two either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from viscope.errors import ViscopeError
from viscope.registry import Registry

RangeArg = float | Sequence[float] | None
ParamsArg = Tensor | float | Sequence[float] | Sequence[Sequence[float]]

FamilyT = TypeVar("FamilyT", bound="type[Family]")


class Family:
    """A named family of image transformations with one or more real parameters.

    Subclasses set the class attributes and implement :meth:`_apply`; validation of
    images and parameters, the grid and the sampler come from this base.

    Attributes:
        name: registry name, e.g. ``"rotation"``.
        param_names: parameter names with their unit, e.g. ``("degrees",)``.
        low: start of the range, one value per parameter (class value = default range).
        high: end of the range, one value per parameter.
        neutral: the parameter value that leaves images unchanged, or ``None``.
        domain: inclusive bounds every parameter value must lie in (checked by ``apply``).
        integer: parameters are whole numbers (grids and samples are rounded).
        geometric: the family moves pixels and has ``matrix`` and ``inverse``.
        description: one line for ``viscope list transforms``.
    """

    name: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    neutral: ClassVar[tuple[float, ...] | None] = None
    domain: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    integer: ClassVar[bool] = False
    geometric: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, low: RangeArg = None, high: RangeArg = None) -> None:
        """Create the family, optionally over another range.

        Args:
            low: start of the range: one number (used for every parameter) or one per
                parameter; ``None`` keeps the default.
            high: end of the range, same forms as ``low``.

        Raises:
            ViscopeError: a bound is not finite, lies outside :attr:`domain`, has the
                wrong length, or is not a whole number for an integer family.
        """
        self.low = self._range_bound("low", type(self).low if low is None else low)
        self.high = self._range_bound("high", type(self).high if high is None else high)

    @property
    def num_params(self) -> int:
        """Number of parameters per image (the ``k`` in ``(B, k)``)."""
        return len(self.param_names)

    # -- the op -------------------------------------------------------------------------

    def apply(self, images: Tensor, params: ParamsArg) -> Tensor:
        """Transform each image with its own parameter value.

        Args:
            images: float tensor (B, C, H, W) with values in [0, 1], any device and dtype.
            params: shape (B,) for one-parameter families, (B, k) for k parameters; a
                single value (a number, or a length-k vector) is used for every image.

        Returns:
            A new tensor with the shape, dtype and device of ``images``, values in [0, 1].

        Raises:
            ViscopeError: ``images`` is not a 4-D float tensor, ``params`` has the wrong
                shape, or a value lies outside :attr:`domain`.
        """
        images = check_images(images)
        p = self.check_params(params, images.shape[0], images.device, self._param_dtype(images))
        return self._apply(images, p)

    def _param_dtype(self, images: Tensor) -> torch.dtype:
        """The dtype :meth:`_apply` gets the parameters in (default: the images')."""
        return images.dtype

    def __call__(self, images: Tensor, params: ParamsArg) -> Tensor:
        """Same as :meth:`apply`."""
        return self.apply(images, params)

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        raise NotImplementedError

    # -- parameter generators -----------------------------------------------------------

    def grid(
        self, n: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Return ``n`` evenly spaced parameter values over the range, for measurement.

        One parameter: ``linspace(low, high, n)``; ``grid(1)`` is the midpoint of the range
        (the neutral value for symmetric ranges such as rotation). Integer families round
        the values, so large ``n`` repeats values. Two parameters: a ``k x k`` grid when
        ``n == k**2`` (first parameter varies slowest), otherwise a rank-1 lattice (see
        :func:`lattice_2d`); the n points are distinct.

        Args:
            n: number of values, at least 1.
            device: device of the result (default CPU).
            dtype: float dtype of the result (default ``torch.get_default_dtype()``).

        Returns:
            Shape (n,) for one parameter, (n, k) for k parameters.

        Raises:
            ViscopeError: ``n`` is not a positive integer.
        """
        n = _check_count("n", n)
        dtype = dtype or torch.get_default_dtype()
        lo = torch.tensor(self.low, dtype=torch.float64)
        hi = torch.tensor(self.high, dtype=torch.float64)
        if self.num_params == 1:
            unit = unit_linspace(n)[:, None]
        elif self.num_params == 2:
            unit = lattice_2d(n)
        else:
            raise NotImplementedError(f"grid() supports 1 or 2 parameters, not {self.num_params}")
        values = lo + (hi - lo) * unit
        if self.integer:
            values = values.round()
        return self._shape(values).to(device=device, dtype=dtype)

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``batch`` parameter values uniformly from the range, for augmentation.

        Values are drawn on the generator's device and then moved to ``device``, so a
        generator seeded the same way gives the same values whatever ``device`` is.
        Integer families draw each whole number in the range with equal probability.

        Args:
            batch: number of values, at least 1.
            generator: source of randomness; ``None`` uses torch's global generator.
            device: device of the result (default: the generator's device, else CPU).
            dtype: float dtype of the result (default ``torch.get_default_dtype()``).

        Returns:
            Shape (batch,) for one parameter, (batch, k) for k parameters.

        Raises:
            ViscopeError: ``batch`` is not a positive integer.
        """
        batch = _check_count("batch", batch)
        dtype = dtype or torch.get_default_dtype()
        gen_device = generator.device if generator is not None else torch.device("cpu")
        lo = torch.tensor(self.low, dtype=torch.float64, device=gen_device)
        hi = torch.tensor(self.high, dtype=torch.float64, device=gen_device)
        if self.integer:
            first, last = torch.minimum(lo, hi), torch.maximum(lo, hi)
            count = (last - first + 1).to(torch.int64)
            u = torch.rand(batch, self.num_params, generator=generator, device=gen_device)
            values = first + (u * count).floor().clamp(max=count - 1)
        else:
            u = torch.rand(
                batch, self.num_params, generator=generator, device=gen_device, dtype=torch.float64
            )
            values = lo + (hi - lo) * u
        return self._shape(values).to(device=device or gen_device, dtype=dtype)

    # -- validation helpers ------------------------------------------------------------

    def check_params(
        self,
        params: ParamsArg,
        batch: int | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """Return ``params`` as a (B,) or (B, k) tensor on ``device`` in ``dtype``.

        Args:
            params: the values, see :meth:`apply`.
            batch: the number of images, or ``None`` to take it from ``params``.
            device: target device.
            dtype: target dtype.

        Returns:
            Shape (B,) for one parameter, (B, k) for k parameters.

        Raises:
            ViscopeError: wrong shape, or a value outside :attr:`domain`.
        """
        k = self.num_params
        # Validate CPU parameters where they are: checking a device tensor needs a host
        # sync on every call, which is why the engine and training pass CPU parameters.
        on_cpu = not isinstance(params, Tensor) or params.device.type == "cpu"
        if on_cpu:
            self._check_domain(torch.as_tensor(params, dtype=torch.float64))
        p = torch.as_tensor(params, device=device, dtype=dtype)
        single = p.ndim == 0 if k == 1 else p.shape == (k,)
        if single:
            p = p.reshape(1, k).expand(batch or 1, k)
        if k == 1 and p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        shape_ok = p.ndim == (1 if k == 1 else 2) and (k == 1 or p.shape[1] == k)
        if not shape_ok or (batch is not None and p.shape[0] != batch):
            b = "B" if batch is None else str(batch)
            want = f"({b},)" if k == 1 else f"({b}, {k})"
            raise ViscopeError(
                f"{self.name} expects parameters of shape {want} (one {', '.join(self.param_names)}"
                f" per image); got shape {tuple(torch.as_tensor(params).shape)}. Pass one value"
                f" per image, or a single {'value' if k == 1 else f'length-{k} vector'} for all."
            )
        if not on_cpu:
            self._check_domain(p)
        return p

    def _check_domain(self, p: Tensor) -> None:
        lo, hi = self.domain
        bad = ~(torch.isfinite(p) & (p >= lo) & (p <= hi))
        if bool(bad.any()):
            value = p.detach()[bad][0].item()
            raise ViscopeError(
                f"{self.name} parameter {'/'.join(self.param_names)} must lie in [{lo}, {hi}];"
                f" got {value}. Pass values inside that interval."
            )

    def _range_bound(self, which: str, value: float | Sequence[float]) -> tuple[float, ...]:
        k = self.num_params
        values = [value] * k if isinstance(value, (int, float)) else list(value)
        if len(values) != k:
            raise ViscopeError(
                f"{self.name} range {which} needs one number or {k} numbers"
                f" ({', '.join(self.param_names)}); got {value!r}."
            )
        out = tuple(float(v) for v in values)
        lo, hi = self.domain
        for v in out:
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ViscopeError(
                    f"{self.name} range {which} must lie in [{lo}, {hi}]; got {v}."
                    f" Choose a {which} inside that interval."
                )
            if self.integer and v != round(v):
                raise ViscopeError(
                    f"{self.name} range {which} must be a whole number; got {v}. Round it."
                )
        return out

    def _shape(self, values: Tensor) -> Tensor:
        return values[:, 0] if self.num_params == 1 else values

    def __repr__(self) -> str:
        return f"{type(self).__name__}(low={self.low}, high={self.high})"


def check_images(images: Tensor, what: str = "images") -> Tensor:
    """Check that ``images`` is a (B, C, H, W) float tensor and return it.

    Args:
        images: the batch to check.
        what: what to call it in the error message.

    Returns:
        ``images`` unchanged.

    Raises:
        ViscopeError: not a tensor, not 4-D, or not floating point.
    """
    if not isinstance(images, Tensor):
        raise ViscopeError(
            f"Expected {what} as a torch.Tensor of shape (B, C, H, W); got {type(images).__name__}."
        )
    if images.ndim != 4:
        raise ViscopeError(
            f"Expected {what} of shape (B, C, H, W); got shape {tuple(images.shape)}."
            " Add a batch dimension with x.unsqueeze(0) for a single image."
        )
    if not images.is_floating_point():
        raise ViscopeError(
            f"Expected float {what} with values in [0, 1]; got dtype {images.dtype}."
            " Convert uint8 images with x.float() / 255."
        )
    return images


def unit_linspace(n: int) -> Tensor:
    """``n`` evenly spaced values over [0, 1] in float64; ``n == 1`` gives the midpoint 0.5.

    >>> unit_linspace(3).tolist()
    [0.0, 0.5, 1.0]
    """
    if n == 1:
        return torch.full((1,), 0.5, dtype=torch.float64)
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)


def lattice_2d(n: int) -> Tensor:
    """``n`` distinct points that cover the unit square evenly, shape (n, 2), float64.

    When ``n == k**2`` this is the ``k x k`` grid ``unit_linspace(k) x unit_linspace(k)``
    (first coordinate slowest). Otherwise it is a rank-1 (Korobov) lattice
    ``(i, (a * i) mod n) / (n - 1)`` for ``i = 0 .. n-1``, with ``a`` the integer coprime
    to ``n`` closest to ``n / golden ratio`` (the Fibonacci lattice when ``n`` is a
    Fibonacci number). Each coordinate then takes every value of ``unit_linspace(n)``
    exactly once, and the points spread over the square rather than along a line.

    >>> lattice_2d(4).tolist()
    [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    >>> lattice_2d(3).tolist()
    [[0.0, 0.0], [0.5, 1.0], [1.0, 0.5]]
    """
    k = math.isqrt(n)
    if k * k == n:
        t = unit_linspace(k)
        gx, gy = torch.meshgrid(t, t, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    a = _korobov_generator(n)
    i = torch.arange(n, dtype=torch.float64)
    return torch.stack([i / (n - 1), torch.remainder(i * a, n) / (n - 1)], dim=1)


def _korobov_generator(n: int) -> int:
    target = n / ((1 + math.sqrt(5)) / 2)
    candidates = sorted(range(1, n), key=lambda a: (abs(a - target), a))
    return next(a for a in candidates if math.gcd(a, n) == 1)


def _check_count(what: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ViscopeError(f"Expected {what} to be a positive integer; got {n!r}.")
    return n


TRANSFORMS: Registry[type[Family]] = Registry("transformation")


def register_family(cls: FamilyT) -> FamilyT:
    """Class decorator: register a :class:`Family` subclass under its ``name``.

    Args:
        cls: the family class; its ``name`` must be new.

    Returns:
        ``cls`` unchanged.
    """
    TRANSFORMS.register(cls.name, cls)
    return cls
