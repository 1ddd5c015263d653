"""``pretrained: true`` in a matrix config's model entry reaches viscope.models.create."""

from __future__ import annotations

import pytest

from viscope.experiments.config import load_config
from viscope.yamlconfig import read_yaml


@pytest.mark.parametrize("where", ["field", "args"])
def test_pretrained_model_entry_is_an_argument_of_create(tmp_path, where):
    entry = {"name": "resnet18"}
    entry.update({"pretrained": True} if where == "field" else {"args": {"pretrained": True}})
    path = tmp_path / "m.yaml"
    path.write_text(f"models: [{entry}]\n".replace("'", ""))
    model = load_config(path).models[0]
    # the matrix creates each model with models.create(name, **args)
    assert model.pretrained is True and model.args == {"pretrained": True}
    assert read_yaml(path)["models"][0] == entry


def test_models_are_not_pretrained_unless_asked(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("models: [{name: resnet18, args: {drop_rate: 0.1}}]\n")
    model = load_config(path).models[0]
    assert model.pretrained is False and model.args == {"drop_rate": 0.1}
