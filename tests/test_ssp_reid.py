"""SSP-ReID: the cue join of 3.2, feature sizes, cues, Table 1's losses and the two-subnet framework."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.data.cues import random_cues
from harness.report.mapping import identity
from harness.report.reference import reference_cells
from harness.spec import load_spec
from harness.store import Store
from methods import create_model
from methods.ssp_reid import cue_maps, masked_average
from tests.helpers import cache_env, reidbench, run_tiny_grid, write_spec

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


@pytest.mark.parametrize(
    "variant,train_cues,dim",
    [
        ("s-reid", ("saliency",), 512 + 256),
        ("sp-reid", ("parsing",), 512 + 5 * 256),
        ("ssp", ("saliency", "parsing"), 512 + 256 + 512 + 5 * 256),
        ("backbone", (), 512),
    ],
)
def test_feature_sizes_and_cues_at_train_and_test_time(variant, train_cues, dim):
    model = build(variant)
    assert model.train_cues == model.test_cues == train_cues and model.embedding_dim == dim
    cues = random_cues(train_cues, 2, (64, 32))
    with torch.no_grad():
        images = torch.randn(2, 3, 64, 32)
        assert (model.eval()(images, cues) if cues else model.eval()(images)).shape == (2, dim)


def test_resnet50_subnets_join_res4f_c_and_5c_wide():
    """The authors' ResNet50_parsing: feat_dim 7168 = 2048 (res5c pooled) + 5 x 1024 (x4f joined)."""
    model = build("sp-reid", "resnet50")
    assert model.embedding_dim == 2048 + 5 * 1024 == 7168 and model.backbone.tap_name == "res4f"
    assert model.classifier.in_features == model.embedding_dim
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        _, tap = model.backbone.forward_with_tap(images)
        res4f = model.backbone.layer3(model.backbone.layer2(model.backbone.layer1(model.backbone.stem(images))))
    assert torch.equal(tap, res4f)


# Model sizes (M parameters) at Market-1501's 751 classes, from the authors' README
# (RQuispeC/saliency-semantic-parsing-reid, "# param (M)"): backbone only, + S-ReID, + SP-ReID, + SSP-ReID.
AUTHORS_SIZES = {
    "resnet50": (25.04, 25.81, 28.89, 54.7),
    "resnet50m": (30.01, 30.78, 33.85, 64.63),
    "densenet121": (7.72, 7.91, 8.68, 16.59),
    "inception_v4": (42.29, 43.06, 46.14, 89.2),
    # The README prints 22.39 for both Xception and Xception + S-ReID; a saliency join adds a
    # 728-wide feature, so the classifier alone adds 728 x 751 weights: 22.39 + 0.547 is the size
    # its own SP-ReID (25.12 = 22.39 + 5 x 0.547) and SSP-ReID (48.05 = the sum) rows imply.
    "xception": (22.39, 22.39 + 0.728 * 0.751, 25.12, 48.05),
}


@pytest.mark.parametrize("backbone", sorted(AUTHORS_SIZES))
def test_every_model_is_the_size_the_authors_published(backbone):
    """reidbench's model beside the authors' README size, within 1%: the taps (res4f for the
    ResNets), the joins and the plain classifiers are theirs."""
    sizes = {}
    for variant in ("backbone", "ssp"):
        model = create_model("ssp-reid", variant=variant, backbone=backbone, num_classes=751, pretrained=False)
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        sizes[variant] = count(model)
        if variant == "ssp":
            sizes["s-reid"], sizes["sp-reid"] = count(model.members["s"]), count(model.members["sp"])
    ours = tuple(sizes[v] for v in ("backbone", "s-reid", "sp-reid", "ssp"))
    for variant, built, published in zip(("backbone", "s-reid", "sp-reid", "ssp"), ours, AUTHORS_SIZES[backbone]):
        assert built == pytest.approx(published, rel=0.01), (
            f"{backbone} {variant}: {built:.2f} M, authors {published} M"
        )


