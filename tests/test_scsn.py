"""SCSN's parts on hand-built cases: stripes, SFE, suppression, RSAM, NMFF, stage features."""

from __future__ import annotations

import pytest
import torch

from methods import create_model
from methods.scsn import (
    NonLocalFusion,
    SalientFeatureExtraction,
    SpatialAttention,
    pyramid_pool,
    stripe_index,
    suppress_most_salient,
)
from tests.helpers import run_grid


def scsn(variant: str, backbone: str = "resnet18", **options):
    torch.manual_seed(0)
    return create_model("scsn", variant=variant, backbone=backbone, num_classes=5, pretrained=False, **options)


def test_stripes_split_rows_evenly_and_refuse_maps_lower_than_k():
    assert stripe_index(16, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert torch.bincount(stripe_index(12, 8)).tolist() == [2, 1, 2, 1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="K = 8 horizontal stripes.*only 7 rows.*at least 64 pixels high"):
        stripe_index(7, 8)
    with pytest.raises(ValueError, match="only 4 rows"):
        scsn("sfe-1").eval()(torch.randn(1, 3, 32, 16))


def test_sfe_scales_each_stripe_by_its_softmax_weight():
    sfe = SalientFeatureExtraction(2, stripes=4).eval()
    with torch.no_grad():
        sfe.descriptor[0].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    x = torch.rand(1, 2, 8, 3)
    y, w = sfe(x)
    eps = sfe.descriptor[1].eps
    descriptor = torch.relu((x[:, 0] - x[:, 1]) / (1 + eps) ** 0.5)  # BN in eval with fresh statistics
    z = descriptor.view(1, 4, 2, 3).mean(dim=(2, 3))  # stripes of 2 rows
    assert torch.allclose(w, torch.softmax(z, dim=1), atol=1e-6)
    expected = x * (1 + w.repeat_interleave(2, dim=1))[:, None, :, None]  # Y = X + W.X
    assert torch.allclose(y, expected, atol=1e-6)


def test_suppression_zeroes_the_most_salient_stripe_not_yet_zeroed():
    x = torch.ones(2, 3, 8, 2)
    weights = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.5, 0.1, 0.1, 0.3]])
    kept = torch.tensor([[True, True, True, True], [False, True, True, True]])
    suppressed, kept = suppress_most_salient(x, weights, kept)
    assert kept.tolist() == [[True, False, True, True], [False, True, True, False]]
    rows_alive = suppressed[:, 0, :, 0]
    assert rows_alive.tolist() == [[1, 1, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0]]  # the mask is cumulative


def test_the_next_stage_sees_the_previous_input_with_its_argmax_stripe_masked():
    model = scsn("sfe-1").eval()
    forced = torch.full((2, 8), 0.1)
    forced[0, 5], forced[1, 2] = 0.3, 0.3
    seen = {}
    model.stages[0].sfe.register_forward_hook(lambda m, args, out: (out[0], forced))
    model.stages[0].sfe.register_forward_pre_hook(lambda m, args: seen.update(x1=args[0]))
    model.stages[1].sfe.register_forward_pre_hook(lambda m, args: seen.update(x2=args[0]))
    with torch.no_grad():
        model(torch.rand(2, 3, 128, 64))
    x1, x2 = seen["x1"], seen["x2"]  # (2, 512, 16, 8): stripes of two rows
    assert x1.shape == (2, 512, 16, 8) and (x1 > 0).any(dim=(1, 3)).all()
    zeroed = [(x2[i] == 0).all(dim=(0, 2)).nonzero().flatten().tolist() for i in range(2)]
    assert zeroed == [[10, 11], [4, 5]]
    keep = torch.ones_like(x1)
    keep[0, :, 10:12], keep[1, :, 4:6] = 0, 0
    assert torch.equal(x2, x1 * keep)  # X^{t+1} = X^t . B(X^t): the input, not the boosted Y^t


def test_rsam_refines_the_previous_blocks_map_and_sam_does_not():
    x = torch.rand(1, 4, 5, 3)
    rsam, sam = SpatialAttention(residual=True), SpatialAttention(residual=False)
    previous = torch.full((1, 1, 5, 3), 0.2)
    with torch.no_grad():
        for module in (rsam, sam):
            module.conv.weight.zero_()
            module.conv.bias.fill_(1.5)  # W_n = 1.5 everywhere
        rsam.alpha.fill_(0.5)
    out, a = rsam(x, previous)
    assert torch.allclose(a, torch.sigmoid(torch.tensor(0.2 + 0.5 * (1.5 - 0.2))).expand_as(a))
    assert torch.allclose(out, x * a)
    _, first = rsam(x, None)  # A_0 = 0
    assert torch.allclose(first, torch.sigmoid(torch.tensor(0.5 * 1.5)).expand_as(first))
    _, plain = sam(x, previous)
    assert torch.allclose(plain, torch.sigmoid(torch.tensor(1.5)).expand_as(plain))


