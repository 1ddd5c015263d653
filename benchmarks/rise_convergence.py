"""How fast RISE maps converge with the number of masks, and where CB-RISE stops, at
viscope's defaults (8×8 cells, centred estimator; CB-RISE chunk 250, tol 0.25).

A small timm CNN (``test_resnet``) is trained with ``viscope.train.fit`` on built-in
``shapes`` (32 px). For held-out images and two targets -- the predicted class and the
least likely class -- RISE maps are computed from the masks of one seed at 250 ... 8000
masks and compared (Pearson, per image) with an independent 8000-mask map (another
seed). Both estimators (the plain eq. 6 of Petsiuk et al. and viscope's default, the mean
score as a control variate) read the same masked scores, so the difference between them
is the estimator alone. Then CB-RISE runs at its defaults (a third seed).

What to expect (see :func:`viscope.explain.cbrise`): if two RISE-8000 maps agree at
``r8``, a map stopped at relative standard error ``tol`` agrees with one of them at about
``sqrt((1 - tol^2) r8)`` after about ``8000 (1 - r8) / tol^2`` masks; so r >= 0.95 within a
third of the masks (2667) is within reach only for images with ``r8 >= 0.975``. The
table shows, per image, ``r8``, its prediction from one run's noise ratio, the masks
CB-RISE used, its correlation with RISE-8000 and that of plain RISE at 2667 masks (what
any stop at a third of the masks would give).

Prints the tables and writes the figure to ``docs/rise_convergence.png`` in the
repository, the one the README shows (``--out`` writes it elsewhere).

    python benchmarks/rise_convergence.py     # 2.5 min on 2 idle CPU cores (17 busy)
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

import torch

import viscope.explain as E
from viscope import data
from viscope.explain import perturbation as P
from viscope.train import fit

COUNTS = (250, 500, 1000, 2000, 2667, 4000, 8000)
THIRD = 2667
ESTIMATORS = ("plain", "centred")
DEFAULTS = {k: v.default for k, v in inspect.signature(P.cbrise).parameters.items()
            if v.default is not inspect.Parameter.empty}
# Found from this file, not the working directory, so a run never litters the repository root.
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "rise_convergence.png"


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of maps (B, H, W)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def maps_at_counts(model, images, target, seed, cells, batch_size):
    """``({estimator: {count: maps}}, noise ratio of the centred map at the last count)``
    from one stream of masks (the first ``count`` of them)."""
    gen = torch.Generator().manual_seed(seed)
    base = P.perturbation_baseline(images, "black")
    size = tuple(images.shape[-2:])
    which = torch.arange(len(images))
    sums = P._RiseSums(len(images), size, images.device, second=True)
    out = {e: {} for e in ESTIMATORS}
    done = 0
    for count in COUNTS:
        masks = P.rise_masks(count - done, size, cells=cells, generator=gen)
        sums.add(which, P._masked_scores(model, images, base, masks, target, which,
                                         batch_size), masks)
        done = count
        for e in ESTIMATORS:
            out[e][count] = sums.saliency(0.5, e)
    return out, sums.noise_ratio(which, 0.5, "centred")


def check_figure_path(out: Path) -> None:
    """Exit with one line now, not after minutes of work, if ``out`` cannot be a figure."""
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        sys.exit(f"--out {out} has no figure suffix matplotlib writes; give a name ending in "
                 f"one of: {', '.join('.' + f for f in sorted(formats))}")
    if out.exists() and out.is_dir():
        sys.exit(f"--out {out} is a folder; give a file name such as {out / FIGURE.name}")


def measure(model, images, classes, cells, batch_size):
    """Curves, per-image agreement of two RISE-8000 runs and the CB-RISE stop, for one
    target (a class per image)."""
    target = E.resolve_target(classes, len(images))
    runs, ratio1 = maps_at_counts(model, images, target, 1, cells, batch_size)
    refs, ratio2 = maps_at_counts(model, images, target, 2, cells, batch_size)
    last = COUNTS[-1]
    curves = {e: torch.stack([correlation(runs[e][c], refs[e][last]) for c in COUNTS])
              for e in ESTIMATORS}
    t0 = time.perf_counter()
    maps, used = E.cbrise(model, images, target, max_masks=last, cells=cells,
                          batch_size=batch_size, seed=3)
    return {
        "curves": curves,
        "pair": correlation(runs["centred"][last], refs["centred"][last]),
        # 1 - ratio^2 predicts the agreement of two maps of 8000 masks (mean of both runs')
        "predicted": 1 - (ratio1.pow(2) + ratio2.pow(2)) / 2,
        "used": used, "r": correlation(maps, refs["centred"][last]),
        "third": curves["centred"][COUNTS.index(THIRD)],
        "seconds": time.perf_counter() - t0,
    }


def report(name: str, res: dict, probs: torch.Tensor, labels, classes) -> None:
    print(f"\n== target: {name} ==")
    print(f"{'masks':>6} | " + " | ".join(f"{e:>7} median  min" for e in ESTIMATORS))
    for i, c in enumerate(COUNTS):
        cells = [f"{res['curves'][e][i].median():>14.3f} {res['curves'][e][i].min():.3f}"
                 for e in ESTIMATORS]
        print(f"{c:>6} | " + " | ".join(cells))
    print(f"\nCB-RISE at its defaults ({res['seconds']:.0f} s), per image; r8: two RISE-8000 "
          f"runs (centred); 1-ratio^2: r8 as predicted from their noise ratio; r: CB-RISE "
          f"with RISE-8000; RISE-{THIRD}: r of RISE with a third of the masks")
    print(f"{'image':>5} {'label':>5} {'class':>5} {'p':>7} {'r8':>6} {'1-ratio^2':>9} "
          f"{'masks':>5} {'r':>6} {'RISE-' + str(THIRD):>9}  target met")
    for i in range(len(labels)):
        met = bool(res["r"][i] >= 0.95 and res["used"][i] <= THIRD)
        mark = "yes" if met else ("no" if res["pair"][i] >= 0.95 else "-")
        print(f"{i:>5} {int(labels[i]):>5} {int(classes[i]):>5} {probs[i]:>7.4f} "
              f"{res['pair'][i]:>6.3f} {res['predicted'][i]:>9.3f} {int(res['used'][i]):>5} "
              f"{res['r'][i]:>6.3f} {res['third'][i]:>9.3f}  {mark}")
    pair, used, r = res["pair"], res["used"], res["r"]
    for floor in (0.95, 0.975):
        sel = pair >= floor
        met = sel & (r >= 0.95) & (used <= THIRD)
        print(f"images with r8 >= {floor}: {int(sel.sum())}; CB-RISE r >= 0.95 on "
              f"{int((sel & (r >= 0.95)).sum())}, <= {THIRD} masks on "
              f"{int((sel & (used <= THIRD)).sum())}, both on {int(met.sum())}; RISE-{THIRD} "
              f"r >= 0.95 on {int((sel & (res['third'] >= 0.95)).sum())}")
    print(f"masks {int(used.min())}-{int(used.max())} (median {int(used.median())}), r "
          f"{r.min():.3f}-{r.max():.3f} (median {r.median():.3f}); |1-ratio^2 - r8| median "
          f"{(res['predicted'] - pair).abs().median():.3f}")


def figure(results: dict, args) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(1.5, 1))
    colours = {"plain": "tab:red", "centred": "tab:blue"}
    names = {"plain": "plain (eq. 6)", "centred": "centred (default)"}
    markers = {"predicted class": "o", "least likely class": "s"}
    styles = {"predicted class": "-", "least likely class": "--"}
    for t, res in results.items():
        for e in ESTIMATORS:
            r = res["curves"][e]
            ax.plot(COUNTS, r.median(1).values, styles[t], marker=markers[t], ms=4,
                    color=colours[e], label=f"RISE {names[e]}, {t}: median")
            if t == "predicted class" and e == "centred":
                ax.fill_between(COUNTS, r.min(1).values, r.max(1).values, color=colours[e],
                                alpha=0.12, label=f"RISE {names[e]}, {t}: min-max")
        ax.scatter(res["used"], res["r"], marker="x" if t == "predicted class" else "+",
                   color="black", s=30, label=f"CB-RISE stop, {t} (per image)")
    ax.axhline(0.95, color="grey", ls="--", lw=1)
    ax.axvline(THIRD, color="grey", ls=":", lw=1, label=f"a third of 8000 masks ({THIRD})")
    ax.set_xscale("log")
    ax.set_xticks(COUNTS, [str(c) for c in COUNTS])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("masks per image")
    ax.set_ylabel("Pearson r with an independent 8000-mask map\n(same estimator)")
    # the plain estimator's worst images (in the printed table) would flatten the rest
    lowest = min(min(float(res["curves"][e].median(1).values.min()) for e in ESTIMATORS)
                 for res in results.values())
    lowest = min([lowest, float(results["predicted class"]["curves"]["centred"].min())])
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("RISE convergence and CB-RISE stops")

    for t, res in results.items():
        met = (res["r"] >= 0.95).numpy()
        for ok, fill in ((True, "tab:green"), (False, "none")):
            sel = met == ok
            bx.scatter(res["pair"][sel], res["used"][sel], marker=markers[t], s=36,
                       facecolors=fill, edgecolors="tab:green" if ok else "tab:red",
                       label=f"{t}: CB-RISE r {'>=' if ok else '<'} 0.95")
    bx.axhline(THIRD, color="grey", ls=":", lw=1, label=f"{THIRD} masks")
    bx.axvline(0.975, color="grey", ls="--", lw=1,
               label="r8 = 0.975: below it, 0.95 within\n2667 masks is out of reach\n"
               "(in expectation)")
    bx.set_xlabel("r8: Pearson r of two independent RISE-8000 maps")
    bx.set_ylabel("masks CB-RISE used")
    bx.set_title("Where the CB-RISE target is within reach")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="center left")
    fig.suptitle(f"shapes, test_resnet, {args.images} held-out images, {args.cells}×{args.cells}"
                 f" cells; CB-RISE tol {DEFAULTS['tol']}, chunk {DEFAULTS['chunk']}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"\nfigure: {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--cells", type=int, default=DEFAULTS["cells"])
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
        probs = model(images).softmax(1)
    print(f"test_resnet trained in {time.perf_counter() - t0:.0f} s; test accuracy "
          f"{trained.test_acc:.2f} (these {args.images} images: "
          f"{(probs.argmax(1) == labels).float().mean():.2f})")

    results = {}
    for name, classes in (("predicted class", probs.argmax(1)),
                          ("least likely class", probs.argmin(1))):
        t0 = time.perf_counter()
        results[name] = measure(model, images, classes, args.cells, args.batch_size)
        report(name, results[name], probs.gather(1, classes[:, None])[:, 0], labels, classes)
        print(f"({name}: {time.perf_counter() - t0:.0f} s in all)")
    figure(results, args)


if __name__ == "__main__":
    main()
