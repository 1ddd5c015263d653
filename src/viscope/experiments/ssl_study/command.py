"""``viscope ssl-study``: supervised, supervised + reconstruction and SSL-pre-trained
models of the same backbones, scored on accuracy, explanations and invariance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import Overrides, config_path, console, parse_kv


def ssl_study(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name (ssl-demo)")
                      ] = "ssl-demo",
    out: Annotated[Path, typer.Option(help="run folder (re-running skips finished units)")
                   ] = Path("runs/ssl"),
    set_: Overrides = None,
) -> None:
    """Train each backbone supervised, with a reconstruction term, and pre-trained by each
    SSL method then fine-tuned; compare test and linear-probe accuracy, explanation
    quality on the object masks and invariance (NV), with a paired test against
    supervised."""
    from viscope.experiments.ssl_study.config import load_config
    from viscope.experiments.ssl_study.run import run

    cfg = load_config(config_path(config), parse_kv(set_, "--set"))
    say = console().print
    say(f"[bold]{cfg.name}[/]: {', '.join(b.tag for b in cfg.backbones)} × "
        f"{', '.join(cfg.variants)} × seeds {cfg.seeds} on {cfg.data.dataset} → {out}/")
    run(cfg, out, log=say)
    say(f"\ntable:   {out / 'report' / 'table.md'} (csv {out / 'report' / 'table.csv'})")
    say(f"figure:  {out / 'report' / 'ssl_study.png'}")
