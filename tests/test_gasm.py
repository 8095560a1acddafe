"""GASM: its heatmap losses and fusion on hand-built cases, its packed test output, and its
spatial matching against a direct loop, through the evaluation engine's hook too."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data.cues import random_cues
from harness.eval.distance import pairwise_distance
from harness.eval.rerank import rerank, rerank_features
from methods import create_model, gasm
from methods.gasm import GASM, frobenius_loss, gasm_distance
from tests.helpers import run_grid


def small(variant: str, **options) -> GASM:
    torch.manual_seed(0)
    return create_model("gasm", variant=variant, backbone="resnet18", num_classes=4, pretrained=False, **options)


def random_rows(n: int, locations: int, dim: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    glob = F.normalize(torch.randn(n, dim, generator=generator), dim=1)
    local = F.normalize(torch.randn(n, locations, dim, generator=generator), dim=2)
    heat = torch.rand(n, locations, generator=generator)
    return glob, local, heat / heat.sum(dim=1, keepdim=True)


def loop_distance(q, g) -> np.ndarray:
    """Eq. 4 and the global average written out pair by pair, location by location."""
    (qg, ql, qh), (gg, gl, _) = q, g
    out = np.zeros((len(qg), len(gg)))
    for i in range(len(qg)):
        for j in range(len(gg)):
            d_global = 1 - float(qg[i] @ gg[j])
            d_local = 0.0
            for a in range(ql.shape[1]):
                best = max(float(ql[i, a] @ gl[j, b]) for b in range(gl.shape[1]))
                d_local += float(qh[i, a]) * (1 - best)
            out[i, j] = (d_global + d_local) / 2
    return out


@pytest.mark.parametrize("budget", [1 << 23, 37])  # one block, and many small query and gallery blocks
def test_distance_matches_a_direct_loop(monkeypatch, budget):
    monkeypatch.setattr(gasm, "_SIM_BUDGET", budget)
    gen = torch.Generator().manual_seed(1)
    q, g = random_rows(7, 6, 5, gen), random_rows(11, 6, 5, gen)
    got = gasm_distance(*q, *g).numpy()
    np.testing.assert_allclose(got, loop_distance(q, g), atol=1e-5)


def test_an_image_is_at_distance_zero_from_itself_and_misalignment_is_forgiven():
    gen = torch.Generator().manual_seed(2)
    glob, local, heat = random_rows(1, 6, 8, gen)
    shifted = torch.roll(local, 2, dims=1)  # the same parts at other locations
    d = gasm_distance(glob, local, heat, torch.cat([glob, glob]), torch.cat([local, shifted]))
    assert torch.allclose(d, torch.zeros(1, 2), atol=1e-6)


def test_the_hook_is_used_for_plain_and_reranked_evaluation():
    model = small("full", grid=(3, 2)).eval()
    with torch.no_grad():
        rows = model(torch.randn(14, 3, 64, 32))
    q, g = rows[:5], rows[5:]
    direct = model.distance(q, g)
    np.testing.assert_allclose(pairwise_distance(q, g, metric=model.distance), direct.numpy(), atol=1e-6)
    reranked = rerank_features(q, g, metric=model.distance, k1=4, k2=2)
    assert reranked.shape == (5, 9) and np.isfinite(reranked).all()
    # Eq. 4 weights by the query's heatmap, so d(a, b) != d(b, a) and the matrix entry point, which
    # takes the g-q block as the transpose of q-g, cannot stand for it; a symmetrised GASM can.
    sym = lambda a, b: (model.distance(a, b) + model.distance(b, a).T) / 2  # noqa: E731
    expected = rerank(sym(q, g).numpy(), sym(q, q).numpy(), sym(g, g).numpy(), k1=4, k2=2)
    np.testing.assert_allclose(rerank_features(q, g, metric=sym, k1=4, k2=2), expected, atol=1e-5)


def test_packed_rows_hold_global_local_and_heatmap():
    model = small("full", grid=(4, 2)).eval()
    with torch.no_grad():
        rows = model(torch.randn(3, 3, 128, 64))
    d, n_loc = 512, 8
    assert model.embedding_dim == d * (n_loc + 1) + n_loc == rows.shape[1]
    glob, local, heat = model.unpack(rows)
    assert torch.allclose(glob.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(local.norm(dim=2), torch.ones(3, n_loc), atol=1e-5)
    assert torch.allclose(heat.sum(dim=1), torch.ones(3), atol=1e-5) and (heat > 0).all()
    with pytest.raises(ValueError, match="expected 4616"):
        model.distance(rows[:, :-1], rows[:, :-1])


def test_sizes_and_parameters_on_resnet50():
    sizes = {}
    for variant in gasm.VARIANTS:
        model = create_model("gasm", variant=variant, backbone="resnet50", num_classes=751, pretrained=False)
        sizes[variant] = (model.embedding_dim, sum(p.numel() for p in model.parameters()))
    base = sizes["baseline"][1]
    assert sizes["baseline"][0] == 2048
    assert sizes["mask"][0] == sizes["pose"][0] == sizes["full"][0] == 2048 * 13 + 12
    assert (
        sizes["mask"][1] - base == 2049
        and sizes["pose"][1] - base == 13 * 2049
        and sizes["full"][1] - base == 14 * 2049
    )
    assert base == 23_508_032 + 2 * 2048 + 2048 * 751  # backbone + BNNeck + classifier


@pytest.mark.parametrize(
    "variant,terms",
    [
        ("baseline", {"id", "triplet"}),
        ("mask", {"id", "triplet", "mask"}),
        ("pose", {"id", "triplet", "pose"}),
        ("full", {"id", "triplet", "mask", "pose"}),
    ],
)
def test_heatmap_loss_terms_per_variant_and_no_cues_at_test(variant, terms):
    model = small(variant)
    assert set(model.train_cues) == terms - {"id", "triplet"} and model.test_cues == ()
    cues = random_cues(model.train_cues, 4, (64, 32))
    outputs = model(torch.randn(4, 3, 64, 32), cues)
    assert set(model.losses(outputs, torch.tensor([0, 0, 1, 1]))) == terms
    for name, target in outputs["targets"].items():  # the cues at the (4, 2) feature map's size
        assert target.shape[-2:] == outputs["heatmaps"][name].shape[-2:] == (4, 2)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, model.embedding_dim)


def test_frobenius_losses_are_per_sample_norms_averaged_and_weighted():
    predicted = torch.zeros(2, 1, 2, 3)
    target = torch.stack([torch.ones(1, 2, 3), torch.zeros(1, 2, 3)])
    assert frobenius_loss(predicted, target).item() == pytest.approx(math.sqrt(6) / 2)
    model = small("full")
    outputs = {
        "logits": torch.zeros(2, 4),
        "features": torch.randn(2, 512),
        "heatmaps": {"mask": predicted, "pose": torch.zeros(2, 13, 2, 3)},
        "targets": {"mask": target, "pose": torch.full((2, 13, 2, 3), 0.5)},
    }
    terms = model.losses(outputs, torch.tensor([0, 1]))
    assert terms["mask"].item() == pytest.approx(0.05 * math.sqrt(6) / 2)
    assert terms["pose"].item() == pytest.approx(0.1 * 0.5 * math.sqrt(13 * 6))


def test_mask_cue_is_average_pooled_to_the_feature_map():
    model = small("mask")
    mask = torch.zeros(2, 1, 64, 32)
    mask[..., :32, :16] = 1.0  # the top-left quarter of the image
    target = model(torch.randn(2, 3, 64, 32), {"mask": mask})["targets"]["mask"]
    assert torch.equal(target[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize(
    "last_stride,size,stride,feature_map", [(2, (128, 64), 32, (4, 2)), (1, (100, 50), 16, (7, 4))]
)
def test_pose_targets_come_at_the_feature_maps_size(last_stride, size, stride, feature_map):
    model = small("pose", last_stride=last_stride)
    cues = random_cues(["pose"], 2, size, heatmap_stride=stride)  # (100, 50): a 6x3 cue, resized
    outputs = model(torch.randn(2, 3, *size), cues)
    assert outputs["targets"]["pose"].shape == outputs["heatmaps"]["pose"].shape == (2, 13, *feature_map)


def test_saliency_fuses_the_normalised_maps_and_the_baseline_pools_evenly():
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 2.0]]]])  # sums to 4
    pose = torch.zeros(1, 13, 2, 2)
    pose[0, 0, 0, 1] = 1.0  # one keypoint: all the pose weight on one location
    fused = GASM.saliency({"mask": mask, "pose": pose}, mask)
    assert torch.allclose(fused, torch.tensor([[[[0.125, 0.5], [0.125, 0.25]]]]))
    assert torch.allclose(GASM.saliency({"mask": mask}, mask), mask / 4)
    assert torch.allclose(GASM.saliency({}, torch.zeros(1, 7, 2, 2)), torch.full((1, 1, 2, 2), 0.25))

    model = small("baseline").eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = F.normalize(model.bnneck(model.backbone(images).mean(dim=(2, 3))), dim=1)
        assert torch.allclose(model(images), expected, atol=1e-5)  # FCN + average pooling, global matching
        assert torch.allclose(model.distance(expected[:1], expected), 1 - expected[:1] @ expected.T, atol=1e-6)


def test_options_choose_the_matching_and_check_their_values():
    assert small("baseline", matching="gasm").embedding_dim == 512 * 13 + 12  # unguided: uniform weights
    assert small("full", matching="global").embedding_dim == 512
    with pytest.raises(ValueError, match="matching must be one of gasm, global"):
        small("full", matching="local")
    with pytest.raises(ValueError, match="grid must be two positive integers"):
        small("full", grid=(0, 2))


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,tests",
    [
        ("gasm:mask", ["market1501"]),
        ("gasm:full", ["market1501", "occluded-reid", "crowd-reid"]),  # cross-domain, as Tables 1, 3 and 4
    ],
)
def test_end_to_end_through_the_cli(tmp_path, method, tests):
    run, by_method = run_grid(tmp_path, [method], tests=tests, iterations=12)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    rows = by_method[method]
    kept = list((tmp_path / "store").rglob("embeddings/*.npz"))
    assert kept == []  # GASM compares with its own distance: its packed rows are not kept for [[combine]]
    assert sorted((r["test_dataset"], r["rerank"]) for r in rows) == sorted(
        (t, rr) for t in tests for rr in (False, True)
    )
    protocols = {"market1501": "market", "occluded-reid": "occluded", "crowd-reid": "market"}
    for row in rows:
        assert (row["method"], row["variant"], row["train_dataset"], row["iterations"]) == (
            "gasm",
            method[5:],
            "market1501",
            12,
        )
        assert (
            row["protocol"] == protocols[row["test_dataset"]] and row["num_query"] > 0 and row["num_valid_queries"] > 0
        )
        assert 0.0 < row["mAP"] <= 1.0 and 0.0 <= row["rank1"] <= 1.0
