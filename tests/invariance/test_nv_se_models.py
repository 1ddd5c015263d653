"""``nv_se`` on real architectures (small configs, random weights) equals the brute force
of ``nv_se_reference.py`` per layer: channels-first CNN stages, channels-last Swin
stages (timm and torchvision), and the patch tokens of ViTs with a class token
(torchvision) or class + distillation tokens (DeiT)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch.utils.data import TensorDataset

from viscope.invariance import measure
from viscope.transforms import create as family

sys.path.insert(0, str(Path(__file__).parent))
from nv_se_reference import reference_nv_se  # noqa: E402


def swin_timm():
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                             embed_dim=24, depths=(1, 1), num_heads=(1, 2))


def swin_torchvision():
    return torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=24, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4])


def vit_torchvision():
    return torchvision.models.VisionTransformer(64, 8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64)


def deit_distilled():
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, patch_size=8,
                             depth=2)


# name: (model factory, layer, layout, prefix tokens, token grid)
CASES = {
    "convnext_atto": (lambda: timm.create_model("convnext_atto"), "stages.1", "chw", 0, None),
    "mobilenetv3_small_050": (lambda: timm.create_model("mobilenetv3_small_050"),
                              "blocks.1", "chw", 0, None),
    "regnetx_002": (lambda: timm.create_model("regnetx_002"), "s1", "chw", 0, None),
    "swin_timm": (swin_timm, "layers.0", "hwc", 0, None),
    "swin_t_torchvision": (swin_torchvision, "features.1", "hwc", 0, None),
    "vit_torchvision": (vit_torchvision, "encoder.layers.encoder_layer_0", "tokens", 1,
                        (8, 8)),
    "deit_distilled": (deit_distilled, "blocks.0", "tokens", 2, (8, 8)),
}


SLOW = {"convnext_atto", "mobilenetv3_small_050"}  # ~10 s each on 2 shared cores


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_nv_se_equals_bruteforce_on_small_models(name):
    make, layer, layout, prefix, tokens_hw = CASES[name]
    torch.manual_seed(0)
    net = make().eval()
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fam = family("rotation", low=-30.0, high=30.0)
    r = measure(net, TensorDataset(x, torch.zeros(6)), fam, measure="nv_se", params=4,
                samples=6, layers=[layer], tokens="patch", batch_size=12)
    assert r.layouts[layer] == layout
    assert r.shapes[layer] == list(r.per_unit(layer).shape)  # (C, h, w) for every layout
    ref = reference_nv_se(net, x, fam, fam.grid(4), layer, layout, prefix, tokens_hw)
    assert 0 < ref["valid"].sum() < ref["valid"].size
    np.testing.assert_array_equal(np.isfinite(r.per_unit(layer)), ref["counted"])
    row = r.per_layer().iloc[0]
    for q in ("nv", "tv", "sv"):
        np.testing.assert_allclose(row[q], ref[q], rtol=1e-5, err_msg=q)
