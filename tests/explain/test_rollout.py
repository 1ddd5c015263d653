"""attention_rollout's discard_ratio against a per-image NumPy loop (jacobgil/vit-explain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import viscope.explain as E
import viscope.models as M
from viscope.errors import ViscopeError
from viscope.explain.api import finish


def _vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return M.create("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, depth=3,
                    **kwargs).eval()


def _reference(attns, prefix, has_cls, head_fusion, discard_ratio, residual=0.5):
    """One image at a time, one entry at a time; returns the maps and how often (0, 0)
    was among the smallest entries (and so spared)."""
    b, n = attns[0].shape[0], attns[0].shape[-1]
    k = int(n * n * discard_ratio)
    maps, spared = [], 0
    for i in range(b):
        roll = np.eye(n)
        for a in attns:
            fused = getattr(a[i], head_fusion)(axis=0).copy()
            order = np.argsort(fused.ravel(), kind="stable")[:k]
            for flat in order:
                if flat == 0:
                    spared += 1
                    continue
                fused[flat // n, flat % n] = 0.0
            mixed = residual * np.eye(n) + (1 - residual) * fused
            for r in range(n):
                mixed[r] /= mixed[r].sum()
            roll = mixed @ roll
        maps.append(roll[0, prefix:] if has_cls else roll[prefix:, prefix:].mean(axis=0))
    return np.stack(maps), spared


@pytest.mark.parametrize(("kwargs", "head_fusion", "discard_ratio"), [
    ({}, "mean", 0.0), ({}, "mean", 0.5), ({}, "max", 0.9), ({}, "min", 0.3),
    ({"reg_tokens": 2, "class_token": False, "global_pool": "avg"}, "mean", 0.9),
])
def test_discard_ratio_equals_a_per_image_loop(kwargs, head_fusion, discard_ratio,
                                               attentions) -> None:
    model = _vit(**kwargs)
    net = M.unwrap(model)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = E.attention_rollout(model, images, head_fusion=head_fusion,
                               discard_ratio=discard_ratio)
    attns = [a.double().numpy() for a in attentions(model, images)]
    ref, spared = _reference(attns, net.num_prefix_tokens,
                             net.cls_token is not None, head_fusion, discard_ratio)
    assert ours.shape == (3, 4, 4)
    np.testing.assert_allclose(ours.flatten(1).double().numpy(), ref, rtol=1e-4, atol=1e-6)
    if discard_ratio >= 0.9:
        assert spared > 0  # the (0, 0) exception was exercised


def test_discard_changes_the_map_and_zero_is_the_plain_rollout() -> None:
    model = _vit()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain = E.attention_rollout(model, images)
    assert torch.equal(E.attention_rollout(model, images, discard_ratio=0.0), plain)
    # 17 tokens: a ratio below 1 / 289 discards no entry
    assert torch.equal(E.attention_rollout(model, images, discard_ratio=0.003), plain)
    sharp = E.attention_rollout(model, images, discard_ratio=0.9)
    assert not torch.allclose(sharp, plain)
    via_attribute = E.attribute(model, images, "rollout", discard_ratio=0.9, normalize=False)
    torch.testing.assert_close(via_attribute, finish(sharp, (32, 32), normalize=False))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_discard_ratio_outside_0_1_is_an_error(ratio) -> None:
    with pytest.raises(ViscopeError, match=r"discard_ratio in \[0, 1\)"):
        E.attention_rollout(_vit(), torch.rand(1, 3, 32, 32), discard_ratio=ratio)
