"""The ``"contrastive"`` objective: SimCLR's NT-Xent on two views made by viscope families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.loss import NTXentLoss

from viscope import models, transforms
from viscope.errors import ViscopeError
from viscope.train import fit
from viscope.train.objectives import OBJECTIVES, Step, resolve_objectives
from viscope.train.ssl.contrastive import Contrastive
from viscope.train.ssl.methods import DEFAULT_FAMILIES

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2}
MODELS = [("test_vit", TINY_VIT), ("test_efficientnet", {})]


def hand_pooled(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the classifier reads, written from timm's API: a CNN's map averaged over
    (h, w), a ViT's class token (timm's default ``global_pool="token"``); checked by
    applying the model's own classifier to it."""
    net = models.unwrap(model)
    features = net.forward_features(model.normalize(images))
    pooled = features.mean(dim=(2, 3)) if features.ndim == 4 else features[:, 0]
    torch.testing.assert_close(net.get_classifier()(pooled), model(images))
    return pooled


def make_step(name: str, kwargs: dict[str, object]) -> tuple[torch.nn.Module, Step]:
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, **kwargs).eval()  # eval: no dropout/BN drift
    images = torch.rand(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, Step("train", images, (images, labels), model(images), None, model)


@pytest.mark.parametrize(("name", "kwargs"), MODELS)
def test_the_loss_is_lightlys_nt_xent_of_the_projected_views_by_hand(
    name: str, kwargs: dict[str, object]
) -> None:
    model, step = make_step(name, kwargs)
    objective = Contrastive(weight=0.5, temperature=0.3)
    objective.setup(model, 3, step)
    torch.manual_seed(1)
    loss = objective.loss(step)

    # the views are the configured families applied in order with the recorded parameters
    families = [transforms.create(n) for n in DEFAULT_FAMILIES]
    assert objective.last_params is not None and objective.last_views is not None
    for view, params in zip(objective.last_views, objective.last_params, strict=True):
        expected = step.images
        for family, p in zip(families, params, strict=True):
            expected = family.apply(expected, p)
        torch.testing.assert_close(view, expected)
    first, second = objective.last_views
    assert (first - second).abs().amax() > 0.05
    assert not torch.equal(objective.last_params[0][1], objective.last_params[1][1])

    assert objective.head is not None
    z = objective.head(hand_pooled(model, torch.cat([first, second])))
    expected_loss = NTXentLoss(temperature=0.3)(*z.chunk(2))
    torch.testing.assert_close(loss, expected_loss)
    loss.backward()  # the gradient reaches the backbone and the head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is not None for p in objective.head.parameters())


def test_validation_views_are_the_same_every_call() -> None:
    model, step = make_step("test_vit", TINY_VIT)
    objective = Contrastive()
    objective.setup(model, 3, step)
    val = Step("val", step.images, step.batch, step.outputs, None, model)
    objective.head.eval()  # type: ignore[union-attr]
    with torch.no_grad():
        assert torch.equal(objective.loss(val), objective.loss(val))


def test_contrastive_is_registered_and_checks_its_settings() -> None:
    assert OBJECTIVES.get("contrastive") is Contrastive
    made = resolve_objectives(["ce", "contrastive:0.25"])
    assert [(o.name, o.weight) for o in made] == [("ce", 1.0), ("contrastive", 0.25)]
    assert made[1].describe() == {"name": "contrastive", "weight": 0.25}
    assert Contrastive(families=["rotation"]).describe()["families"][0]["name"] == "rotation"
    for bad in ({"families": []}, {"temperature": 0.0}, {"output_dim": 0},
                {"families": ["no_such_family"]}):
        with pytest.raises(ViscopeError):
            Contrastive(**bad)  # type: ignore[arg-type]
    with pytest.raises(ViscopeError, match="setup"):
        _, step = make_step("test_vit", TINY_VIT)
        Contrastive().loss(step)


@pytest.mark.parametrize(("name", "kwargs"), MODELS)
def test_fit_trains_two_steps_beside_cross_entropy(
    tmp_path: Path, name: str, kwargs: dict[str, object]
) -> None:
    result = fit(name, "shapes", out=tmp_path / "run", n=64, epochs=1, max_steps=2,
                 batch_size=16, objectives=["ce", "contrastive:0.5"], model_kwargs=kwargs,
                 progress=False)
    history = result.history
    for column in ("train_contrastive_loss", "val_contrastive_loss", "val_acc"):
        assert history[column].notna().all() and (history[column] >= 0).all()
    # NT-Xent of 2B views is at most log(2B - 1) + 2 / temperature when untrained
    assert float(history["train_contrastive_loss"].iloc[0]) < torch.log(torch.tensor(31.0)) + 4
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["objectives"]
    assert any(k.startswith("head.") for k in saved["contrastive"])


def test_ssl_and_ssl_weight_add_the_objective_beside_the_configured_ones() -> None:
    from viscope.train.config import load_train_config

    def objectives(**settings: object) -> list[str]:
        return load_train_config(None, {"model": "test_vit", **settings}).fit_arguments()[1][
            "objectives"]

    assert objectives(ssl="contrastive", ssl_weight=0.5) == ["ce", "contrastive:0.5"]
    assert objectives(ssl="reconstruction", objectives=["ce:0.5"]) == ["ce:0.5", "recon:1"]
    assert objectives() == ["ce"]
    with pytest.raises(ViscopeError, match="once"):
        objectives(ssl="recon", objectives=["ce", "recon:0.5"])
