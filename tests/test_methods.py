"""Every registered method on a small backbone: shapes, finite losses, gradients everywhere."""

from __future__ import annotations

import pytest
import torch

from harness.data.transforms import random_cues
from methods import create_model, method_names, method_variants
from methods.backbones import MissingWeights, backbone_names, create_backbone

CASES = [(m, v) for m in method_names() for v in method_variants(m)]


@pytest.mark.parametrize("method,variant", CASES)
def test_trains_and_embeds(method, variant):
    torch.manual_seed(0)
    model = create_model(method, variant=variant, backbone="resnet18", num_classes=5, pretrained=False)
    images, pids = torch.randn(8, 3, 128, 64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cues = random_cues(set(model.train_cues) | set(model.test_cues), 8, (128, 64))
    inputs = lambda needed: (images, {n: cues[n] for n in needed}) if needed else (images,)  # noqa: E731
    terms = model.losses(model(*inputs(model.train_cues)), pids)
    assert terms and all(torch.isfinite(t) and t.ndim == 0 for t in terms.values())
    sum(terms.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        assert model(*inputs(model.test_cues)).shape == (8, model.embedding_dim)


@pytest.mark.parametrize("name", backbone_names())
def test_last_stride_one_doubles_the_final_map(name):
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():  # eval: ResNet50-M's fusion BatchNorm needs two samples in training
        assert create_backbone(name, last_stride=2).eval()(x).shape[-2:] == (2, 1)
        assert create_backbone(name, last_stride=1).eval()(x).shape[-2:] == (4, 2)


def test_pretrained_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeights, match=f"not cached: expected {tmp_path}/hub/checkpoints/resnet18-"):
        create_backbone("resnet18", pretrained=True)
    assert not any(tmp_path.rglob("*.pth"))


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(KeyError, match="baseline"):
        create_model("nope", backbone="resnet18", num_classes=2)
    with pytest.raises(KeyError, match="resnet50"):
        create_backbone("nope")


@pytest.mark.parametrize("name", backbone_names())
def test_every_backbone_gives_its_tap(name):
    net = create_backbone(name)
    with torch.no_grad():
        final, tap = net.forward_with_tap(torch.randn(2, 3, 128, 64))
    assert final.shape[:2] == (2, net.out_channels) and tap.shape[:2] == (2, net.tap_channels)
    assert net.tap_name


def test_random_cues_have_the_documented_formats():
    cues = random_cues(["saliency", "parsing", "densepose", "pose", "mask"], 3, (64, 32), heatmap_stride=16)
    assert cues["parsing"].shape == (3, 5, 64, 32)
    assert torch.allclose(cues["parsing"].sum(dim=(2, 3)), torch.ones(3, 5))
    assert cues["densepose"].shape == (3, 24, 3, 32, 32) and cues["pose"].shape == (3, 13, 4, 2)
    assert cues["saliency"].shape == cues["mask"].shape == (3, 1, 64, 32)
