"""What the jobs' command modules share: option types, KEY=VALUE parsing, console output.

Each job owns its command in its own ``command.py`` (``invariance/command.py``,
``train/command.py``, ...); :mod:`viscope.cli` only assembles them. This module must stay
light to import (no torch at module level): ``viscope --help`` imports every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from viscope.errors import ViscopeError


def parse_kv(items: list[str] | None, what: str = "--model-arg") -> dict[str, Any]:
    """``["a=1", "b=x"]`` as ``{"a": 1, "b": "x"}`` (values read as YAML scalars).

    Example:
        >>> parse_kv(["img_size=32", "global_pool=avg", "drop=0.1"])
        {'img_size': 32, 'global_pool': 'avg', 'drop': 0.1}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ViscopeError(f"Expected {what} KEY=VALUE (e.g. img_size=32); got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def model_kwargs(model_arg: list[str] | None, pretrained: bool = False,
                 **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``viscope.models.create`` from ``--model-arg``, ``--pretrained``
    and other options (``None`` values left out).

    Example:
        >>> model_kwargs(["img_size=32"], pretrained=True, num_classes=None)
        {'img_size': 32, 'pretrained': True}
    """
    kwargs = parse_kv(model_arg)
    if pretrained:
        kwargs["pretrained"] = True
    kwargs.update({k: v for k, v in extra.items() if v is not None})
    return kwargs


ModelName = Annotated[str, typer.Option(help="timm name, torchvision:NAME, fastervit_* or "
                                             "checkpoint path")]
ModelArg = Annotated[
    list[str] | None,
    typer.Option("--model-arg", help="Keyword for the model constructor, KEY=VALUE (repeatable)."),
]
Pretrained = Annotated[bool, typer.Option(
    "--pretrained", help="load the model's published weights (timm / torchvision; needs them "
                         "cached or the internet), as timm's --pretrained")]
SkipCorrupt = Annotated[bool, typer.Option(help="skip unreadable image files of a folder or "
                                                "CSV dataset (with one warning)")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, KEY=VALUE (e.g. epochs=2; repeatable)."),
]


def console():
    """A rich console; piped or logged output is not wrapped at rich's default 80 columns."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=160, soft_wrap=True)
    return out


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a table; the first column holds names to copy, so it is never cut."""
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(columns):
        t.add_column(c, no_wrap=i == 0, overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console().print(t)


def config_path(config: str) -> Path:
    """An existing path, else a config shipped with viscope (``matrix-demo``)."""
    p = Path(config)
    if p.exists():
        return p
    folder = Path(__file__).parent / "configs"
    shipped = folder / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.exists():
        return shipped
    names = sorted(x.stem for x in folder.glob("*.yaml"))
    raise ViscopeError(f"Config {config!r} is neither a file nor a shipped config "
                       f"({', '.join(names)}).")


# -- work units shared by many workers (viscope matrix and the studies) ----------------------
Shard = Annotated[str | None, typer.Option(
    help="k/n: run only this worker's share of the units; workers share --out, e.g. "
         "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")]
Balance = Annotated[str, typer.Option(
    help="how --shard divides the units: index (unit i to shard i mod n) or cost (greedy by "
         "estimated cost)")]
LockTimeout = Annotated[float | None, typer.Option(
    help="seconds without heartbeat after which a unit locked by a dead worker is taken over "
         "(default 600)")]
Collect = Annotated[bool, typer.Option(
    "--collect", help="run nothing: write the tables from what is finished in --out and list "
                      "the missing units")]


def check_work_options(out: Path, shard: str | None, balance: str,
                       lock_timeout: float | None, collect: bool) -> tuple[int, int, float]:
    """Refuse bad ``--shard/--balance/--lock-timeout`` and ``--collect`` on no folder in one
    line, before any work; return ``(k, n, lock timeout in seconds)``."""
    from viscope.experiments.units import DEFAULT_LOCK_TIMEOUT, assign, parse_shard

    k, n = parse_shard(shard)
    assign([], n, balance)  # refuses an unknown balance with the units' own message
    if lock_timeout is not None and not lock_timeout > 0:
        raise ViscopeError(f"Expected --lock-timeout > 0 seconds; got {lock_timeout}. It is how "
                           f"long a dead worker's unit stays locked (default "
                           f"{DEFAULT_LOCK_TIMEOUT:.0f}).")
    if collect and not out.is_dir():
        raise ViscopeError(f"Expected --out to be an existing run folder for --collect; got "
                           f"{out}, which does not exist. Give the folder the workers write.")
    return k, n, lock_timeout or DEFAULT_LOCK_TIMEOUT


def work_part(k: int, n: int, collect: bool) -> str:
    """What this worker does, for its first line: `` (shard 3/12)``, collecting, or ``""``."""
    return " (collect: running nothing)" if collect else (f" (shard {k}/{n})" if n > 1 else "")


def work_lines(left: list[str], missing: list[str], listed: Path | None = None,
               what: str = "partial tables") -> list[str]:
    """The lines that say which units other workers hold and which are not finished."""
    lines = []
    if left:
        lines.append(f"left to other workers: {', '.join(left)}")
    if missing:
        where = f"; listed in {listed}" if listed else ""
        lines.append(f"missing {len(missing)} unit(s) ({what}{where}): {', '.join(missing)}")
    return lines


def missing_lines(out: Path, what: str = "partial tables") -> list[str]:
    """The line naming the units not yet finished, from ``out/missing.txt`` (which a study
    writes while it is partial); no lines when every unit is finished."""
    listed = out / "missing.txt"
    missing = listed.read_text().split() if listed.exists() else []
    return work_lines([], missing, listed, what)
