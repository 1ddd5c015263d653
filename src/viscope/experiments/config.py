"""Configuration of the train x eval invariance matrix (pydantic + YAML + overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from viscope.errors import suggest
from viscope.yamlconfig import read_yaml, set_dotted, validate

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
    #: published weights (timm's / torchvision's), as ``--pretrained``
    pretrained: bool = False

    @model_validator(mode="after")
    def _pretrained_in_args(self) -> ModelConfig:
        # models.create takes it with the other arguments; one place to read it from
        if self.pretrained or self.args.get("pretrained"):
            self.pretrained = True
            self.args = {**self.args, "pretrained": True}
        return self

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
    # explanation equivariance (viscope.evaluate.equivariance_cell) of every measured
    # cell: an attribution method ("gradcam"; None: off), its probe images and parameter
    # values (None: ``samples`` / ``params``)
    explain: str | None = None
    explain_samples: int | None = None
    explain_params: int | None = None
    # invariance during training (viscope.train.tracking.InvarianceTracker) of every
    # training: the families tracked (None: off), every k epochs, on a probe of the val split
    track_invariance: list[str] | None = None
    track_every: int = 4
    track_samples: int = 16
    track_params: int = 4

    @field_validator("track_invariance", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        # --track-invariance rotation,brightness and --set track_invariance=rotation
        if isinstance(v, str):
            return [f.strip() for f in v.split(",") if f.strip()] or None
        return v

    @field_validator("explain")
    @classmethod
    def _known_method(cls, v: str | None) -> str | None:
        from viscope.explain.api import METHODS

        if v is not None and v not in METHODS:
            known = list(METHODS)
            raise ValueError(f"unknown attribution method {v!r}.{suggest(v, known)} "
                             f"Known: {', '.join(known)}")
        return v

    @field_validator("train_families", "eval_families", "track_invariance")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        from viscope.transforms import list_transforms

        known = list_transforms()
        for name in v or []:
            if name not in known:
                raise ValueError(f"unknown family {name!r}.{suggest(name, known)} "
                                 f"Known: {', '.join(known)}")
        return v


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> MatrixConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides.

    Raises:
        ViscopeError: missing file, bad YAML, unknown or ill-typed keys.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path, "Demo configs live in configs/ (e.g. configs/matrix-demo.yaml).")
    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    return validate(MatrixConfig, data, {"models": "a model entry"})
