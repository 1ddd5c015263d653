"""``create`` and the dataset registry: every built-in follows the conventions."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from viscope.data import DATASETS, CSVDataset, ImageFolder, SubsetDataset, create, list_datasets
from viscope.errors import ViscopeError

#: Built-ins that refuse the small sizes used here (a fundus view needs at least 32 px).
MIN_SIZE = {"retina-quality": 32}


def test_list_datasets() -> None:
    names = ["shapes", "digits", "color-digits", "faces", "mammo", "retina-quality"]
    assert list_datasets() == names == DATASETS.names()


@pytest.mark.parametrize("name", DATASETS.names())
def test_builtin_follows_the_item_conventions(name: str) -> None:
    size = MIN_SIZE.get(name, 16)
    ds = create(name, size=size, n=60, seed=1)
    assert len(ds) == 60 == len(ds.targets)
    assert isinstance(ds.classes, list) and all(isinstance(c, str) for c in ds.classes)
    for i in (0, 17, 59):
        item = ds[i]
        assert len(item) == (3 if ds.has_masks else 2)
        image, label = item[0], item[1]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert isinstance(label, int) and label == ds.targets[i] and 0 <= label < len(ds.classes)
        if ds.has_masks:
            mask = item[2]
            assert mask.shape == (1, size, size) and mask.dtype == torch.float32
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
    again = create(name, size=size, n=60, seed=1)
    assert torch.equal(again[17][0], ds[17][0])


def test_folder_and_csv_paths(folder: Path, tmp_path: Path) -> None:
    ds = create(folder)
    assert isinstance(ds, ImageFolder) and ds[0][0].shape == (3, 32, 32)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\npets/cat/c1.png,cat\npets/dog/d1.png,dog\n")
    table = create(str(csv), size=8)
    assert isinstance(table, CSVDataset) and table.targets == [0, 1]
    assert create(csv, size=8, root=tmp_path).targets == [0, 1]


def test_user_data_subset_and_split(folder: Path) -> None:
    sub = create(folder, n=4, seed=0, size=8)
    assert isinstance(sub, SubsetDataset) and len(sub) == 4
    again = create(folder, n=4, seed=0, size=8)
    assert np.array_equal(sub.indices, again.indices)
    train = create(folder, split="train", fractions=(0.6, 0.2, 0.2), size=8)
    assert isinstance(train.dataset, ImageFolder) and train.classes == ["cat", "dog"]
    assert sorted(train.targets) == [0, 0, 1]
    nested = create(folder, split="train", n=4, size=8, fractions=(0.5, 0.5, 0.0))
    assert isinstance(nested.dataset, ImageFolder)  # indices refer to the full folder
    assert set(nested.indices) <= set(sub.indices)


def test_skip_corrupt_through_create(corrupt_folder: Path) -> None:
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        ds = create(corrupt_folder, skip_corrupt=True)
    assert len(ds) == 5


def test_unknown_name_or_path() -> None:
    with pytest.raises(
        ViscopeError,
        match=r"Unknown dataset 'nope': not a built-in dataset \(shapes, digits, color-digits, "
        r"faces, mammo, retina-quality\) and no such folder/CSV file\.",
    ):
        create("nope")
    with pytest.raises(ViscopeError, match="Did you mean 'shapes'"):
        create("shapse")


def test_existing_file_that_is_not_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"x")
    with pytest.raises(ViscopeError, match="a folder of images or a .csv file"):
        create(path)


def test_unknown_option_and_bad_n(folder: Path) -> None:
    with pytest.raises(ViscopeError, match=r"'shapes' does not take the option\(s\) colour"):
        create("shapes", colour="red")
    with pytest.raises(ViscopeError, match="does not take the option"):
        create(folder, root=folder)
    with pytest.raises(ViscopeError, match="Expected n between 1 and 5"):
        create(folder, n=9)


@pytest.mark.parametrize(
    "module",
    ["base", "splits", "shapes", "digits", "faces", "folder", "table", "factory", "__init__"],
)
def test_docstring_examples_run(module: str) -> None:
    name = "viscope.data" if module == "__init__" else f"viscope.data.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ViscopeError, match="Expected seed to be a non-negative integer"):
        create("shapes", n=5, seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", DATASETS.names())
def test_builtins_never_touch_the_network(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"dataset {name!r} tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert len(create(name, size=MIN_SIZE.get(name, 8), n=10)) == 10
