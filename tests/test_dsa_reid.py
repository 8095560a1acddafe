"""DSA-reID: the part merges, the streams' shapes, what inference needs, the loss weights, CSA's crops."""

from __future__ import annotations

import math

import pytest
import torch

from harness.data.body_maps import DENSEPOSE_FLIP, part_crops
from harness.data.cues import check_names
from harness.data.geometry import MEAN, STD
from methods import create_model, dsa_reid
from methods.dsa_reid import MERGE_13_TO_8, MERGE_24_TO_13, DsagStream, Merge, merge_matrix


def build(variant: str, backbone: str = "resnet18", **options):
    torch.manual_seed(0)
    return create_model("dsa-reid", variant=variant, backbone=backbone, num_classes=5, pretrained=False, **options)


def test_first_merge_adds_exactly_the_left_right_pairs_that_a_flip_swaps():
    pairs = [g for g in MERGE_24_TO_13 if len(g) == 2]
    assert sorted(p for g in MERGE_24_TO_13 for p in g) == list(range(1, 25))  # every part, once
    assert all(DENSEPOSE_FLIP[a] == b and DENSEPOSE_FLIP[b] == a for a, b in pairs)
    assert [g for g in MERGE_24_TO_13 if len(g) == 1] == [(1,), (2,)]  # torso back and front have no side
    # DensePose: 3/4 hands, 5/6 feet, 7,9/8,10 upper legs, 11,13/12,14 lower legs, 15,17/16,18 upper arms,
    # 19,21/20,22 lower arms, 23/24 head; the second merge adds back and front.
    named = {
        name: sorted(p for m in group for p in MERGE_24_TO_13[m - 1])
        for name, group in zip(dsa_reid.PART_NAMES, MERGE_13_TO_8)
    }
    assert named == {
        "torso": [1, 2],
        "hand": [3, 4],
        "foot": [5, 6],
        "upper-leg": [7, 8, 9, 10],
        "lower-leg": [11, 12, 13, 14],
        "upper-arm": [15, 16, 17, 18],
        "lower-arm": [19, 20, 21, 22],
        "head": [23, 24],
    }


def test_merge_adds_branch_feature_maps_element_wise():
    x = (
        torch.arange(24, dtype=torch.float32).repeat_interleave(2)[None, :, None, None].expand(3, 48, 2, 2)
    )  # branch i: i, 2 channels
    merged = Merge(MERGE_24_TO_13, 24)(x)
    assert merged.shape == (3, 26, 2, 2)
    expected = torch.tensor([sum(p - 1 for p in g) for g in MERGE_24_TO_13], dtype=torch.float32).repeat_interleave(2)
    assert torch.equal(merged[0, :, 0, 0], expected)
    assert merge_matrix(MERGE_13_TO_8, 13).sum().item() == 13 and merge_matrix(MERGE_13_TO_8, 13).shape == (8, 13)


def test_dsag_stream_follows_table_1_and_scales_its_head_with_the_backbone():
    stream = DsagStream(512, use_global=True, use_local=True).eval()
    parts = torch.randn(2, 24, 3, 32, 32)
    with torch.no_grad():
        after_conv2 = stream.mbn[:4](parts.reshape(2, 72, 32, 32))
        assert after_conv2.shape == (2, 24 * 64, 32, 32)  # conv1 5x5,32 and conv2 3x3,64 per part, 32 x 32
        assert stream.mbn[:5](parts.reshape(2, 72, 32, 32)).shape == (2, 24 * 64, 16, 16)  # conv3_x
        assert stream.mbn[:7](parts.reshape(2, 72, 32, 32)).shape == (2, 13 * 128, 8, 8)  # 24 -> 13, conv4_x
        assert stream.mbn(parts.reshape(2, 72, 32, 32)).shape == (2, 8 * 128, 8, 8)  # 13 -> 8
        dg, dl = stream(parts)
    assert dg.shape == dl.shape == (2, 512)
    assert stream.mbn[0][0].kernel_size == (5, 5) and stream.mbn[0][0].groups == 24
    # conv5_l keeps the 8 parts apart: part 3's feature does not move when another part's input does
    other = parts.clone()
    other[:, 0] += 5  # torso back -> merged part 1 only
    with torch.no_grad():
        _, dl_other = stream(other)
    parts_a, parts_b = dl.view(2, 8, 64), dl_other.view(2, 8, 64)
    assert torch.allclose(parts_a[:, 1:], parts_b[:, 1:]) and not torch.allclose(parts_a[:, 0], parts_b[:, 0])


