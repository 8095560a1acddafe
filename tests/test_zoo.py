"""External weights: fast-reid's, torchreid's and reid-strong-baseline's key layouts mapped onto the
baseline, tested on state dicts built in their layouts from a reidbench model (so the mapping must
give back exactly the same tensors), and the errors for weights that do not fit."""

from __future__ import annotations

import pytest
import torch

from harness.engine import artefact, zoo
from harness.errors import UserError
from methods import create_model


def _baseline(backbone="resnet18"):
    torch.manual_seed(0)
    return create_model("baseline", backbone=backbone, num_classes=7, pretrained=False).eval()


def _torchvision_names(state):
    """reidbench's baseline keys back to torchvision's ResNet names (conv1, bn1, layerN)."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            inner = key.removeprefix("backbone.").replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
            out[inner] = value
    return out


def in_layout(model, layout):
    state = model.state_dict()
    backbone = _torchvision_names(state)
    neck = {k.removeprefix("bnneck."): v for k, v in state.items() if k.startswith("bnneck.")}
    if layout == "fast-reid":
        return {
            "model": {
                **{f"backbone.{k}": v for k, v in backbone.items()},
                **{f"heads.bottleneck.0.{k}": v for k, v in neck.items()},
                "heads.weight": state["classifier.weight"],
                "pixel_mean": torch.zeros(1, 3, 1, 1),
                "pixel_std": torch.ones(1, 3, 1, 1),
            },
            "iteration": 10,
        }
    if layout == "torchreid":
        return {
            "state_dict": {
                **{f"module.{k}": v for k, v in backbone.items()},
                **{f"module.bnneck.{k}": v for k, v in neck.items()},
                "module.classifier.weight": state["classifier.weight"],
                "module.classifier.bias": torch.zeros(7),
            },
            "epoch": 60,
        }
    if layout == "strong-baseline":
        return {
            **{f"base.{k}": v for k, v in backbone.items()},
            **{f"bottleneck.{k}": v for k, v in neck.items()},
            "classifier.weight": state["classifier.weight"],
        }
    raise ValueError(layout)


@pytest.mark.parametrize("layout", ["fast-reid", "torchreid", "strong-baseline"])
def test_zoo_layouts_map_onto_the_baseline_tensor_for_tensor(tmp_path, layout):
    source = _baseline()
    path = tmp_path / "model.pth"
    torch.save(in_layout(source, layout), path)
    state, found, _ = zoo.to_baseline(zoo.read_checkpoint(path), str(path))
    assert found == layout
    target = create_model(
        "baseline", backbone="resnet18", num_classes=zoo.num_classes_of(state), pretrained=False
    ).eval()
    artefact.load_into(target, state, str(path), "baseline:bnneck on resnet18")
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(target(images), source(images))


def test_torchreid_without_bnneck_gets_an_identity_bnneck(tmp_path):
    source = _baseline()
    saved = in_layout(source, "torchreid")
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if "bnneck" not in k}
    path = tmp_path / "plain.pth.tar"
    torch.save(saved, path)
    state, _, notes = zoo.to_baseline(zoo.read_checkpoint(path), str(path))
    assert any("identity BNNeck" in n for n in notes)
    assert torch.equal(state["bnneck.weight"], torch.ones(512)) and torch.equal(
        state["bnneck.running_var"], torch.ones(512)
    )


def test_weights_of_another_backbone_name_the_first_mismatching_key_and_both_shapes(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(in_layout(_baseline(), "fast-reid"), path)
    state, _, _ = zoo.to_baseline(zoo.read_checkpoint(path), str(path))
    resnet50 = create_model("baseline", backbone="resnet50", num_classes=7, pretrained=False)
    with pytest.raises(UserError) as info:
        artefact.load_into(resnet50, state, str(path), "baseline:bnneck on resnet50")
    message = str(info.value)
    assert (
        str(path) in message
        and "backbone.layer1.0.conv1.weight has shape (64, 64, 3, 3) in the file but (64, 64, 1, 1)" in message
    )


def test_damaged_and_foreign_files_are_user_errors(tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="broken.pth is damaged"):
        zoo.read_checkpoint(broken)
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.w": torch.zeros(2)}, odd)
    with pytest.raises(UserError, match="fit none of the layouts"):
        zoo.to_baseline(zoo.read_checkpoint(odd), str(odd))
