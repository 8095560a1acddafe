"""SSP-ReID: the cue join of 3.2, feature sizes, cues, Table 1's losses and the two-subnet framework."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from e2e_helpers import run_tiny_grid
from harness.data.transforms import random_cues
from methods import create_model
from methods.backbones import backbone_names
from methods.ssp_reid import cue_maps, masked_average

PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def build(variant: str, backbone: str = "resnet18", **options):
    torch.manual_seed(0)
    return create_model("ssp-reid", variant=variant, backbone=backbone, num_classes=4, pretrained=False, **options)


def test_join_is_upsample_multiply_average_on_a_hand_built_case():
    tap = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)  # upsampled to width 4 (align_corners=False): 1, 1.5, 2.5, 3
    saliency = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    assert masked_average(tap, saliency).item() == pytest.approx((1 + 1.5) / 4)


def test_join_equals_the_papers_steps_on_random_tensors():
    torch.manual_seed(0)
    tap, maps = torch.randn(2, 3, 4, 2), torch.rand(2, 5, 16, 8)
    upsampled = F.interpolate(tap, size=(16, 8), mode="bilinear", align_corners=False)
    naive = (upsampled[:, None] * maps[:, :, None]).mean(dim=(3, 4))  # (B, 5, c)
    assert torch.allclose(masked_average(tap, maps), naive, atol=1e-5)


def test_parsing_regions_come_back_as_masks_at_half_the_input_size():
    regions = torch.zeros(1, 5, 8, 4)
    regions[0, 0, 2:6] = 1  # foreground rows 2-5
    regions[0, 1, 2:4] = 1  # head rows 2-3, the rest empty
    l1 = regions / regions.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)  # as the harness delivers them
    maps = cue_maps("parsing", l1, (4, 2))
    assert maps.shape == (1, 5, 4, 2)
    assert torch.equal(maps[0, 0], torch.tensor([[0.0, 0], [1, 1], [1, 1], [0, 0]]))
    assert torch.equal(maps[0, 1, 1], torch.ones(2)) and maps[0, 2:].abs().sum() == 0
    saliency = torch.full((1, 1, 8, 4), 0.25)
    assert torch.allclose(cue_maps("saliency", saliency, (4, 2)), torch.full((1, 1, 4, 2), 0.25))  # as it comes


@pytest.mark.parametrize("variant,train_cues,dim", [
    ("s-reid", ("saliency",), 512 + 512),
    ("sp-reid", ("parsing",), 512 + 5 * 512),
    ("ssp", ("saliency", "parsing"), 512 + 512 + 512 + 5 * 512),
])
def test_feature_sizes_and_cues_at_train_and_test_time(variant, train_cues, dim):
    model = build(variant)
    assert model.train_cues == model.test_cues == train_cues and model.embedding_dim == dim
    cues = random_cues(train_cues, 2, (64, 32))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 32), cues).shape == (2, dim)


def test_resnet50_subnets_are_res5c_plus_c_and_5c_wide():
    model = build("sp-reid", "resnet50")
    assert model.embedding_dim == 2048 + 5 * 2048 and model.backbone.tap_name == "res5c"
    assert model.classifier.in_features == model.embedding_dim


def test_the_cue_weights_only_the_joined_part():
    model = build("s-reid").eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        bright = model(images, {"saliency": torch.ones(2, 1, 64, 32)})
        dark = model(images, {"saliency": torch.zeros(2, 1, 64, 32)})
        half = model(images, {"saliency": torch.full((2, 1, 64, 32), 0.5)})
    assert torch.equal(bright[:, :512], dark[:, :512])  # the global representation
    assert dark[:, 512:].abs().max() == 0 and torch.allclose(half[:, 512:], bright[:, 512:] / 2, atol=1e-6)
    assert torch.allclose(bright[:, 512:], bright[:, :512], atol=1e-5)  # all-ones map: the average of the tap = Res5C


def test_losses_follow_table_1_unless_forced():
    images, cues = torch.randn(8, 3, 64, 32), random_cues(["saliency"], 8, (64, 32))
    assert set(build("s-reid").losses(build("s-reid")(images, cues), PIDS)) == {"id", "triplet"}
    forced = build("s-reid", triplet=False)
    assert set(forced.losses(forced(images, cues), PIDS)) == {"id"}


@pytest.mark.skipif("xception" not in backbone_names(), reason="the xception backbone is not registered yet")
def test_xception_trains_with_cross_entropy_only():
    model = build("s-reid", "xception")
    images, cues = torch.randn(4, 3, 64, 32), random_cues(["saliency"], 4, (64, 32))
    assert set(model.losses(model(images, cues), PIDS[:4])) == {"id"}


def test_ssp_trains_the_subnets_separately_and_joins_their_normalised_features():
    model = build("ssp")
    images, cues = torch.randn(8, 3, 64, 32), random_cues(["saliency", "parsing"], 8, (64, 32))
    terms = model.losses(model(images, cues), PIDS)
    assert set(terms) == {"s_id", "s_triplet", "sp_id", "sp_triplet"}
    (terms["s_id"] + terms["s_triplet"]).backward()
    saliency, parsing = model.members["s"], model.members["sp"]
    assert all(p.grad is not None for p in saliency.parameters())
    assert all(p.grad is None for p in parsing.parameters())  # no saliency term reaches the parsing subnet
    model.eval()
    with torch.no_grad():
        joined = model(images, cues)
        parts = saliency(images, {"saliency": cues["saliency"]}), parsing(images, {"parsing": cues["parsing"]})
    assert torch.allclose(joined, torch.cat([F.normalize(p, dim=1) for p in parts], dim=1), atol=1e-6)
    assert torch.allclose(joined.norm(dim=1), torch.full((8,), 2**0.5))


@pytest.mark.slow
def test_ssp_runs_end_to_end_and_writes_plain_and_reranked_rows(tmp_path):
    run, rows, cell_id = run_tiny_grid(tmp_path, "ssp-reid:ssp")
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(r["rerank"] for r in rows) == [False, True]
    assert {(r["method"], r["variant"], r["backbone"]) for r in rows} == {("ssp-reid", "ssp", "resnet18")}
    assert all(r["iterations"] == 10 and 0 <= r["mAP"] <= 1 for r in rows) and cell_id in run.stdout
