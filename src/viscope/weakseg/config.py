"""Configuration of ``viscope weakseg`` (pydantic + YAML + ``--set`` overrides).

One section per stage of the pipeline, so that a changed setting re-runs only its stage
and the ones after it (:mod:`viscope.weakseg.stages`): ``data`` → ``classifier`` →
``cam`` → ``pseudo`` → ``unet`` (pseudo-masks and, as the upper bound, real masks) →
evaluation. Hardware settings (``device``, batch sizes, workers) live apart in ``run``
and never invalidate a finished stage.

>>> cfg = load_config(overrides={"data.dataset": "shapes", "cam.target": "true"})
>>> cfg.data.dataset, cfg.cam.method, cfg.pseudo.threshold
('shapes', 'gradcam', 'sweep')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from viscope.yamlconfig import HardwareConfig, Section, SplitDataConfig, load_job_config


class DataConfig(SplitDataConfig):
    """The images, their image-level classes and (some) real masks."""

    #: a built-in name (``mammo``, ``shapes``) or a folder / CSV; ``csv`` wins when set
    dataset: str | None = "mammo"
    #: a CSV ``path,density[,mask_path]`` (mammograms, DICOM or PNG/JPEG/TIFF)
    csv: str | None = None
    n: int | None = 800


class ClassifierConfig(Section):
    """The classifier trained on image-level labels (mammograms: the extreme classes)."""

    model: str = "resnet10t"
    args: dict[str, Any] = Field(default_factory=dict)
    #: the classes it is trained on (class names of the dataset); ``None``: all
    classes: list[str] | None = Field(default_factory=lambda: ["A", "D"])
    epochs: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    #: training augmentation family (``None``: none)
    augment: str | None = None
    seed: int = 0


class CamConfig(Section):
    """The class-activation maps that become pseudo-masks."""

    #: any ``viscope.explain`` method (``viscope list methods``)
    method: str = "gradcam"
    #: CAM layer (a module name) or ``auto``
    layer: str = "auto"
    #: the class explained: a class name of the classifier (``D``), ``true`` (each image's
    #: own label; needs the classifier to know every class) or ``predicted``
    target: str = "D"
    #: aggregate the maps of the image resized by these factors (1.0: as it is)
    scales: list[float] = Field(default_factory=lambda: [1.0])
    #: also explain the horizontally flipped image and average (flipped back)
    flip: bool = True


class PseudoConfig(Section):
    """From maps to pseudo-masks."""

    #: region of interest: ``otsu`` (the breast / foreground by Otsu on the image),
    #: ``given`` (the dataset's own, e.g. mammo's breast mask) or ``none`` (whole image)
    roi: Literal["otsu", "given", "none"] = "otsu"
    #: ``sweep`` (the fixed threshold with the best mean Dice on the validation images
    #: that have real masks), ``fixed`` (``value``), ``otsu`` or ``percentile`` (``value``)
    threshold: Literal["sweep", "fixed", "otsu", "percentile"] = "sweep"
    value: float | None = None
    #: thresholds tried by ``sweep`` (maps are normalised to [0, 1] per image)
    sweep: list[float] = Field(default_factory=lambda: [round(0.05 * k, 2) for k in range(1, 20)])
    #: ``[low, high]``: pixels between are ignored by the segmentation loss (the band is
    #: around the chosen threshold when given as offsets: see ``band_around``)
    band: list[float] | None = None
    #: give ``band`` as offsets below / above the chosen threshold instead of map values
    band_around: bool = True
    #: ``none`` or ``guided`` (image-guided filter of the map before thresholding, so that
    #: it follows the image's edges: :func:`viscope.weakseg.refine`)
    refine: Literal["none", "guided"] = "none"
    #: the guided filter's window radius (pixels) and regularisation (smaller: follows
    #: the image's edges more closely)
    refine_radius: int = 4
    refine_eps: float = 1e-2
    #: which training images get pseudo-masks: ``all`` classes, or only the classifier's
    pseudo_classes: Literal["all", "classifier"] = "all"

    @model_validator(mode="after")
    def _needs_value(self) -> PseudoConfig:
        if self.threshold in ("fixed", "percentile") and self.value is None:
            raise ValueError(f"threshold {self.threshold!r} needs a value")
        if self.band is not None and len(self.band) != 2:
            raise ValueError("band is [low, high]")
        return self


class UnetConfig(Section):
    """The segmentation UNet (segmentation-models-pytorch, any timm encoder)."""

    model: str = "smp:unet"
    args: dict[str, Any] = Field(default_factory=lambda: {"encoder": "resnet18"})
    epochs: int = 6
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    #: also train on the real masks of the training images (the upper bound)
    supervised: bool = True
    #: probability above which a pixel is dense tissue / foreground
    cutoff: float = 0.5
    seed: int = 0


RunConfig = HardwareConfig  # hardware: never invalidates a finished stage


class WeaksegConfig(Section):
    """Everything that defines a weak-label run; written resolved into the run folder."""

    name: str = "weakseg"
    data: DataConfig = Field(default_factory=DataConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    cam: CamConfig = Field(default_factory=CamConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    unet: UnetConfig = Field(default_factory=UnetConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    #: images in the gallery figure
    gallery: int = 8


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> WeaksegConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (``data.n=100``).

    Raises:
        ViscopeError: a missing file, bad YAML, unknown or ill-typed keys.
    """
    return load_job_config(WeaksegConfig, path, overrides,
                           "weakseg-demo, weakseg-shapes, weakseg-mammo")
