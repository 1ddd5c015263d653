"""The ``"recon"`` objective: FGR-Net's own reconstruction or a light decoder on any
backbone's features, weighted beside cross-entropy, trained and reloaded through ``fit``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from viscope import models
from viscope.errors import ViscopeError
from viscope.models import Normalized
from viscope.train import fit
from viscope.train.data import resolve_splits
from viscope.train.features import forward_with_features, forward_with_reconstruction
from viscope.train.module import TrainModule
from viscope.train.objectives import OBJECTIVES, Step, resolve_objectives
from viscope.train.ssl.reconstruction import LightDecoder, Reconstruction, reconstruct

TINY = {"encoder": "tu-test_efficientnet", "encoder_depth": 4,
        "decoder_channels": [32, 16, 8, 8], "dropout": 0.2}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")


def fgrnet(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return models.create("fgrnet", num_classes=num_classes, **TINY)


def batch(n: int = 4, classes: int = 3, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(n, 3, size, size, generator=g), torch.arange(n) % classes]


def test_the_loss_is_half_cross_entropy_plus_half_mse_by_hand() -> None:
    """0.5 * CE + 0.5 * MSE on small tensors, both written with plain torch ops."""
    images = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]]).repeat(2, 3, 1, 1)
    recon = torch.full_like(images, 0.5)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    module = TrainModule(fgrnet(), 3, objectives=["ce:0.5", "recon:0.5"])
    step = Step("val", images, (images, labels), logits, None, module.model, recon)
    losses = module._losses(step)
    ce = -(logits[[0, 1], labels] - logits.exp().sum(1).log()).mean()
    mse = ((recon - images) ** 2).sum() / images.numel()
    assert float(losses["ce_loss"]) == pytest.approx(float(ce), rel=1e-6)
    assert float(losses["recon_loss"]) == pytest.approx(float(mse), rel=1e-6)
    assert float(losses["loss"]) == pytest.approx(float(0.5 * ce + 0.5 * mse), rel=1e-6)
    # every channel: (0.5 - 0)^2, (0.5 - 1)^2, 0, (0.5 - 0.25)^2 over 4 pixels
    assert float(mse) == pytest.approx((0.25 + 0.25 + 0.0 + 0.0625) / 4)


def test_make_step_takes_fgrnets_own_reconstruction_from_one_forward_pass() -> None:
    model = fgrnet().eval()
    module = TrainModule(model, 3, objectives=["ce:0.5", "recon:0.5"])
    images, labels = batch()
    net = models.unwrap(model)
    calls = []
    handle = net.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            step = module.make_step("val", images, (images, labels))
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        logits, features, recon = forward_with_reconstruction(model, images)
        assert torch.allclose(step.outputs, model(images), atol=1e-6)
    assert torch.equal(step.reconstruction, recon) and torch.equal(step.features, features)
    assert step.reconstruction.shape == images.shape
    assert 0 <= float(step.reconstruction.min()) and float(step.reconstruction.max()) <= 1
    objective = module.objectives[1]
    with torch.no_grad():
        objective.setup(model, 3, step)
        loss = module._losses(step)["loss"]
    assert objective.decoder is None and not objective.state_dict()  # FGR-Net's own branch
    with torch.no_grad():
        ce = nn.functional.cross_entropy(model(images), labels)
    mse = ((recon - images) ** 2).mean()
    assert float(loss) == pytest.approx(float(0.5 * ce + 0.5 * mse), rel=1e-5)


def test_psnr_is_ten_log10_of_one_over_the_pooled_mse() -> None:
    objective = Reconstruction()
    metrics = objective.metrics(3)
    images, _ = batch()
    recons = [(images + 0.1 * torch.randn_like(images)).clamp(0, 1) for _ in range(2)]
    for recon in recons:
        objective.update(metrics, Step("val", images, (images,), images, None, nn.Identity(),
                                       recon))
    mse = torch.cat([(r - images).flatten() ** 2 for r in recons]).mean()
    assert float(metrics["psnr"].compute()) == pytest.approx(10 * math.log10(1 / float(mse)),
                                                             rel=1e-5)


@pytest.mark.parametrize(("name", "kwargs", "grid", "blocks"), [
    ("test_vit", {"img_size": 32}, 2, 4),        # 1/16
    ("test_efficientnet", {}, 1, 5),             # 1/32
])
def test_other_backbones_get_a_light_decoder_on_their_features(
    name: str, kwargs: dict[str, object], grid: int, blocks: int
) -> None:
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, **kwargs)
    module = TrainModule(model, 3, objectives=["ce:0.5", "recon:0.5"])
    images, labels = batch()
    with torch.no_grad():
        example = module.make_step("train", images[:2], (images[:2], labels[:2]))
    assert example.reconstruction is None and example.features.shape[-2:] == (grid, grid)
    objective = module.objectives[1]
    objective.setup(model, 3, example)
    decoder = objective.decoder
    assert isinstance(decoder, LightDecoder)
    assert sum(isinstance(m, nn.Upsample) for m in decoder.modules()) == blocks
    step = module.make_step("train", images, (images, labels))
    recon = objective.reconstruct(step)
    assert recon.shape == images.shape and 0 <= recon.min() and recon.max() <= 1
    loss = objective.loss(step)
    assert float(loss) == pytest.approx(float(((recon - images) ** 2).mean()), rel=1e-6)
    loss.backward()  # the decoder and the backbone both learn from it
    assert all(p.grad is not None for p in decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # for figures: the same reconstruction, without gradients, modes put back
    model.train()
    again = reconstruct(model, images, objective)
    assert model.training and decoder.training
    model.eval()
    with torch.no_grad():
        assert torch.allclose(again, decoder(forward_with_features(model, images)[1],
                                             (32, 32)), atol=1e-6)


def test_a_network_with_neither_reconstruction_nor_features_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model = Normalized(net, (0.5,), (0.5,))
    module = TrainModule(model, 3, objectives=["ce:0.5", "recon:0.5"])
    images, labels = batch()
    with pytest.raises(ViscopeError, match="forward_reconstruction.*features.*Sequential"):
        module.make_step("train", images, (images, labels))
    with pytest.raises(ViscopeError, match="'fgrnet'"):
        reconstruct(model, images)


def test_recon_is_registered_and_weighted() -> None:
    assert OBJECTIVES.get("recon") is Reconstruction
    made = resolve_objectives(["ce:0.5", "recon:0.5"])
    assert [(o.name, o.weight) for o in made] == [("ce", 0.5), ("recon", 0.5)]
    with pytest.raises(ViscopeError, match="width"):
        Reconstruction(width=0)


def test_fgrnet_trains_two_steps_and_reloads_from_best_pt(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = fit("fgrnet", "shapes", out=tmp_path / "run", n=64, epochs=1, max_steps=2,
                 batch_size=16, lr=3e-3, objectives=["ce:0.5", "recon:0.5"],
                 model_kwargs=TINY, progress=False)
    assert result.history["val_recon_loss"].notna().all()
    assert result.history["val_psnr"].notna().all()
    trained = result.model
    first = models.create("fgrnet", num_classes=5, **TINY)  # the same initialisation
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                     trained.state_dict().values(), strict=True))
    again = models.create(tmp_path / "run" / "best.pt").eval()
    images, _ = batch()
    assert torch.equal(trained(images), again(images))
    assert torch.equal(reconstruct(trained, images), reconstruct(again, images))


def test_a_light_decoder_is_saved_with_the_objectives_and_reloads(tmp_path: Path) -> None:
    """best.pt's "objectives" entry rebuilds the decoder: reloaded, it gives the
    validation MSE that was logged for the kept epoch."""
    result = fit("test_vit", "shapes", out=tmp_path / "run", n=64, epochs=1, max_steps=2,
                 batch_size=16, objectives=["ce:0.5", "recon:0.5"],
                 model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2}, progress=False)
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["objectives"]["recon"]
    model = models.create(tmp_path / "run" / "best.pt").eval()
    val = resolve_splits("shapes", image_size=32, n=64, seed=0)["val"]
    images = torch.stack([val[i][0] for i in range(len(val))])
    objective = Reconstruction(0.5)
    with torch.no_grad():
        logits, features = forward_with_features(model, images[:2])
    objective.setup(model, 5, Step("train", images[:2], (images[:2],), logits, features, model))
    fresh = {k: v.clone() for k, v in objective.state_dict().items()}
    objective.load_state_dict(saved)
    assert not all(torch.equal(fresh[k], saved[k]) for k in saved)  # it trained
    mse = float(((reconstruct(model, images, objective) - images) ** 2).mean())
    logged = float(result.history["val_recon_loss"].dropna().iloc[-1])
    assert mse == pytest.approx(logged, rel=1e-4)
