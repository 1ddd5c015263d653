"""explain_command: the run folder it writes, from a checkpoint, and its errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from viscope import data, models
from viscope.errors import ViscopeError
from viscope.explain import attribute
from viscope.explain import run as command
from viscope.explain.run import MAX_OVERLAYS, explain_command


def test_explain_command_from_checkpoint(tmp_path, capsys):
    net = models.create("test_efficientnet", num_classes=5)
    ckpt = models.save_checkpoint(net, tmp_path / "model.pt")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # all-zero maps of a random model
        files = explain_command(str(ckpt), "shapes", ["gradcam", "layercam"], 4, out,
                                batch_size=3)
    for name in ("maps.npz", "metrics.csv", "metrics_summary.csv", "overlays.png",
                 "config.yaml"):
        assert (out / name).is_file()
    assert set(files) >= {"maps", "metrics", "summary", "overlays", "config"}
    printed = capsys.readouterr().out
    assert "gradcam:" in printed and "layercam:" in printed

    table = pd.read_csv(out / "metrics.csv")
    assert len(table) == 4 * 2
    assert list(table.columns[:4]) == ["index", "label", "class", "method"]
    for col in ("deletion_auc", "insertion_auc", "energy_pointing_game", "iou"):
        assert table[col].between(0, 1).all()
    assert set(table["pointing_game"]) <= {0.0, 1.0}
    summary = pd.read_csv(out / "metrics_summary.csv")
    assert list(summary["method"]) == ["gradcam", "layercam"]

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["methods"] == ["gradcam", "layercam"] and config["samples"] == 4
    saved = np.load(out / "maps.npz")
    assert saved["gradcam"].shape == saved["layercam"].shape == (4, 32, 32)
    assert saved["masks"].shape == (4, 32, 32) and saved["images"].shape == (4, 3, 32, 32)

    # The same maps again, from the items the command says it used, in the same batches (a
    # random model's near-constant maps are min-max scaled, so float noise of another
    # batching would show).
    ds = data.create("shapes", split="test", size=32, seed=0)
    items = [ds[int(i)] for i in saved["indices"]]
    assert [it[1] for it in items] == saved["labels"].tolist()
    images = torch.stack([it[0] for it in items])
    labels = saved["labels"].tolist()
    again = models.create(ckpt).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = torch.cat([
            attribute(again, images[s], method="layercam", target=labels[s])
            for s in (slice(0, 3), slice(3, 4))
        ])
    np.testing.assert_allclose(saved["layercam"], expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("samples", [MAX_OVERLAYS + 2, 3])
def test_overlay_title_says_how_many_of_the_images_it_shows(tmp_path, monkeypatch, samples):
    figures, draw = [], command.overlay_grid

    def keep(*args, **kwargs):
        figures.append(draw(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(command, "overlay_grid", keep)
    # The metrics are not what is tested here, and deletion/insertion AUC are the slow part.
    monkeypatch.setattr(command, "_metrics", lambda net, images, *a: {
        "deletion_auc": torch.zeros(len(images))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # all-zero maps of a random model
        explain_command("test_efficientnet", "shapes", ["gradcam"], samples, tmp_path,
                        batch_size=samples)
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert title.startswith("test_efficientnet on shapes (test split)")
    shown = min(samples, MAX_OVERLAYS)
    assert len(np.load(tmp_path / "maps.npz")["gradcam"]) == samples
    assert sum(ax.get_title() == "image" for ax in fig.axes) == 1
    assert sum(bool(ax.get_ylabel().startswith("#")) for ax in fig.axes) == shown
    if samples > MAX_OVERLAYS:
        assert title.endswith(f"(first {MAX_OVERLAYS} of {samples} images)")
    else:
        assert "first" not in title


def test_unknown_method_lists_known(tmp_path):
    with pytest.raises(ViscopeError, match="Known methods: .*gradcam"):
        explain_command("test_efficientnet", "shapes", ["gradcma"], 2, tmp_path)
    assert not (tmp_path / "maps.npz").exists()
