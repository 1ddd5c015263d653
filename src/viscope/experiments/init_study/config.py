"""Configuration of ``viscope init-study`` (pydantic + YAML + ``--set`` overrides).

>>> cfg = load_config(overrides={"seeds": [0]})
>>> [m.tag for m in cfg.methods]
['default', 'pca', 'zca', 'kmeans', 'mimetic']
>>> [c.tag for c in cfg.grid()]
['frac0.5', 'frac1']
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from viscope.yamlconfig import Distinct, HardwareConfig, Section, SplitDataConfig, load_job_config

#: the method every other one is compared with (paired by seed)
BASELINE = "default"


class DataConfig(SplitDataConfig):
    """A built-in dataset name, an image folder or a CSV file, split train / val / test
    (stratified, seeded by ``seed``)."""

    dataset: str = "digits"
    image_size: int = 32


class ModelConfig(Section):
    """The model every method initialises (``viscope.models.create`` name and arguments)."""

    name: str = "test_vit"
    args: dict[str, Any] = Field(default_factory=lambda: {
        "img_size": 32, "patch_size": 8, "depth": 3, "global_pool": "avg"})


class MethodConfig(Section):
    """One initialiser: a name registered in ``INITIALISERS`` and its options
    (passed to ``viscope.init.make``)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    #: the name in folders and tables (default: ``name``); needed when one method appears
    #: twice with different options
    label: str | None = None

    @property
    def tag(self) -> str:
        """The name used in folders and tables."""
        return self.label or self.name


class TrainConfig(Section):
    """Training of every run (``viscope.train.fit``)."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)


class InitConfig(Section):
    """Settings every data-driven initialiser shares."""

    #: image patches sampled from the training subset for PCA / ZCA / K-Means
    samples: int = Field(20000, ge=1)


class Condition(Section):
    """One cell of the grid of conditions (``None``: the model's / training's own value)."""

    train_fraction: float = 1.0
    patch_size: int | None = None
    lr: float | None = None

    @property
    def tag(self) -> str:
        """Folder and table name, e.g. ``frac0.2-patch4-lr0.001``."""
        out = f"frac{self.train_fraction:g}"
        if self.patch_size is not None:
            out += f"-patch{self.patch_size}"
        if self.lr is not None:
            out += f"-lr{self.lr:g}"
        return out


class ConditionsConfig(Section):
    """The grid of conditions; the study runs their product (each list non-empty)."""

    #: fraction of the train split used for training (stratified, seeded by data.seed; the
    #: same subset for every method and seed, so runs differ only in their init)
    train_fraction: Distinct[float] = Field(default_factory=lambda: [1.0])
    #: ViT patch size passed to the model's ``patch_size`` (None: model.args); refused for
    #: models without a patch embedding
    patch_size: Distinct[int | None] = Field(default_factory=lambda: [None])
    #: peak learning rate (None: train.lr)
    lr: Distinct[float | None] = Field(default_factory=lambda: [None])

    @field_validator("train_fraction")
    @classmethod
    def _fraction(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError(f"expected fractions in (0, 1]; got {v}")
        return v


class RunConfig(HardwareConfig):
    """Hardware: never invalidates a finished stage."""


class InitStudyConfig(Section):
    """Everything that defines an init study; written resolved into the run folder. The
    defaults are those of ``configs/init-demo.yaml``."""

    name: str = "init-study"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    methods: list[MethodConfig] = Field(default_factory=lambda: [
        MethodConfig(name=m) for m in ("default", "pca", "zca", "kmeans", "mimetic")])
    seeds: Distinct[int] = Field(default_factory=lambda: [0, 1, 2])
    train: TrainConfig = Field(default_factory=TrainConfig)
    #: validation accuracy whose first epoch is counted (in (0, 1])
    target: float = 0.5
    init: InitConfig = Field(default_factory=InitConfig)
    conditions: ConditionsConfig = Field(
        default_factory=lambda: ConditionsConfig(train_fraction=[0.5, 1.0]))
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("methods", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        """A method may be written as its name alone."""
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, v: list[MethodConfig]) -> list[MethodConfig]:
        tags = [m.tag for m in v]
        if not v or len(set(tags)) != len(tags):
            raise ValueError("expected at least one method, each once (give a `label` to "
                             "tell one method with two option sets apart)")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"expected a target validation accuracy in (0, 1]; got {v}")
        return v

    def grid(self) -> list[Condition]:
        """The conditions, in the order of the product of the lists."""
        c = self.conditions
        return [Condition(train_fraction=f, patch_size=p, lr=lr)
                for f, p, lr in itertools.product(c.train_fraction, c.patch_size, c.lr)]


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> InitStudyConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (``train.epochs=2``).

    Raises:
        ViscopeError: a missing file, bad YAML, unknown or ill-typed keys, an empty grid,
            a target outside (0, 1].
    """
    return load_job_config(InitStudyConfig, path, overrides, "init-demo, init-imagenette")
