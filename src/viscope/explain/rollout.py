"""Attention rollout (Abnar & Zuidema, 2020) for timm ViTs.

timm's ``Attention`` uses fused scaled-dot-product attention, which never materialises
the attention weights; while explaining, ``fused_attn`` is set to ``False`` on every
attention module and restored in ``finally``. The weights are read from the output of
each block's ``attn.attn_drop`` (identity in eval mode) through the tap.
"""

from __future__ import annotations

import torch
from torch import nn

from viscope.activations.tap import Tap
from viscope.errors import ViscopeError
from viscope.explain.layouts import token_grid
from viscope.explain.targets import Target
from viscope.models import unwrap
from viscope.models.tokens import patch_grid, prefix_tokens


def attention_rollout(
    model: nn.Module, images: torch.Tensor, target: Target | None = None, *,
    head_fusion: str = "mean", residual: float = 0.5, discard_ratio: float = 0.0,
) -> torch.Tensor:
    """Rollout map (B, h, w) on the patch grid; class-agnostic (the target is unused).

    Each layer's head-fused attention ``A`` becomes ``residual * I + (1 - residual) * A``
    (rows renormalised); the product over layers gives how much each token draws from
    each input token. The map is the class token's row (the mean over patch rows when the
    model has no class token), over patch tokens only (register tokens dropped).

    With ``discard_ratio > 0``, before the identity is mixed in, the
    ``int(n * n * discard_ratio)`` smallest entries of each image's fused (n, n) matrix
    are set to 0, except entry (0, 0), which is never discarded (so one fewer is zeroed
    when it is among the smallest): the ``rollout`` of jacobgil/vit-explain, which removes
    low-attention noise and gives sharper maps.

    Args:
        model: a timm ViT (wrapped or not).
        images: (B, C, H, W).
        target: unused by the map (rollout does not depend on the class); class indices
            are still checked against the model's outputs.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        residual: weight of the identity (the skip connection).
        discard_ratio: the share in [0, 1) of each layer's smallest fused attention
            entries set to 0 (0: none, the plain rollout of Abnar & Zuidema).

    Returns:
        (B, rows, cols) rollout on the patch grid.

    Raises:
        ViscopeError: the model has no timm attention blocks, an unknown ``head_fusion``,
            ``discard_ratio`` outside [0, 1), or a target class the model does not have.
    """
    net = unwrap(model)
    blocks = getattr(net, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop")
                                 for b in blocks):
        raise ViscopeError(
            f"Expected a timm VisionTransformer (blocks.*.attn.attn_drop) for attention "
            f"rollout; got {type(net).__name__}. Use a CAM method such as 'gradcam' instead."
        )
    if head_fusion not in ("mean", "max", "min"):
        raise ViscopeError(f"Expected head_fusion 'mean', 'max' or 'min'; got {head_fusion!r}.")
    if (isinstance(discard_ratio, bool) or not isinstance(discard_ratio, int | float)
            or not 0 <= discard_ratio < 1):
        raise ViscopeError(
            f"Expected discard_ratio in [0, 1) (the share of smallest attention entries set "
            f"to 0); got {discard_ratio!r}. Pass e.g. 0.9, or 0 to discard nothing."
        )
    attns: list[torch.Tensor] = []
    names = [f"blocks.{i}.attn.attn_drop" for i in range(len(blocks))]
    fused = [(b.attn, getattr(b.attn, "fused_attn", None)) for b in blocks]
    try:
        for attn, _ in fused:
            if hasattr(attn, "fused_attn"):
                attn.fused_attn = False
        with torch.no_grad(), Tap(model, names, callback=lambda n, a: attns.append(a)) as tap:
            outputs = model(images)
        record = tap.records[names[0]]
    finally:
        for attn, value in fused:
            if value is not None:
                attn.fused_attn = value
    if target is not None:
        target.check(outputs)  # class-agnostic: still refuse a class the model lacks
    n = attns[0].shape[-1]
    prefix = prefix_tokens(net)
    if prefix is None:  # no count in the structure: what precedes the patch grid
        grid = patch_grid(net, (images.shape[-2], images.shape[-1]))
        if grid is None or n < grid[0] * grid[1]:
            raise ViscopeError(
                f"Expected to tell the prefix (class/register) tokens of {type(net).__name__} "
                f"from its {n} tokens; its structure does not say. Use a CAM method instead."
            )
        prefix = n - grid[0] * grid[1]
    eye = torch.eye(n, device=images.device, dtype=attns[0].dtype)
    roll = eye.expand(images.shape[0], n, n)
    for a in attns:
        fused_a = getattr(a, head_fusion)(dim=1)
        fused_a = fused_a if head_fusion == "mean" else fused_a.values
        fused_a = _discard_smallest(fused_a, int(n * n * discard_ratio))
        a = residual * eye + (1 - residual) * fused_a
        a = a / a.sum(dim=-1, keepdim=True)
        roll = a @ roll
    has_cls = getattr(net, "cls_token", None) is not None
    row = roll[:, 0, prefix:] if has_cls else roll[:, prefix:, prefix:].mean(dim=1)
    grid = token_grid(n - prefix, record, model, (images.shape[-2], images.shape[-1]))
    return row.reshape(images.shape[0], *grid)


def _discard_smallest(attn: torch.Tensor, k: int) -> torch.Tensor:
    """``attn`` (B, n, n) with each image's ``k`` smallest entries set to 0, except (0, 0).

    As jacobgil/vit-explain's ``rollout``: the k smallest are chosen first and (0, 0) is
    then spared, so only k - 1 are zeroed when it is among them. The reference zeroes
    only the first image of a batch; here each image loses its own smallest entries.
    """
    if k == 0:
        return attn
    flat = attn.flatten(1)
    drop = torch.zeros_like(flat, dtype=torch.bool)
    drop.scatter_(1, flat.topk(k, dim=1, largest=False).indices, True)
    drop[:, 0] = False
    return flat.masked_fill(drop, 0).view_as(attn)