def test_rsam_carries_its_map_block_to_block_within_a_stage_only():
    model = scsn("rdam").eval()
    calls = []
    for layer in model.layers:
        for spatial in layer.spatial:
            spatial.register_forward_hook(lambda m, args, out: calls.append((args[1], out[1])))
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 64))
    assert len(calls) == 8  # resnet18: 2 blocks in each of 4 stages
    for n, (previous, _attention) in enumerate(calls):
        if n % 2 == 0:
            assert previous is None  # the first block of a stage starts from A_0 = 0
        else:
            assert previous is calls[n - 1][1]


def test_stages_three_and_four_keep_stride_one():
    model = scsn("baseline").eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(1, 3, 128, 64)).shape == (1, 512, 16, 8)


@pytest.mark.parametrize(
    "variant,stages",
    [("baseline", 1), ("rdam", 1), ("sfe-1", 2), ("sfe-2", 3), ("stages-3", 3), ("sfe-3", 4), ("stages-4", 4)],
)
def test_the_embedding_concatenates_one_feature_per_stage(variant, stages):
    model = scsn(variant).eval()
    assert len(model.stages) == stages and model.embedding_dim == stages * 128
    images = torch.rand(2, 3, 128, 64)
    with torch.no_grad():
        per_stage = model.forward_head(model.forward_features(images))
        assert per_stage.shape == (stages, 2, 128)
        assert torch.equal(model(images), torch.cat(list(per_stage), dim=1))
    model.train()
    terms = model.losses(model(images[[0, 0, 1, 1]]), torch.tensor([0, 0, 1, 1]))
    assert sorted(terms) == sorted(f"{k}-{t}" for t in range(1, stages + 1) for k in ("id", "triplet"))


def test_resnet50_embedding_sizes():
    assert scsn("stages-4", "resnet50").embedding_dim == 4 * 512
    assert scsn("stages-3", "resnet50", reduction_dim=256).embedding_dim == 3 * 256


def test_nmff_adds_one_fusion_per_low_stage_with_the_paper_channels():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    plain, fused = scsn("no-fusion"), scsn("nmff-14-24-34")
    assert plain.fusion is None and count(fused) - count(plain) == count(fused.fusion)
    assert [s for s in fused.fusion.stages] == [1, 2, 3] and scsn("nmff-24-34").fusion.stages == (2, 3)
    market = scsn("nmff-14", nmff_channels=[2048, 256])  # resnet18 is 1/4 as wide as resnet50
    pair = market.fusion.pairs[0]
    assert (pair.query.in_channels, pair.key.in_channels) == (512, 64)  # stage 4 and stage 1 of resnet18
    assert (pair.key.out_channels, pair.value.out_channels) == (64, 512)
    assert (scsn("nmff-14").fusion.pairs[0].value.out_channels, scsn("nmff-14").fusion.pairs[0].key.out_channels) == (
        128,
        16,
    )


def test_nmff_starts_as_the_identity_then_mixes_in_the_low_level_stages():
    model = scsn("nmff-14").eval()
    maps = [torch.rand(1, 64, 32, 16), torch.rand(1, 128, 16, 8), torch.rand(1, 256, 16, 8), torch.rand(1, 512, 16, 8)]
    with torch.no_grad():
        assert torch.equal(model.fusion(maps), maps[-1])
        model.fusion.reduce[1].weight.fill_(1.0)
        changed = model.fusion(maps)
        other = model.fusion([maps[0] * 2, *maps[1:]])
    assert not torch.allclose(changed, maps[-1]) and not torch.allclose(changed, other)


def test_non_local_fusion_with_uniform_similarity_averages_the_pooled_values():
    fusion = NonLocalFusion(high_channels=3, low_channels=2, value_channels=4, key_channels=2)
    with torch.no_grad():
        fusion.query.weight.zero_()
        fusion.query.bias.zero_()  # every query is 0: softmax over the S pooled positions is uniform
    low = torch.rand(1, 2, 16, 8)
    out = fusion(torch.rand(1, 3, 5, 4), low)
    values = pyramid_pool(fusion.value(low))
    assert values.shape == (1, 4, 1 + 9 + 36 + 64)
    assert out.shape == (1, 4, 5, 4)
    assert torch.allclose(out, values.mean(dim=2)[:, :, None, None].expand_as(out), atol=1e-6)


@pytest.mark.slow
def test_scsn_runs_end_to_end_through_the_cli(tmp_path):
    run, by_method = run_grid(tmp_path, ["scsn:stages-4"], iterations=12)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    rows = by_method["scsn:stages-4"]
    assert sorted(r["rerank"] for r in rows) == [False, True]
    for row in rows:
        assert (row["method"], row["variant"], row["iterations"]) == ("scsn", "stages-4", 12)
        assert 0 <= row["mAP"] <= 1 and row["num_query"] > 0
