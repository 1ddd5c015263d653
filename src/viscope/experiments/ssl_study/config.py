"""Configuration of ``viscope ssl-study`` (pydantic + YAML + ``--set`` overrides).

>>> cfg = load_config(overrides={"seeds": [0]})
>>> cfg.variants, [b.tag for b in cfg.backbones]
(['supervised', 'recon', 'simclr', 'byol'], ['test_vit', 'test_efficientnet'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from viscope.experiments.config import ALL_FAMILIES
from viscope.yamlconfig import Distinct, HardwareConfig, Section, load_job_config

#: variants that are not SSL methods: cross-entropy alone, and with the reconstruction term
PLAIN_VARIANTS = ("supervised", "recon")


class DataConfig(Section):
    """A built-in dataset with object masks (``shapes``): explanations are scored on them."""

    dataset: str = "shapes"
    n: int = 600
    image_size: int = 32
    seed: int = 0
    fractions: list[float] = Field(default_factory=lambda: [0.6, 0.2, 0.2])


class BackboneConfig(Section):
    """One backbone of the study (every variant trains it)."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    #: learning rate of supervised training and fine-tuning (None: train.lr)
    lr: float | None = None

    @property
    def tag(self) -> str:
        """The name used in folders and tables."""
        return self.label or self.name


class PretrainConfig(Section):
    """Self-supervised pre-training of the SSL variants (no labels)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    #: view families (None: each method's defaults)
    families: list[str] | None = None


class TrainConfig(Section):
    """Supervised training (variants supervised and recon) and fine-tuning (SSL ones)."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    #: weight of the reconstruction term of variant ``recon`` (beside CE of weight 1)
    recon_weight: float = 0.5


class EvaluationConfig(Section):
    """What is measured on every trained model (test split)."""

    #: explanation methods scored against the object masks
    methods: list[str] = Field(default_factory=lambda: ["gradcam", "occlusion"])
    #: test images explained (stratified by class)
    images: int = 60
    deletion_steps: int = 10
    #: families whose NV is averaged (over layers, then families): the matrix's
    #: evaluation families
    families: list[str] = Field(default_factory=lambda: list(ALL_FAMILIES))
    samples: int = 32
    params: int = 6


class RunConfig(HardwareConfig):
    """Hardware: never invalidates a finished stage (larger batches: tiny models)."""

    batch_size: int = 128


class SSLStudyConfig(Section):
    """Everything that defines an SSL study; written resolved into the run folder."""

    name: str = "ssl-study"
    data: DataConfig = Field(default_factory=DataConfig)
    backbones: list[BackboneConfig] = Field(default_factory=lambda: [
        BackboneConfig(name="test_vit", args={"img_size": 32, "patch_size": 8}),
        BackboneConfig(name="test_efficientnet")])
    variants: Distinct[str] = Field(default_factory=lambda: ["supervised", "recon", "simclr",
                                                         "byol"])
    seeds: Distinct[int] = Field(default_factory=lambda: [0, 1, 2])
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    run: RunConfig = Field(default_factory=RunConfig)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> SSLStudyConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (``data.n=100``).

    Raises:
        ViscopeError: a missing file, bad YAML, unknown or ill-typed keys.
    """
    return load_job_config(SSLStudyConfig, path, overrides, "ssl-demo")
