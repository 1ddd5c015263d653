"""How a CAM's layer is captured, and how its output becomes a (B, C, h, w) grid.

``layer="auto"`` is chosen in :mod:`viscope.explain.layer_choice` (re-exported here):
the deepest stage whose grid at the images' size still has spatial information.

Token outputs (B, N, D) become grids from the model's own prefix-token count
(class, distillation and register tokens) and patch grid; NHWC outputs are permuted.
Nothing is reshaped by a hard-coded side length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from viscope.activations.tap import LayerRecord, Tap
from viscope.errors import ViscopeError
from viscope.explain.layer_choice import auto_layer, suggest_layer
from viscope.models import unwrap
from viscope.models.tokens import patch_grid

__all__ = ["LayerTap", "auto_layer", "suggest_layer", "to_grid", "token_grid"]


class LayerTap(Tap):
    """Capture one layer for a CAM, for one call (use it as a context manager).

    With ``grad=True`` graph recording is switched on at the layer (run the forward
    under ``torch.no_grad()``: nothing before the layer is recorded) and the layer's
    output is replaced downstream by a clone of a leaf that requires grad: the graph
    starts at the layer (``torch.autograd.grad`` reaches no parameter), and in-place ops
    after the layer (``ReLU(inplace=True)``, ``+=``) change the clone, never the stored
    activation. With ``grad=False`` the output is cloned at hook time.
    """

    def __init__(self, model: nn.Module, layer: str, *, grad: bool) -> None:
        super().__init__(model, [layer], callback=self._keep)
        self.layer = layer
        self.grad = grad
        self.activation: torch.Tensor | None = None
        self._swap: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def record(self) -> LayerRecord:
        """What the tap learnt about the layer (layout, prefix tokens, grid)."""
        return self.records[self.layer]

    def _keep(self, name: str, act: torch.Tensor) -> None:
        if self.grad:
            # record the graph from here on (the caller's no_grad block restores the mode)
            torch.set_grad_enabled(True)
            leaf = act.detach().requires_grad_(True)
            self.activation = leaf
            self._swap = (act, leaf.clone())
        else:
            self.activation = act.detach().clone()

    def _make_hook(self, module_name: str):
        base = super()._make_hook(module_name)

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            self._swap = None
            base(module, args, output)
            if self._swap is None:
                return None
            old, new = self._swap
            self._swap = None
            return _replace(output, old, new)

        return hook

    def require(self) -> torch.Tensor:
        """The captured activation; an error naming the layer when it did not run."""
        if self.activation is None:
            raise ViscopeError(
                f"Layer {self.layer!r} did not run in the forward pass, so there is nothing to "
                f"explain. Choose a layer that runs (see `viscope list layers`)."
            )
        return self.activation


def _replace(output: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if output is old:
        return new
    if isinstance(output, tuple | list):
        return type(output)(new if o is old else o for o in output)
    if isinstance(output, dict):
        return {k: (new if v is old else v) for k, v in output.items()}
    return None


def to_grid(
    tensor: torch.Tensor, record: LayerRecord, model: nn.Module, image_hw: tuple[int, int]
) -> torch.Tensor:
    """Map a layer's per-sample output (or its gradient) to a (B, C, h, w) grid.

    Args:
        tensor: the activation or gradient, as the layer produced it.
        record: the tap's record of the layer (layout, prefix tokens, grid).
        model: the model (for the patch size of token layouts).
        image_hw: the input images' (H, W).

    Returns:
        (B, C, h, w).

    Raises:
        ViscopeError: a flat output, or tokens that do not form the patch grid.
    """
    if record.layout == "chw":
        return tensor
    if record.layout == "hwc":
        return tensor.permute(0, 3, 1, 2)
    if record.layout == "tokens":
        prefix = record.prefix_tokens
        if prefix is None:
            raise ViscopeError(
                f"Expected to tell the prefix (class/register) tokens of layer {record.name!r} "
                f"from the patch tokens; {type(unwrap(model)).__name__} does not say how many "
                "there are. Choose a convolutional layer, or a model with a patch embedding."
            )
        patches = tensor[:, prefix:]
        grid = token_grid(patches.shape[1], record, model, image_hw)
        return patches.transpose(1, 2).reshape(tensor.shape[0], -1, *grid)
    raise ViscopeError(
        f"Expected layer {record.name!r} to output a spatial map (B, C, h, w), (B, h, w, C) "
        f"or tokens (B, N, D); got shape (B, {', '.join(map(str, record.unit_shape))}). "
        "Choose a convolutional stage or a transformer block (see `viscope list layers`)."
    )


def token_grid(
    n_patch: int, record: LayerRecord, model: nn.Module, image_hw: tuple[int, int]
) -> tuple[int, int]:
    """The (rows, columns) of ``n_patch`` patch tokens, from the model's own patch grid."""
    grid = patch_grid(model, image_hw)
    if grid is not None and grid[0] * grid[1] == n_patch:
        return grid
    if record.grid is not None and record.grid[0] * record.grid[1] == n_patch:
        return record.grid
    raise ViscopeError(
        f"Expected the {n_patch} patch tokens of layer {record.name!r} (after "
        f"{record.prefix_tokens} prefix tokens) to form the model's patch grid; could not find "
        f"one for input {image_hw}. Choose a layer with a spatial output."
    )
