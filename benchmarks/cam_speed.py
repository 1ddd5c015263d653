"""Grad-CAM speed against the forward pass and pytorch-grad-cam; ScoreCAM peak memory.

    python benchmarks/cam_speed.py                     # CPU, 224 px, batch 8, best of 3
    python benchmarks/cam_speed.py --device cuda --repeats 10

Speed: for each model (random weights, eval mode) the best of ``--repeats`` timed runs
after one warm-up of (a) the plain forward pass under ``no_grad``, (b) viscope's
``attribute(..., method="gradcam", layer="auto")`` and (c) pytorch-grad-cam's ``GradCAM``
on the same layer module with ``ClassifierOutputTarget`` (the same target classes).
A gradient CAM needs a forward pass that keeps activations plus a backward pass down to
the layer, so (b) / (a) cannot approach 1.0: the relevant floor is forward + partial
backward.

Memory: ScoreCAM's peak resident memory during the call (RSS sampled every 2 ms in a
fresh subprocess, minus the RSS just before the call) per batch size; ScoreCAM scores
masked images in fixed chunks, so the peak should not grow with the batch.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import threading
import time
import warnings

import torch
from _common import check_device

from viscope import models
from viscope.explain import attribute, auto_layer


def best_time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def speed(name: str, args: argparse.Namespace) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = models.create(name).to(args.device).eval()
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    classes = [i % 1000 for i in range(args.batch_size)]
    layer = auto_layer(model)
    module = models.unwrap(model).get_submodule(layer)

    def forward():
        with torch.no_grad():
            model(x)

    def ours():
        attribute(model, x, method="gradcam", layer=layer, target=classes)

    def theirs():
        # Built per call: pytorch-grad-cam's hooks live as long as the object.
        with GradCAM(model=model, target_layers=[module]) as cam:
            cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])

    t_fwd = best_time(forward, args.repeats, args.device)
    t_ours = best_time(ours, args.repeats, args.device)
    t_theirs = best_time(theirs, args.repeats, args.device)
    print(f"{name:16s} layer {layer!r:12s} forward {t_fwd:7.3f} s | viscope gradcam "
          f"{t_ours:7.3f} s ({t_ours / t_fwd:4.2f}x forward; target <= 1.3x) | pytorch-grad-cam "
          f"{t_theirs:7.3f} s ({t_theirs / t_ours:4.2f}x viscope; target >= 2.5x)", flush=True)


def _peak_child(batch: int, size: int, device: str) -> None:
    """Run in a subprocess: print the ScoreCAM call's peak RSS increase in MiB."""
    warnings.simplefilter("ignore")
    model = models.create("resnet18", num_classes=10).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        model(x)
    # ru_maxrss alone is blind here: the import of torch already set a higher mark. So the
    # current RSS is sampled every 2 ms in a thread during the call.
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    attribute(model, x, method="scorecam", target=0)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    peak[0] = max(peak[0], _rss_mib())
    print(f"{peak[0] - before:.1f} {peak[0]:.1f} {seconds:.1f}")


def _rss_mib() -> float:
    """Current resident memory of this process (Linux ``/proc``), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def scorecam_memory(args: argparse.Namespace) -> None:
    peaks = []
    for batch in args.scorecam_batches:
        out = subprocess.run(
            [sys.executable, __file__, "--_child", str(batch), "--image-size",
             str(args.scorecam_size), "--device", args.device],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        extra, total, seconds = map(float, out)
        peaks.append(extra)
        print(f"ScoreCAM resnet18 {args.scorecam_size} px batch {batch:2d}: peak RSS +{extra:6.1f}"
              f" MiB during the call (process peak {total:.0f} MiB), "
              f"{seconds:.1f} s", flush=True)
    spread = max(peaks) - min(peaks)
    flat = spread <= max(32.0, 0.25 * max(peaks))
    print(f"ScoreCAM peak increase spread {spread:.1f} MiB over batches "
          f"{args.scorecam_batches}: {'flat' if flat else 'GROWS with the batch'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="resnet18,efficientnet_b0")
    p.add_argument("--scorecam-size", type=int, default=64)
    p.add_argument("--scorecam-batches", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--skip-scorecam", action="store_true")
    p.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    check_device(args.device)
    if args._child:
        _peak_child(args._child, args.image_size, args.device)
        return
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, device {args.device}, threads "
          f"{torch.get_num_threads()}, batch {args.batch_size}, {args.image_size} px, best of "
          f"{args.repeats} after a warm-up")
    for name in filter(None, args.models.split(",")):
        speed(name, args)
    if not args.skip_scorecam:
        scorecam_memory(args)


if __name__ == "__main__":
    main()