def test_training_fuses_the_streams_by_addition_or_concatenation():
    model = build("full").train()
    images, cues = torch.randn(2, 3, 64, 32), {"densepose": torch.randn(2, 24, 3, 32, 32)}
    torch.manual_seed(1)
    fg, fl, zg, zl = model.forward_features(images, cues, with_dsag=True)
    model.train()
    torch.manual_seed(1)
    dg, dl = model.dsag(cues["densepose"])
    assert fg.shape == fl.shape == (2, 512)
    assert torch.allclose(zg, fg + dg, atol=1e-5) and torch.allclose(zl, fl + dl, atol=1e-5)
    concat = build("concat-fc").train()
    fg, fl, zg, zl = concat.forward_features(images, cues, with_dsag=True)
    assert zg.shape == (2, 512) and concat.fuse_g.in_features == 1024


def test_inference_needs_only_the_mf_stream():
    model = build("full").eval()
    images = torch.randn(3, 3, 64, 32)
    assert model.train_cues == ("densepose",) and model.test_cues == ()
    with torch.no_grad():
        embedding = model(images)  # no cues at all
        fg, fl = model.mf_head(model.trunk(images))
        model.dsag = None  # discarding the DSAG-Stream changes nothing
        assert torch.equal(model(images), embedding)
    assert embedding.shape == (3, 1024) and torch.equal(embedding, torch.cat([fg, fl], dim=1))


@pytest.mark.parametrize(
    "variant,test_cues,dim",
    [
        ("global-joint", ("densepose",), 512),
        ("local-joint", ("densepose",), 512),
        ("two-streams-fused", ("densepose",), 1024),
        ("global-single", ("densepose",), 512),
        ("local-single", ("densepose",), 512),
        ("two-branches", (), 1024),
        ("csa", (), 1024),
        ("baseline-re-ls", (), 512),
    ],
)
def test_variants_declare_their_cues_and_embedding(variant, test_cues, dim):
    model = build(variant).eval()
    assert model.test_cues == test_cues and model.embedding_dim == dim
    cues = {c: torch.randn(2, 24, 3, 32, 32) for c in test_cues}
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32), cues).shape == (2, dim)
    if variant == "global-joint":  # inference on zG = fG + dG
        with torch.no_grad():
            fg, _, zg, _ = model.forward_features(torch.zeros(2, 3, 64, 32), cues, with_dsag=True)
            assert torch.allclose(model(torch.zeros(2, 3, 64, 32), cues), zg) and not torch.allclose(zg, fg)


def test_single_variants_have_one_branch_in_both_streams():
    glob, loc = build("global-single"), build("local-single")
    assert glob.mf_head.local_branch is None and glob.dsag.head.local_branch is None and glob.id_fl is None
    assert loc.mf_head.global_branch is None and loc.dsag.head.global_branch is None and loc.id_fg is None
    assert build("two-branches").dsag is None and build("csa").train_cues == ("densepose-crops",)
    assert check_names(["densepose-crops"], "test") == ("densepose-crops",)


def test_loss_terms_carry_the_papers_weights():
    model = build("full")  # label smoothing 0.1, margin 0.3
    model.label_smoothing = 0.0
    b, k = 4, 5
    outputs = {
        "zg": torch.zeros(b, 512),
        "zl": torch.zeros(b, 512),  # all distances 0: the triplet loss is the margin
        "logits_fg": torch.zeros(b, k),
        "logits_zg": torch.zeros(b, k),
        "logits_zl": torch.zeros(b, k),
        "logits_fl": torch.zeros(b, 8, k),  # uniform: each cross-entropy is log(k)
    }
    terms = model.losses(outputs, torch.tensor([0, 0, 1, 1]))
    log_k = math.log(k)
    expected = {
        "id_fg": 0.5 * log_k,
        "id_fl": 8 * 0.5 * log_k,
        "id_zg": 1.0 * log_k,
        "id_zl": 1.0 * log_k,
        "triplet_zg": 1.5 * 0.3,
        "triplet_zl": 1.5 * 0.3,
    }
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name
    glob = build("global-single")
    assert set(
        glob.losses(
            glob(torch.randn(4, 3, 64, 32), {"densepose": torch.randn(4, 24, 3, 32, 32)}), torch.tensor([0, 0, 1, 1])
        )
    ) == {"id_fg", "triplet_zg", "id_zg"}


