"""Reference test: viscope's NV equals tmeasures 1.2.11 on a small CNN.

Both libraries get the same transformation callables and the same samples; tmeasures
gets a correct activations module (outputs cloned at hook time) so that the comparison
is about the measure, not about tmeasures' in-place-op problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

tm = pytest.importorskip("tmeasures")
from tmeasures import pytorch as tmp  # noqa: E402

from viscope.invariance import measure  # noqa: E402

LAYERS = ["0", "1", "3", "4", "7"]


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5),
    ).double()


class ImagesOnly(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


class Labelled(ImagesOnly):
    def __getitem__(self, i):
        return self.images[i], 0


class CloningActivations(tmp.ActivationsModule):
    def __init__(self, net: nn.Module, names: list[str]):
        super().__init__()
        self.net, self.names = net, names

    def activation_names(self):
        return self.names

    def forward_activations(self, x):
        modules = dict(self.net.named_modules())
        out: dict[str, torch.Tensor] = {}
        hooks = [modules[n].register_forward_hook(
            lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone())) for n in self.names]
        try:
            self.net(x)
        finally:
            for h in hooks:
                h.remove()
        return [out[n] for n in self.names]


class TMTransformation(tmp.PyTorchTransformation):
    def __init__(self, f, i):
        super().__init__()
        self.f, self.i = f, i

    def __call__(self, x):
        return self.f(x.unsqueeze(0))[0]

    def parameters(self):
        return torch.tensor([float(self.i)])


class TMSet(tmp.PyTorchTransformationSet):
    def id(self):
        return "viscope-callables"

    def valid_input(self, shape):
        return True

    def copy(self):
        return TMSet(list(self))


def callables():
    return [
        lambda x: x,
        lambda x: (x * 1.3).clamp(0, 1),
        lambda x: torch.rot90(x, 1, dims=(-2, -1)),
        lambda x: torch.flip(x, dims=(-1,)),
        lambda x: 1 - x,
        lambda x: torch.roll(x, 3, dims=-1),
    ]


@pytest.mark.parametrize("spatial", [False, True])
def test_nv_per_layer_matches_tmeasures(spatial):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 16, 16, generator=g, dtype=torch.float64)
    net = small_cnn().eval()
    fs = callables()

    ours = measure(net, Labelled(images), fs, samples=24, layers=LAYERS, batch_size=18,
                   spatial=spatial, device="cpu")

    tset = TMSet([TMTransformation(f, i) for i, f in enumerate(fs)])
    transformation = tmp.AverageFeatureMaps() if spatial else tmp.NoTransformation()
    theirs = tmp.NormalizedVarianceInvariance(transformation).eval(
        ImagesOnly(images), tset, CloningActivations(net, LAYERS),
        tmp.PyTorchMeasureOptions(batch_size=8, verbose=False, num_workers=0),
    ).numpy()
    # measure() samples a seeded permutation of the dataset; NV does not depend on order
    np.testing.assert_allclose(ours.per_layer()["nv"].to_numpy(), theirs.per_layer_average(),
                               rtol=1e-6)
    for layer, ref in zip(LAYERS, theirs.layers, strict=True):
        np.testing.assert_allclose(ours.per_unit(layer), ref, rtol=1e-6, atol=1e-9)
