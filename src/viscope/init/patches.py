"""Patches of the input a convolution sees, sampled with bounded memory.

A patch is one window the layer multiplies by its filters: for a patch embedding
(kernel = stride) a cell of the token grid, for a stem convolution each window that
its kernel, stride, padding and dilation select. Patches are taken from the layer's
*input* as the model computes it (a forward pre-hook), so a model that normalises its
[0, 1] input itself (:class:`viscope.models.Normalized`) gives normalised patches.

Sampling (:class:`PatchSampler`) is reservoir sampling by random keys: every window seen
gets a uniform key and the ``samples`` windows with the smallest keys are kept, which
is a uniform sample without replacement of all windows seen, reproducible from the
seed. Only the windows that enter the sample are cut out of a batch (by index), so the
memory is one ``samples × D`` buffer plus one batch of images and its keys, whatever the
dataset's size. Written by hand: neither torch nor scikit-learn streams a sample of
unfold windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from viscope.errors import ViscopeError


def padded(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``x`` padded as ``conv`` pads it (its padding, ``"same"``/``"valid"``, padding mode)."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return x
        th, tw = dh * (kh - 1), dw * (kw - 1)  # "same": PyTorch puts the odd pixel after
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = conv.padding
        pads = (pw, pw, ph, ph)
    if not any(pads):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pads, mode=mode)


def grid_shape(x: torch.Tensor, conv: nn.Conv2d) -> tuple[int, int]:
    """The output rows and columns of ``conv`` on the padded input ``x``."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    rows = (x.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    cols = (x.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    return rows, cols


