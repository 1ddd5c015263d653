"""Pseudo-mask maps (Grad-CAM, flip aggregation): viscope's batched ``class_maps`` against a
per-image pytorch-grad-cam loop, same model, layer and target, in the same run.

    python benchmarks/pseudo_masks.py                 # 512 mammo images at 128 px, CPU
    python benchmarks/pseudo_masks.py --n 64 --repeats 1
    python benchmarks/pseudo_masks.py --device cuda

Model: timm ``test_resnet`` with 2 classes, random weights, eval mode; images: the
built-in generated mammograms (``mammo``, classes A and D); target: class 1 (D) for every
image; layer: ``auto_layer`` at the image size (``layer4``, a 4x4 grid, at 128 px).

viscope: one call ``class_maps(model, images, 1, layer=layer, flip=True, batch_size=...)``.
pytorch-grad-cam: for each image, ``GradCAM`` on the image and on its horizontal flip
(batch 1; one ``GradCAM`` object, hooks registered once for the whole loop).

Same footing: pytorch-grad-cam scales each CAM at the layer's resolution (min-max with
1e-7) and then resizes it with OpenCV, where viscope upsamples first (bilinear,
``align_corners=False``) and min-max scales at full resolution; the two orders differ
(by 0.006 here, at layer4's 4x4 grid). So the baseline takes pytorch-grad-cam's raw CAM (its own
``get_cam_image``, ReLU) and scales it as viscope does; the printed difference is between
those (target <= 1e-5), and the difference to pytorch-grad-cam's own scaling
(``scale_cam_image``, then the same flip average) is printed for information.

Times are the minimum over ``--repeats`` interleaved runs after a warm-up. The figure
(examples of both maps and their difference) and the numbers as JSON go to
``docs/pseudo_masks.png`` / ``.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import check_device

from viscope import models
from viscope.explain import auto_layer
from viscope.weakseg import class_maps

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "pseudo_masks.png"
TARGET = 1


def raw_gradcam_class():
    """pytorch-grad-cam's GradCAM returning its raw ReLU'd CAM at the layer's resolution."""
    from pytorch_grad_cam import GradCAM

    class RawGradCAM(GradCAM):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            acts = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
            grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
            cam = self.get_cam_image(input_tensor, self.target_layers[0], targets, acts[0],
                                     grads[0], eigen_smooth)
            return [np.maximum(cam, 0)]

        def aggregate_multi_layers(self, cam_per_target_layer):
            return cam_per_target_layer[0]

    return RawGradCAM


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per map as viscope does it (a range within 16 float eps of the map's
    magnitude is constant: zeros), written out here."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    flat = (hi - lo) <= 16 * torch.finfo(maps.dtype).eps * torch.maximum(hi.abs(), lo.abs())
    return torch.where(flat, 0.0, (maps - lo) / torch.where(flat, 1.0, hi - lo))


def to_input(raw: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A raw CAM (1, h, w) upsampled bilinearly and min-max scaled, as viscope's views."""
    t = torch.from_numpy(raw).float()[:, None]
    return minmax(F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0])[0]


