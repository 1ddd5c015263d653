"""Accuracy of a classifier, on clean or transformed images."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from viscope.errors import ViscopeError
from viscope.models.modes import evaluation_mode
from viscope.train.augment import AugmentArg, resolve_family
from viscope.train.data import make_loader


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    transform: AugmentArg = None,
    params: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, optionally on transformed images.

    Args:
        model: takes images (B, C, H, W) in [0, 1] and returns logits.
        dataset: items ``(image, label[, mask])``.
        transform: ``None`` (clean images), a family name or a
            :class:`~viscope.transforms.Family`.
        params: with a transform: ``None`` draws one random parameter per image from the
            family's range (seeded with ``seed``, independent of ``batch_size``); an int
            ``k`` evaluates every image at each of ``family.grid(k)`` and averages.
        batch_size: images per forward pass.
        device: where to run; the model is moved there and back afterwards.
        seed: seed of the random parameters.
        num_workers: data-loader workers.

    Returns:
        Accuracy in [0, 1] (correct / evaluated images).

    Raises:
        ViscopeError: an empty dataset, ``params`` without a transform, or a bad ``params``.

    Example:
        >>> from viscope import data, models
        >>> model = models.create("test_vit", img_size=32, num_classes=5)
        >>> acc = evaluate(model, data.create("shapes", n=20), transform="rotation", params=3)
        >>> 0.0 <= acc <= 1.0
        True
    """
    family = resolve_family(transform)
    if params is not None:
        if family is None:
            raise ViscopeError(
                f"Expected params only together with a transform; got params={params!r} and "
                "transform=None. Pass transform='rotation' (for example) or drop params."
            )
        if isinstance(params, bool) or not isinstance(params, int) or params < 1:
            raise ViscopeError(
                f"Expected params to be None (random values) or a positive int (grid size); "
                f"got {params!r}."
            )
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ViscopeError("Expected a non-empty dataset to evaluate; got 0 items.")
    device = torch.device(device)
    loader = make_loader(dataset, batch_size, num_workers=num_workers)
    values: Tensor | None = None  # one random parameter per image, drawn up front
    if family is not None and params is None:
        values = family.sample(n, torch.Generator().manual_seed(int(seed)))
    grid = family.grid(params) if family is not None and params is not None else None
    # the model's float dtype (bfloat16 after fit(precision="bf16-true"), for instance):
    # images are loaded and transformed in float32, then handed over in that dtype
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    correct = total = 0
    with evaluation_mode(model, device), torch.no_grad():
        start = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            b = len(labels)
            if family is None:
                batches = [images]
            elif values is not None:
                batches = [family.apply(images, values[start : start + b].to(device))]
            else:
                batches = [family.apply(images, g.to(device)) for g in grid]  # type: ignore[union-attr]
            for x in batches:
                x = x if dtype is None else x.to(dtype)
                correct += int((model(x).argmax(dim=1) == labels).sum())
                total += b
            start += b
    return correct / total