def test_local_branches_see_the_whole_map_or_their_eighth_of_its_channels():
    whole, slices = build("two-branches"), build("two-branches", local_input="slices")
    first = lambda m: m.mf_head.local_branch[0].layers[0][0]  # noqa: E731
    assert first(whole).groups == 1 and first(slices).groups == 8
    assert first(whole).in_channels == 256 and first(whole).out_channels == 8 * 64  # resnet18: 512 / 8 per part
    with pytest.raises(ValueError, match="local_input"):
        build("full", local_input="rows")


def test_resnet50_gives_the_papers_dimensions():
    model = build("full", backbone="resnet50").eval()
    assert model.embedding_dim == 4096 and model.id_fl[0].net[0].in_features == 256  # fG 2048, fL = 8 x 256
    assert model.dsag.head.global_branch[0].layers[0][0].out_channels == 2048  # conv5_g: [3x3, 2048] x 2
    assert model.dsag.head.local_branch[0].layers[0][0].out_channels == 8 * 256  # conv5_l: [3x3, 256] x 2 per part
    assert model.mf_head.global_branch[0].layers[1][0].stride == (1, 1)  # last stride removed
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 4096)
    assert build("baseline", backbone="resnet50").embedding_dim == 2048


def test_the_dsag_heads_size_is_what_table_1s_widths_give():
    """conv5_g "[3 x 3, 2048] x 2" on 1024 channels: 151 M of the DSAG-Stream's 162 M parameters."""
    model = build("full", backbone="resnet50")
    convs = [m for m in model.dsag.head.global_branch.modules() if isinstance(m, torch.nn.Conv2d)]
    three = [tuple(m.weight.shape) for m in convs if m.kernel_size == (3, 3)]
    assert three == [(2048, 1024, 3, 3), (2048, 2048, 3, 3), (2048, 2048, 3, 3), (2048, 2048, 3, 3)]
    head = sum(p.numel() for p in model.dsag.head.parameters())
    assert head == pytest.approx(151.04e6, rel=1e-3)
    assert sum(p.numel() for p in model.dsag.parameters()) == pytest.approx(162.03e6, rel=1e-3)


def test_part_crops_are_the_parts_bounding_boxes():
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(32.0), indexing="ij")
    pixels = torch.stack([0.1 + 0.01 * ys, 0.2 + 0.01 * xs, 0.9 - 0.005 * (ys + xs)])  # smooth: bilinear resizes agree
    iuv = torch.zeros(3, 64, 32, dtype=torch.uint8)
    iuv[0, 8:40, 4:20] = 3  # right hand: a 32 x 16 box
    iuv[0, 10, 25] = 2  # torso front: one pixel
    crops = part_crops(pixels, iuv)
    unnormalise = lambda x: x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]  # noqa: E731
    assert crops.shape == (24, 3, 32, 32)
    box = torch.nn.functional.interpolate(
        pixels[None, :, 8:40, 4:20], size=(32, 32), mode="bilinear", align_corners=False
    )[0]
    assert torch.allclose(unnormalise(crops[2]), box, atol=0.01)
    assert torch.allclose(unnormalise(crops[1]), pixels[:, 10:11, 25:26].expand(3, 32, 32), atol=0.01)
    mean = pixels.mean(dim=(1, 2))[:, None, None].expand(3, 32, 32)
    assert torch.allclose(unnormalise(crops[0]), mean, atol=1e-5) and torch.allclose(
        unnormalise(crops[23]), mean, atol=1e-5
    )


def test_a_flip_mirrors_each_crop_and_swaps_left_and_right_parts():
    from harness.data.transforms import CueTransform

    image = torch.randint(0, 256, (3, 64, 32), dtype=torch.uint8)
    iuv = torch.zeros(64, 32, 3, dtype=torch.uint8)
    iuv[8:40, 4:20, 0] = 3  # right hand
    raw = {"densepose-crops": iuv.numpy()}
    plain = CueTransform((64, 32), train=True, flip=0.0, padding=0, random_erasing=0)(image, dict(raw))[1][
        "densepose-crops"
    ]
    flipped = CueTransform((64, 32), train=True, flip=1.0, padding=0, random_erasing=0)(image, dict(raw))[1][
        "densepose-crops"
    ]
    assert torch.allclose(flipped[3], plain[2].flip(-1)) and torch.allclose(
        flipped[2], plain[3]
    )  # 3 right, 4 left hand
