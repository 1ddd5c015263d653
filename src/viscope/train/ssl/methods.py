"""Self-supervised pre-training methods (``SSL_METHODS``): SimCLR, BYOL, DINO and MAE.

Each method owns the model it pre-trains (a model from :func:`viscope.models.create`),
the trained heads and, for BYOL and DINO, the momentum (teacher) copies. Its three calls
are what :func:`viscope.train.ssl.pretrain.pretrain` needs:

- ``views(images, generator)``: the augmented views of a batch, made on the images'
  device with viscope's own transformation families (:mod:`viscope.transforms`), each
  family applied in turn with per-image parameters from ``family.sample`` (so a model
  pre-trained "with rotation" is measured by the same rotation family afterwards);
- ``loss(views)``: the method's loss (labels are never seen);
- ``on_step_end(step, total)``: after each optimizer step (the teachers' momentum update).

Losses, heads, momentum updates and MAE's masking/decoder are lightly's
(``lightly.loss``, ``lightly.models.modules``, ``lightly.models.utils``); only the glue
(which features, which views) is written here.

>>> import torch
>>> from viscope import models
>>> net = models.create("test_vit", img_size=32, num_classes=3)
>>> method = create_method("simclr", net, families=["rotation"])
>>> views = method.views(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
>>> len(views), bool(method.loss(views) > 0)
(2, True)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MAEDecoderTIMM,
    MaskedVisionTransformerTIMM,
    SimCLRProjectionHead,
)
from lightly.models.utils import (
    deactivate_requires_grad,
    get_at_index,
    patchify,
    random_token_mask,
    repeat_token,
    set_at_index,
    update_momentum,
)
from lightly.utils.scheduler import cosine_schedule
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from viscope.errors import ViscopeError
from viscope.models import unwrap
from viscope.train.augment import resolve_family
from viscope.train.features import pooled_features
from viscope.transforms import Family

#: The families a method's views are made with when none are given: SimCLR's recipe
#: (crop-like zoom and shift, colour jitter, grayscale) in viscope's families, plus
#: rotation. The colour ones matter: on ``shapes`` (random colours), SimCLR views with
#: only scale, rotation, brightness and contrast let colour identify the two views and
#: *lowered* test_resnet's k-NN accuracy (0.32 at random init -> 0.27 after 15 epochs,
#: 2,000 images); with these families it rose to 0.41.
DEFAULT_FAMILIES = ("scale", "translation", "rotation", "hue", "grayscale", "brightness",
                    "contrast")


class SSLMethod(nn.Module):
    """Base of the methods: the model, the view families and the calls ``pretrain`` makes.

    Args:
        model: the model to pre-train (from :func:`viscope.models.create`).
        families: names or :class:`~viscope.transforms.Family` objects applied in turn to
            make each view (``None``: :data:`DEFAULT_FAMILIES`).
        n_views: views per image.

    Attributes:
        last_params: per view, the parameters drawn for each family at the last
            :meth:`views` call (on the CPU), to replay what the model saw.

    Raises:
        ViscopeError: an unknown family name or fewer views than the method needs.
    """

    name = ""
    min_views = 2
    #: the attributes holding the trained modules besides the model (heads, decoder)
    head_names: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, families: Sequence[str | Family] | None = None,
                 n_views: int = 2) -> None:
        super().__init__()
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < self.min_views:
            raise ViscopeError(
                f"Expected n_views >= {self.min_views} for {self.name}; got {n_views!r}. "
                f"Pass n_views={self.min_views} or more."
            )
        self.model = model
        names = DEFAULT_FAMILIES if families is None else families
        self.families: list[Family] = [resolve_family(f) for f in names]  # type: ignore[misc]
        self.n_views = n_views
        self.last_params: list[list[Tensor]] = []
        was = model.training
        model.eval()  # eval: measuring the width must not move batch-norm statistics
        with torch.no_grad():
            self.dim = int(pooled_features(model, _probe_images(model)).shape[-1])
        model.train(was)

    def views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """``n_views`` augmented copies of ``images``; parameters drawn from ``generator``
        (a CPU generator, so the same seed gives the same views on any device)."""
        views, params = [], []
        for _ in range(self.n_views):
            view, drawn = images, []
            for family in self.families:
                p = family.sample(images.shape[0], generator, device="cpu", dtype=images.dtype)
                view = family.apply(view, p)
                drawn.append(p)
            views.append(view)
            params.append(drawn)
        self.last_params = params
        return views

    def loss(self, views: list[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, total: int) -> None:
        """Called after optimizer step ``step`` (from 0) of ``total``; nothing by default."""

    def heads(self) -> list[nn.Module]:
        """The trained modules besides the model (the optimizer's other parameters)."""
        return [getattr(self, name) for name in self.head_names]

    def describe(self) -> dict[str, Any]:
        """Plain-data settings of the method, for run records."""
        return {"name": self.name, "families": [f.name for f in self.families],
                "n_views": self.n_views, **self.settings}

    @property
    def settings(self) -> dict[str, Any]:
        return {}


class SimCLR(SSLMethod):
    """SimCLR: lightly's ``SimCLRProjectionHead`` and ``NTXentLoss`` on two views.

    Args:
        model: the model to pre-train.
        families: the view families.
        n_views: must be 2 (NT-Xent pairs two views).
        hidden_dim: the projection head's hidden width.
        out_dim: the projection's width.
        temperature: NT-Xent temperature.
    """

    name = "simclr"
    head_names = ("projection",)

    def __init__(self, model: nn.Module, families: Sequence[str | Family] | None = None,
                 n_views: int = 2, hidden_dim: int = 512, out_dim: int = 128,
                 temperature: float = 0.5) -> None:
        super().__init__(model, families, n_views)
        self.projection = SimCLRProjectionHead(self.dim, hidden_dim, out_dim)
        self.criterion = NTXentLoss(temperature=temperature)
        self._settings = {"hidden_dim": hidden_dim, "out_dim": out_dim,
                          "temperature": temperature}

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    def loss(self, views: list[Tensor]) -> Tensor:
        z = [self.projection(pooled_features(self.model, v)) for v in views[:2]]
        return self.criterion(z[0], z[1])


class _Momentum(SSLMethod):
    """A method with a teacher: momentum copies of the model and of ``student_heads``,
    updated after every step with a cosine schedule of the momentum (lightly's
    ``update_momentum`` and ``cosine_schedule``) from ``momentum`` to 1."""

    def _make_teacher(self, head: nn.Module, fresh: nn.Module, momentum: float) -> None:
        """Teacher copies of the model and of ``head``; ``fresh`` is a new head of the same
        build that takes ``head``'s weights (DINO's weight-normed layer cannot be deep-copied)."""
        self.teacher_model = copy.deepcopy(self.model)
        fresh.load_state_dict(head.state_dict())
        self.teacher_head = fresh
        deactivate_requires_grad(self.teacher_model)
        deactivate_requires_grad(self.teacher_head)
        self.momentum = float(momentum)
        self.last_momentum: float | None = None

    def momentum_at(self, step: int, total: int) -> float:
        """The momentum of the update after step ``step`` of ``total``."""
        return float(cosine_schedule(step, max(total, 1), self.momentum, 1.0))

    def on_step_end(self, step: int, total: int) -> None:
        m = self.momentum_at(step, total)
        update_momentum(self.model, self.teacher_model, m)
        update_momentum(self._student_head(), self.teacher_head, m)
        self.last_momentum = m

    def _student_head(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def _teacher(self, images: Tensor) -> Tensor:
        return self.teacher_head(pooled_features(self.teacher_model, images))


class BYOL(_Momentum):
    """BYOL: lightly's projection/prediction heads and ``NegativeCosineSimilarity``,
    symmetrised over two views; the teacher follows the student by momentum.

    Args:
        model: the model to pre-train.
        families: the view families.
        n_views: must be 2.
        hidden_dim: the heads' hidden width.
        out_dim: the projection's width.
        momentum: the teacher's momentum at the first step (cosine to 1 at the last).
    """

    name = "byol"
    head_names = ("projection", "prediction")

    def __init__(self, model: nn.Module, families: Sequence[str | Family] | None = None,
                 n_views: int = 2, hidden_dim: int = 512, out_dim: int = 128,
                 momentum: float = 0.99) -> None:
        super().__init__(model, families, n_views)
        self.projection = BYOLProjectionHead(self.dim, hidden_dim, out_dim)
        self.prediction = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self._make_teacher(self.projection, BYOLProjectionHead(self.dim, hidden_dim, out_dim),
                           momentum)
        self.criterion = NegativeCosineSimilarity()
        self._settings = {"hidden_dim": hidden_dim, "out_dim": out_dim, "momentum": momentum}

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    def _student_head(self) -> nn.Module:
        return self.projection

    def loss(self, views: list[Tensor]) -> Tensor:
        v0, v1 = views[:2]
        p0 = self.prediction(self.projection(pooled_features(self.model, v0)))
        p1 = self.prediction(self.projection(pooled_features(self.model, v1)))
        z0, z1 = self._teacher(v0), self._teacher(v1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class DINO(_Momentum):
    """DINO: lightly's ``DINOProjectionHead`` and ``DINOLoss``; the teacher sees the
    first two (global) views, the student every view.

    Args:
        model: the model to pre-train.
        families: the view families.
        n_views: views per image (>= 2; the first two are the teacher's).
        hidden_dim: the head's hidden width.
        bottleneck_dim: the head's bottleneck.
        out_dim: the prototypes.
        teacher_temp: the teacher's softmax temperature.
        momentum: the teacher's momentum at the first step (cosine to 1 at the last).
    """

    name = "dino"
    head_names = ("head",)

    def __init__(self, model: nn.Module, families: Sequence[str | Family] | None = None,
                 n_views: int = 2, hidden_dim: int = 512, bottleneck_dim: int = 64,
                 out_dim: int = 1024, teacher_temp: float = 0.04,
                 momentum: float = 0.996) -> None:
        super().__init__(model, families, n_views)
        self.head = DINOProjectionHead(self.dim, hidden_dim, bottleneck_dim, out_dim)
        self._make_teacher(
            self.head, DINOProjectionHead(self.dim, hidden_dim, bottleneck_dim, out_dim), momentum)
        self.criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp=teacher_temp,
                                  teacher_temp=teacher_temp, warmup_teacher_temp_epochs=0)
        self._settings = {"hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim,
                          "out_dim": out_dim, "teacher_temp": teacher_temp,
                          "momentum": momentum}

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    def _student_head(self) -> nn.Module:
        return self.head

    def loss(self, views: list[Tensor]) -> Tensor:
        teacher = [self._teacher(v) for v in views[:2]]
        student = [self.head(pooled_features(self.model, v)) for v in views]
        return self.criterion(teacher, student)


class MAE(SSLMethod):
    """MAE on a timm ViT: lightly's ``MaskedVisionTransformerTIMM`` (wrapping the model's
    own ViT, so its weights are the ones trained), ``random_token_mask`` and
    ``MAEDecoderTIMM``; MSE on the masked patches of the (normalised) view.

    The ViT keeps its own initialisation (lightly's re-initialisation is skipped), so a
    ``--pretrained`` model starts from its published weights.

    Args:
        model: a ViT from :func:`viscope.models.create`.
        families: the view families (one view).
        n_views: must be 1.
        mask_ratio: share of patch tokens masked.
        decoder_dim: the decoder's width.
        decoder_depth: the decoder's blocks.
        decoder_heads: the decoder's attention heads.

    Raises:
        ViscopeError: the model is not a timm ``VisionTransformer``.
    """

    name = "mae"
    min_views = 1
    head_names = ("decoder",)

    def __init__(self, model: nn.Module, families: Sequence[str | Family] | None = None,
                 n_views: int = 1, mask_ratio: float = 0.75, decoder_dim: int = 64,
                 decoder_depth: int = 1, decoder_heads: int = 4) -> None:
        vit = unwrap(model)
        if not isinstance(vit, VisionTransformer):
            raise ViscopeError(
                f"Expected a timm VisionTransformer for mae (it masks patch tokens); got "
                f"{type(vit).__name__}. Use simclr, byol or dino for this model, or a ViT "
                "such as test_vit."
            )
        super().__init__(model, families, n_views)
        self.encoder = MaskedVisionTransformerTIMM(
            vit=vit, weight_initialization="skip", pos_embed_initialization="skip")
        self.patch_size = int(vit.patch_embed.patch_size[0])
        with warnings.catch_warnings():  # deprecated in lightly 1.6, the one with embed/predict
            warnings.simplefilter("ignore", FutureWarning)
            self.decoder = MAEDecoderTIMM(
                num_patches=vit.patch_embed.num_patches, patch_size=self.patch_size,
                in_chans=int(vit.patch_embed.proj.in_channels), embed_dim=vit.embed_dim,
                decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
                decoder_num_heads=decoder_heads, num_prefix_tokens=vit.num_prefix_tokens)
        self.mask_ratio = float(mask_ratio)
        self._settings = {"mask_ratio": mask_ratio, "decoder_dim": decoder_dim,
                          "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    def loss(self, views: list[Tensor]) -> Tensor:
        images = self.model.normalize(views[0]) if hasattr(self.model, "normalize") else views[0]
        b = images.shape[0]
        length = self.encoder.sequence_length
        # the mask is drawn from torch's global generator, reseeded every epoch by pretrain
        idx_keep, idx_mask = random_token_mask((b, length), self.mask_ratio,
                                               device=images.device)
        encoded = self.encoder.encode(images=images, idx_keep=idx_keep)
        decoded = self.decoder.embed(encoded)
        tokens = repeat_token(self.decoder.mask_token, (b, length))
        tokens = set_at_index(tokens, idx_keep, decoded.type_as(tokens))
        prediction = self.decoder.predict(get_at_index(self.decoder.decode(tokens), idx_mask))
        prefix = unwrap(self.model).num_prefix_tokens
        target = get_at_index(patchify(images, self.patch_size), idx_mask - prefix)
        return nn.functional.mse_loss(prediction, target)


#: name -> method class; ``create_method(name, model, **kwargs)`` builds one.
SSL_METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR, "byol": BYOL, "dino": DINO, "mae": MAE,
}


def create_method(name: str, model: nn.Module, families: Sequence[str | Family] | None = None,
                  **kwargs: Any) -> SSLMethod:
    """Build the registered method ``name`` around ``model``.

    Args:
        name: a key of :data:`SSL_METHODS`.
        model: the model to pre-train.
        families: the view families (``None``: the defaults).
        **kwargs: the method's own settings (``temperature``, ``momentum``, ...).

    Returns:
        The method.

    Raises:
        ViscopeError: an unknown name, an unknown setting, or a model the method refuses.
    """
    cls = SSL_METHODS.get(str(name).lower())
    if cls is None:
        raise ViscopeError(
            f"Expected a pre-training method among {sorted(SSL_METHODS)}; got {name!r}. "
            "Pass e.g. method='simclr'."
        )
    try:
        return cls(model, families, **kwargs)
    except TypeError as err:
        raise ViscopeError(
            f"Expected settings that {cls.name} takes (see viscope.train.ssl.methods."
            f"{cls.__name__}); got {sorted(kwargs)} ({err}). Remove or rename the setting."
        ) from None


def _probe_images(model: nn.Module) -> Tensor:
    """A one-image batch the model accepts, to measure its feature width."""
    net = unwrap(model)
    size = getattr(net, "patch_embed", None)
    hw = tuple(size.img_size) if size is not None and size.img_size is not None else (32, 32)
    chans = 3
    mean = getattr(model, "mean", None)
    if mean is not None:
        chans = int(mean.shape[1])
    param = next(net.parameters())
    return torch.rand(2, chans, *hw, device=param.device, dtype=param.dtype)
