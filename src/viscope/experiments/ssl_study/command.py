"""``viscope ssl-study``: supervised, supervised + reconstruction and SSL-pre-trained
models of the same backbones, scored on accuracy, explanations and invariance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import (
    Balance,
    Collect,
    LockTimeout,
    Overrides,
    Shard,
    check_work_options,
    config_path,
    console,
    missing_lines,
    parse_kv,
    work_part,
)


def ssl_study(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name (ssl-demo)")
                      ] = "ssl-demo",
    out: Annotated[Path, typer.Option(help="run folder (re-running skips finished units)")
                   ] = Path("runs/ssl"),
    set_: Overrides = None,
    shard: Shard = None,
    balance: Balance = "index",
    lock_timeout: LockTimeout = None,
    collect: Collect = False,
) -> None:
    """Train each backbone supervised, with a reconstruction term, and pre-trained by each
    SSL method then fine-tuned; compare test and linear-probe accuracy, explanation
    quality on the object masks and invariance (NV), with a paired test against
    supervised. Units (backbone × variant × seed) may be shared by workers with --shard."""
    from viscope.experiments.ssl_study.config import load_config
    from viscope.experiments.ssl_study.run import run

    k, n, timeout = check_work_options(out, shard, balance, lock_timeout, collect)
    cfg = load_config(config_path(config), parse_kv(set_, "--set"))
    say = console().print
    say(f"[bold]{cfg.name}[/]: {', '.join(b.tag for b in cfg.backbones)} × "
        f"{', '.join(cfg.variants)} × seeds {cfg.seeds} on {cfg.data.dataset} → "
        f"{out}/{work_part(k, n, collect)}")
    # the units other workers hold are said as they are met (viscope.experiments.units)
    run(cfg, out, log=say, shard=shard, balance=balance, lock_timeout=timeout,
        collect=collect)
    for line in missing_lines(out):
        say(line)
    if (out / "report" / "table.md").exists():
        say(f"\ntable:   {out / 'report' / 'table.md'} (csv {out / 'report' / 'table.csv'})")
        say(f"figure:  {out / 'report' / 'ssl_study.png'}")
