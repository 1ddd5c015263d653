"""The weak-label pipeline end to end on tiny settings: stages, resume, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from viscope.errors import ViscopeError
from viscope.weakseg.config import load_config
from viscope.weakseg.run import run

TINY = {
    "data.n": 160, "data.image_size": 32,
    "classifier.model": "test_resnet", "classifier.epochs": 1,
    "unet.epochs": 1, "unet.args": {"encoder": "tu-test_resnet"}, "gallery": 4,
}


def _cfg(**more):
    return load_config(overrides={**TINY, **more})


@pytest.mark.slow
def test_stages_resume_and_a_change_reruns_only_what_depends_on_it(tmp_path):
    first = run(_cfg(), tmp_path, log=None)
    assert first.ran == ["classifier", "cam", "pseudo", "unet-pseudo", "unet-supervised",
                         "evaluate"]
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["method"].tolist() == ["cam-threshold", "unet-pseudo", "unet-supervised"]
    assert table["dice_mean"].between(0, 1).all()
    assert {"dice_A", "dice_D"} <= set(table.columns)
    for name in ("pseudo/sweep.csv", "pseudo/sweep.png", "pseudo/gallery.png", "density.csv",
                 "evaluate/density.png", "summary.md", "classifier/classifier.csv"):
        assert (tmp_path / name).exists(), name
    assert 0.0 <= first.threshold <= 1.0
    # the threshold is the sweep's best on validation
    sweep = pd.read_csv(tmp_path / "pseudo" / "sweep.csv")
    assert first.threshold == sweep.loc[sweep["dice_mean"].idxmax(), "threshold"]
    assert run(_cfg(), tmp_path, log=None).ran == []
    # the threshold rule changes pseudo-masks: the supervised UNet does not depend on them
    again = run(_cfg(**{"pseudo.threshold": "otsu"}), tmp_path, log=None)
    assert again.ran == ["pseudo", "unet-pseudo", "evaluate"]


@pytest.mark.slow
def test_the_same_command_on_shapes(tmp_path):
    cfg = load_config("src/viscope/configs/weakseg-shapes.yaml",
                      {**TINY, "classifier.classes": None, "pseudo.roi": "none"})
    result = run(cfg, tmp_path, log=None)
    assert result.density is None and result.spearman is None  # shapes are not grades
    assert set(result.results["method"]) == {"cam-threshold", "unet-pseudo", "unet-supervised"}


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ViscopeError, match="neither"):
        run(_cfg(**{"data.dataset": None}), tmp_path, log=None)
    with pytest.raises(ViscopeError, match="has no key 'epochz'"):
        _cfg(**{"classifier.epochz": 3})
    with pytest.raises(ViscopeError, match="needs a value"):
        _cfg(**{"pseudo.threshold": "fixed"})


@pytest.mark.parametrize("rule", [{"pseudo.threshold": "otsu"},
                                  {"pseudo.threshold": "percentile", "pseudo.value": 70}])
def test_a_band_around_each_images_own_threshold(rule):
    import torch

    from viscope.data.base import IGNORE
    from viscope.weakseg.stages import binarise
    from viscope.weakseg.thresholds import otsu_thresholds, percentile_thresholds, threshold

    cfg = _cfg(**rule, **{"pseudo.band": [0.1, 0.05], "pseudo.refine": "none"})
    maps = torch.rand(4, 12, 12, generator=torch.Generator().manual_seed(0)) ** 2
    roi = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.2
    masks = binarise(cfg, maps, torch.rand(4, 3, 12, 12), roi, None, band=True)
    cut = (otsu_thresholds(maps, roi[:, 0]) if "otsu" in rule.values()
           else percentile_thresholds(maps, 70, roi[:, 0])).float()[:, None, None, None]
    m = maps[:, None]
    inside = roi & (m > cut - 0.1) & (m < cut + 0.05)
    assert ((masks == IGNORE) == inside).all()
    kept = masks != IGNORE
    plain = threshold(maps, rule["pseudo.threshold"], rule.get("pseudo.value"), roi=roi)
    assert ((masks > 0.5) == plain)[kept].all() and (masks[~roi] == 0).all()


def test_a_folder_run_by_a_live_worker_is_refused_and_left_alone(tmp_path):
    """Two workers on one run folder would run the same stage: the second one stops with
    one line naming the first, and writes nothing."""
    from viscope.experiments.units import UnitLock

    out = tmp_path / "w"
    held = UnitLock(out / ".locks" / "weakseg.lock", timeout=60, owner="node7:42")
    assert held.acquire()
    try:
        with pytest.raises(ViscopeError, match="node7:42") as err:
            run(_cfg(), out, log=None)
        assert "\n" not in str(err.value)
        assert sorted(p.name for p in out.iterdir()) == [".locks"]  # nothing else written
    finally:
        held.release()
