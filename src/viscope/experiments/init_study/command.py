"""``viscope init-study``: the same model trained from each initialisation method over
seeds and a grid of conditions; epochs and seconds to a target accuracy."""

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


def init_study(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name "
                                             "(init-demo, init-imagenette)")] = "init-demo",
    out: Annotated[Path, typer.Option(help="run folder (re-running skips finished runs)")
                   ] = Path("runs/init"),
    set_: Overrides = None,
    shard: Shard = None,
    balance: Balance = "index",
    lock_timeout: LockTimeout = None,
    collect: Collect = False,
) -> None:
    """Train one model from each initialisation (default, PCA, ZCA, K-Means filters from
    image patches; mimetic attention) over seeds and a grid of conditions (training
    fraction, patch size, learning rate); report epochs and wall seconds to the target
    validation accuracy, final accuracy, a paired t-test against the default init, the
    learning curves and the initial and learned first-layer filters. Units (condition ×
    method × seed) may be shared by workers with --shard."""
    from viscope.experiments.init_study.config import load_config
    from viscope.experiments.init_study.run import run

    k, n, timeout = check_work_options(out, shard, balance, lock_timeout, collect)
    cfg = load_config(config_path(config), parse_kv(set_, "--set"))
    say = console().print
    say(f"[bold]{cfg.name}[/]: {cfg.model.name} × {', '.join(m.tag for m in cfg.methods)} × "
        f"seeds {cfg.seeds} × {', '.join(c.tag for c in cfg.grid())} on {cfg.data.dataset} "
        f"→ {out}/{work_part(k, n, collect)}")
    # the units other workers hold are said as they are met (viscope.experiments.units)
    run(cfg, out, log=say, shard=shard, balance=balance, lock_timeout=timeout,
        collect=collect)
    for line in missing_lines(out):
        say(line)
    if not (out / "report" / "table.md").exists():
        return
    say(f"\ntable:   {out / 'report' / 'table.md'} (csv {out / 'report' / 'table.csv'})")
    say(f"figures: {out / 'report' / 'curves.png'}, {out / 'report' / 'filters.png'}")
    from viscope.report.html import write_report  # one page of the whole run folder

    say(f"report:  {write_report([out])}")
