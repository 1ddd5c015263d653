"""Class-activation maps: one template (forward, target, backward, weights, combine).

Each method is a small subclass: channel-weight methods override :meth:`CAM.weights`,
the others :meth:`CAM.combine`. The template's rules:

* hooks live for one call (:class:`~viscope.explain.layouts.LayerTap`, ``try/finally``);
* the model's train/eval mode is left as the user set it (BatchNorm in train mode
  couples the images of a batch, so explain in eval mode), and its running statistics
  are put back after the call;
* gradients come from ``torch.autograd.grad`` with respect to the hooked activation only:
  no ``.grad`` on any parameter, and the graph is freed by the call;
* all maths is torch on the images' device, batched (every image gets its own map).

Maps are returned at the layer's resolution, signed (raw); :func:`viscope.explain.attribute`
clips, upsamples and normalises them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from viscope.activations import preserved_buffers
from viscope.explain.layouts import LayerTap, to_grid
from viscope.explain.targets import Target


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 activations or gradients as float32 for the maths (SVD has no half
    kernels; small epsilons and squared gradients underflow in float16)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class CAM:
    """Template of a class-activation map; subclasses override ``weights`` or ``combine``.

    Attributes:
        uses_gradients: whether a backward pass is needed.
    """

    uses_gradients = True

    def __call__(
        self, model: nn.Module, images: torch.Tensor, target: Target, layer: str
    ) -> torch.Tensor:
        """The raw map (B, h, w) of each image at ``layer``'s resolution (BatchNorm
        statistics of a model in train mode are put back afterwards)."""
        with preserved_buffers(model):
            acts, grads = self.activations(model, images, target, layer)
            return self.combine(acts, grads, model=model, images=images, target=target)

    def activations(
        self, model: nn.Module, images: torch.Tensor, target: Target, layer: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward (and backward): the layer's activations and gradients as (B, C, h, w)."""
        hw = (images.shape[-2], images.shape[-1])
        grad = self.uses_gradients
        # The forward runs without recording a graph up to the layer; the tap switches
        # recording on from its output (see LayerTap), so a CAM at a late layer costs
        # about one forward plus a short backward instead of a full graph.
        with torch.no_grad(), LayerTap(model, layer, grad=grad) as tap:
            outputs = model(images)
            act = tap.require()
            grads = None
            if grad:
                score = target.score(outputs).sum()
                (grads,) = torch.autograd.grad(score, act)
            else:
                target.check(outputs)  # class-agnostic: still refuse a class the model lacks
            record = tap.record
        acts = _upcast(to_grid(act.detach(), record, model, hw))
        if grads is not None:
            grads = _upcast(to_grid(grads, record, model, hw))
        return acts, grads

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        """Channel weights (B, C)."""
        raise NotImplementedError

    def combine(
        self, acts: torch.Tensor, grads: torch.Tensor | None, **context: object
    ) -> torch.Tensor:
        """The map (B, h, w): by default the weighted sum of the channels."""
        return torch.einsum("bc,bchw->bhw", self.weights(acts, grads), acts)


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al., 2017): channel weight = mean gradient (eq. 1)."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        assert grads is not None
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(CAM):
    """Grad-CAM++ (Chattopadhay et al., 2018), with the exponential-score closed form.

    alpha = g^2 / (2 g^2 + sum(A) g^3) (eq. 19), zero where the gradient is zero;
    weight = sum(alpha * relu(g)).
    """

    eps = 1e-6

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        assert grads is not None
        g2 = grads.pow(2)
        total = acts.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + total * g2 * grads + self.eps)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


class XGradCAM(CAM):
    """XGrad-CAM (Fu et al., 2020): weight = sum(g * A) / sum(A)."""

    eps = 1e-7

    def weights(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        assert grads is not None
        total = acts.sum(dim=(2, 3), keepdim=True)
        return (grads * acts / (total + self.eps)).sum(dim=(2, 3))


class LayerCAM(CAM):
    """LayerCAM (Jiang et al., 2021): sum over channels of relu(g) * A, per position."""

    def combine(self, acts, grads, **context):
        assert grads is not None
        return (grads.clamp(min=0) * acts).sum(dim=1)


class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin, 2020): sum over channels of g * A, per position."""

    def combine(self, acts, grads, **context):
        assert grads is not None
        return (grads * acts).sum(dim=1)


class EigenCAM(CAM):
    """Eigen-CAM (Muhammad & Yeasin, 2020): projection on the first principal component.

    Class-agnostic (the target is ignored). The activations (positions × channels) are
    centred per channel; the map is their projection on the first right-singular vector,
    with the sign chosen so that the largest-magnitude value is positive (SVD's sign is
    arbitrary; pytorch-grad-cam keeps whatever LAPACK returns).
    """

    uses_gradients = False

    def combine(self, acts, grads, **context):
        b, c, h, w = acts.shape
        flat = acts.reshape(b, c, h * w).transpose(1, 2)
        flat = torch.nan_to_num(flat, nan=0.0)  # as grad-cam, before centring
        flat = flat - flat.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = torch.einsum("bnc,bc->bn", flat, vh[:, 0])
        flip = proj.amax(dim=1).abs() < proj.amin(dim=1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return proj.reshape(b, h, w)


class ScoreCAM(CAM):
    """Score-CAM (Wang et al., 2020): weight = softmax over channels of the target score
    of the image masked by each upsampled, min-max scaled channel.

    Masked images are built and scored ``batch_size`` (image, channel) pairs at a time,
    so peak memory does not grow with batch × channels.

    Args:
        batch_size: masked images per forward pass.
        align_corners: of the bilinear upsampling of the channels (pytorch-grad-cam's
            ``UpsamplingBilinear2d`` uses ``True``; the maps themselves use ``False``).
    """

    uses_gradients = False

    def __init__(self, batch_size: int = 64, align_corners: bool = False) -> None:
        self.batch_size = batch_size
        self.align_corners = align_corners

    def combine(self, acts, grads, **context):
        model, images, target = context["model"], context["images"], context["target"]
        assert isinstance(images, torch.Tensor) and isinstance(target, Target)
        assert isinstance(model, nn.Module)
        target.fix(model, images)
        b, c = acts.shape[:2]
        size = images.shape[-2:]
        scores = torch.empty(b * c, device=acts.device, dtype=acts.dtype)
        pairs = torch.arange(b * c, device=acts.device)
        with torch.no_grad():
            for chunk in pairs.split(self.batch_size):
                img, ch = chunk // c, chunk % c
                up = F.interpolate(acts[img, ch][:, None], size=size, mode="bilinear",
                                   align_corners=self.align_corners)
                lo = up.amin(dim=(2, 3), keepdim=True)
                hi = up.amax(dim=(2, 3), keepdim=True)
                masks = (up - lo) / (hi - lo + 1e-8)
                out = model(images[img] * masks.to(images.dtype))
                scores[chunk] = target.score(out, img).to(acts.dtype)
        weights = scores.view(b, c).softmax(dim=1)
        return torch.einsum("bc,bchw->bhw", weights, acts)
