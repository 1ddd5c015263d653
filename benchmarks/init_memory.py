"""Time and peak memory of ``viscope.init.apply`` against the all-patches-in-memory way.

``apply`` samples at most ``samples`` patches (reservoir sampling over the windows it
sees) and fits PCA on the sample. The baseline does what one writes without it: unfold
every window of every image (normalised as the model's wrapper does) into one matrix and
fit scikit-learn's PCA on all of it.
Both see the patches of the same images, as the first layer sees them (normalised).

Each case runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its
own; the memory printed is that peak minus the resident memory after imports and model
construction (so the model, torch and the libraries are not counted).

Cases:
    demo   timm test_vit (img_size 32, patch_size 4) on built-in ``shapes`` (n 3,000: its
           train split, 2,100 images).
    vits   vit_small_patch16_224 (random weights) on a synthetic 224 px dataset made on
           the fly (never held in memory): ``apply`` with the whole dataset (``--images``,
           default 50,000) against the baseline on ``--baseline-images`` of them (its
           memory grows with the images; the line extrapolates it to all of them).

Run:
    python benchmarks/init_memory.py                      # both cases
    python benchmarks/init_memory.py --case vits --images 50000 --samples 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    """``n`` smooth random RGB images of ``size`` px, each made from its index on demand."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        coarse = torch.rand(1, 3, 8, 8, generator=g)
        # bilinear interpolation of values in [0, 1] stays in [0, 1]
        image = torch.nn.functional.interpolate(coarse, size=self.size, mode="bilinear",
                                                align_corners=False)[0]
        return image, 0


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(case: str, images: int) -> tuple[torch.nn.Module, Dataset]:
    from viscope import data, models

    if case == "demo":
        model = models.create("test_vit", img_size=32, patch_size=4, num_classes=5)
        return model, data.create("shapes", split="train", size=32, n=images, seed=0)
    model = models.create("vit_small_patch16_224", num_classes=10)
    return model, SyntheticImages(images, 224)


def _viscope(case: str, images: int, samples: int) -> dict:
    from viscope import init

    model, dataset = _setup(case, images)
    before = _rss_mib()
    start = time.perf_counter()
    report = init.apply(model, dataset, "pca", samples=samples, images=len(dataset),
                        batch_size=64)
    return {"seconds": time.perf_counter() - start, "mib": _rss_mib() - before,
            "patches": report.patches, "images": report.images, "windows": report.windows}


def _baseline(case: str, images: int) -> dict:
    from sklearn.decomposition import PCA

    from viscope.init import first_layer

    model, dataset = _setup(case, images)
    _, conv = first_layer(model)
    caught: list[torch.Tensor] = []
    before = _rss_mib()
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    for x, *_ in loader:
        # the first layer's input: the wrapper's normalisation, then every window unfolded
        x = model.normalize(x)
        cols = torch.nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation,
                                          padding=conv.padding, stride=conv.stride)
        caught.append(cols.transpose(1, 2).reshape(-1, cols.shape[1]))
    patches = torch.cat(caught).numpy()
    caught.clear()
    PCA(n_components=min(conv.out_channels, patches.shape[1])).fit(patches)
    return {"seconds": time.perf_counter() - start, "mib": _rss_mib() - before,
            "patches": int(patches.shape[0]), "images": len(dataset)}


def _child(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    run = _viscope if args.side == "viscope" else _baseline
    print(json.dumps(run(args.case, args.images, args.samples) if args.side == "viscope"
                     else run(args.case, args.images)))


def _size(mib: float) -> str:
    return f"{mib:.0f} MiB" if mib < 1024 else f"{mib / 1024:.1f} GiB"


def _spawn(side: str, case: str, images: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--case", case, "--images", str(images),
           "--samples", str(args.samples), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["demo", "vits", "all"], default="all")
    parser.add_argument("--images", type=int, default=None,
                        help="images apply reads (demo: 3000, vits: 50000)")
    parser.add_argument("--baseline-images", type=int, default=None,
                        help="images the baseline holds (demo: all, vits: 1000)")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", choices=["viscope", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        _child(args)
        return
    cases = ["demo", "vits"] if args.case == "all" else [args.case]
    print(f"PCA of first-layer patches, {args.samples} sampled; torch "
          f"{torch.__version__}, {args.threads} threads")
    for case in cases:
        images = args.images or (3000 if case == "demo" else 50000)
        base_images = args.baseline_images or (images if case == "demo" else 1000)
        mine = _spawn("viscope", case, images, args)
        theirs = _spawn("baseline", case, base_images, args)
        per_image = theirs["mib"] / theirs["images"]
        images = mine["images"]
        print(f"{case}: viscope.init.apply: {mine['images']} images, {mine['windows']} "
              f"windows seen, {mine['patches']} kept: {mine['seconds']:.1f} s, "
              f"+{mine['mib']:.0f} MiB peak")
        print(f"{case}: all patches + sklearn PCA: {theirs['images']} images, "
              f"{theirs['patches']} patches: {theirs['seconds']:.1f} s, "
              f"+{theirs['mib']:.0f} MiB peak (≈ {_size(per_image * images)} for {images} "
              "images)")
        if theirs["images"] == mine["images"]:
            print(f"{case}: time ratio baseline/viscope {theirs['seconds'] / mine['seconds']:.2f}"
                  f"x, memory ratio {theirs['mib'] / max(mine['mib'], 1):.1f}x")


if __name__ == "__main__":
    main()
