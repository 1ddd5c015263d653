"""overlay_grid: layout, titles, mask outlines and the PNG it writes."""

from __future__ import annotations

import pytest
import torch
from matplotlib.contour import ContourSet

from viscope.errors import ViscopeError
from viscope.explain.figures import CBAR_LABEL, overlay_grid, overlay_title, score_line

METHODS = ("gradcam", "layercam", "cbrise")


def _inputs(n: int = 3):
    images = torch.rand(n, 3, 16, 16)
    maps = {m: torch.rand(n, 16, 16) for m in METHODS}
    masks = torch.zeros(n, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    scores = {m: {"deletion_auc": torch.rand(n), "pointing_game": torch.rand(n) > 0.5}
              for m in METHODS}
    return images, maps, masks, scores


def test_grid_layout_titles_and_png(tmp_path):
    images, maps, masks, scores = _inputs()
    path = tmp_path / "sub" / "grid.png"
    fig = overlay_grid(images, maps, masks, scores, titles=["a", "b", "c"], path=path,
                       title="My maps")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))
    grid = [ax for ax in fig.axes if ax.get_ylabel() != CBAR_LABEL]
    assert len(grid) == 3 * (1 + len(METHODS))
    assert len(fig.axes) == len(grid) + 1  # the colour bar
    assert [ax.get_title() for ax in grid[: 1 + len(METHODS)]] == ["image", *METHODS]
    assert fig._suptitle is not None and fig._suptitle.get_text() == "My maps"
    assert all(any(isinstance(c, ContourSet) for c in ax.collections) for ax in grid)
    assert grid[1].get_xlabel().startswith("del ")
    assert [grid[r * 4].get_ylabel() for r in range(3)] == ["a", "b", "c"]


def test_no_masks_no_contours():
    images, maps, _, _ = _inputs(2)
    fig = overlay_grid(images, maps)
    assert not any(isinstance(c, ContourSet) for ax in fig.axes for c in ax.collections)
    assert len(fig.axes) == 2 * 4 + 1


def test_score_line_and_errors():
    line = score_line({"deletion_auc": torch.tensor([0.214]), "insertion_auc": torch.tensor([0.6]),
                       "pointing_game": torch.tensor([False])}, 0)
    assert line == "del 0.21 · ins 0.60 · PG ✗"
    images, maps, _, _ = _inputs(2)
    with pytest.raises(ViscopeError, match="maps"):
        overlay_grid(images, {"gradcam": torch.rand(3, 16, 16)})
    with pytest.raises(ViscopeError, match="titles"):
        overlay_grid(images, maps, titles=["only one"])


def test_title_says_when_only_the_first_images_are_shown():
    images, maps, _, _ = _inputs(2)
    fig = overlay_grid(images, maps, title=overlay_title("My maps", 2, 16))
    assert fig._suptitle.get_text() == "My maps\n(first 2 of 16 images)"
    assert overlay_title("My maps", 16, 16) == "My maps"
