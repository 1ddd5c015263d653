"""``viscope train``: the command-line options of :func:`viscope.train.fit`.

Settings come from :class:`viscope.train.config.TrainConfig`'s defaults, then the
``--config`` YAML file, then the options given on the command line (an option left at
its default does not override the file), then ``--set KEY=VALUE``. Option names follow
timm's ``train.py`` where it has one (``--opt``, ``--sched``, ``--smoothing``,
``--clip-grad``, ``--warmup-epochs``, ``--min-lr``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from viscope.cli_common import ModelArg, Overrides, Pretrained, SkipCorrupt, console, parse_kv

_Int = Annotated[int, typer.Option()]
_Float = Annotated[float, typer.Option()]


def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="run folder")],
    model: Annotated[str | None, typer.Option(
        help="timm name, torchvision:NAME, fastervit_* or checkpoint path (or 'model:' in "
             "--config)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML file of settings (keys as the options, e.g. lr: 0.01; a run folder's "
             "config.yaml works); options given here override it")] = None,
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    image_size: _Int = 32,
    n: Annotated[int | None, typer.Option(help="items of a built-in dataset")] = None,
    augment: Annotated[str | None, typer.Option(help="augmentation family (default none)")]
    = None,
    augment_p: Annotated[float, typer.Option(help="share of images augmented")] = 1.0,
    epochs: _Int = 5,
    batch_size: _Int = 64,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(
        help="decoupled weight decay (not on biases, norms, tokens)")] = 0.05,
    optimizer: Annotated[str, typer.Option(
        "--opt", "--optimizer", help="timm optimizer: adamw, sgd (Nesterov), momentum, "
                                     "adam, lamb, ...")] = "adamw",
    momentum: Annotated[float, typer.Option(help="momentum of SGD-like optimizers")] = 0.9,
    schedule: Annotated[str, typer.Option(
        "--sched", "--schedule", help="cosine, step or constant (per optimizer step)")]
    = "cosine",
    warmup_epochs: Annotated[float, typer.Option(help="linear warmup, in epochs")] = 0.0,
    warmup_steps: Annotated[int, typer.Option(help="linear warmup, in steps")] = 0,
    warmup_lr: Annotated[float, typer.Option(help="learning rate the warmup starts at")]
    = 0.0,
    min_lr: Annotated[float, typer.Option(help="where the cosine ends")] = 0.0,
    decay_epochs: Annotated[float | None, typer.Option(
        help="epochs between decays of --sched step")] = None,
    decay_rate: Annotated[float, typer.Option(help="factor of --sched step")] = 0.1,
    label_smoothing: Annotated[float, typer.Option(
        "--smoothing", "--label-smoothing", help="label smoothing of the cross-entropy")]
    = 0.0,
    clip_grad: Annotated[float | None, typer.Option(
        help="clip the gradient norm at this value (Lightning's gradient_clip_val)")] = None,
    objective: Annotated[list[str] | None, typer.Option(
        "--objective", help="loss term NAME[:WEIGHT] (repeatable; default ce)")] = None,
    ssl: Annotated[str | None, typer.Option(
        help="auxiliary self-supervised objective beside the classification loss: "
             "contrastive, recon (alias reconstruction)")] = None,
    ssl_weight: Annotated[float, typer.Option(help="weight of the --ssl objective")] = 1.0,
    init: Annotated[str | None, typer.Option(
        help="registered initialiser (pca, zca, kmeans, mimetic, default), or a pre-trained "
             "checkpoint (viscope .pt, timm, "
             "Lightning .ckpt) whose backbone is loaded, the head kept new")] = None,
    linear_probe: Annotated[bool, typer.Option(
        help="train the classifier head alone, the backbone frozen")] = False,
    monitor: Annotated[str | None, typer.Option(
        help="validation value that selects the best epoch (default val_acc)")] = None,
    early_stop_patience: Annotated[int | None, typer.Option(
        "--patience", "--early-stop-patience",
        help="stop when val_loss has not improved for this many epochs")] = None,
    seed: _Int = 0,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu, auto")] = "cpu",
    devices: _Int = 1,
    precision: Annotated[str, typer.Option(help="32-true, bf16-mixed, 16-mixed")] = "32-true",
    num_workers: _Int = 0,
    model_arg: ModelArg = None,
    pretrained: Pretrained = False,
    skip_corrupt: SkipCorrupt = False,
    set_: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="delete a run of another configuration in "
                                                 "--out and train again")] = False,
    track_invariance: Annotated[str | None, typer.Option(
        help="families (rotation,brightness) whose NV per layer is measured on the val split "
             "at epoch 0 and every --track-every epochs: invariance_by_epoch.csv and figures "
             "in --out")] = None,
    track_every: Annotated[int | None, typer.Option(
        help="epochs between --track-invariance measurements (and after the last)")] = None,
) -> None:
    """Train a model (best checkpoint on validation); settings from --config and options."""
    from viscope.train import fit
    from viscope.train.config import load_train_config
    from viscope.train.distributed import is_main

    given = {name: value for name, value in ctx.params.items()
             if name not in _NOT_SETTINGS and _given(ctx, name)}
    # the options are named as the settings, but for these two lists
    overrides: dict[str, Any] = {k: v for k, v in given.items()
                                 if k not in ("model_arg", "objective", "linear_probe")}
    if "linear_probe" in given:
        overrides["freeze"] = "backbone" if linear_probe else None
    overrides.update({f"model_args.{k}": v for k, v in parse_kv(model_arg).items()})
    if "objective" in given:
        overrides["objectives"] = list(objective or [])
    overrides.update(parse_kv(set_, "--set"))
    cfg = load_train_config(config, overrides)
    name, kwargs = cfg.fit_arguments()
    from viscope.train.tracking import InvarianceTracker

    tracking = [] if track_invariance is None else [InvarianceTracker(
        track_invariance, "val", **({} if track_every is None else {"every": track_every}))]
    res = fit(name, kwargs.pop("dataset"), out=out, progress=True, overwrite=overwrite,
              callbacks=tracking, **kwargs)
    score = f"best {res.monitor} {res.best_score:.3f}" if res.best_score is not None else ""
    test = "" if res.test_acc is None else f", test accuracy {res.test_acc:.3f}"
    if is_main():  # under DDP every rank runs this command; one line, from rank 0
        console().print(f"{score}{test}; checkpoint {res.checkpoint}")


#: Options that are not settings of the run.
_NOT_SETTINGS = frozenset({"out", "config", "set_", "overwrite", "track_invariance",
                           "track_every"})


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given (command line or environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
