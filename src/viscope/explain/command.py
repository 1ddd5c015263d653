"""``viscope explain``: the command-line options of
:func:`viscope.explain.run.explain_command`, which writes the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import ModelArg, Pretrained, SkipCorrupt, console, model_kwargs


def explain(
    model: Annotated[str, typer.Option(help="checkpoint path, timm name, torchvision:NAME")],
    out: Annotated[Path, typer.Option(help="run folder")],
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    method: Annotated[str, typer.Option(help="comma-separated (see `viscope list methods`)")]
    = "gradcam",
    samples: Annotated[int | None, typer.Option(
        help="images to explain", show_default="16, or the whole split if it has fewer")]
    = None,
    split: Annotated[str | None, typer.Option(
        help="train, val, test or all",
        show_default="test for a built-in dataset, all for a folder or CSV")] = None,
    target: Annotated[str, typer.Option(
        help="the class explained: true (the label), predicted, or a class index N")]
    = "true",
    layer: Annotated[str, typer.Option(help="layer for CAMs, or auto")] = "auto",
    image_size: Annotated[int, typer.Option()] = 32,
    model_arg: ModelArg = None,
    pretrained: Pretrained = False,
    device: Annotated[str, typer.Option()] = "cpu",
    batch_size: Annotated[int, typer.Option()] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    skip_corrupt: SkipCorrupt = False,
) -> None:
    """Attribution maps with several methods, their metrics, and an overlay figure."""
    from viscope.explain.run import explain_command

    paths = explain_command(model, dataset, [m.strip() for m in method.split(",") if m.strip()],
                            samples, out, layer=layer, image_size=image_size,
                            model_args=model_kwargs(model_arg, pretrained), device=device,
                            batch_size=batch_size, seed=seed, split=split,
                            skip_corrupt=skip_corrupt, target=target)
    for k, p in paths.items():
        console().print(f"{k:12s} {p}")