def all_windows(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Every window ``conv`` sees in ``x`` (B, C, H, W), as rows (B·L, C·kh·kw).

    Rows are ordered by image, then output row, then column; each row is flattened as
    ``conv.weight[o]`` is, so ``all_windows(x, conv) @ conv.weight.flatten(1).T`` is the
    convolution without bias.
    """
    cols = F.unfold(padded(x, conv), conv.kernel_size, dilation=conv.dilation,
                    stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def windows_at(xp: torch.Tensor, conv: nn.Conv2d, index: torch.Tensor) -> torch.Tensor:
    """The windows numbered ``index`` (as in :func:`all_windows`) of the padded ``xp``.

    Cuts out only those windows (advanced indexing), not all of them.
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    rows, cols = grid_shape(xp, conv)
    index = index.to(xp.device)
    image, cell = index // (rows * cols), index % (rows * cols)
    top = (cell // cols) * sh
    left = (cell % cols) * sw
    ys = top[:, None] + torch.arange(kh, device=xp.device) * dh  # (n, kh)
    xs = left[:, None] + torch.arange(kw, device=xp.device) * dw  # (n, kw)
    chans = torch.arange(xp.shape[1], device=xp.device)
    out = xp[image[:, None, None, None], chans[None, :, None, None],
             ys[:, None, :, None], xs[:, None, None, :]]
    return out.reshape(len(index), -1)


class PatchSampler:
    """A uniform sample of at most ``samples`` windows from a stream of batches.

    Attributes:
        patches: the sample so far, float32 (n, D) on the CPU, n <= samples.
        seen: windows offered so far.
        peak_bytes: the most bytes the sampler held at once (buffer, keys, and one
            batch's keys and selected windows), counted, not measured.
    """

    def __init__(self, conv: nn.Conv2d, samples: int, generator: torch.Generator) -> None:
        self.conv = conv
        self.samples = samples
        self.generator = generator
        dim = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        self._buffer = torch.empty(samples, dim, dtype=torch.float32)
        self._keys = torch.empty(0, dtype=torch.float64)
        self.seen = 0
        self.peak_bytes = 0

    @property
    def patches(self) -> torch.Tensor:
        return self._buffer[: len(self._keys)]

    def add(self, x: torch.Tensor) -> None:
        """Offer every window of the layer input ``x`` (B, C, H, W)."""
        xp = padded(x, self.conv)
        rows, cols = grid_shape(xp, self.conv)
        count = x.shape[0] * rows * cols
        keys = torch.rand(count, generator=self.generator, dtype=torch.float64)
        held = len(self._keys)
        merged = torch.cat([self._keys, keys])
        if len(merged) > self.samples:
            keep = torch.topk(merged, self.samples, largest=False, sorted=False).indices
        else:
            keep = torch.arange(len(merged))
        old_kept = torch.zeros(held, dtype=torch.bool)
        old_kept[keep[keep < held]] = True
        new = keep[keep >= held] - held
        # new windows fill the slots of evicted ones (never more of those than new
        # windows: the sample stays full), then unused slots
        evicted = torch.nonzero(~old_kept).flatten()
        slots = torch.cat([evicted, torch.arange(held, self.samples)])[: len(new)]
        if len(new):
            self._buffer[slots] = windows_at(xp, self.conv, new).to("cpu", torch.float32)
        keys_out = torch.empty(held + len(new) - len(evicted), dtype=torch.float64)
        keys_out[:held] = self._keys
        keys_out[slots] = keys[new]
        self._keys = keys_out
        self.seen += count
        batch_bytes = merged.nbytes + keys.nbytes + len(new) * self._buffer.shape[1] * 4
        self.peak_bytes = max(self.peak_bytes, self._buffer.nbytes + batch_bytes)


def _images(items: Sequence[Any]) -> torch.Tensor:
    """Collate only the images of ``(image, label, ...)`` items."""
    return torch.stack([it[0] if isinstance(it, tuple | list) else it for it in items])


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the pre-hook to stop the forward once the layer's input is known."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def layer_input(model: nn.Module, conv: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """The input ``conv`` receives when ``model`` runs on ``images``; the forward stops
    there (nothing after the layer is computed). The hook lives for this call only.

    Raises:
        ViscopeError: the forward never reached the layer.
    """

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        raise _Reached(args[0])

    handle = conv.register_forward_pre_hook(hook)
    try:
        model(images)
    except _Reached as reached:
        return reached.value.detach()
    finally:
        handle.remove()
    raise ViscopeError(
        "Expected the model's forward to run the chosen layer; it did not. Pass layer= "
        "naming a convolution that the forward uses."
    )


def sample_patches(
    model: nn.Module,
    conv: nn.Conv2d,
    dataset: Dataset,
    *,
    samples: int,
    seed: int = 0,
    batch_size: int = 256,
    images: int | None = None,
    workers: int = 0,
) -> tuple[torch.Tensor, dict[str, int]]:
    """A uniform sample of the windows ``conv`` sees, over a random subset of images.

    Args:
        model: the model (its forward computes the layer's input, normalisation included).
        conv: the layer.
        dataset: items ``(image, label, ...)``, images float (C, H, W) in [0, 1].
        samples: the most windows kept.
        seed: seeds the choice of images and of windows.
        batch_size: images per forward.
        images: how many images to read (``None``: ``min(len(dataset), samples)``, so
            the time is bounded by ``samples`` too, and each image gives about one patch).
        workers: DataLoader workers.

    Returns:
        ``(patches float32 (n, D) on the CPU, counts)`` with counts ``images``, ``windows``
        (seen), ``patches`` (kept) and ``peak_bytes``.
    """
    generator = torch.Generator().manual_seed(seed)
    size = len(dataset)  # type: ignore[arg-type]
    if size < 1:
        raise ViscopeError("Expected a dataset with at least one image; got an empty one.")
    count = min(size, samples if images is None else images)
    chosen = torch.randperm(size, generator=generator)[:count].sort().values.tolist()
    loader = DataLoader(Subset(dataset, chosen), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_images)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    sampler = PatchSampler(conv, samples, generator)
    with torch.no_grad():
        for batch in loader:
            sampler.add(layer_input(model, conv, batch.to(device, dtype)))
    counts = {"images": count, "windows": sampler.seen, "patches": len(sampler.patches),
              "peak_bytes": sampler.peak_bytes}
    return sampler.patches.clone(), counts
