"""``viscope quality``: train FGR-Net and the plain classifier on graded fundus photographs
and validate both with explanation methods."""

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


def quality(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name "
                                             "(quality-demo, quality-eyeq)")] = "quality-demo",
    out: Annotated[Path, typer.Option(help="run folder (re-running skips finished stages)")
                   ] = Path("runs/quality"),
    set_: Overrides = None,
    shard: Shard = None,
    balance: Balance = "index",
    lock_timeout: LockTimeout = None,
    collect: Collect = False,
) -> None:
    """Grade fundus photographs (good / usable / reject) with FGR-Net — a UNet autoencoder
    whose encoder also classifies — and the same encoder without the reconstruction
    branch; compare accuracy, macro-F1 and where their explanation maps fall. Units
    (variant × seed) may be shared by workers with --shard; the report waits for all."""
    from viscope.experiments.quality.config import load_config
    from viscope.experiments.quality.run import run

    k, n, timeout = check_work_options(out, shard, balance, lock_timeout, collect)
    cfg = load_config(config_path(config), parse_kv(set_, "--set"))
    say = console().print
    say(f"[bold]{cfg.name}[/]: {cfg.data.csv or cfg.data.dataset} → {cfg.model.name} "
        f"({', '.join(cfg.variants())}; seeds {cfg.train.seeds}) → {out}/"
        f"{work_part(k, n, collect)}")
    # the units other workers hold are said as they are met (viscope.experiments.units)
    result = run(cfg, out, log=say, shard=shard, balance=balance, lock_timeout=timeout,
                 collect=collect)
    for line in missing_lines(out, what="no report until they are"):
        say(line)
    if result.comparison.empty:
        return
    say(f"\nsummary:      {out / 'summary.md'}")
    say(f"comparison:   {out / 'report' / 'comparison.csv'} (figure "
        f"{out / 'report' / 'comparison.png'})")
    say(f"maps:         {out / 'report'} (class_maps_*.png, clusters_*.png, "
        f"reconstructions.png, confusion.png)")
    from viscope.report.html import write_report  # one page of the whole run folder

    say(f"report:       {write_report([out])}")
    best = result.comparison.set_index("variant")
    for variant in best.index:
        say(f"{variant}: accuracy {best.loc[variant, 'acc_mean']:.3f}, macro-F1 "
            f"{best.loc[variant, 'macro_f1_mean']:.3f} (mean of {best.loc[variant, 'seeds']} "
            "seeds)")
