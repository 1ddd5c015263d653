"""YAML configs checked by pydantic: read, override ``key.sub=value``, validate.

The pattern of every config viscope reads (the matrix study, ``viscope train --config``):
packaged defaults (the pydantic model's), then a YAML file, then command-line overrides;
unknown keys are refused with the close match. Kept here, below the jobs, so that each
job's config module uses the same rules and messages.

>>> from pydantic import BaseModel, ConfigDict
>>> class Demo(BaseModel):
...     model_config = ConfigDict(extra="forbid")
...     epochs: int = 5
>>> tree = {}
>>> set_dotted(tree, "epochs", 3)
>>> validate(Demo, tree).epochs
3
>>> try:
...     validate(Demo, {"epochz": 3})
... except ViscopeError as err:
...     print(str(err).split("?")[0] + "?")
Config error at 'epochz': the config has no key 'epochz'. Did you mean 'epochs'?
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from viscope.errors import ViscopeError, suggest

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _distinct(v: list) -> list:
    if not v or len(set(v)) != len(v):
        raise ValueError("expected a non-empty list, each entry once")
    return v


#: a list setting with at least one entry and no repeats (seeds, variants, grid values):
#: ``seeds: Distinct[int] = Field(default_factory=lambda: [0, 1, 2])``
Distinct = Annotated[list[T], AfterValidator(_distinct)]


def read_yaml(path: str | Path, missing_hint: str = "") -> dict[str, Any]:
    """The mapping in a YAML file (``{}`` for an empty file).

    Args:
        path: the file.
        missing_hint: said after "does not exist" (where configs can be found).

    Raises:
        ViscopeError: a missing file, invalid YAML, or YAML that is not a mapping.
    """
    p = Path(path)
    if not p.exists():
        hint = f" {missing_hint}" if missing_hint else ""
        raise ViscopeError(f"Config file {p} does not exist.{hint}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ViscopeError(f"Config {p} is not valid YAML: {e}".split("\n")[0]) from None
    if not isinstance(data, dict):
        raise ViscopeError(
            f"Expected a mapping of settings (key: value lines) in {p}; got a "
            f"{type(data).__name__}."
        )
    return data


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; an integer key indexes a list (``models.0.epochs``).

    Raises:
        ViscopeError: an index outside a list, or a key below a plain value.
    """
    keys = dotted.split(".")
    node: Any = tree
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.lstrip("-").isdigit() or not -len(node) <= int(k) < len(node):
                raise ViscopeError(f"Config override {dotted!r}: {'.'.join(keys[:i])!r} is a "
                                   f"list of {len(node)} entries; expected an index 0 to "
                                   f"{len(node) - 1}, got {k!r}.")
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                node = node.setdefault(k, {})
        else:
            raise ViscopeError(f"Config override {dotted!r}: {'.'.join(keys[:i])!r} is "
                               f"{node!r}, not a mapping or list, so it has no key {k!r}.")


def validate(cls: type[M], data: Mapping[str, Any], entries: Mapping[str, str] | None = None
             ) -> M:
    """``cls(**data)``, with pydantic's first error as one line that says how to fix it.

    Args:
        cls: the pydantic model (``extra="forbid"`` for unknown keys to be refused).
        data: the settings.
        entries: how to name an item of a list field in messages (``{"models": "a model
            entry"}``; default ``"an entry of 'models'"``).

    Raises:
        ViscopeError: an unknown key (with the close match and the known keys) or a value
            of the wrong type.
    """
    try:
        return cls(**data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ViscopeError(unknown_key_message(cls, first["loc"], entries)) from None
        raise ViscopeError(f"Config error at {where!r}: {first['msg']}. Fix the YAML or the "
                           f"override.") from None


def unknown_key_message(cls: type[BaseModel], loc: tuple[int | str, ...],
                        entries: Mapping[str, str] | None = None) -> str:
    """The message for an unknown key at ``loc`` (``("epochz",)``, ``("models", 0, "x")``)."""
    where = ".".join(str(x) for x in loc)
    model, what = cls, "the config"
    for key in loc[:-1]:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            break
        model = inner
        what = (entries or {}).get(key, f"an entry of {key!r}")
    known = list(model.model_fields)
    key = str(loc[-1])
    return (f"Config error at {where!r}: {what} has no key {key!r}.{suggest(key, known)} "
            f"Known keys: {', '.join(known)}. Fix the YAML or the override.")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``list[M]``, ``M | None``, ``dict[str, M]``, or ``M``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


class Section(BaseModel):
    """A section of a job's configuration: unknown keys are refused (with the close one)."""

    model_config = ConfigDict(extra="forbid")


class SplitDataConfig(Section):
    """The data part every staged job shares: how many items, their size, the seed of
    generation and of the stratified split, and the train / val / test fractions."""

    #: built-in data: how many items to generate; files: a seeded subset (None: all)
    n: int | None = None
    image_size: int = 64
    #: seed of generation and of the stratified train / val / test split
    seed: int = 0
    fractions: list[float] = Field(default_factory=lambda: [0.6, 0.2, 0.2])
    #: skip files / CSV rows that cannot be used (one warning with the count)
    skip_invalid: bool = False

    @field_validator("fractions")
    @classmethod
    def _three(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(f <= 0 for f in v):
            raise ValueError("expected three positive fractions: train, val, test")
        return v


class HardwareConfig(Section):
    """Where and how a staged job runs: never part of a stage's key, so changing it never
    invalidates finished work."""

    accelerator: str = "cpu"
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = False


def load_job_config(cls: type[M], path: str | Path | None,
                    overrides: Mapping[str, Any] | None, shipped: str) -> M:
    """A job's configuration: the YAML at ``path`` (``None``: the defaults), then the
    ``key.sub=value`` overrides, validated as ``cls``.

    Args:
        cls: the job's pydantic model.
        path: the YAML file.
        overrides: dotted keys and values (``data.csv=/x.csv``).
        shipped: the shipped config names, said when ``path`` does not exist.

    Raises:
        ViscopeError: a missing file, bad YAML, unknown or ill-typed keys.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path, f"Shipped configs: {shipped}.")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return validate(cls, data)
