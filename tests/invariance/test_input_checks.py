"""User errors caught before (or at) the first forward pass, each as one clear line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope import models as vm
from viscope.errors import ViscopeError
from viscope.invariance import InvarianceResult, measure
from viscope.invariance.measures import MEASURES


def images(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.zeros(n))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def counted(net):
    """``net`` and a list that grows by one on each forward pass."""
    calls: list[int] = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    return net, calls


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, r"batch_size to be an int >= 1 .*got 0\. Pass e\.g\. batch_size="),
    ({"batch_size": -4}, r"batch_size to be an int >= 1 .*got -4"),
    ({"batch_size": 8.0}, r"batch_size to be an int >= 1 .*got 8\.0"),
    ({"batch_size": True}, r"batch_size to be an int >= 1 .*got True"),
    ({"samples": 1}, r"samples to be an int >= 2 .*got 1\. Pass e\.g\. samples="),
    ({"samples": 8.5}, r"samples to be an int >= 2 .*got 8\.5"),
    ({"params": 3.0}, r"params to be an int .*got 3\.0\. Pass e\.g\. params="),
    ({"params": "4"}, r"params to be an int .*got '4'"),
])
def test_bad_counts_are_errors_before_any_forward_pass(kwargs, match):
    net, calls = counted(cnn())
    args = {"params": 3, "samples": 8, "layers": ["1"], **kwargs}
    with pytest.raises(ViscopeError, match=match) as err:
        measure(net, images(), "brightness", **args)
    one_line(err)
    assert calls == []


def test_bad_counts_are_checked_before_loading_the_model_or_dataset():
    """A name would be loaded (slow, maybe a download) before a typo in a count is seen."""
    with pytest.raises(ViscopeError, match="batch_size"):
        measure("no-such-model", "no-such-dataset", batch_size=0)


def test_numpy_integers_are_counts():
    r = measure(cnn(), images(), "brightness", params=np.int64(3), samples=np.int64(8),
                batch_size=np.int64(6), layers=["1"])
    assert r.meta["samples"] == 8 and len(r.meta["params"]) == 3


@pytest.mark.parametrize("name", MEASURES.names())
@pytest.mark.parametrize("params", [1, 0, -2])
def test_every_measure_needs_two_transformations(name, params):
    """A spread over one transformation is 0: it would read as perfect invariance."""
    net, calls = counted(cnn())
    with pytest.raises(ViscopeError, match=rf"{name}.*at least 2 parameter values; got "
                                           rf"params={params}\. Pass params=2") as err:
        measure(net, images(), "rotation", measure=name, params=params, samples=8,
                layers=["0"])
    one_line(err)
    assert calls == []


def test_a_list_of_one_callable_is_an_error():
    net, calls = counted(cnn())
    with pytest.raises(ViscopeError, match=r"at least 2 parameter values; got a list of 1 "
                                           r"callable.*2 or more") as err:
        measure(net, images(), [lambda x: x], samples=8, layers=["1"])
    one_line(err)
    assert calls == []
    # two callables are enough, and the list's length overrides params
    r = measure(cnn(), images(), [lambda x: x, lambda x: 1 - x], params=1, samples=8,
                layers=["1"])
    assert len(r.meta["params"]) == 2


def test_a_model_that_rejects_the_image_size_is_a_one_line_error():
    net = vm.create("test_vit", img_size=32, num_classes=3)
    with pytest.raises(ViscopeError, match=r"The model failed on a batch of images of shape "
                                           r"\(1, 3, 31, 31\): .*31.*img_size=.*3-channel"
                       ) as err:
        measure(net, images(size=31), "rotation", params=3, samples=8)
    one_line(err)
    assert isinstance(err.value.__cause__, (AssertionError, RuntimeError))


def test_a_model_that_rejects_the_image_shape_is_a_one_line_error():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 4), nn.ReLU())
    with pytest.raises(ViscopeError, match=r"failed on a batch of images of shape "
                                           r"\(1, 3, 16, 16\): .*shape.*3-channel") as err:
        measure(net, images(), "brightness", params=3, samples=8, layers=["0"])
    one_line(err)
    assert isinstance(err.value.__cause__, RuntimeError)


class MultiLineFailure(nn.Module):
    def forward(self, x):
        raise RuntimeError("first line\n  second line")


def test_the_models_message_is_kept_on_one_line():
    net = nn.Sequential(MultiLineFailure())
    with pytest.raises(ViscopeError, match="first line second line") as err:
        measure(net, images(), "brightness", params=3, samples=8, layers=["0"])
    one_line(err)


def test_a_viscope_error_from_the_forward_pass_is_not_rewrapped():
    class Refuses(nn.Module):
        def forward(self, x):
            raise ViscopeError("Expected something else; fix it.")

    with pytest.raises(ViscopeError) as err:
        measure(nn.Sequential(Refuses()), images(), "brightness", params=3, samples=8,
                layers=["0"])
    assert str(err.value) == "Expected something else; fix it."


def test_out_of_memory_is_not_blamed_on_the_images():
    class OOM(nn.Module):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        measure(nn.Sequential(OOM()), images(), "brightness", params=3, samples=8,
                layers=["0"])


def flat_result(values):
    layers = [f"l{i}" for i in range(len(values))]
    return InvarianceResult(
        measure="nv", primary="nv", layers=layers,
        values={nm: {"nv": np.array([v, v])} for nm, v in zip(layers, values, strict=True)},
        meta={"model": "m", "transform": "t"},
    )


def test_plot_of_non_negative_values_starts_at_zero():
    """Zoomed to 0.6767-0.6802, a 0.5 % difference would fill the plot."""
    values = [0.6767, 0.6802, 0.678, 0.6791]
    ax = flat_result(values).plot()
    bottom, top = ax.get_ylim()
    assert bottom == 0
    assert top > max(values)  # the highest point is not on the frame


def test_plot_with_a_negative_value_keeps_matplotlibs_limits():
    ax = flat_result([-0.2, 0.5, 0.4]).plot()
    assert ax.get_ylim()[0] < -0.2


def test_plot_of_all_zero_values_has_a_visible_range():
    ax = flat_result([0.0, 0.0]).plot()
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top > 0
