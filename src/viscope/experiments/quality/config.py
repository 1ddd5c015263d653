"""Configuration of ``viscope quality`` (pydantic + YAML + ``--set`` overrides).

Sections follow the job's stages (:mod:`viscope.experiments.quality.run`): ``data`` →
``model`` + ``train`` (one training per variant and seed) → ``validation`` (maps, their
metrics and clusters) → the comparison. Hardware settings live in ``run`` and never
invalidate a finished stage.

>>> cfg = load_config(overrides={"train.seeds": [0], "validation.clusters": 3})
>>> cfg.data.dataset, cfg.train.seeds, cfg.validation.clusters, cfg.variants()
('retina-quality', [0], 3, {'plain': 0.0, 'fgrnet': 0.5})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from viscope.yamlconfig import Distinct, HardwareConfig, Section, SplitDataConfig, load_job_config

QUALITY_CLASSES = ["good", "usable", "reject"]


class DataConfig(SplitDataConfig):
    """The photographs and their grades."""

    #: a built-in name (``retina-quality``) or a folder of class sub-folders; ``csv`` wins
    dataset: str | None = "retina-quality"
    #: a CSV ``path,grade`` (EyeQ-style 0/1/2, or class names)
    csv: str | None = None
    #: folder the CSV's relative paths start from (default: the CSV's own folder)
    root: str | None = None
    #: class names in label order
    classes: list[str] = Field(default_factory=lambda: list(QUALITY_CLASSES))
    #: CSV grade -> class name (``{0: good, 1: usable, 2: reject}``); None: integers index
    #: ``classes`` and names map to themselves
    grades: dict[str, str] | None = None
    #: crop files to the circular field of view and pad to square (fundus practice)
    crop: bool = True
    n: int | None = 600

    @field_validator("grades", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        # YAML reads `0: good` with an int key; grades are matched as text
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v


class ModelConfig(Section):
    """The network: FGR-Net (smp UNet + classifier on the encoder), any encoder."""

    name: str = "fgrnet"
    args: dict[str, Any] = Field(default_factory=lambda: {
        "encoder": "tu-test_efficientnet", "encoder_depth": 4,
        "decoder_channels": [32, 16, 8, 8]})


class TrainConfig(Section):
    """Training of every variant: cross-entropy weight, reconstruction weight, seeds."""

    epochs: int = 10
    lr: float = 3e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    #: training augmentation family (``None``: none)
    augment: str | None = None
    #: weight of the cross-entropy term (FGR-Net: (CE + MSE) / 2)
    ce_weight: float = 0.5
    #: weight of the reconstruction MSE in the FGR-Net variant
    recon_weight: float = 0.5
    #: also train the plain classifier (reconstruction weight 0, same encoder), the
    #: comparison the job exists for
    compare: bool = True
    seeds: Distinct[int] = Field(default_factory=lambda: [0, 1, 2])

    @model_validator(mode="after")
    def _weights(self) -> TrainConfig:
        if self.ce_weight <= 0:
            raise ValueError("ce_weight must be > 0 (the grade is what the model predicts)")
        if self.recon_weight < 0:
            raise ValueError("recon_weight must be >= 0")
        return self


class ValidateConfig(Section):
    """The validation of the maps on the test split."""

    #: methods of ``viscope.explain`` whose maps are grouped and drawn (first seed)
    methods: list[str] = Field(default_factory=lambda: ["saliency", "gradcam", "occlusion",
                                                        "cbrise"])
    #: the method of the comparison table (every seed): energy and deletion AUC
    compare_method: str = "gradcam"
    #: CAM layer: a module name or ``auto`` (the deepest encoder stage with a >= 4x4 grid)
    layer: str = "auto"
    #: the class each map explains: ``predicted`` or ``true``
    target: Literal["predicted", "true"] = "predicted"
    #: test images explained (``None``: all), taken stratified by class
    images: int | None = 90
    #: clusters of maps (K-Means and NMF)
    clusters: int = 4
    cluster_methods: list[Literal["kmeans", "nmf"]] = Field(
        default_factory=lambda: ["kmeans", "nmf"])
    #: options per method (``{"occlusion": {"window": 8}}``)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: steps of the deletion curve
    deletion_steps: int = 20
    #: reconstructions drawn next to their inputs
    reconstructions: int = 8

    @model_validator(mode="after")
    def _counts(self) -> ValidateConfig:
        if self.clusters < 1:
            raise ValueError("clusters must be >= 1")
        if self.images is not None and self.images < max(2, self.clusters):
            raise ValueError("images must be >= 2 and >= clusters")
        return self


RunConfig = HardwareConfig  # hardware: never invalidates a finished stage


class QualityConfig(Section):
    """Everything that defines a quality run; written resolved into the run folder."""

    name: str = "quality"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def variants(self) -> dict[str, float]:
        """``{variant: reconstruction weight}``: the plain classifier (when compared) and
        FGR-Net."""
        out = {"plain": 0.0} if self.train.compare else {}
        out["fgrnet"] = self.train.recon_weight
        return out



def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> QualityConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (``data.n=100``).

    Raises:
        ViscopeError: a missing file, bad YAML, unknown or ill-typed keys.
    """
    return load_job_config(QualityConfig, path, overrides, "quality-demo, quality-eyeq")
