"""The model-randomisation cascade randomises every parameter by its last step (defect 9 of
issue 11): mobilenetv3_small_050 kept 41 % of its parameters trained (blocks.2 and
blocks.4 were in no step), convnext_atto every stages.N.downsample, a ViT its cls_token,
reg_token and pos_embed."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import viscope.models as M
from viscope.evaluate.sanity import randomized_cascade


def _changed(original: nn.Module, twin: nn.Module) -> dict[str, bool]:
    ref = dict(M.unwrap(original).named_parameters())
    return {n: not torch.equal(p, ref[n]) for n, p in M.unwrap(twin).named_parameters()}


@pytest.mark.parametrize(("name", "kwargs"), [
    ("mobilenetv3_small_050", {}),
    ("convnext_atto", {}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2, "reg_tokens": 2}),
])
def test_the_last_step_leaves_every_parameter_random(name, kwargs) -> None:
    torch.manual_seed(0)
    model = M.create(name, num_classes=5, **kwargs).eval()
    steps = []
    for step, twin in randomized_cascade(model, seed=1):
        changed = _changed(model, twin)
        steps.append((step, sum(changed.values())))
    unchanged = [n for n, c in changed.items() if not c]
    assert not unchanged, f"{len(unchanged)} parameters never randomised: {unchanged[:5]}"
    counts = [c for _, c in steps]
    assert counts == sorted(counts) and counts[0] > 0  # cumulative, from the first step


def test_left_out_blocks_join_the_step_of_the_next_block() -> None:
    """mobilenetv3_small_050's blocks.4 (no default layer) is randomised with blocks.5,
    before blocks.3: the cascade still goes from the output down."""
    torch.manual_seed(0)
    model = M.create("mobilenetv3_small_050", num_classes=5).eval()
    for step, twin in randomized_cascade(model, seed=1):
        changed = _changed(model, twin)
        if step == "blocks.5":
            assert all(c for n, c in changed.items() if n.startswith("blocks.4."))
            assert not any(c for n, c in changed.items() if n.startswith("blocks.3."))
            break
    else:
        pytest.fail("no step 'blocks.5'")


def test_explicit_layers_randomise_only_those() -> None:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=5).eval()
    *_, (step, twin) = randomized_cascade(model, ["head", "stages.3"], seed=1)
    changed = _changed(model, twin)
    assert step == "stages.3"
    assert all(c == n.startswith(("head.", "stages.3.")) for n, c in changed.items())


def test_the_seed_alone_fixes_the_weights() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()

    def final(seed: int) -> list[torch.Tensor]:
        *_, (_, twin) = randomized_cascade(model, seed=seed)
        return [p.detach().clone() for p in twin.parameters()]

    a = final(3)
    torch.manual_seed(123)  # another global random state
    b = final(3)
    c = final(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_a_model_whose_default_layers_reuse_a_block() -> None:
    """Default layers list each call of a reused module (layer1.0@0, @1): the cascade
    randomises the module once and still leaves every parameter random."""
    torch.manual_seed(0)
    model = M.create("resnet18", num_classes=5).eval()
    net = M.unwrap(model)
    net.layer1[1] = net.layer1[0]  # one block run twice
    assert "layer1.0@1" in M.default_layers(model, (3, 32, 32))
    cascade = list(randomized_cascade(model, seed=1, input_size=(3, 32, 32)))
    steps = [step for step, _ in cascade]
    assert len(steps) == len(set(steps)) and "layer1.0" in steps
    assert not [n for n, c in _changed(model, cascade[-1][1]).items() if not c]
