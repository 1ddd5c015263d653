"""``viscope pretrain``: the command-line options of :func:`viscope.train.ssl.pretrain.pretrain`.

Option names follow ``viscope train`` (``--model``, ``--dataset``, ``--image-size``,
``--n``, ``--epochs``, ``--batch-size``, ``--lr``, ``--seed``, ``--model-arg``,
``--pretrained``, ``--overwrite``); ``--method`` and ``--families`` are pre-training's own,
``--method-arg KEY=VALUE`` passes a method's setting (``temperature=0.2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import ModelArg, Pretrained, console, model_kwargs, parse_kv


def pretrain(
    out: Annotated[Path, typer.Option(help="run folder")],
    model: Annotated[str, typer.Option(
        help="timm name (test_vit, test_efficientnet, ...) or checkpoint path")],
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    method: Annotated[str, typer.Option(help="simclr, byol, dino or mae (ViTs)")] = "simclr",
    families: Annotated[list[str] | None, typer.Option(
        "--families", "--family",
        help="transformation family making the views (repeatable; default scale, translation, "
             "rotation, hue, grayscale, brightness, contrast)")] = None,
    epochs: Annotated[int, typer.Option()] = 20,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option(help="peak learning rate (AdamW, cosine)")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="decoupled weight decay")] = 0.05,
    image_size: Annotated[int, typer.Option()] = 32,
    n: Annotated[int | None, typer.Option(help="items of a built-in dataset")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    probe_split: Annotated[str, typer.Option(
        help="labelled split of the k-NN and linear-probe accuracy")] = "val",
    accelerator: Annotated[str, typer.Option(help="cpu, gpu, auto")] = "cpu",
    precision: Annotated[str, typer.Option(help="32-true, bf16-mixed, 16-mixed")] = "32-true",
    method_arg: Annotated[list[str] | None, typer.Option(
        "--method-arg", help="a setting of the method, KEY=VALUE (repeatable)")] = None,
    model_arg: ModelArg = None,
    pretrained: Pretrained = False,
    overwrite: Annotated[bool, typer.Option(help="delete a run of another configuration in "
                                                 "--out and pre-train again")] = False,
) -> None:
    """Pre-train a backbone without labels (SimCLR, BYOL, DINO, MAE); k-NN and probe each epoch."""
    from viscope.train.ssl.pretrain import pretrain as run

    settings = parse_kv(method_arg, "--method-arg")
    result = run(
        model, dataset, out=out, method=method, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, families=families or None, image_size=image_size, n=n,
        seed=seed, probe_split=probe_split, accelerator=accelerator, precision=precision,
        progress=True, overwrite=overwrite,
        model_kwargs=model_kwargs(model_arg, pretrained) or None, **settings,
    )
    start = result.history.iloc[0]
    console().print(
        f"k-NN accuracy {start['knn_acc']:.3f} -> {result.knn_acc:.3f}, linear probe "
        f"{start['probe_acc']:.3f} -> {result.probe_acc:.3f}"
        f"{' (already finished)' if result.skipped else ''}; backbone {result.backbone}"
    )
