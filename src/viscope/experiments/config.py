"""Configuration of the train x eval invariance matrix (pydantic + YAML + overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from viscope.errors import ViscopeError, suggest

ALL_FAMILIES = ["brightness", "contrast", "grayscale", "invert", "posterize", "solarize",
                "scale", "perspective", "rotation", "translation"]


class ModelConfig(BaseModel):
    """One architecture of the study."""

    model_config = ConfigDict(extra="forbid")
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    #: per-model training overrides (default: the study's values)
    epochs: int | None = None
    lr: float | None = None

    @property
    def tag(self) -> str:
        """Folder name of this model's matrix."""
        return (self.label or self.name).replace("/", "_").replace(":", "_")


class MatrixConfig(BaseModel):
    """Everything that defines a matrix study; written resolved into the run folder."""

    model_config = ConfigDict(extra="forbid")
    name: str = "matrix"
    models: list[ModelConfig]
    dataset: str = "shapes"
    image_size: int = 32
    n: int | None = None
    train_families: list[str] = Field(default_factory=lambda: [*ALL_FAMILIES, "identity"])
    eval_families: list[str] = Field(default_factory=lambda: list(ALL_FAMILIES))
    seeds: list[int] = Field(default_factory=lambda: [0])
    # training
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    augment_p: float = 1.0
    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = "32-true"
    num_workers: int = 0
    # measurement
    samples: int = 64
    params: int = 8
    layers: str | list[str] | None = None
    measure_batch_size: int = 256
    accuracy_params: int | None = None

    @field_validator("train_families", "eval_families")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from viscope.transforms import list_transforms

        known = list_transforms()
        for name in v:
            if name not in known:
                raise ValueError(f"unknown family {name!r}.{suggest(name, known)} "
                                 f"Known: {', '.join(known)}")
        return v


def _set(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; an integer key indexes a list (``models.0.epochs``)."""
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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> MatrixConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides.

    Raises:
        ViscopeError: missing file, bad YAML, unknown or ill-typed keys.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ViscopeError(f"Config file {p} does not exist. Demo configs live in "
                               f"configs/ (e.g. configs/matrix-demo.yaml).")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ViscopeError(f"Config {p} is not valid YAML: {e}".split("\n")[0]) from None
    for k, v in (overrides or {}).items():
        _set(data, k, v)
    try:
        return MatrixConfig(**data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ViscopeError(_unknown_key_message(first["loc"])) from None
        raise ViscopeError(f"Config error at {where!r}: {first['msg']}. Fix the YAML or the "
                           f"override.") from None


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    """An unknown key at ``loc`` (``("epochz",)`` or ``("models", 0, "epochz")``)."""
    where = ".".join(str(x) for x in loc)
    is_model = len(loc) == 3 and loc[0] == "models"
    known = list((ModelConfig if is_model else MatrixConfig).model_fields)
    key = str(loc[-1])
    what = "a model entry" if is_model else "the config"
    return (f"Config error at {where!r}: {what} has no key {key!r}.{suggest(key, known)} "
            f"Known keys: {', '.join(known)}. Fix the YAML or the override.")
