"""``viscope list ...``: what viscope knows (transforms, measures, datasets, models, layers,
attribution methods, objectives, initialisers), one sub-command each."""

from __future__ import annotations

from typing import Annotated

import typer

from viscope.cli_common import ModelArg, ModelName, Pretrained, model_kwargs, table

list_app = typer.Typer(help="List what viscope knows: transforms, measures, datasets, models, "
                            "layers, methods, objectives, initialisers.",
                      no_args_is_help=True)


@list_app.command("transforms")
def list_transforms() -> None:
    """The transformation families with their parameter ranges and units."""
    from viscope import transforms

    rows = []
    for name in transforms.list_transforms():
        f = transforms.create(name)
        rng = ", ".join(f"{p}: {lo:g} → {hi:g}" for p, lo, hi in
                        zip(f.param_names, f.low, f.high, strict=True))
        rows.append([name, rng or "—", "yes" if f.geometric else "no", f.description])
    table("Transformation families", ["name", "parameter range (units)", "geometric",
                                        "description"], rows)


@list_app.command("measures")
def list_measures() -> None:
    """The invariance measures."""
    from viscope.invariance import MEASURES

    rows = [[n, MEASURES.get(n).primary, MEASURES.get(n).description] for n in MEASURES.names()]
    table("Invariance measures", ["name", "per-layer value", "description"], rows)


@list_app.command("datasets")
def list_datasets() -> None:
    """The built-in datasets (no download) and how to use your own."""
    from viscope import data

    rows = [[n, "built-in"] for n in data.list_datasets()]
    rows.append(["PATH/", "your folder in ImageFolder layout (root/class/image.png)"])
    rows.append(["PATH.csv", "your CSV with columns path,label[,mask_path]"])
    table("Datasets", ["name", "what"], rows)


@list_app.command("models")
def list_models() -> None:
    """A few models that work offline with random weights (any timm name works too)."""
    from viscope import models

    table("Models (any timm name, torchvision:NAME or a checkpoint path also works)",
           ["name"], [[n] for n in models.list_models()])


@list_app.command("layers")
def list_layers(
    model: ModelName,
    model_arg: ModelArg = None,
    pretrained: Pretrained = False,
    image_size: Annotated[int, typer.Option(help="input height/width for the dry run")] = 32,
    pattern: Annotated[str | None, typer.Option(help="only layers matching this glob")] = None,
) -> None:
    """The addressable layers of a model with their output shapes (default set marked)."""
    from viscope import models

    net = models.create(model, **model_kwargs(model_arg, pretrained))
    size = (3, image_size, image_size)  # every dry pass at the size shown
    infos = models.layers(net, input_size=size)
    default = set(models.default_layers(net, size))
    chosen = set(models.select_layers(net, pattern, input_size=size)) if pattern else None
    rows = [[i.name, i.type, "×".join(map(str, i.output_shape)) if i.output_shape else "—",
             i.calls, "✓" if i.name in default else ""]
            for i in infos if chosen is None or i.name in chosen]
    table(f"Layers of {model} at {image_size}×{image_size} (✓ = default set)",
           ["layer", "type", "output shape (per sample)", "calls", "default"], rows)


@list_app.command("methods")
def list_methods() -> None:
    """The attribution methods."""
    from viscope.explain import METHODS

    table("Attribution methods", ["name", "uses a layer", "about"],
           [[n, "yes" if METHODS.get(n).uses_layer else "no", METHODS.get(n).about]
            for n in METHODS.names()])


@list_app.command("objectives")
def list_objectives() -> None:
    """The training objectives (`viscope train --objective NAME[:WEIGHT]`)."""
    from viscope.train.objectives import OBJECTIVES

    def about(cls) -> str:  # the docstring's first paragraph
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())

    table("Training objectives (loss terms; --objective NAME:WEIGHT, repeatable)",
          ["name", "about"], [[n, about(OBJECTIVES.get(n))] for n in OBJECTIVES.names()])


@list_app.command("initialisers")
def list_initialisers() -> None:
    """The initialisers (`viscope train --init NAME`, `viscope.init.apply`)."""
    from viscope.init.methods import ABOUT, METHODS

    table("Initialisers (--init NAME)", ["name", "about"], [[n, ABOUT[n]] for n in METHODS])
