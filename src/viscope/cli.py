"""The ``viscope`` command: one sub-command per job.

User errors (unknown names, layer patterns that match nothing, missing paths) end with
a one-line message that says how to fix them and exit status 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from viscope.errors import ViscopeError

app = typer.Typer(
    help="Look inside vision models: invariance, explanations, weak labels, training methods.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
list_app = typer.Typer(help="List what viscope knows: transforms, measures, datasets, models, "
                            "layers.", no_args_is_help=True)
app.add_typer(list_app, name="list")


def _parse_kv(items: list[str] | None, what: str = "--model-arg") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ViscopeError(f"Expected {what} KEY=VALUE (e.g. img_size=32); got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


ModelArg = Annotated[
    list[str] | None,
    typer.Option("--model-arg", help="Keyword for the model constructor, KEY=VALUE (repeatable)."),
]
SkipCorrupt = Annotated[bool, typer.Option(help="skip unreadable image files of a folder or "
                                                "CSV dataset (with one warning)")]


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or logged: no wrapping at rich's default 80 columns
        console = Console(width=160, soft_wrap=True)
    return console


def _table(title: str, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(columns):  # the first column holds names to copy: never cut
        t.add_column(c, no_wrap=i == 0, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    _console().print(t)


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
    _table("Transformation families", ["name", "parameter range (units)", "geometric",
                                        "description"], rows)


@list_app.command("measures")
def list_measures() -> None:
    """The invariance measures."""
    from viscope.invariance import MEASURES

    rows = [[n, MEASURES.get(n).primary, MEASURES.get(n).description] for n in MEASURES.names()]
    _table("Invariance measures", ["name", "per-layer value", "description"], rows)


@list_app.command("datasets")
def list_datasets() -> None:
    """The built-in datasets (no download) and how to use your own."""
    from viscope import data

    rows = [[n, "built-in"] for n in data.list_datasets()]
    rows.append(["PATH/", "your folder in ImageFolder layout (root/class/image.png)"])
    rows.append(["PATH.csv", "your CSV with columns path,label[,mask_path]"])
    _table("Datasets", ["name", "what"], rows)


@list_app.command("models")
def list_models() -> None:
    """A few models that work offline with random weights (any timm name works too)."""
    from viscope import models

    _table("Models (any timm name, torchvision:NAME or a checkpoint path also works)",
           ["name"], [[n] for n in models.list_models()])


@list_app.command("layers")
def list_layers(
    model: Annotated[str, typer.Option(help="timm name, torchvision:NAME, fastervit_* or "
                                            "checkpoint path")],
    model_arg: ModelArg = None,
    image_size: Annotated[int, typer.Option(help="input height/width for the dry run")] = 32,
    pattern: Annotated[str | None, typer.Option(help="only layers matching this glob")] = None,
) -> None:
    """The addressable layers of a model with their output shapes (default set marked)."""
    from viscope import models

    net = models.create(model, **_parse_kv(model_arg))
    infos = models.layers(net, input_size=(3, image_size, image_size))
    default = set(models.default_layers(net))
    chosen = set(models.select_layers(net, pattern)) if pattern else None
    rows = [[i.name, i.type, "×".join(map(str, i.output_shape)) if i.output_shape else "—",
             i.calls, "✓" if i.name in default else ""]
            for i in infos if chosen is None or i.name in chosen]
    _table(f"Layers of {model} at {image_size}×{image_size} (✓ = default set)",
           ["layer", "type", "output shape (per sample)", "calls", "default"], rows)


@app.command()
def invariance(
    model: Annotated[str, typer.Option(help="timm name, torchvision:NAME, fastervit_* or "
                                            "checkpoint path")],
    transform: Annotated[str, typer.Option(help="transformation family (see `viscope list "
                                                "transforms`), several comma-separated, or "
                                                "'all' (the 10 that are not identity)")],
    out: Annotated[Path, typer.Option(help="run folder to write (statistics are saved there "
                                           "every minute; re-running an interrupted "
                                           "measurement resumes it)")],
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    samples: Annotated[int, typer.Option(help="number of dataset samples")] = 256,
    params: Annotated[int, typer.Option(help="number of transformation parameter values")] = 16,
    layers: Annotated[str | None, typer.Option(help="glob pattern(s) of layers, comma-"
                                                    "separated; default: the model's set")] = None,
    measure: Annotated[str, typer.Option(help="see `viscope list measures`")] = "nv",
    image_size: Annotated[int, typer.Option(help="image size for built-in datasets")] = 32,
    model_arg: ModelArg = None,
    num_classes: Annotated[int | None, typer.Option(help="classifier outputs")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 256,
    seed: Annotated[int, typer.Option(help="seeds the sample draw and a randomly "
                                           "initialised model's weights")] = 0,
    spatial: Annotated[bool, typer.Option(help="average TV/SV over H×W or tokens first")] = False,
    variance: Annotated[bool, typer.Option(help="means of variances, not of stds")] = False,
    tokens: Annotated[str, typer.Option(help="ViT tokens: all, patch or prefix")] = "all",
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    skip_corrupt: SkipCorrupt = False,
    overwrite: Annotated[bool, typer.Option(help="replace a measurement with other settings "
                                                 "found in --out")] = False,
) -> None:
    """Measure how much each layer changes under one or several transformations; writes a
    run folder (one sub-folder per transformation when there are several)."""
    import torch

    from viscope import data, models
    from viscope.io import atomic_write_json, atomic_write_text, environment

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ViscopeError(f"--device {device} but CUDA is not available here; use --device cpu.")
    families = _families(transform)
    _check_families_suit(measure, families)
    kwargs = _parse_kv(model_arg)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.random.fork_rng(devices=[]):  # random-init weights follow --seed
        torch.manual_seed(seed)
        net = models.create(model, **kwargs)
    ds = data.create(dataset, size=image_size, skip_corrupt=skip_corrupt)
    patterns = [p.strip() for p in layers.split(",")] if layers else None
    config = {
        "command": "invariance", "model": model, "model_args": kwargs, "dataset": dataset,
        "image_size": image_size, "transform": transform, "samples": samples, "params": params,
        "layers": patterns or "default", "measure": measure, "device": device,
        "batch_size": batch_size, "seed": seed, "spatial": spatial, "variance": variance,
        "tokens": tokens,
    }
    options = {"measure": measure, "samples": samples, "params": params, "layers": patterns,
               "batch_size": batch_size, "device": device, "seed": seed, "spatial": spatial,
               "variance": variance, "tokens": tokens, "progress": progress}
    if len(families) == 1:
        result = _measure_folder(net, ds, out, {**config, "transform": families[0]}, options,
                                 overwrite)
        df = result.per_layer()
        cols = [c for c in df.columns if c not in ("units",)]
        _table(f"{result.measure} per layer · {model} · {families[0]}", cols,
               [[f"{v:.4g}" if isinstance(v, float) else v for v in row]
                for row in df[cols].itertuples(index=False)])
        _console().print(f"Average {result.primary} over layers: {result.average():.4f}")
        _console().print(f"Results in {out}/ (per_layer.csv, per_unit.npz, result.json, "
                         f"config.yaml, environment.json, {result.measure}.png)")
        return
    # the run folder: one of other settings, or one single-family measurement, is refused
    # (or replaced with --overwrite); another list of families is fine
    multi = {**config, "transform": families, "per_family_folders": True}
    if _check_folder(out, multi, overwrite, ignore=("transform",)) and overwrite:
        _remove_result(out)
    results = []
    for i, fam in enumerate(families, 1):
        _console().print(f"[{i}/{len(families)}] {fam}")
        results.append(_measure_folder(net, ds, out / fam, {**config, "transform": fam},
                                       options, overwrite))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml",
                      yaml.safe_dump(multi, sort_keys=False))
    atomic_write_json(out / "environment.json", environment())
    primary, name = results[0].primary, results[0].measure
    table = _by_transform(results, families)
    csv = out / f"{primary}_by_transform.csv"
    atomic_write_text(csv, table.to_csv(index=False))
    _save_plot(results, out / f"{name}.png", families, model)
    layers = results[0].layers
    _table(f"{primary} · {model} · {len(layers)} layers", [
        "transformation", "average", f"per layer, {layers[0]} → {layers[-1]}"],
        [[fam, f"{r.average():.3f}", " ".join(f"{v:.2f}" for v in table[fam])]
         for fam, r in zip(families, results, strict=True)])
    _console().print(f"Results in {out}/ ({csv.name}, {name}.png, and one folder per "
                     "transformation)")


def _families(transform: str) -> list[str]:
    """The transformation names of ``--transform`` (``all``: every family but identity)."""
    from viscope.transforms import create, list_transforms

    names = [t.strip() for t in transform.split(",") if t.strip()]
    if names == ["all"]:
        return [t for t in list_transforms() if t != "identity"]
    if not names:
        raise ViscopeError("--transform is empty; name a family (see `viscope list "
                           "transforms`), several comma-separated, or 'all'.")
    for t in names:
        create(t)  # an unknown name fails here, before anything is measured
    return list(dict.fromkeys(names))


#: settings of `viscope invariance` that change how fast, not what is measured
_HARDWARE = ("device", "batch_size")


def _check_folder(out: Path, config: dict, overwrite: bool, ignore: tuple = ()) -> bool:
    """Whether ``out`` holds a measurement's config; one of other settings (hardware and
    ``ignore`` aside) is refused unless ``overwrite``."""
    from viscope.train.run import config_diff

    cfg_file = out / "config.yaml"
    if not cfg_file.is_file():
        return False
    skip = (*_HARDWARE, *ignore)
    stored = yaml.safe_load(cfg_file.read_text()) or {}
    diff = config_diff({k: v for k, v in stored.items() if k not in skip},
                       {k: v for k, v in config.items() if k not in skip})
    if diff and not overwrite:
        raise ViscopeError(
            f"Expected {out} to hold a measurement with the same settings; it holds one "
            f"that differs in: {'; '.join(diff[:6])}. Use another --out, or pass "
            "--overwrite to replace it."
        )
    return True


def _remove_result(out: Path) -> None:
    for name in ("result.json", "per_unit.npz", "per_layer.csv", "resume.pt"):
        (out / name).unlink(missing_ok=True)


def _check_families_suit(measure: str, families: list[str]) -> None:
    """A measure that maps activations back (nv_se) takes geometric families only: say so
    before the first family is measured, not after."""
    from viscope.invariance import MEASURES
    from viscope.transforms import create

    if not MEASURES.get(measure).equivariant or len(families) < 2:
        return  # one family: measure() says it itself
    other = [f for f in families if not create(f).geometric]
    if other:
        geometric = [f for f in families if f not in other] or ["rotation"]
        raise ViscopeError(
            f"Measure {measure!r} maps activations back with the inverse transformation, so "
            f"it takes geometric families only; got {', '.join(other)}. Pass e.g. "
            f"--transform {','.join(geometric)}, or --measure nv."
        )


def _measure_folder(net, ds, out: Path, config: dict, options: dict, overwrite: bool):
    """Measure into ``out`` (config, result, plot) with ``measure(**options)``; a finished
    measurement of the same settings there is loaded instead, an interrupted one resumed
    from ``out/resume.pt``; one of other settings is refused unless ``overwrite``."""
    from viscope.invariance import InvarianceResult
    from viscope.invariance import measure as run_measure
    from viscope.io import atomic_write_json, atomic_write_text, environment

    resume = out / "resume.pt"
    if _check_folder(out, config, overwrite):
        if overwrite:  # what was measured before goes
            _remove_result(out)
        elif (out / "result.json").is_file() and not resume.is_file():
            _console().print(f"Already measured with these settings in {out} (pass "
                             "--overwrite to measure again)")
            return InvarianceResult.load(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(out / "environment.json", environment())
    if resume.is_file():
        _console().print(f"Resuming the interrupted measurement saved in {resume}")
    try:
        result = run_measure(net, ds, config["transform"], resume=resume, **options)
    except KeyboardInterrupt as e:
        if str(e):
            print(f"Interrupted: {e}", file=sys.stderr)
        raise
    result.save(out)
    _save_plot([result], out / f"{result.measure}.png")
    return result


def _by_transform(results, families):
    """One row per layer: layer, depth and the primary quantity under each family."""
    table = results[0].per_layer()[["layer", "depth"]].copy()
    for fam, r in zip(families, results, strict=True):
        table[fam] = r.per_layer()[r.primary].to_numpy()
    return table


def _config_path(config: str) -> Path:
    """An existing path, else a config shipped with viscope (``matrix-demo``)."""
    p = Path(config)
    if p.exists():
        return p
    shipped = Path(__file__).parent / "configs" / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.exists():
        return shipped
    names = sorted(x.stem for x in (Path(__file__).parent / "configs").glob("*.yaml"))
    raise ViscopeError(f"Config {config!r} is neither a file nor a shipped config "
                       f"({', '.join(names)}).")


def _run_matrix(config: str, out: Path, overrides: dict[str, Any], progress: bool) -> None:
    from viscope.experiments import load_config, run_matrix

    cfg = load_config(_config_path(config), overrides)
    console = _console()
    console.print(f"[bold]{cfg.name}[/]: {len(cfg.models)} model(s) × "
                  f"{len(cfg.train_families)} training families × {len(cfg.eval_families)} "
                  f"evaluation families → {out}/")
    results = run_matrix(cfg, out, log=console.print, progress=progress)
    for tag, r in results.items():
        console.print(f"\n[bold]{tag}[/]: trained {r.trained}, measured {r.measured} new cells")
        console.print(f"  invariance table: {r.folder / 'invariance.csv'} "
                      f"(heatmap {r.folder / 'invariance.png'})")
        console.print(f"  accuracy table:   {r.folder / 'accuracy.csv'} "
                      f"(heatmap {r.folder / 'accuracy.png'})")
        console.print(f"  summary:          {r.folder / 'summary.md'}")


Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, KEY=VALUE (e.g. epochs=2; repeatable)."),
]


@app.command()
def matrix(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name "
                                             "(matrix-demo, matrix-fastervit)")],
    out: Annotated[Path, typer.Option(help="run folder (re-running resumes it)")] = Path(
        "runs/matrix"),
    dataset_root: Annotated[
        str | None, typer.Option(help="your dataset folder or CSV (replaces the config's "
                                      "dataset)")] = None,
    set_: Overrides = None,
    progress: Annotated[bool, typer.Option(help="show training progress bars")] = False,
) -> None:
    """Train one model per augmentation family and measure each against every family."""
    overrides = _parse_kv(set_, "--set")
    if dataset_root is not None:
        if not Path(dataset_root).exists():
            raise ViscopeError(f"--dataset-root {dataset_root} does not exist; give a folder "
                               f"in ImageFolder layout (root/<class>/<image>) or a CSV file.")
        overrides["dataset"] = dataset_root
    _run_matrix(config, out, overrides, progress)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    set_: Overrides = None,
) -> None:
    """The main job on built-in data: the train × eval invariance matrix of two tiny
    models (11 training families × 10 evaluation families; a few minutes on a laptop CPU).
    Re-running resumes and skips finished cells."""
    _run_matrix("matrix-demo", out, _parse_kv(set_, "--set"), progress=False)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="timm name, torchvision:NAME, fastervit_* or "
                                            "checkpoint path")],
    out: Annotated[Path, typer.Option(help="run folder")],
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    augment: Annotated[str | None, typer.Option(help="augmentation family (default none)")]
    = None,
    epochs: Annotated[int, typer.Option()] = 5,
    batch_size: Annotated[int, typer.Option()] = 64,
    lr: Annotated[float, typer.Option()] = 1e-3,
    image_size: Annotated[int, typer.Option()] = 32,
    n: Annotated[int | None, typer.Option(help="items of a built-in dataset")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu, auto")] = "cpu",
    devices: Annotated[int, typer.Option()] = 1,
    precision: Annotated[str, typer.Option(help="32-true, bf16-mixed, 16-mixed")] = "32-true",
    model_arg: ModelArg = None,
    overwrite: Annotated[bool, typer.Option(help="delete a run of another configuration in "
                                                 "--out and train again")] = False,
    skip_corrupt: SkipCorrupt = False,
) -> None:
    """Train a classifier with an augmentation family; best checkpoint on validation."""
    import torch

    from viscope import data, models
    from viscope.train import fit

    splits = {s: data.create(dataset, split=s, size=image_size, n=n, seed=0,
                             skip_corrupt=skip_corrupt)
              for s in ("train", "val", "test")}
    with torch.random.fork_rng(devices=[]):  # random-init weights follow --seed
        torch.manual_seed(seed)
        net = models.create(model, num_classes=len(splits["train"].classes),
                            **_parse_kv(model_arg))
    res = fit(net, splits, augment=augment, epochs=epochs, batch_size=batch_size, lr=lr,
              seed=seed, out=out, accelerator=accelerator, devices=devices,
              precision=precision, progress=True, overwrite=overwrite)
    _console().print(f"best val accuracy {res.best_val_acc:.3f}, test accuracy "
                     f"{res.test_acc:.3f}; checkpoint {res.checkpoint}")


@app.command()
def explain(
    model: Annotated[str, typer.Option(help="checkpoint path, timm name, torchvision:NAME")],
    out: Annotated[Path, typer.Option(help="run folder")],
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    method: Annotated[str, typer.Option(help="comma-separated (see `viscope list methods`)")]
    = "gradcam",
    samples: Annotated[int, typer.Option(help="images to explain")] = 16,
    layer: Annotated[str, typer.Option(help="layer for CAMs, or auto")] = "auto",
    image_size: Annotated[int, typer.Option()] = 32,
    model_arg: ModelArg = None,
    device: Annotated[str, typer.Option()] = "cpu",
    batch_size: Annotated[int, typer.Option()] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    skip_corrupt: SkipCorrupt = False,
) -> None:
    """Attribution maps with several methods, their metrics, and an overlay figure."""
    from viscope.explain.command import explain_command

    paths = explain_command(model, dataset, [m.strip() for m in method.split(",") if m.strip()],
                            samples, out, layer=layer, image_size=image_size,
                            model_args=_parse_kv(model_arg), device=device,
                            batch_size=batch_size, seed=seed, skip_corrupt=skip_corrupt)
    for k, p in paths.items():
        _console().print(f"{k:12s} {p}")


@list_app.command("methods")
def list_methods() -> None:
    """The attribution methods."""
    from viscope.explain import METHODS

    _table("Attribution methods", ["name", "uses a layer", "about"],
           [[n, "yes" if METHODS.get(n).uses_layer else "no", METHODS.get(n).about]
            for n in METHODS.names()])


def _save_plot(results, path: Path, labels: list[str] | None = None,
               model: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from viscope.invariance import plot_results
    from viscope.io import atomic_write

    ax = plot_results(results, labels=labels, relative=False)
    if model is not None:  # several transformations of one model
        ax.set_title(f"{ax.get_title()}\n{model}, {results[0].meta.get('samples', '?')} "
                     f"samples × {len(results[0].meta.get('params', [])) or '?'} values each")
        ax.legend(title="transformation", fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))  # outside: ten lines leave no free corner
    atomic_write(path, lambda p: ax.figure.savefig(p, dpi=120, format="png"))
    plt.close(ax.figure)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _usage_error(e: BaseException) -> bool:
    """A click usage error (click's own or the copy typer >= 0.20 vendors): it can show
    itself and carries an exit code."""
    return callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit status 2."""
    import warnings

    warnings.formatwarning = _one_line_warning  # no source path and line on the console
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into this return value
            _interrupted()
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except ViscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:
        print(f"error: {e}. Check the path (an --out folder must be a folder you can write).",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as e:  # click usage errors carry their own exit code
        if _usage_error(e):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if type(e).__name__ == "Abort":  # click wraps Ctrl-C in Abort
            if isinstance(e.__cause__, KeyboardInterrupt):
                _interrupted()
            sys.exit(1)
        raise


def _interrupted() -> None:
    """Ctrl-C: exit 130 (a command that saved its work has said where, e.g. invariance)."""
    print("interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
    main()
