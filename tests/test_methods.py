"""Every registered method on a small backbone: shapes, finite losses, gradients everywhere (the
backbones themselves, their taps, last stride and weights: tests/test_backbones.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.cli import main
from harness.data.cues import check_names, random_cues
from harness.errors import UserError
from harness.runner import check_cues
from harness.spec import load_spec
from methods import (
    Cues,
    create_model,
    has_new_classifier,
    method_cues,
    method_names,
    method_variants,
    register_method,
)
from methods.backbones import create_backbone

CASES = [(m, v) for m in method_names() for v in method_variants(m)]


@pytest.mark.parametrize("method,variant", CASES)
def test_trains_and_embeds(method, variant):
    torch.manual_seed(0)
    model = create_model(method, variant=variant, backbone="resnet18", num_classes=5, pretrained=False)
    declared = method_cues(method, variant)  # what listing and pre-flight checks read, without a model
    assert (model.train_cues, model.test_cues) == (declared.train, declared.test), (
        "the model disagrees with its registration"
    )
    check_names(declared.train + declared.test, f"{method}:{variant}")
    if has_new_classifier(method):  # what a phase's classifier = "new" builds on (harness/engine/heads.py)
        fresh = model.new_classifier(3)
        assert isinstance(model.classifier, nn.Linear) and isinstance(fresh, nn.Linear)
        assert (fresh.in_features, fresh.out_features) == (model.classifier.in_features, 3)
    else:  # the parser lets classifier = "new" through only for methods that declare it
        assert not callable(getattr(model, "new_classifier", None)), "register it with new_classifier=True"
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


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(KeyError, match="baseline"):
        create_model("nope", backbone="resnet18", num_classes=2)
    with pytest.raises(KeyError, match="resnet50"):
        create_backbone("nope")


def test_random_cues_have_the_documented_formats():
    cues = random_cues(["saliency", "parsing", "densepose", "pose", "mask"], 3, (64, 32), heatmap_stride=16)
    assert cues["parsing"].shape == (3, 5, 64, 32)
    assert torch.allclose(cues["parsing"].sum(dim=(2, 3)), torch.ones(3, 5))
    assert cues["densepose"].shape == (3, 24, 3, 32, 32) and cues["pose"].shape == (3, 13, 4, 2)
    assert cues["saliency"].shape == cues["mask"].shape == (3, 1, 64, 32)


def test_a_method_declares_its_cues_per_variant_at_registration():
    assert method_cues("baseline") == Cues() and method_cues("gasm", "full") == Cues(train=("mask", "pose"))
    assert (
        method_cues("ssp-reid")
        == method_cues("ssp-reid", "ssp")
        == Cues(("saliency", "parsing"), ("saliency", "parsing"))
    )
    with pytest.raises(KeyError, match="has no variant 'nope'; it has baseline, mask, pose, full"):
        method_cues("gasm", "nope")
    with pytest.raises(TypeError, match="variant\\(s\\) b must be Cues"):
        register_method("toy", variants={"a": Cues(), "b": ("mask",)})


def test_listing_and_checking_cues_build_no_model(tmp_path, monkeypatch, capsys):
    """`reidbench methods` and the run's pre-flight check read the declarations, not a model."""
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[grid]\nmethods = ["gasm:full", "ssp-reid"]\nbackbones = ["resnet50"]\ntrain_datasets = ["market1501"]\n'
    )
    gasm, ssp = load_spec(spec).cells

    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(nn.Module, "__init__", refuse)
    assert main(["methods"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["gasm", "full", "mask,", "pose", "-"] in listed and [
        "ssp-reid",
        "ssp",
        "saliency,",
        "parsing",
        "saliency,",
        "parsing",
    ] in listed
    with pytest.raises(UserError, match="gasm:full needs mask cue maps of market1501, but .*cues/mask does not exist"):
        check_cues(gasm, {"market1501": tmp_path})
    with pytest.raises(UserError, match="ssp-reid:ssp needs saliency cue maps of market1501"):
        check_cues(ssp, {"market1501": tmp_path})
