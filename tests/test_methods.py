"""Every registered method on a small backbone: shapes, finite losses, gradients everywhere."""

from __future__ import annotations

import pytest
import torch

from methods import create_model, method_names, method_variants
from methods.backbones import MissingWeights, backbone_names, create_backbone

CASES = [(m, v) for m in method_names() for v in method_variants(m)]


@pytest.mark.parametrize("method,variant", CASES)
def test_trains_and_embeds(method, variant):
    torch.manual_seed(0)
    model = create_model(method, variant=variant, backbone="resnet18", num_classes=5, pretrained=False)
    images, pids = torch.randn(8, 3, 64, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    terms = model.losses(model(images), pids)
    assert terms and all(torch.isfinite(t) and t.ndim == 0 for t in terms.values())
    sum(terms.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (8, model.embedding_dim)


@pytest.mark.parametrize("name", backbone_names())
def test_last_stride_one_doubles_the_final_map(name):
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert create_backbone(name, last_stride=2)(x).shape[-2:] == (2, 1)
        assert create_backbone(name, last_stride=1)(x).shape[-2:] == (4, 2)


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