def baseline(model, module, images: torch.Tensor):
    """The per-image pytorch-grad-cam loop; (maps on viscope's footing, raw CAMs)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    size = tuple(images.shape[-2:])
    maps, raws = [], []
    with raw_gradcam_class()(model=model, target_layers=[module]) as cam:
        for image in images:
            pair = []
            for x in (image, image.flip(-1)):
                raw = cam(input_tensor=x[None], targets=[ClassifierOutputTarget(TARGET)])
                raws.append(raw)
                pair.append(to_input(raw, size))
            maps.append(minmax((pair[0] + pair[1].flip(-1))[None] / 2)[0])
    return torch.stack(maps), raws


def own_scaling(raws: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's own scaling of the same raw CAMs (scale, resize), flip-averaged."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    views = [torch.from_numpy(scale_cam_image(r, (size[1], size[0])))[0] for r in raws]
    pairs = [minmax(((a + b.flip(-1)) / 2)[None])[0] for a, b in zip(views[::2], views[1::2],
                                                                       strict=True)]
    return torch.stack(pairs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512, help="images (default 512)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64, help="viscope's batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's). On a machine shared with other "
                        "jobs, 1 avoids OpenMP stalls that hit the small batch-1 calls most")
    p.add_argument("--out", type=Path, default=FIGURE,
                   help="the figure (default docs/pseudo_masks.png); its .json beside it")
    args = p.parse_args()
    device = check_device(args.device)
    if args.n < 1 or args.repeats < 1:
        sys.exit("--n and --repeats must be positive")
    if args.threads is not None:
        if args.threads < 1:
            sys.exit("--threads must be positive")
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from viscope.data.mammo import MammoDataset

    torch.manual_seed(0)
    data = MammoDataset(n=args.n, size=args.image_size, classes=("A", "D"))
    images = torch.stack([data[i][0] for i in range(args.n)]).to(device)
    model = models.create("test_resnet", num_classes=2).to(device).eval()
    hw = (args.image_size, args.image_size)
    layer = auto_layer(model, hw)
    module = models.unwrap(model).get_submodule(layer)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.n} mammo images at {args.image_size} px, test_resnet (2 classes, random "
          f"weights), Grad-CAM at {layer!r}, flip aggregation, class {TARGET}; best of "
          f"{args.repeats} interleaved runs after a warm-up", flush=True)

    def ours():
        return class_maps(model, images, TARGET, layer=layer, flip=True,
                          batch_size=args.batch_size)

    ours()  # warm-up: first calls allocate and pick kernels
    baseline(model, module, images[:2])
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        mine = ours()
        sync(device)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs, raws = baseline(model, module, images)
        sync(device)
        t_theirs.append(time.perf_counter() - t0)
        print(f"  run: viscope {t_ours[-1]:.2f} s, pytorch-grad-cam loop {t_theirs[-1]:.2f} s",
              flush=True)
    a, b = min(t_ours), min(t_theirs)
    diff = float((mine.cpu() - theirs).abs().max())
    own = float((mine.cpu() - own_scaling(raws, hw)).abs().max())
    print(f"viscope class_maps(flip=True): {a:.2f} s | pytorch-grad-cam per image: {b:.2f} s "
          f"| {b / a:.1f}x faster (target >= 5x)")
    print(f"max |difference| of the maps, raw CAMs scaled alike: {diff:.2e} (target <= 1e-5); "
          f"against pytorch-grad-cam's own scaling (normalise, then resize): {own:.3f}")
    numbers = {"n": args.n, "image_size": args.image_size, "device": str(device),
               "threads": torch.get_num_threads(), "layer": layer, "repeats": args.repeats,
               "viscope_s": a, "pytorch_grad_cam_s": b, "ratio": b / a,
               "max_abs_diff": diff, "max_abs_diff_own_scaling": own}
    figure(images.cpu(), mine.cpu(), theirs, numbers, args.out)


def figure(images, mine, theirs, numbers, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(4, len(images))
    fig, axes = plt.subplots(3, k, figsize=(2.3 * k, 7.2), squeeze=False)
    for j in range(k):
        i = j * (len(images) // k)
        axes[0, j].imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[0, j].imshow(mine[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[1, j].imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[1, j].imshow(theirs[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        d = axes[2, j].imshow((mine[i] - theirs[i]).abs(), cmap="magma")
        fig.colorbar(d, ax=axes[2, j], fraction=0.046, format="%.0e")
        axes[0, j].set_title(f"image {i}", fontsize=9)
    for row, name in enumerate(("viscope class_maps", "pytorch-grad-cam loop", "|difference|")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Grad-CAM + flip, {numbers['n']} images at {numbers['image_size']} px "
                 f"({numbers['device']}, {numbers['threads']} threads): viscope "
                 f"{numbers['viscope_s']:.2f} s, "
                 f"per-image loop {numbers['pytorch_grad_cam_s']:.2f} s "
                 f"({numbers['ratio']:.1f}x); max diff {numbers['max_abs_diff']:.1e}",
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=1) + "\n")
    print(f"figure: {out}; numbers: {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
