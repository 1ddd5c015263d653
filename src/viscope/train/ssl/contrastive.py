"""The contrastive objective ``"contrastive"``: SimCLR's NT-Xent on two views of the batch.

Beside the classification loss (``fit(objectives=["ce", "contrastive:0.5"])``, or
``viscope train --ssl contrastive --ssl-weight 0.5``), each batch is seen twice, each
time through a chain of viscope transformation families with random parameters per
image (by default the pre-training methods' views,
:data:`~viscope.train.ssl.methods.DEFAULT_FAMILIES`: the same family objects the
invariance engine measures). Both views run through the model; their pooled
features (what the classifier reads: :func:`~viscope.train.features.pooled_features`)
go through a SimCLR projection head and lightly's NT-Xent loss pulls the two views of
one image together and pushes the other images apart (Chen et al., "A Simple Framework
for Contrastive Learning of Visual Representations", ICML 2020, eq. 1). The
head (lightly's ``SimCLRProjectionHead``) is built in ``setup`` from the feature width
and trained with the model; the loss is lightly's ``NTXentLoss``. Nothing here is
hand-written but the choice of views and the pooling.

Randomness: training views draw their parameters from a generator seeded from torch's
global generator, which ``TrainModule`` reseeds every epoch (so a resumed run draws the
same views); validation and test views use a fixed seed, so ``val_contrastive_loss`` of
two epochs compares the same views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor, nn

from viscope import transforms
from viscope.errors import ViscopeError
from viscope.train.augment import describe_family
from viscope.train.features import pooled_features
from viscope.train.objectives import Objective, Step, register_objective
from viscope.train.ssl.methods import DEFAULT_FAMILIES
from viscope.transforms import Family

#: The seed of the views of validation and test steps.
EVAL_SEED = 0


@register_objective
class Contrastive(Objective):
    """NT-Xent (lightly's ``NTXentLoss``) between the projected pooled features of two
    views of each image, made with viscope transformation families.

    Args:
        weight: the factor of this term in the training loss.
        families: the families (names or :class:`~viscope.transforms.Family` objects)
            applied in order to make each view, with independent random parameters.
        temperature: NT-Xent's temperature (SimCLR's tau).
        hidden_dim: the projection head's hidden width.
        output_dim: the projection's width.

    Attributes:
        head: the ``SimCLRProjectionHead`` (``None`` before :meth:`setup`).
        last_views: the two views of the last call of :meth:`loss` (detached).
        last_params: the parameters drawn for them: per view, one tensor per family.

    Raises:
        ViscopeError: a bad weight, no families, an unknown family, or a temperature or
            width that is not positive.
    """

    name = "contrastive"

    def __init__(self, weight: float = 1.0, families: Sequence[str | Family] = DEFAULT_FAMILIES,
                 temperature: float = 0.5, hidden_dim: int = 128, output_dim: int = 64) -> None:
        super().__init__(weight)
        if isinstance(families, str | Family):
            families = [families]
        if not families:
            raise ViscopeError(
                "Expected at least one transformation family to make the views of "
                f"'contrastive'; got {families!r}. Use e.g. {list(DEFAULT_FAMILIES)}."
            )
        self.families = [f if isinstance(f, Family) else transforms.create(f) for f in families]
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ViscopeError(f"Expected temperature > 0; got {temperature!r}.")
        for label, value in (("hidden_dim", hidden_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ViscopeError(f"Expected {label} to be a positive int; got {value!r}.")
        self.temperature = float(temperature)
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.criterion = NTXentLoss(temperature=self.temperature)
        self.head: SimCLRProjectionHead | None = None
        self.last_views: tuple[Tensor, Tensor] | None = None
        self.last_params: list[list[Tensor]] | None = None

    def setup(self, model: nn.Module, num_classes: int, example: Step) -> None:
        """Build the projection head from the width of the model's pooled features."""
        with torch.no_grad():
            width = pooled_features(model, example.images).shape[1]
        head = SimCLRProjectionHead(width, self.hidden_dim, self.output_dim)
        self.head = head.to(device=example.images.device, dtype=example.images.dtype)

    def make_views(self, images: Tensor, generator: torch.Generator
                   ) -> tuple[tuple[Tensor, Tensor], list[list[Tensor]]]:
        """Two views of ``images``, each through every family with its own parameters.

        Args:
            images: (B, C, H, W) in [0, 1].
            generator: a CPU generator for the parameters (drawn on the CPU, so a seed
                gives the same views on any device).

        Returns:
            The two views (in ``images``' dtype) and, per view, the parameters of each
            family in order.
        """
        views, params = [], []
        for _ in range(2):
            view, drawn = images.float(), []
            # in float32, as training augmentation: the families' kernels expect it
            with torch.autocast(images.device.type, enabled=False):
                for family in self.families:
                    p = family.sample(len(images), generator, device="cpu", dtype=view.dtype)
                    view = family.apply(view, p)
                    drawn.append(p)
            views.append(view.to(images.dtype))
            params.append(drawn)
        return (views[0], views[1]), params

    def loss(self, step: Step) -> Tensor:
        if self.head is None:
            raise ViscopeError(
                "Expected objective 'contrastive' to be set up with its projection head; got "
                "none. Call setup(model, num_classes, example_step) first (fit does)."
            )
        generator = torch.Generator(device="cpu")
        if step.stage == "train":
            generator.manual_seed(int(torch.randint(0, 2**62, ()).item()))
        else:
            generator.manual_seed(EVAL_SEED)
        (first, second), params = self.make_views(step.images, generator)
        self.last_views = (first.detach(), second.detach())
        self.last_params = params
        # one pass over both views: the projection head's batch norm sees the 2B images
        z = self.head(pooled_features(step.model, torch.cat([first, second])))
        z1, z2 = z.float().chunk(2)
        return self.criterion(z1, z2)

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        described = [describe_family(f) for f in self.families]
        if described != [describe_family(transforms.create(n)) for n in DEFAULT_FAMILIES]:
            options["families"] = described
        if self.temperature != 0.5:
            options["temperature"] = self.temperature
        if (self.hidden_dim, self.output_dim) != (128, 64):
            options["hidden_dim"], options["output_dim"] = self.hidden_dim, self.output_dim
        return options
