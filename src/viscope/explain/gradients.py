"""Gradient attributions through captum (not rewritten): saliency, input × gradient,
integrated gradients and SmoothGrad. Attributions are summed over the colour channels.

captum differentiates with respect to the inputs only (``torch.autograd.grad``), so no
parameter gets a ``.grad``; the images are cloned first so that captum's
``requires_grad_`` never touches the caller's tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from viscope.explain.perturbation import captum_forward
from viscope.explain.targets import Target


def _prepare(model: nn.Module, images: torch.Tensor, target: Target):
    target.fix(model, images)
    fwd, tgt = captum_forward(model, target)  # checks the outputs and the class indices
    return images.detach().clone().requires_grad_(True), fwd, tgt


def saliency(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """|d score / d pixel| (Simonyan et al., 2014), captum ``Saliency``."""
    from captum.attr import Saliency

    x, fwd, tgt = _prepare(model, images, target)
    with torch.enable_grad():
        return Saliency(fwd).attribute(x, target=tgt, abs=True).sum(dim=1).detach()


def input_x_gradient(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """Input × gradient (Shrikumar et al., 2016), captum ``InputXGradient``."""
    from captum.attr import InputXGradient

    x, fwd, tgt = _prepare(model, images, target)
    with torch.enable_grad():
        return InputXGradient(fwd).attribute(x, target=tgt).sum(dim=1).detach()


def integrated_gradients(
    model: nn.Module, images: torch.Tensor, target: Target, *, n_steps: int = 32,
    baseline: float = 0.0, method: str = "gausslegendre", internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., 2017) from a constant baseline image."""
    from captum.attr import IntegratedGradients

    x, fwd, tgt = _prepare(model, images, target)
    with torch.enable_grad():
        attr = IntegratedGradients(fwd).attribute(
            x, baselines=baseline, target=tgt, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size,
        )
    return attr.sum(dim=1).detach()


def smoothgrad(
    model: nn.Module, images: torch.Tensor, target: Target, *, n_samples: int = 16,
    stdev: float = 0.15, seed: int = 0,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al., 2017): captum ``NoiseTunnel`` over ``Saliency``.

    Args:
        model: the model.
        images: (B, C, H, W) in [0, 1].
        target: the resolved target.
        n_samples: noisy copies per image.
        stdev: noise standard deviation (images span [0, 1], so this is the paper's
            fraction of the input range).
        seed: seed of the noise (the global torch generator is saved and restored); every
            image gets the same draws, so its map does not depend on the rest of the batch.
    """
    from captum.attr import NoiseTunnel, Saliency

    x, fwd, tgt = _prepare(model, images, target)
    # captum draws float32 noise, which promotes float16/bfloat16 images: cast them back
    base, dtype = fwd, images.dtype
    fwd = lambda z: base(z.to(dtype))  # noqa: E731
    parts = []
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        # one image at a time, each from the same seed: an image's noise (so its map) does
        # not depend on the other images of the batch
        for i in range(x.shape[0]):
            torch.manual_seed(seed)
            with torch.enable_grad():
                attr = NoiseTunnel(Saliency(fwd)).attribute(
                    x[i : i + 1], nt_type="smoothgrad", nt_samples=n_samples, stdevs=stdev,
                    target=None if tgt is None else tgt[i : i + 1],
                )
            parts.append(attr.sum(dim=1).detach())
    return torch.cat(parts)
