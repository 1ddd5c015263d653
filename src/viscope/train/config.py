"""``viscope train --config``: the settings of a training run as a checked YAML file.

Precedence, as in the matrix study and dinov2: the defaults of :class:`TrainConfig`
(packaged), then the YAML file, then the options given on the command line. The keys
are ``fit``'s keyword names, so the ``config.yaml`` that ``fit`` writes into a run folder
is itself a valid config (``viscope train --config runs/a/config.yaml --out runs/b``).

No torch here: the command imports this module only when it runs.

>>> cfg = load_train_config(None, {"model": "test_vit", "model_args.img_size": 32,
...                                "schedule": "step", "decay_epochs": 2})
>>> model, kwargs = cfg.fit_arguments()
>>> model, kwargs["model_kwargs"], kwargs["schedule"], kwargs["decay_epochs"]
('test_vit', {'img_size': 32}, 'step', 2.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from viscope.errors import ViscopeError
from viscope.yamlconfig import read_yaml, set_dotted, validate

#: Other names of auxiliary objectives accepted by ``--ssl``.
SSL_ALIASES = {"reconstruction": "recon"}


class TrainConfig(BaseModel):
    """Every setting of ``viscope train``; see :func:`viscope.train.fit` for each.

    ``model_args`` are :func:`viscope.models.create`'s keyword arguments (``num_classes``
    comes from the dataset); ``clip_grad`` is Lightning's ``gradient_clip_val``;
    ``trainer`` holds other ``lightning.pytorch.Trainer`` arguments. ``data_seed`` is 0 by
    default, so the data's split stays the same whatever ``seed`` is. ``ssl`` /
    ``ssl_weight`` add the auxiliary objective ``"<ssl>:<ssl_weight>"`` to ``objectives``
    (``reconstruction`` is an alias of ``recon``); ``init`` is a registered initialiser
    or a checkpoint path (fine-tuning); ``freeze: backbone`` is a linear probe.
    """

    model_config = ConfigDict(extra="forbid")
    # model
    model: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = False
    # data
    dataset: str = "shapes"
    image_size: int = 32
    n: int | None = None
    data_seed: int | None = 0
    skip_corrupt: bool = False
    augment: str | None = None
    augment_p: float = 1.0
    # optimisation (timm's train.py names in fit's docstring)
    seed: int = 0
    epochs: int = 5
    max_steps: int = -1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    decay_epochs: float | None = None
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    objectives: list[str] = Field(default_factory=lambda: ["ce"])
    ssl: str | None = None
    ssl_weight: float = 1.0
    init: str | None = None
    freeze: str | None = None
    monitor: str | None = None
    early_stop_patience: int | None = None
    # hardware
    precision: str = "32-true"
    accelerator: str = "cpu"
    devices: int | str | list[int] = 1
    num_workers: int = 0
    trainer: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model_args")
    @classmethod
    def _no_num_classes(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "num_classes" in v:
            raise ValueError("num_classes comes from the dataset's classes; leave it out")
        return v

    def fit_arguments(self) -> tuple[str, dict[str, Any]]:
        """``(model, kwargs)`` for ``fit(model, out=..., **kwargs)``.

        Raises:
            ViscopeError: no model was given (in the file or as ``--model``).
        """
        if not self.model:
            raise ViscopeError(
                "Expected a model: give --model NAME (a timm name, torchvision:NAME, "
                "fastervit_* or a checkpoint path) or 'model:' in the --config file."
            )
        kwargs = self.model_dump(exclude={"model", "model_args", "pretrained", "clip_grad",
                                          "trainer", "ssl", "ssl_weight"})
        if self.ssl:
            name = SSL_ALIASES.get(self.ssl, self.ssl)
            if any(o.partition(":")[0].strip() == name for o in kwargs["objectives"]):
                raise ViscopeError(
                    f"Expected --ssl {self.ssl} to add an objective not in objectives; got "
                    f"objectives {kwargs['objectives']}. Give it once (--ssl or --objective)."
                )
            kwargs["objectives"] = [*kwargs["objectives"], f"{name}:{self.ssl_weight:g}"]
        kwargs["model_kwargs"] = {**self.model_args, **({"pretrained": True}
                                                         if self.pretrained else {})}
        trainer = dict(self.trainer)
        if self.clip_grad is not None:
            trainer["gradient_clip_val"] = self.clip_grad
        for key in trainer:
            if key in kwargs or key in ("model", "dataset", "out"):
                raise ViscopeError(
                    f"Expected trainer settings that are not fit's own; got trainer.{key}. "
                    f"Set {key!r} at the top level of the config."
                )
        kwargs.update(trainer)
        if kwargs["data_seed"] is None:
            del kwargs["data_seed"]  # fit's default: the seed
        return self.model, kwargs


def load_train_config(path: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The defaults, then the YAML file at ``path``, then ``key.sub=value`` overrides.

    Raises:
        ViscopeError: a missing file, bad YAML, an unknown key (with the close one) or a
            value of the wrong type.
    """
    data = read_yaml(path, "Write one with the keys of `viscope train --help`, or take "
                           "the config.yaml of a run folder.") if path is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return validate(TrainConfig, data)
