"""``attribute``: one entry point over the registry of attribution methods."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from viscope.activations import preserved_buffers
from viscope.errors import ViscopeError
from viscope.explain import cam, gradients, perturbation, rollout
from viscope.explain.inputs import channel_check, check_not_inference, prepare_images
from viscope.explain.layouts import auto_layer, suggest_layer
from viscope.explain.targets import Target, TargetArg, resolve_target
from viscope.models.tokens import prefix_tokens
from viscope.registry import Registry

#: A map whose range (max - min) is at most FLAT_ULPS float epsilons of its magnitude
#: (max |value|) is constant: its "variation" is rounding (bilinear upsampling of a
#: constant leaves about 1 ulp), and min-max scaling would blow it up to [0, 1].
FLAT_ULPS = 16.0


@dataclass(frozen=True)
class Method:
    """A registered attribution method.

    Attributes:
        fn: ``fn(model, images, target, layer, **options) -> (B, h, w)`` raw maps (any
            resolution; ``layer`` is ``None`` for methods without one).
        uses_layer: whether the method reads a layer (CAMs).
        about: one line for ``viscope list methods``.
        options: the keyword options ``fn`` accepts, or ``None`` when it accepts any
            (``**kwargs``) and :func:`attribute` does not check them.
    """

    fn: Callable[..., torch.Tensor]
    uses_layer: bool
    about: str
    options: tuple[str, ...] | None = None


def _options(fn: Callable[..., Any], skip: int) -> tuple[str, ...] | None:
    """The parameters of ``fn`` that can be passed by keyword, after its first ``skip``
    (those the registry passes by position); ``None`` if it takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _check_options(method: str, accepted: tuple[str, ...] | None, given: dict) -> None:
    unknown = [name for name in given if accepted is not None and name not in accepted]
    if not unknown:
        return
    names = ", ".join(repr(n) for n in unknown)
    what = f"option {names}" if len(unknown) == 1 else f"options {names}"
    known = (f"its options are: {', '.join(accepted)}. Remove it or use one of those"
             if accepted else "it has no options. Remove it")
    raise ViscopeError(f"Method {method!r} takes no {what}; {known}.")


METHODS: Registry[Method] = Registry("attribution method")


def _cam(cls: type[cam.CAM]) -> Callable[..., torch.Tensor]:
    def run(model, images, target, layer, **options):
        return cls(**options)(model, images, target, layer)

    return run


