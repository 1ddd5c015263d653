"""An interrupted measurement resumes from its saved statistics and ends where an
uninterrupted one does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope.errors import ViscopeError
from viscope.invariance import measure


def data(n=20, size=12):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.zeros(n))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Stop(Exception):
    pass


def stop_after(k):
    def progress(done, total):
        if done == k:
            raise Stop
    return progress


KW = dict(transform="rotation", samples=20, params=4, layers=["1", "2", "4"], batch_size=12)


def assert_same(a, b):
    assert a.layers == b.layers
    for layer in a.layers:
        for key in a.values[layer]:
            np.testing.assert_allclose(a.values[layer][key], b.values[layer][key], rtol=1e-12,
                                       atol=0, err_msg=f"{layer} {key}")


# 20 samples, 3 per batch: 7 batches per stage; goodfellow has 2 stages
@pytest.mark.parametrize("measure_name, stop", [("nv", 3), ("nv", 7), ("goodfellow", 2),
                                                ("goodfellow", 7), ("goodfellow", 10),
                                                ("distance", 5)])
def test_resumed_measurement_equals_an_uninterrupted_one(tmp_path, device, measure_name, stop):
    whole = measure(cnn(), data(), measure=measure_name, device=device, **KW)
    file = tmp_path / "resume.pt"
    with pytest.raises(Stop):
        measure(cnn(), data(), measure=measure_name, device=device, resume=file, save_every=0,
                progress=stop_after(stop), **KW)
    assert file.is_file()
    calls = []
    model = cnn()
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    seen = []
    resumed = measure(model, data(), measure=measure_name, device=device, resume=file,
                      save_every=0, progress=lambda d, t: seen.append((d, t)), **KW)
    assert_same(resumed, whole)
    total = seen[-1][1]
    # progress starts at the saved count and goes on from there
    assert [d for d, _ in seen] == list(range(stop, total + 1))
    # layer selection's dry pass, one probe pass, then only the batches left
    assert len(calls) == 2 + total - stop
    assert not file.exists()


def test_a_file_from_another_measurement_is_refused(tmp_path) -> None:
    file = tmp_path / "resume.pt"
    with pytest.raises(Stop):
        measure(cnn(), data(), resume=file, save_every=0, progress=stop_after(2), **KW)
    other = {**KW, "params": 5}
    with pytest.raises(ViscopeError, match="different measurement"):
        measure(cnn(), data(), resume=file, **other)
    trained = cnn()
    with torch.no_grad():
        trained[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ViscopeError, match="different measurement"):
        measure(trained, data(), resume=file, **KW)
    assert file.is_file()  # nothing already computed is lost


def test_an_unreadable_file_says_to_delete_it(tmp_path) -> None:
    file = tmp_path / "resume.pt"
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(ViscopeError, match="delete it"):
        measure(cnn(), data(), resume=file, **KW)


def test_nan_pixels_stop_with_the_sample_named_and_the_work_kept(tmp_path) -> None:
    clean = data()
    x = clean.tensors[0].clone()
    x[11, 1, 4, 4] = float("nan")
    file = tmp_path / "resume.pt"
    with pytest.raises(ViscopeError, match=r"samples \[11\] have NaN") as err:
        measure(cnn(), TensorDataset(x, clean.tensors[1]), resume=file, **KW)
    assert "resumes" in str(err.value) and file.is_file()
    saved = torch.load(file, weights_only=True)
    assert saved["batches"] == 3  # 11 is the 11th sample drawn: batches 1-3 are kept
    # once the sample is fixed, the run goes on and ends where a clean run does
    x[11, 1, 4, 4] = 0.5
    clean.tensors[0][11, 1, 4, 4] = 0.5
    assert_same(measure(cnn(), TensorDataset(x, clean.tensors[1]), resume=file, **KW),
                measure(cnn(), clean, **KW))
    with pytest.raises(ViscopeError, match=r"samples \[11\].*and run again"):
        x[11, 1, 4, 4] = float("inf")
        measure(cnn(), TensorDataset(x, clean.tensors[1]), **KW)


def test_units_with_non_finite_activations_are_reported() -> None:
    model = cnn()
    with torch.no_grad():
        model[0].bias[1] = float("inf")
    with pytest.warns(UserWarning, match=r"NaN or infinite activations in layers 1, 2, 4"):
        r = measure(model, data(), **KW)
    assert np.isnan(r.per_unit("1", "nv")).reshape(4, -1).all(axis=1).tolist() == [
        False, True, False, False]  # channel 1 only
    # layer 1's average is over its finite units; the inf spreads to all of layers 2 and 4
    assert np.isfinite(r.per_layer()["nv"]).tolist() == [True, False, False]


def test_ctrl_c_finishes_the_batch_saves_and_resumes(tmp_path) -> None:
    import os
    import signal

    def press_ctrl_c(done, total):
        if done == 2:
            os.kill(os.getpid(), signal.SIGINT)

    file = tmp_path / "resume.pt"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="run it again to resume"):
        measure(cnn(), data(), resume=file, save_every=1e9, progress=press_ctrl_c, **KW)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert torch.load(file, weights_only=True)["batches"] == 3  # the batch in flight ended
    assert_same(measure(cnn(), data(), resume=file, **KW), measure(cnn(), data(), **KW))
