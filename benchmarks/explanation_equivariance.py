"""Cost per image of ``viscope.evaluate.explanation_invariance`` against a naive loop.

    python benchmarks/explanation_equivariance.py                 # demo sizes, CPU
    python benchmarks/explanation_equivariance.py --device cuda --repeats 5

The matrix demo's setting (``configs/matrix-demo.yaml``): its two models (random weights,
eval mode), ``color-digits`` test images at 32 px, 48 images, 6 parameter values per
family, Grad-CAM at the auto layer, target = the clean image's predicted class. Per
family (``rotation``: geometric, ``brightness``: photometric) and model, the batched
function and the baseline run alternately ``--repeats`` times; printed: the best time
per image (one image with its 6 transformed copies), the ratio baseline / batched, and
the largest difference between the two computations' numbers (they compute the same
quantities; the baseline's TV / SV is plain NumPy over the stored aligned maps).

The baseline is the obvious loop: per image, one explanation of the clean image and one
per transformed copy, each map compared as it comes.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _common import add_host_args, host

from viscope import data, models, transforms
from viscope.evaluate import explanation_invariance
from viscope.explain import attribute, auto_layer
from viscope.invariance.equivariance import VALID_TOLERANCE, valid_positions

MODELS = {  # as configs/matrix-demo.yaml builds them
    "tiny-vit": ("test_vit", {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 96,
                              "num_heads": 3}),
    "tiny-efficientnet": ("test_efficientnet", {}),
}


def naive(model, dataset, indices, family, grid, layer, device) -> dict[str, float]:
    """The same numbers, one image and one transformed copy at a time."""
    corrs, diffs, aligned = [], [], []
    h, w = dataset[0][0].shape[-2:]
    geometric = family.geometric
    valid = valid_positions(family, grid, h, w).numpy() if geometric else np.ones((h, w), bool)
    for i in indices:
        x = dataset[i][0][None].to(device)
        with torch.no_grad():
            cls = int(model(x).argmax())
        clean = attribute(model, x, "gradcam", layer, target=cls).double()
        row = []
        for theta in grid:
            p = theta[None]
            xt = family.apply(x, p.to(device))
            mt = attribute(model, xt, "gradcam", layer, target=cls).double()
            if geometric:
                expected = family.apply(clean[:, None], p)[0, 0]
                inside = family.apply(torch.ones_like(clean[:, None]), p)[0, 0] >= \
                    1 - VALID_TOLERANCE
                back = family.inverse(mt[:, None], p)[0, 0]
            else:
                expected, inside, back = clean[0], torch.ones_like(clean[0], dtype=bool), mt[0]
            a, e = mt[0][inside], expected[inside]
            if a.std() > 0 and e.std() > 0:
                corrs.append(float(torch.corrcoef(torch.stack([a, e]))[0, 1]))
            diffs.append(float((a - e).abs().mean()))
            row.append(back.cpu().numpy())
        aligned.append(row)
    maps = np.asarray(aligned)[..., valid]  # (images, values, valid positions)
    tv, sv = maps.var(axis=1, ddof=1).mean(), maps.var(axis=0, ddof=1).mean()
    return {"correlation": float(np.mean(corrs)), "difference": float(np.mean(diffs)),
            "ratio": tv / sv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--families", default="rotation,brightness")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--params", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=288)  # the demo's measure batch
    add_host_args(parser)
    args = parser.parse_args()
    device = host(args)
    dataset = data.create("color-digits", split="test", size=32, seed=0)
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    indices = indices[:args.samples].tolist()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"load={os.getloadavg()[0]:.1f} | color-digits 32 px, {args.samples} images x "
          f"{args.params} values, gradcam, best of {args.repeats} alternating repeats")
    for label in args.models.split(","):
        name, kw = MODELS[label]
        torch.manual_seed(0)
        model = models.create(name, num_classes=10, **kw).to(device).eval()
        layer = auto_layer(model, (32, 32))
        for fam_name in args.families.split(","):
            family = transforms.create(fam_name)
            grid = family.grid(args.params, dtype=torch.float64)
            ours_t, base_t = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                res = explanation_invariance(
                    model, dataset, family, "gradcam", samples=args.samples, params=grid,
                    layer=layer, batch_size=args.batch_size, device=device, seed=0)[fam_name]
                ours_t.append(time.perf_counter() - start)
                start = time.perf_counter()
                ref = naive(model, dataset, indices, family, grid, layer, device)
                base_t.append(time.perf_counter() - start)
            gap = max(abs(res.scores()[k] - ref[k]) for k in ref)
            ours, base = min(ours_t) / args.samples * 1e3, min(base_t) / args.samples * 1e3
            print(f"{label:18s} {fam_name:11s} batched {ours:7.1f} ms/image   naive loop "
                  f"{base:7.1f} ms/image   ratio {base / ours:5.1f}x   max |diff| {gap:.1e}   "
                  f"(corr {res.correlation:.3f}, diff {res.difference:.3f}, ratio {res.ratio:.3f})")
    print(f"load at end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
