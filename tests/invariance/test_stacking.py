"""Small layers of one shape are updated as one stacked state: the numbers are exactly
those of one state per layer, and saving, resuming and merging still see one state per
layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope import models as vm
from viscope.invariance import measure, stacking
from viscope.invariance.measures import MeasureOptions, NormalizedVariance


def data(n=20, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.zeros(n))


def cnn():
    """Layers 0, 1, 2 share the unit shape (4, 12, 12); 3 and 5 do not."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1),
                         nn.Conv2d(4, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


LAYERS = ["0", "1", "2", "3", "5"]


def unstacked(monkeypatch):
    monkeypatch.setattr(stacking, "SMALL_LAYER", 0)


def assert_identical(a, b):
    assert a.layers == b.layers
    for layer in a.layers:
        for q in a.values[layer]:
            np.testing.assert_array_equal(a.values[layer][q], b.values[layer][q],
                                          err_msg=f"{layer} {q}")


@pytest.mark.parametrize("options", [{}, {"spatial": True}, {"variance": True}])
def test_stacked_layers_give_the_numbers_of_one_state_each(monkeypatch, options):
    kw = dict(params=5, samples=20, layers=LAYERS, batch_size=35, **options)
    stacked = measure(cnn(), data(), "rotation", **kw)  # 7 rows, the last batch has 6
    with monkeypatch.context() as m:
        unstacked(m)
        plain = measure(cnn(), data(), "rotation", **kw)
    assert_identical(stacked, plain)


def test_vit_blocks_are_stacked_with_the_same_numbers(monkeypatch):
    net = vm.create("test_vit", img_size=32, num_classes=3)
    groups = []
    real = stacking.stack_layers

    def spy(states, rows, cols):
        out = real(states, rows, cols)
        groups.append(sorted({tuple(s.names) for s in out.values()}))
        return out

    monkeypatch.setattr("viscope.invariance.loop.stack_layers", spy)
    kw = dict(params=4, samples=10, batch_size=24, tokens="patch")
    stacked = measure(net, data(10, 32), "rotation", **kw)
    assert groups == [[tuple(f"blocks.{k}" for k in range(6))]]
    unstacked(monkeypatch)
    assert_identical(stacked, measure(net, data(10, 32), "rotation", **kw))


def test_grouping_leaves_large_and_unlike_layers_alone():
    opts = MeasureOptions()
    states = {
        "a": NormalizedVariance(4, (3, 8, 8), (1, 2), opts),
        "b": NormalizedVariance(4, (3, 8, 8), (1, 2), opts),
        "c": NormalizedVariance(4, (5,), (), opts),  # alone in its shape
        "d": NormalizedVariance(4, (3, 8, 8), (1, 2), MeasureOptions(variance=True)),
        "big1": NormalizedVariance(4, (64, 64, 64), (1, 2), opts),
        "big2": NormalizedVariance(4, (64, 64, 64), (1, 2), opts),
    }
    stacks = stacking.stack_layers(states, rows=8, cols=4)
    assert set(stacks) == {"a", "b"} and stacks["a"] is stacks["b"]
    # the layers' states are views of the stacked one: its updates are theirs
    acts = torch.randn(8, 4, 2, 3, 8, 8)
    stacks["a"].state.update(acts)
    alone = NormalizedVariance(4, (3, 8, 8), (1, 2), opts)
    alone.update(acts[:, :, 1].contiguous())
    for k in ("tv", "sv", "nv"):
        torch.testing.assert_close(states["b"].compute()[k], alone.compute()[k],
                                   rtol=0, atol=0)


class Stop(Exception):
    pass


def test_resume_and_checkpoint_size_with_stacked_layers(tmp_path, monkeypatch):
    kw = dict(transform="rotation", params=4, samples=20, layers=LAYERS, batch_size=12)
    whole = measure(cnn(), data(), **kw)

    def stop_at(k):
        def progress(done, total):
            if done == k:
                raise Stop
        return progress

    sizes = {}
    for name, patch in (("stacked", False), ("unstacked", True)):
        file = tmp_path / f"{name}.pt"
        with monkeypatch.context() as m:
            if patch:
                unstacked(m)
            with pytest.raises(Stop):
                measure(cnn(), data(), resume=file, save_every=0, progress=stop_at(3), **kw)
        sizes[name] = file.stat().st_size
        resumed = measure(cnn(), data(), resume=file, save_every=0, **kw)
        assert_identical(resumed, whole)
    # each layer's tensors are saved on their own, not the stack's storage once per layer
    assert sizes["stacked"] < 1.1 * sizes["unstacked"]