def _plain(fn: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def run(model, images, target, layer, **options):
        out = fn(model, images, target, **options)
        return out[0] if isinstance(out, tuple) else out

    return run


for _name, _cls, _about in [
    ("gradcam", cam.GradCAM, "Grad-CAM: channels weighted by mean gradient"),
    ("gradcam++", cam.GradCAMPlusPlus, "Grad-CAM++: higher-order channel weights"),
    ("xgradcam", cam.XGradCAM, "XGrad-CAM: activation-weighted gradients"),
    ("layercam", cam.LayerCAM, "LayerCAM: positive gradient x activation per position"),
    ("hirescam", cam.HiResCAM, "HiResCAM: gradient x activation per position"),
    ("eigencam", cam.EigenCAM, "Eigen-CAM: first principal component (class-agnostic)"),
    ("scorecam", cam.ScoreCAM, "Score-CAM: channels weighted by masked-input scores"),
]:
    METHODS.register(_name, Method(_cam(_cls), True, _about, _options(_cls, 0)))
for _name, _fn, _about in [
    ("rise", perturbation.rise, "RISE: random-mask perturbation"),
    ("cbrise", perturbation.cbrise, "CB-RISE: RISE that stops when the map converges"),
    ("occlusion", perturbation.occlusion, "occlusion with a sliding square (captum)"),
    ("saliency", gradients.saliency, "|input gradient| (captum)"),
    ("inputxgradient", gradients.input_x_gradient, "input x gradient (captum)"),
    ("integrated_gradients", gradients.integrated_gradients, "integrated gradients (captum)"),
    ("smoothgrad", gradients.smoothgrad, "SmoothGrad: noise-averaged saliency (captum)"),
    ("rollout", rollout.attention_rollout, "attention rollout for ViTs (class-agnostic)"),
]:
    # the registry passes model, images and target by position
    METHODS.register(_name, Method(_plain(_fn), False, _about, _options(_fn, 3)))


def list_methods() -> list[str]:
    """The names accepted by :func:`attribute`.

    Example:
        >>> "gradcam" in list_methods() and "cbrise" in list_methods()
        True
    """
    return METHODS.names()


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    layer: str | None = "auto",
    target: TargetArg = None,
    *,
    normalize: bool = True,
    **options: Any,
) -> torch.Tensor:
    """Explain each image's target with a map at input resolution.

    The model's train/eval mode is left as it is (call ``model.eval()`` first: in train
    mode BatchNorm couples the images of a batch and dropout adds noise; a warning says
    so; its running statistics are restored afterwards). Hooks live only for this call;
    no parameter gets a ``.grad``.

    Images are cast to the model's floating dtype (float64 images on a float32 model, or
    the reverse, just work); integer images are refused (divide 8-bit values by 255 first).
    Under ``torch.inference_mode()`` the call leaves inference mode for itself, so the
    gradient methods work there too.

    Args:
        model: a model from :func:`viscope.models.create` or any ``nn.Module``.
        images: (B, C, H, W) float images in [0, 1]; maps come back on their device.
        method: a name of :data:`METHODS` (``list_methods()``).
        layer: for CAMs, the module name to explain (``"name@k"`` for the k-th call of a
            shared module), or ``"auto"`` (:func:`~viscope.explain.layer_choice.auto_layer`
            at the images' size: the deepest stage with a grid of at least 4×4); other
            methods take ``"auto"`` or ``None``. A layer with a 1×1 grid gives all-zero
            maps and a warning.
        target: ``None`` (the predicted class), a class index for all images, one per
            image, a callable ``outputs -> (N,)`` or one callable per image
            (e.g. :class:`~viscope.explain.targets.RegionTarget`).
        normalize: ``True``: negatives clipped at the method's own resolution (maps show
            positive evidence), then upsampled bilinearly and min-max scaled per map to
            [0, 1] with an epsilon relative to the map's scale. ``False``: the raw, signed
            map upsampled bilinearly to input resolution.
        **options: passed to the method (``n_masks=`` for RISE, ``batch_size=`` ...).

    Returns:
        (B, H, W) maps on the images' device.

    Raises:
        ViscopeError: unknown method, option of the method or layer, a target of the wrong
            length or class range, a layer of a method that has none, images that are not
            (B, C, H, W) floats, hold NaN/inf (naming the images) or have channels the
            model does not take, or a model made under ``torch.inference_mode()``.

    Warns:
        UserWarning: a map is all zeros or not finite (naming the layer and another to try).

    Example:
        >>> from viscope.models import create
        >>> model = create("resnet18", num_classes=3).eval()
        >>> attribute(model, torch.rand(2, 3, 64, 48), "gradcam", target=1).shape
        torch.Size([2, 64, 48])
    """
    spec = METHODS.get(method)
    _check_options(method, spec.options, options)
    # under torch.inference_mode() no graph can be recorded: leave it for this call, with
    # the images cloned out of it (an inference tensor cannot be saved for backward)
    with torch.inference_mode(False):
        check_not_inference(model)
        images = prepare_images(model, images)
        if images.is_inference():
            images = images.clone()
        return _attribute(model, images, method, spec, layer, target, normalize, options)


def _attribute(
    model: nn.Module, images: torch.Tensor, method: str, spec: Method, layer: str | None,
    target: TargetArg, normalize: bool, options: dict[str, Any],
) -> torch.Tensor:
    """:func:`attribute` after its input checks (outside inference mode, images cast)."""
    hw = (images.shape[-2], images.shape[-1])
    auto = None
    if spec.uses_layer:
        if layer in (None, "auto"):
            layer = auto = auto_layer(model, hw)
    elif layer not in (None, "auto"):
        raise ViscopeError(
            f"Method {method!r} does not read a layer; got layer={layer!r}. Pass layer='auto' "
            "or use a CAM method (gradcam, layercam, ...)."
        )
    else:
        layer = None
    if model.training:
        warnings.warn(
            "The model is in training mode: BatchNorm mixes the images of a batch and dropout "
            "is random, so maps depend on the batch. Call model.eval() before explaining.",
            UserWarning, stacklevel=3,
        )
    tgt: Target = resolve_target(target, images.shape[0])
    # in train mode each forward pass updates BatchNorm's running statistics: put them back
    with preserved_buffers(model), channel_check(model):
        raw = spec.fn(model, images, tgt, layer, **options)
    single = spec.uses_layer and raw.shape[-2] * raw.shape[-1] == 1
    if single:  # one position says nothing about where: no map rather than a constant
        raw = torch.zeros_like(raw)
    check_maps(raw, method, layer, model, hw, single=single, auto=auto)
    return finish(raw, hw, normalize).to(images.device)


