"""Mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023).

Pre-trained ViTs have query/key products close to the identity and value/projection
products close to minus the identity; the paper initialises each attention layer so
that, per head, ``W_q W_kᵀ ≈ α1 Z1 + β1 I`` and, over the layer, ``W_v W_proj ≈
α2 Z2 − β2 I``, with ``Z`` Gaussian of variance ``1/d``, and gets the factors from the
SVD of the target (``U √S`` and ``V √S``, truncated to the head dimension for Q/K).
Defaults α1 = β1 = 0.7 and α2 = β2 = 0.4 are the values the paper reports for its
ViT experiments, as we recall them (the stored sources did not show the text; check
them against the paper before quoting). Data-free; biases are left as they are.

Weights here are ``nn.Linear`` weights (out, in), rows of ``qkv`` ordered q, k, v and
by head within each, as timm's ``Attention`` has them; in the paper's row-vector
notation ``W_q^h = qkv.weight[q rows of head h].T``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models.wrapper import unwrap

ALPHA1, BETA1, ALPHA2, BETA2 = 0.7, 0.7, 0.4, 0.4


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The self-attention modules with a fused ``qkv`` (d → 3d), a ``proj`` (d → d) and
    ``num_heads`` (timm ViTs' ``Attention``)."""
    found = []
    for name, module in unwrap(model).named_modules():
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        heads = getattr(module, "num_heads", None)
        if (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
                and isinstance(heads, int) and qkv.out_features == 3 * qkv.in_features
                and proj.in_features == proj.out_features == qkv.in_features
                and qkv.in_features % heads == 0):
            found.append((name, module))
    return found


def factor(target: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` of shapes (d, rank) with ``L Rᵀ`` the best rank-``rank`` approximation
    of ``target`` (``U √S``, ``V √S`` of its SVD, as the paper does)."""
    u, s, vh = torch.linalg.svd(target)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


def mimetic(
    model: nn.Module,
    *,
    seed: int = 0,
    alpha1: float = ALPHA1,
    beta1: float = BETA1,
    alpha2: float = ALPHA2,
    beta2: float = BETA2,
) -> list[str]:
    """Initialise every attention layer of ``model`` in place, mimetically.

    Args:
        model: a ViT (timm ``Attention`` modules with a fused ``qkv``).
        seed: seeds the Gaussian ``Z`` matrices.
        alpha1, beta1: weight of the noise and of ``+I`` in ``W_q W_kᵀ`` (per head).
        alpha2, beta2: weight of the noise and of ``-I`` in ``W_v W_proj``.

    Returns:
        The names of the attention modules changed.

    Raises:
        ViscopeError: the model has no such attention layer (a CNN).
    """
    layers = attention_layers(model)
    if not layers:
        raise ViscopeError(
            f"Expected a ViT with self-attention layers (qkv and proj); "
            f"{type(unwrap(model)).__name__} has none: mimetic needs a ViT. Use pca, zca, "
            "kmeans or default for a CNN."
        )
    generator = torch.Generator().manual_seed(seed)
    eye_cache: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for _, attn in layers:
            d, heads = attn.qkv.in_features, attn.num_heads
            hd = d // heads
            eye = eye_cache.setdefault(d, torch.eye(d, dtype=torch.float64))
            q_rows, k_rows = [], []
            for _ in range(heads):
                z = torch.randn(d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
                wq, wk = factor(alpha1 * z + beta1 * eye, hd)  # (d, hd) each
                q_rows.append(wq.T)
                k_rows.append(wk.T)
            z = torch.randn(d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
            wv, wproj = factor(alpha2 * z - beta2 * eye, d)  # U√S, V√S
            weight = attn.qkv.weight
            new = torch.cat([*q_rows, *k_rows, wv.T])  # Linear rows: outputs
            weight.copy_(new.to(weight.dtype))
            # x W_v W_proj (paper) = x (U√S)(√S Vᵀ): proj's Linear weight is (√S Vᵀ)ᵀ
            attn.proj.weight.copy_(wproj.to(attn.proj.weight.dtype))
    return [name for name, _ in layers]
