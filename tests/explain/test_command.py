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


# --- `viscope explain` on a user's own folder, through the command line ---------------------


def cli(args, capsys):
    """Run ``viscope ARGS`` as a user does; (exit code, stdout, stderr)."""
    from viscope.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def photos(tmp_path):
    """15 photographs of two classes as a new user has them: root/<class>/<image>.png
    (8 cats, 7 dogs; coloured noise with a bright square or disc)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    yy, xx = np.mgrid[:40, :40]
    for cls, count in (("cat", 8), ("dog", 7)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            img = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
            cy, cx = rng.integers(10, 30, 2)
            shape = (abs(yy - cy) < 7) & (abs(xx - cx) < 7) if cls == "cat" else \
                (yy - cy) ** 2 + (xx - cx) ** 2 < 49
            img[shape] = 230
            Image.fromarray(img).save(root / cls / f"{cls}{i}.png")
    return root


@pytest.fixture
def checkpoint(tmp_path):
    """A random-init two-class test_resnet saved as a checkpoint, and the model itself."""
    torch.manual_seed(0)
    net = models.create("test_resnet", num_classes=2).eval()
    return models.save_checkpoint(net, tmp_path / "model.pt"), net


@pytest.fixture
def no_metrics(monkeypatch):
    """Deletion/insertion AUC are the slow part and not what these tests check."""
    monkeypatch.setattr(command, "_metrics", lambda net, images, *a: {
        "deletion_auc": torch.zeros(len(images))})


def _explain(photos, checkpoint, out, capsys, *extra):
    ckpt, _ = checkpoint
    return cli(["explain", "--model", ckpt, "--dataset", photos, "--out", out,
                "--method", "gradcam", *extra], capsys)


def _folder_images(photos):
    """The 15 images as viscope reads them (the command's own reading is what is tested
    against the files, so this reads through the same data API, independently indexed)."""
    ds = data.create(str(photos), split="all", size=32)
    return torch.stack([ds[i][0] for i in range(len(ds))]), [ds[i][1] for i in range(len(ds))]


def test_a_plain_folder_is_explained_whole(photos, checkpoint, tmp_path, capsys, no_metrics):
    """It explained the test split only (2 of 15 images) and the error for more named no
    way out. Now a folder is explained whole by default, and --split all says so too."""
    for extra, out in (((), "default"), (("--split", "all", "--samples", "15"), "all")):
        code, _, err = _explain(photos, checkpoint, tmp_path / out, capsys, *extra)
        assert code == 0, err
        saved = np.load(tmp_path / out / "maps.npz")
        assert saved["indices"].tolist() == list(range(15))
        images, labels = _folder_images(photos)
        np.testing.assert_array_equal(saved["images"], images.numpy())
        assert saved["labels"].tolist() == labels == [0] * 8 + [1] * 7
        config = yaml.safe_load((tmp_path / out / "config.yaml").read_text())
        assert config["split"] == "all" and config["samples"] == 15


def test_split_of_a_folder_and_the_way_out_of_too_many_samples(photos, checkpoint, tmp_path,
                                                               capsys, no_metrics):
    code, _, err = _explain(photos, checkpoint, tmp_path / "test", capsys, "--split", "test")
    assert code == 0, err
    test = data.create(str(photos), split="test", size=32)
    assert 2 <= len(test) <= 3
    saved = np.load(tmp_path / "test" / "maps.npz")
    assert saved["indices"].tolist() == list(range(len(test)))  # the whole (small) split
    np.testing.assert_array_equal(saved["images"],
                                  torch.stack([test[i][0] for i in range(len(test))]).numpy())
    code, _, err = _explain(photos, checkpoint, tmp_path / "more", capsys,
                            "--split", "test", "--samples", "10")
    assert code == 2 and err.count("\n") == 1
    assert f"Expected samples <= {len(test)}" in err and "--split all (15 images)" in err
    assert not (tmp_path / "more").exists()


def test_a_built_in_dataset_keeps_the_test_split(tmp_path, capsys, no_metrics):
    code, _, err = cli(["explain", "--model", "test_resnet", "--dataset", "shapes", "--out",
                        tmp_path, "--samples", "3"], capsys)
    assert code == 0, err
    saved = np.load(tmp_path / "maps.npz")
    test = data.create("shapes", split="test", size=32, seed=0)
    np.testing.assert_array_equal(
        saved["images"], torch.stack([test[int(i)][0] for i in saved["indices"]]).numpy())
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["split"] == "test"


def test_target_predicted_and_a_class_index(photos, checkpoint, tmp_path, capsys, no_metrics):
    """--target predicted explains the model's argmax (read here from a forward pass of
    the checkpoint's model), --target 1 class 1 for every image; the maps are those of
    attribute() for that class."""
    ckpt, net = checkpoint
    images, _ = _folder_images(photos)
    with torch.no_grad():
        predicted = net(images).argmax(dim=1)
    for arg, want in (("predicted", predicted), ("1", torch.ones(15, dtype=torch.long))):
        out = tmp_path / arg
        code, _, err = _explain(photos, checkpoint, out, capsys, "--target", arg)
        assert code == 0, err
        table = pd.read_csv(out / "metrics.csv")
        assert table["target"].tolist() == want.tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected = attribute(net, images, "gradcam", target=want.tolist())
        np.testing.assert_allclose(np.load(out / "maps.npz")["gradcam"], expected.numpy(),
                                   atol=1e-5)
        assert yaml.safe_load((out / "config.yaml").read_text())["target"] == \
            (arg if arg == "predicted" else 1)


@pytest.mark.parametrize(("arg", "message"), [
    ("2", "Expected target in [0, 2) (the model has 2 outputs); got 2."),
    ("cat", "Expected target 'true' (the label), 'predicted' or a class index"),
])
def test_a_target_the_model_does_not_have_is_refused(photos, checkpoint, tmp_path, capsys,
                                                     arg, message):
    code, _, err = _explain(photos, checkpoint, tmp_path / "run", capsys, "--target", arg)
    assert code == 2 and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "run").exists()


def test_methods_that_do_not_apply_are_refused_before_any_is_computed(photos, checkpoint,
                                                                      tmp_path, capsys,
                                                                      monkeypatch):
    """gradcam, cbrise and integrated_gradients were computed (minutes for CB-RISE), then
    rollout failed on the ResNet and nothing was written. Now one line names rollout and
    why, before any map of the run is computed, and the run folder is not created."""
    calls = []
    maps = command._maps
    monkeypatch.setattr(command, "_maps", lambda *a, **k: calls.append(a[3]) or maps(*a, **k))
    ckpt, _ = checkpoint
    out = tmp_path / "run"
    code, printed, err = cli(["explain", "--model", ckpt, "--dataset", photos, "--out", out,
                              "--method", "gradcam,cbrise,integrated_gradients,rollout"],
                             capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: Expected every method to apply to ResNet; rollout does not")
    assert "timm VisionTransformer" in err
    assert "Keep gradcam, cbrise, integrated_gradients" in err
    assert calls == [] and "maps in" not in printed
    assert not out.exists()


def test_a_missing_cam_layer_names_every_cam_method(photos, checkpoint, tmp_path, capsys):
    code, _, err = _explain(photos, checkpoint, tmp_path / "run", capsys,
                            "--method", "gradcam,saliency,layercam", "--layer", "layer9")
    assert code == 2 and err.count("\n") == 1, err
    assert "gradcam, layercam do not (gradcam: " in err and "layer9" in err
    assert "Keep saliency" in err
    assert not (tmp_path / "run").exists()
