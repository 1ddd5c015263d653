"""Images are cast to the model's floating dtype: a ``.double()`` or bfloat16 model
measures float32 data (both used to fail with torch's "Input type (float) and bias
type (double) should be the same")."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope.invariance import measure


def data(n=12, size=16):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.zeros(n))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


KW = dict(params=5, samples=12, layers=["0", "2", "3", "5"], batch_size=20)


@pytest.mark.parametrize("transform, name", [("rotation", "nv"), ("brightness", "nv"),
                                             ("rotation", "nv_se")])
def test_double_model_gives_the_float_numbers(transform, name):
    kw = {**KW, "layers": ["0", "2", "3"]} if name == "nv_se" else KW  # spatial layers
    net = cnn()
    single = measure(net, data(), transform, measure=name, **kw).per_layer()
    double = copy.deepcopy(net).double()
    out = measure(double, data(), transform, measure=name, **kw).per_layer()
    assert next(double.parameters()).dtype == torch.float64  # the model is left as it was
    for q in ("tv", "sv", "nv"):
        np.testing.assert_allclose(out[q], single[q], rtol=1e-5, err_msg=q)


def test_bfloat16_model_runs_and_reads_close_to_float():
    net = cnn()
    single = measure(net, data(), "rotation", **KW).per_layer()
    half = measure(copy.deepcopy(net).to(torch.bfloat16), data(), "rotation", **KW)
    out = half.per_layer()
    assert np.isfinite(out[["tv", "sv", "nv"]].to_numpy()).all()
    # bfloat16 keeps 8 bits of mantissa: a few % on TV and SV
    np.testing.assert_allclose(out["nv"], single["nv"], rtol=0.05)
    np.testing.assert_allclose(out["sv"], single["sv"], rtol=0.05)
