"""``viscope quality``: the job end to end on tiny settings, its metrics against brute
force, resume, and bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from viscope.errors import ViscopeError
from viscope.experiments.quality.config import load_config
from viscope.experiments.quality.run import run, stratified_head
from viscope.experiments.quality.stages import classification_metrics

TINY = {
    "data.n": 48, "data.image_size": 32,
    "model.args": {"encoder": "tu-test_efficientnet", "encoder_depth": 3,
                   "decoder_channels": [16, 8, 8]},
    "train.epochs": 1, "train.batch_size": 16, "train.seeds": [0, 1],
    "validation.methods": ["saliency", "gradcam"], "validation.images": 9,
    "validation.clusters": 2, "validation.deletion_steps": 4,
    "validation.reconstructions": 3,
}


def test_classification_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 3, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    m = classification_metrics(logits, labels, ["good", "usable", "reject"])
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    cm = np.array([[np.sum((y == i) & (pred == j)) for j in range(3)] for i in range(3)])
    assert m["confusion"] == cm.tolist()
    assert m["acc"] == pytest.approx(np.trace(cm) / cm.sum())
    recall = cm.diagonal() / cm.sum(1)
    precision = cm.diagonal() / np.maximum(cm.sum(0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    assert m["macro_f1"] == pytest.approx(f1.mean(), abs=1e-6)
    assert list(m["recall"].values()) == pytest.approx(recall.tolist(), abs=1e-6)


def test_stratified_head_takes_classes_in_turn():
    labels = np.array([2, 0, 0, 1, 0, 2, 1, 1])
    assert stratified_head(labels, 6).tolist() == [0, 1, 2, 3, 5, 6]
    assert stratified_head(labels, None).tolist() == list(range(8))


def test_config_errors_are_one_line():
    with pytest.raises(ViscopeError, match="seed"):
        load_config(overrides={"train.seeds": []})
    with pytest.raises(ViscopeError):
        load_config(overrides={"validation.clusters": 0})
    with pytest.raises(ViscopeError):
        load_config(overrides={"train.bogus": 1})


@pytest.mark.slow
def test_quality_job_end_to_end_and_resume(tmp_path):
    cfg = load_config(overrides=TINY)
    out = tmp_path / "q"
    result = run(cfg, out, log=None)
    assert sorted(result.ran) == sorted(
        [f"{kind}-{v}-s{s}" for kind in ("train", "maps") for v in ("plain", "fgrnet")
         for s in (0, 1)] + ["report"])
    runs = result.runs
    assert set(runs["variant"]) == {"plain", "fgrnet"} and len(runs) == 4
    # the table's numbers are the runs' own: recomputed here from metrics.json
    for _, row in runs.iterrows():
        m = json.loads((out / f"train-{row['variant']}-s{row['seed']}" / "metrics.json")
                       .read_text())
        assert row["acc"] == pytest.approx(m["acc"])
        assert np.trace(np.array(m["confusion"])) / np.sum(m["confusion"]) == \
            pytest.approx(m["acc"])
    comp = result.comparison.set_index("variant")
    for v in ("plain", "fgrnet"):
        vals = runs.loc[runs["variant"] == v, "acc"]
        assert comp.loc[v, "acc_mean"] == pytest.approx(vals.mean())
        assert comp.loc[v, "acc_std"] == pytest.approx(vals.std(ddof=1))
    assert np.isnan(runs.loc[runs["variant"] == "plain", "recon_mse"]).all()
    assert (runs.loc[runs["variant"] == "fgrnet", "recon_mse"] > 0).all()
    # energies are shares of map energy: within [0, 1]; per-image rows for both methods
    per_image = pd.read_csv(out / "maps-fgrnet-s0" / "per_image.csv")
    assert set(per_image["method"]) == {"saliency", "gradcam"}
    assert per_image["energy_structures"].between(0, 1).all()
    clusters = pd.read_csv(out / "report" / "clusters.csv")
    for _, g in clusters.groupby(["variant", "method", "clustering"]):
        assert len(g) == 2 and g["share"].sum() == pytest.approx(1.0)
        assert g["images"].sum() == 9
    for name in ("confusion", "reconstructions", "class_maps_fgrnet", "clusters_plain",
                 "comparison"):
        assert (out / "report" / f"{name}.png").stat().st_size > 1000
    assert "FGR-Net" in (out / "summary.md").read_text()
    # a second call computes nothing
    again = run(cfg, out, log=None)
    assert again.ran == []
    pd.testing.assert_frame_equal(again.runs, runs)


def test_bad_grade_in_csv_is_one_clear_error(tmp_path):
    img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    for i in range(3):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("path,grade\n0.png,0\n1.png,1\n2.png,7\n")
    cfg = load_config(overrides={"data.csv": str(tmp_path / "labels.csv"), "data.n": None})
    with pytest.raises(ViscopeError, match="7"):
        run(cfg, tmp_path / "out", log=None)


def test_real_data_csv_through_the_shipped_eyeq_config(tmp_path):
    """A CSV ``path,grade`` (EyeQ's 0/1/2) of photographs in black frames of another shape:
    the shipped config's data path crops, grades and trains; no masks, so no energy."""
    from viscope.cli_common import config_path
    from viscope.data import create

    src = create("retina-quality", n=30, size=64, seed=5)
    lines = ["path,grade"]
    for i in range(len(src)):
        image, label = src[i][:2]
        frame = np.zeros((64, 96, 3), np.uint8)  # wider than tall, as a camera's frame
        frame[:, 16:80] = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(frame).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    overrides = {**TINY, "data.csv": str(tmp_path / "labels.csv"), "train.seeds": [0],
                 "train.compare": False, "train.augment": None, "validation.images": 6,
                 "validation.methods": ["gradcam"], "run.accelerator": "cpu",
                 "run.num_workers": 0, "data.fractions": [0.4, 0.3, 0.3]}
    cfg = load_config(config_path("quality-eyeq"), overrides)
    result = run(cfg, tmp_path / "out", log=None)
    assert list(result.runs["variant"]) == ["fgrnet"]
    m = json.loads((tmp_path / "out" / "train-fgrnet-s0" / "metrics.json").read_text())
    assert np.sum(m["confusion"]) == m["test_images"] == 9  # 30 % of 30 photographs
    assert result.runs["acc"].iloc[0] == pytest.approx(np.trace(m["confusion"]) / 9)
    per_image = pd.read_csv(tmp_path / "out" / "maps-fgrnet-s0" / "per_image.csv")
    assert "energy_structures" not in per_image and per_image["deletion_auc"].notna().all()
