"""``apply`` and ``make``: initialise a model's first layer (or its attention) by name.

Methods: ``pca``, ``zca``, ``kmeans`` (filters from a sample of the layer's input
patches, :mod:`viscope.init.filters`), ``default`` (the layer's own
``reset_parameters``, the baseline through the same path) and ``mimetic`` (attention,
data-free, :mod:`viscope.init.mimetic`).

Filters from data replace the first k filters of the layer (k = useful components or
clusters, at most the layer's filters); the others keep the layer's weights as they
were (on a fresh model, its default init). Each written filter is rescaled to the mean
L2 norm of the layer's filters under its default init (``scale="default"``: a copy of
the layer re-initialised by ``reset_parameters`` with the seed), or of its filters
before the call (``scale="current"``, e.g. a timm ResNet whose model init is
Kaiming-normal), or left unscaled (``scale=None``). The layer's bias is set to zero.
Nothing else in the model changes.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from viscope.errors import ViscopeError, suggest
from viscope.init import filters as F
from viscope.init.layers import first_layer
from viscope.init.mimetic import mimetic
from viscope.init.patches import sample_patches
from viscope.train.initialisers import INITIALISERS

#: options of each data method's filter function (beyond patches and k)
_FILTERS: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]] = {
    "pca": (F.pca_filters, ()),
    "zca": (F.zca_filters, ("eps",)),
    "kmeans": (F.kmeans_filters, ("normalize", "kmeans_batch_size", "n_init")),
}
_SAMPLING = ("images", "workers", "scale")
_MIMETIC = ("alpha1", "beta1", "alpha2", "beta2")
METHODS = ("default", "pca", "zca", "kmeans", "mimetic")
#: one line per method, for ``viscope list initialisers``
ABOUT = {
    "default": "the first layer's own reset_parameters, seeded (the baseline)",
    "pca": "principal components of the first layer's input patches as its filters",
    "zca": "ZCA-whitening filters of the first layer's input patches",
    "kmeans": "MiniBatchKMeans centroids of the first layer's input patches",
    "mimetic": "ViT attention: W_q W_k^T ~ a1 Z + b1 I, W_v W_o ~ a2 Z - b2 I (data-free)",
}


@dataclasses.dataclass
class InitReport:
    """What an initialiser did.

    Attributes:
        method: the method's name.
        layer: the layer written (attention layers for ``mimetic``, comma-separated).
        filters: the layer's filters (output channels; attention layers for mimetic).
        from_data: filters written from the data.
        from_default: filters left with the layer's weights as they were.
        patches: patches in the sample the filters came from.
        seconds: wall time of the call.
        peak_bytes: the most bytes the patch sampler held (counted: buffer, keys, one
            batch's selected windows; not the model's or the DataLoader's).
        images: images read.
        windows: windows seen in them.
        norm: the L2 norm of each written filter (``None``: unscaled or no data filters).
        options: the method's options as given.
    """

    method: str
    layer: str
    filters: int
    from_data: int = 0
    from_default: int = 0
    patches: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0
    images: int = 0
    windows: int = 0
    norm: float | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for JSON/YAML)."""
        return dataclasses.asdict(self)


def _check(method: str, samples: int, options: dict[str, Any]) -> None:
    if method not in METHODS:
        raise ViscopeError(
            f"Unknown initialisation method {method!r}.{suggest(method, METHODS)} "
            f"Known: {', '.join(METHODS)}."
        )
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ViscopeError(f"Expected samples to be an integer >= 1; got {samples!r}.")
    allowed = {"default": (), "mimetic": _MIMETIC}.get(method)
    if allowed is None:
        allowed = _FILTERS[method][1] + _SAMPLING
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ViscopeError(
            f"Unknown option(s) {', '.join(unknown)} for method {method!r}; it takes "
            f"{', '.join(allowed) or 'none besides samples, layer, seed, batch_size'}."
        )
    if method in _FILTERS and options.get("scale", "default") not in ("default", "current", None):
        raise ViscopeError(
            f"Expected scale='default', 'current' or None; got {options['scale']!r}."
        )


def _dataset(dataset: Dataset | str) -> Dataset:
    if isinstance(dataset, str):
        from viscope.data import create

        return create(dataset, split="train")
    if dataset is None:
        raise ViscopeError(
            "Expected a dataset (or a built-in name such as 'shapes') to sample patches "
            "from; got None. Only 'default' and 'mimetic' need no data."
        )
    return dataset


def _default_norm(conv: nn.Conv2d, seed: int) -> float:
    """Mean L2 norm of the filters of a copy of ``conv`` re-initialised with ``seed``."""
    fresh = copy.deepcopy(conv)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    return float(fresh.weight.detach().flatten(1).norm(dim=1).mean())


def apply(
    model: nn.Module,
    dataset: Dataset | str | None = None,
    method: str = "pca",
    *,
    samples: int = 20000,
    layer: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    **options: Any,
) -> InitReport:
    """Initialise ``model`` in place with ``method``; the model's train/eval modes and
    every parameter but the written layer's are unchanged.

    Args:
        model: a model from ``viscope.models.create`` (or any network).
        dataset: items ``(image, label, ...)`` with images float (C, H, W) in [0, 1], or a
            built-in dataset name (its train split); unused by ``default`` and ``mimetic``.
        method: ``pca``, ``zca``, ``kmeans``, ``default`` or ``mimetic``.
        samples: the most patches sampled (memory is bounded by this, not the dataset).
        layer: the convolution to write (see :func:`viscope.init.first_layer`).
        seed: seeds the image and patch sample, K-Means, the default-norm copy and mimetic.
        batch_size: images per forward while sampling.
        **options: ``images``, ``workers``, ``scale`` (``"default"``, ``"current"``,
            ``None``) for data methods; ``eps`` (zca); ``normalize``,
            ``kmeans_batch_size``, ``n_init`` (kmeans); ``alpha1``, ``beta1``, ``alpha2``,
            ``beta2`` (mimetic).

    Returns:
        An :class:`InitReport`.

    Raises:
        ViscopeError: an unknown method or option, samples < 1, no suitable layer, a
            CNN for ``mimetic``, no dataset for a data method.

    Example:
        >>> from viscope import data, models
        >>> model = models.create("test_vit", img_size=32, num_classes=4)
        >>> report = apply(model, data.create("shapes", n=16), "pca", samples=64)
        >>> report.layer, report.from_data + report.from_default == report.filters
        ('patch_embed.proj', True)
    """
    _check(method, samples, options)
    start = time.perf_counter()
    if method == "mimetic":
        names = mimetic(model, seed=seed, **options)
        return InitReport("mimetic", ",".join(names), len(names), from_data=0,
                          seconds=time.perf_counter() - start, options=dict(options))
    name, conv = first_layer(model, layer)
    report = InitReport(method, name, conv.out_channels, options=dict(options))
    if method == "default":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            conv.reset_parameters()
        report.from_default = conv.out_channels
        report.seconds = time.perf_counter() - start
        return report
    function, names = _FILTERS[method]
    scale = options.get("scale", "default")
    modes = {m: m.training for m in model.modules()}
    model.eval()  # sampling must not update batch-norm statistics
    try:
        patches, counts = sample_patches(
            model, conv, _dataset(dataset), samples=samples, seed=seed,
            batch_size=batch_size, images=options.get("images"),
            workers=options.get("workers", 0))
    finally:
        for module, mode in modes.items():
            module.train(mode)
    kwargs = {("batch_size" if k == "kmeans_batch_size" else k): options[k]
              for k in names if k in options}
    if method == "kmeans":
        kwargs["seed"] = seed
    raw = function(patches, conv.out_channels, **kwargs)
    with torch.no_grad():
        weight = conv.weight
        if scale == "default":
            report.norm = _default_norm(conv, seed)
        elif scale == "current":
            report.norm = float(weight.flatten(1).norm(dim=1).mean())
        written = raw if report.norm is None else F.rescale(raw, report.norm)
        k = len(written)
        weight[:k] = written.reshape(k, *weight.shape[1:]).to(weight.device, weight.dtype)
        if conv.bias is not None:
            conv.bias.zero_()
    report.from_data, report.from_default = k, conv.out_channels - k
    report.patches, report.images = counts["patches"], counts["images"]
    report.windows, report.peak_bytes = counts["windows"], counts["peak_bytes"]
    report.seconds = time.perf_counter() - start
    return report


@dataclasses.dataclass
class Initialiser:
    """``init(model, train_split)`` for ``fit(init=...)``: :func:`apply` with fixed
    settings. ``describe()`` gives the settings as plain data (the run's config)."""

    method: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    last_report: InitReport | None = dataclasses.field(default=None, compare=False)

    def __call__(self, model: nn.Module, train_split: Dataset | None = None) -> InitReport:
        self.last_report = apply(model, train_split, self.method, **self.options)
        return self.last_report

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, **self.options}


def make(method: str, **options: Any) -> Initialiser:
    """An initialiser ``init(model, train_split)`` running :func:`apply` with ``options``.

    Raises:
        ViscopeError: an unknown method or option (checked now, not at training time).

    Example:
        >>> make("kmeans", samples=5000, normalize=True).describe()
        {'method': 'kmeans', 'samples': 5000, 'normalize': True}
    """
    general = {k: options[k] for k in ("samples", "layer", "seed", "batch_size") if k in options}
    rest = {k: v for k, v in options.items() if k not in general}
    _check(method, general.get("samples", 1), rest)
    return Initialiser(method, dict(options))


for _method in METHODS:
    INITIALISERS.register(_method, make(_method))
