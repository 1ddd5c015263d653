"""``viscope invariance``: the command-line options of :func:`viscope.invariance.measure`,
and the run folder it writes (one sub-folder per family when there are several)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from viscope.cli_common import (
    ModelArg,
    ModelName,
    Pretrained,
    SkipCorrupt,
    console,
    model_kwargs,
    table,
)
from viscope.errors import ViscopeError


def invariance(
    model: ModelName,
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
    pretrained: Pretrained = False,
    num_classes: Annotated[int | None, typer.Option(help="classifier outputs")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 256,
    seed: Annotated[int, typer.Option(help="seeds the sample draw and a randomly "
                                           "initialised model's weights")] = 0,
    spatial: Annotated[bool, typer.Option(help="average TV/SV over H×W or tokens first")] = False,
    variance: Annotated[bool, typer.Option(help="means of variances, not of stds")] = False,
    tokens: Annotated[str, typer.Option(help="ViT tokens: all, patch or prefix")] = "all",
    prefix_tokens: Annotated[int | None, typer.Option(
        help="prefix (class, distillation, register) tokens before the patch tokens, for a "
             "model whose structure does not say (default: read from the model)")] = None,
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
    kwargs = model_kwargs(model_arg, pretrained, num_classes=num_classes)
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
    if prefix_tokens is not None:  # recorded only when given: older run folders still match
        config["prefix_tokens"] = prefix_tokens
    options = {"measure": measure, "samples": samples, "params": params, "layers": patterns,
               "batch_size": batch_size, "device": device, "seed": seed, "spatial": spatial,
               "variance": variance, "tokens": tokens, "prefix_tokens": prefix_tokens,
               "progress": progress}
    if len(families) == 1:
        result = _measure_folder(net, ds, out, {**config, "transform": families[0]}, options,
                                 overwrite)
        df = result.per_layer()
        cols = [c for c in df.columns if c not in ("units",)]
        table(f"{result.measure} per layer · {model} · {families[0]}", cols,
               [[f"{v:.4g}" if isinstance(v, float) else v for v in row]
                for row in df[cols].itertuples(index=False)])
        console().print(f"Average {result.primary} over layers: {result.average():.4f}")
        console().print(f"Results in {out}/ (per_layer.csv, per_unit.npz, result.json, "
                         f"config.yaml, environment.json, {result.measure}.png)")
        return
    # the run folder: one of other settings, or one single-family measurement, is refused
    # (or replaced with --overwrite); another list of families is fine
    multi = {**config, "transform": families, "per_family_folders": True}
    if _check_folder(out, multi, overwrite, ignore=("transform",)) and overwrite:
        _remove_result(out)
    results = []
    for i, fam in enumerate(families, 1):
        console().print(f"[{i}/{len(families)}] {fam}")
        results.append(_measure_folder(net, ds, out / fam, {**config, "transform": fam},
                                       options, overwrite))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml",
                      yaml.safe_dump(multi, sort_keys=False))
    atomic_write_json(out / "environment.json", environment())
    primary, name = results[0].primary, results[0].measure
    by_family = _by_transform(results, families)
    csv = out / f"{primary}_by_transform.csv"
    atomic_write_text(csv, by_family.to_csv(index=False))
    save_plot(results, out / f"{name}.png", families, model)
    layers = results[0].layers
    table(f"{primary} · {model} · {len(layers)} layers", [
        "transformation", "average", f"per layer, {layers[0]} → {layers[-1]}"],
        [[fam, f"{r.average():.3f}", " ".join(f"{v:.2f}" for v in by_family[fam])]
         for fam, r in zip(families, results, strict=True)])
    console().print(f"Results in {out}/ ({csv.name}, {name}.png, and one folder per "
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
            console().print(f"Already measured with these settings in {out} (pass "
                             "--overwrite to measure again)")
            return InvarianceResult.load(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(out / "environment.json", environment())
    if resume.is_file():
        console().print(f"Resuming the interrupted measurement saved in {resume}")
    try:
        result = run_measure(net, ds, config["transform"], resume=resume, **options)
    except KeyboardInterrupt as e:
        if str(e):
            print(f"Interrupted: {e}", file=sys.stderr)
        raise
    result.save(out)
    save_plot([result], out / f"{result.measure}.png")
    return result


def _by_transform(results, families):
    """One row per layer: layer, depth and the primary quantity under each family."""
    table = results[0].per_layer()[["layer", "depth"]].copy()
    for fam, r in zip(families, results, strict=True):
        table[fam] = r.per_layer()[r.primary].to_numpy()
    return table


def save_plot(results, path: Path, labels: list[str] | None = None,
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
