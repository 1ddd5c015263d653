"""``viscope weakseg``: image-level labels → classifier → CAMs → pseudo-masks → UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import Overrides, config_path, console, parse_kv


def weakseg(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name "
                                             "(weakseg-demo, weakseg-shapes, weakseg-mammo)")
                      ] = "weakseg-demo",
    out: Annotated[Path, typer.Option(help="run folder (re-running skips finished stages)")
                   ] = Path("runs/weakseg"),
    set_: Overrides = None,
) -> None:
    """Train a classifier on image-level labels, turn its CAMs into pseudo-masks, train a
    segmentation UNet on them, and validate against the real masks that exist."""
    from viscope.weakseg.config import load_config
    from viscope.weakseg.run import run

    cfg = load_config(config_path(config), parse_kv(set_, "--set"))
    say = console().print
    say(f"[bold]{cfg.name}[/]: {cfg.data.csv or cfg.data.dataset} → {cfg.classifier.model} → "
        f"{cfg.cam.method} → pseudo-masks → {cfg.unet.model} → {out}/")
    result = run(cfg, out, log=say)
    say(f"\nresults:       {out / 'results.csv'} (summary {out / 'summary.md'})")
    say(f"pseudo-masks:  {out / 'pseudo' / 'masks'} (gallery {out / 'pseudo' / 'gallery.png'}, "
        f"threshold sweep {out / 'pseudo' / 'sweep.png'})")
    from viscope.report.html import write_report  # one page of the whole run folder

    say(f"report:        {write_report([out])}")
    if result.density is not None:
        say(f"density:       {out / 'density.csv'} (box plot {out / 'evaluate' / 'density.png'})")