def finish(raw: torch.Tensor, size: tuple[int, int], normalize: bool) -> torch.Tensor:
    """Upsample raw maps (B, h, w) to ``size``; clip and min-max scale them if ``normalize``."""
    maps = raw.clamp(min=0) if normalize else raw
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(maps) if normalize else maps


def normalize_maps(maps: torch.Tensor, flat_ulps: float = FLAT_ULPS) -> torch.Tensor:
    """Min-max scale each map (B, H, W) to [0, 1]; a constant map becomes all zeros.

    A map counts as constant when its range is at most ``flat_ulps`` float epsilons (of
    its dtype) of its magnitude (:func:`flat_maps`), so that rounding noise is not
    stretched into a pattern.

    Example:
        >>> normalize_maps(torch.tensor([[[1e-9, 3e-9]]])).tolist()
        [[[0.0, 1.0]]]
        >>> normalize_maps(torch.tensor([[[0.5, 0.5 + 6e-8]]])).tolist()  # 1 ulp apart
        [[[0.0, 0.0]]]
    """
    if not maps.is_floating_point():
        maps = maps.float()
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    flat = flat_maps(maps, flat_ulps)[..., None, None]
    return torch.where(flat, 0.0, (maps - lo) / torch.where(flat, 1.0, span))


def flat_maps(maps: torch.Tensor, flat_ulps: float = FLAT_ULPS) -> torch.Tensor:
    """Whether each map (..., H, W) is constant up to rounding: its range is at most
    ``flat_ulps`` epsilons of its dtype times its largest magnitude (an all-zero map is
    constant; a map with NaN is not)."""
    lo = maps.amin(dim=(-2, -1))
    hi = maps.amax(dim=(-2, -1))
    scale = torch.maximum(hi.abs(), lo.abs())
    eps = torch.finfo(maps.dtype if maps.is_floating_point() else torch.float32).eps
    return (hi - lo) <= flat_ulps * eps * scale


def check_maps(
    raw: torch.Tensor, method: str, layer: str | None, model: nn.Module,
    image_hw: tuple[int, int], *, single: bool = False, auto: str | None = None,
) -> None:
    """Warn (once) when maps are not finite, have no positive value (an empty explanation)
    or are constant, or when the layer has a single position (``single``: 1×1 grid).
    ``auto``: the layer ``"auto"`` resolved to in this call, if it did."""
    def hint() -> str:  # only when warning: finding the auto layer may take a dry pass
        if layer is None:
            return "check the target and model"
        if auto == layer:
            return "try an earlier block (see `viscope list layers`)"
        return suggest_layer(model, layer, image_hw)

    if single:
        warnings.warn(
            f"{method} at layer {layer!r}: the layer's output is a 1x1 grid for "
            f"{image_hw[0]}x{image_hw[1]} images, which says nothing about where, so the maps "
            f"are all zero. To fix: {hint()}.",
            UserWarning, stacklevel=4,  # attribute -> _attribute -> here
        )
        return
    flat = raw.detach().flatten(1)
    bad = ~torch.isfinite(flat).all(dim=1)
    empty = ~(flat.clamp(min=0) > 0).any(dim=1) & ~bad
    constant = flat_maps(raw.detach().clamp(min=0)) & ~empty & ~bad
    if not (bad.any() or empty.any() or constant.any()):
        return
    where = f"layer {layer!r}" if layer is not None else "the input"
    parts = []
    if bad.any():
        parts.append(f"not finite for images {bad.nonzero()[:, 0].tolist()}")
    if empty.any():
        parts.append(f"all zero (no positive evidence) for images {empty.nonzero()[:, 0].tolist()}")
    if constant.any():
        parts.append(f"constant (no spatial information) for images "
                     f"{constant.nonzero()[:, 0].tolist()}")
    # exactly zero (not just negative): no gradient reached the layer's patch tokens
    vit = layer is not None and prefix_tokens(model) is not None
    why = (" A ViT's last block output gets no gradient on its patch tokens when the head "
           "reads only the class token." if vit and (flat[empty] == 0).all(dim=1).any()
           else "")
    warnings.warn(
        f"{method} map at {where} is {' and '.join(parts)}.{why} To fix: {hint()}.",
        UserWarning, stacklevel=4,  # attribute -> _attribute -> here
    )
