"""How fast RISE maps converge with the number of masks: the plain estimator (eq. 6 of
Petsiuk et al.) against viscope's default, the mean score as a control variate; and
where CB-RISE stops.

A small timm CNN (``test_resnet``) is trained with ``viscope.train.fit`` on built-in
``shapes`` (32 px); for held-out images, RISE maps are computed from the masks of one
seed at 250 ... 8000 masks and compared (Pearson, per image) with an independent
8000-mask map of the same estimator (another seed). Both estimators read the same masked
scores, so the difference between them is the estimator alone. Then CB-RISE (defaults:
chunk 250, tol 1e-3, fraction 0.9) runs with each estimator and is compared with the
8000-mask reference.

Prints a table and writes the figure to ``docs/rise_convergence.png`` in the repository,
the one the README shows (``--out`` writes it elsewhere).

    python benchmarks/rise_convergence.py             # ~4 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import viscope.explain as E
from viscope import data
from viscope.explain import perturbation as P
from viscope.train import fit

COUNTS = (250, 500, 1000, 2000, 4000, 8000)
ESTIMATORS = ("plain", "centred")
# Found from this file, not the working directory, so a run never litters the repository root.
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "rise_convergence.png"


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of maps (B, H, W)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def maps_at_counts(model, images, target, seed, cells, batch_size):
    """{estimator: {count: maps}} from one stream of masks (the first ``count`` of them)."""
    gen = torch.Generator().manual_seed(seed)
    base = P.perturbation_baseline(images, "black")
    size = tuple(images.shape[-2:])
    which = torch.arange(len(images))
    sums = P._RiseSums(len(images), size, images.device, second=False)
    out = {e: {} for e in ESTIMATORS}
    done = 0
    for count in COUNTS:
        masks = P.rise_masks(count - done, size, cells=cells, generator=gen)
        sums.add(which, P._masked_scores(model, images, base, masks, target, which,
                                         batch_size), masks)
        done = count
        for e in ESTIMATORS:
            out[e][count] = sums.saliency(0.5, e)
    return out


def check_figure_path(out: Path) -> None:
    """Exit with one line now, not after minutes of work, if ``out`` cannot be a figure."""
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        sys.exit(f"--out {out} has no figure suffix matplotlib writes; give a name ending in "
                 f"one of: {', '.join('.' + f for f in sorted(formats))}")
    if out.exists() and out.is_dir():
        sys.exit(f"--out {out} is a folder; give a file name such as {out / FIGURE.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--out", type=Path, default=FIGURE,
                    help="where to write the figure (default: docs/rise_convergence.png)")
    args = ap.parse_args()
    check_figure_path(args.out)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trained = fit("test_resnet", "shapes", out=tmp, epochs=10, n=2000, lr=3e-3,
                      progress=False)
    model = trained.model.eval()
    test = data.create("shapes", split="test", n=2000, seed=0)
    items = [test[i] for i in range(args.images)]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items])
    with torch.no_grad():
        acc = (model(images).argmax(1) == labels).float().mean().item()
    print(f"test_resnet trained in {time.perf_counter() - t0:.0f} s; test accuracy "
          f"{trained.test_acc:.2f} (these {args.images} images: {acc:.2f})")
    target = E.resolve_target(labels, len(images))

    t0 = time.perf_counter()
    runs = maps_at_counts(model, images, target, 1, args.cells, args.batch_size)
    refs = maps_at_counts(model, images, target, 2, args.cells, args.batch_size)
    print(f"RISE maps (2 seeds x {COUNTS[-1]} masks): {time.perf_counter() - t0:.0f} s\n")

    print(f"{'masks':>6} | " + " | ".join(f"{e:>7} median  min" for e in ESTIMATORS))
    curves = {e: [] for e in ESTIMATORS}
    for c in COUNTS:
        cells = []
        for e in ESTIMATORS:
            r = correlation(runs[e][c], refs[e][COUNTS[-1]])
            curves[e].append(r)
            cells.append(f"{r.median():>14.3f} {r.min():.3f}")
        print(f"{c:>6} | " + " | ".join(cells))

    print("\nCB-RISE at its defaults (chunk 250, tol 1e-3), against the 8000-mask reference:")
    stops = {}
    for e in ESTIMATORS:
        maps, used = E.cbrise(model, images, target, max_masks=COUNTS[-1], cells=args.cells,
                              batch_size=args.batch_size, seed=3, estimator=e)
        r = correlation(maps, refs[e][COUNTS[-1]])
        stops[e] = (used.double(), r)
        print(f"  {e:>7}: masks {int(used.min())}-{int(used.max())} (median "
              f"{int(used.median())}), correlation median {r.median():.3f}, min {r.min():.3f}")

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    colours = {"plain": "tab:red", "centred": "tab:blue"}
    names = {"plain": "plain (eq. 6)", "centred": "centred (viscope default)"}
    for e in ESTIMATORS:
        r = torch.stack(curves[e])
        ax.plot(COUNTS, r.median(1).values, "o-", color=colours[e],
                label=f"RISE {names[e]}: median")
        ax.fill_between(COUNTS, r.min(1).values, r.max(1).values, color=colours[e], alpha=0.15,
                        label=f"RISE {names[e]}: min-max over images")
        used, rr = stops[e]
        ax.scatter(used, rr, marker="x", color=colours[e], label=f"CB-RISE {e}: stop (per image)")
    ax.axhline(0.95, color="grey", ls="--", lw=1, label="0.95")
    ax.axvline(COUNTS[-1] / 3, color="grey", ls=":", lw=1, label="1/3 of 8000 masks")
    ax.set_xscale("log")
    ax.set_xticks(COUNTS, [str(c) for c in COUNTS])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("masks per image")
    ax.set_ylabel("Pearson correlation with an independent\n8000-mask map (same estimator)")
    ax.set_title(f"RISE convergence on shapes (test_resnet, {args.images} images, "
                 f"{args.cells}×{args.cells} cells)")
    lowest = min(float(torch.stack(curves[e]).min()) for e in ESTIMATORS)
    lowest = min([lowest] + [float(stops[e][1].min()) for e in ESTIMATORS])
    ax.set_ylim(max(0.0, lowest - 0.03), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