def test_the_cue_weights_only_the_joined_part():
    model = build("s-reid").eval()
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        bright = model(images, {"saliency": torch.ones(2, 1, 64, 32)})
        dark = model(images, {"saliency": torch.zeros(2, 1, 64, 32)})
        half = model(images, {"saliency": torch.full((2, 1, 64, 32), 0.5)})
    assert torch.equal(bright[:, :512], dark[:, :512])  # the global representation
    assert dark[:, 512:].abs().max() == 0 and torch.allclose(half[:, 512:], bright[:, 512:] / 2, atol=1e-6)
    with torch.no_grad():
        tap = model.backbone.forward_with_tap(images)[1]
    assert torch.allclose(bright[:, 512:], tap.mean(dim=(2, 3)), atol=1e-5)  # all-ones map: the tap's average


def test_losses_follow_table_1_unless_forced():
    images, cues = torch.randn(8, 3, 64, 32), random_cues(["saliency"], 8, (64, 32))
    assert set(build("s-reid").losses(build("s-reid")(images, cues), PIDS)) == {"id", "triplet"}
    forced = build("s-reid", triplet=False)
    assert set(forced.losses(forced(images, cues), PIDS)) == {"id"}


def test_xception_trains_with_cross_entropy_only():
    model = build("s-reid", "xception")
    images, cues = torch.randn(4, 3, 64, 32), random_cues(["saliency"], 4, (64, 32))
    assert set(model.losses(model(images, cues), PIDS[:4])) == {"id"}


def test_backbone_only_is_the_plain_backbone_with_table_1s_loss():
    """GAP -> Linear with its bias, the pooled feature at test time; no BNNeck; CE only on Xception."""
    model = build("backbone")
    assert model.train_cues == model.test_cues == () and model.classifier.bias is not None
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    images = torch.randn(8, 3, 64, 32)
    assert set(model.losses(model(images), PIDS)) == {"id", "triplet"}
    with torch.no_grad():
        assert torch.allclose(model.eval()(images), model.backbone.forward_pooled(images))
    xception = build("backbone", "xception")
    assert set(xception.losses(xception(images[:4]), PIDS[:4])) == {"id"}


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


@pytest.mark.slow
def test_backbone_only_and_the_res4f_join_train_on_uniform_batches_end_to_end(tmp_path):
    """`reidbench run` of Inception-V4/Xception's recipe shape on ResNet-50 (the changed tap): the
    backbone-only and S-ReID cells train one epoch of uniform batches, a pass over the images."""
    spec = write_spec(
        tmp_path,
        "ssp-uniform",
        grid={"methods": ["ssp-reid:backbone", "ssp-reid:s-reid"], "backbones": ["resnet50"]},
        train={"iterations": None, "epochs": 1, "sampler": "uniform", "lr": 1e-4, "warmup": 0, "milestones": [1]},
    )
    run = reidbench("run", spec, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    started = re.findall(r"for (\d+) steps, \d+ ids, (\d+) images", run.stdout)
    passes = re.findall(r"batches: 8 images drawn uniformly, (\d+) steps a pass over the images", run.stdout)
    assert len(started) == len(passes) == 2, run.stdout
    assert all(int(steps) == int(images) // 8 == int(cycle) for (steps, images), cycle in zip(started, passes))
    rows = Store(tmp_path / "store").read().rows
    assert {(r["variant"], r["rerank"]) for r in rows} == {
        (v, rr) for v in ("backbone", "s-reid") for rr in (False, True)
    }
    assert {r["iterations"] for r in rows} == {int(started[0][0])} and all(0 <= r["mAP"] <= 1 for r in rows)


def test_jobs_full_measures_every_own_cell_of_ssp_reids_tables():
    """Each published SSP-ReID number that reidbench measures (Tables 3-4, own rows, plain and RR) has
    a cell in jobs/full.toml of its store identity; the backbone-only rows are ssp-reid:backbone."""
    spec = load_spec(Path(__file__).resolve().parent.parent / "jobs" / "full.toml")
    made = {(c.method, c.variant, c.backbone, c.train_dataset, t) for c in spec.cells for t in c.test_datasets}
    measured, missing = {}, []
    for ref in reference_cells():
        key = identity(ref) if ref.paper == "ssp-reid" else None
        if key is None:
            continue
        found = (key.method, key.variant, key.backbone, key.train_dataset, key.test_dataset) in made
        measured[ref.table] = measured.get(ref.table, 0) + found
        missing += [] if found else [ref]
    assert not missing, missing[:3]
    assert measured == {3: 160, 4: 48}  # 5 backbones x 4 models x 4 test sets x 2 metrics; Table 4's own rows
