"""SPReID: the semantic pooling of 3.3 on a hand-built case, feature sizes, resolutions, weight sharing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.data.cues import random_cues
from methods import create_model
from methods.spreid import parsing_pool
from tests.helpers import run_tiny_grid

PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def build(variant: str, backbone: str = "resnet18", **options):
    torch.manual_seed(0)
    return create_model("spreid", variant=variant, backbone=backbone, num_classes=4, pretrained=False, **options)


def test_semantic_pooling_on_a_hand_built_case():
    activations = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(1, 2, 1, 3)  # C = 2 over 3 positions
    parsing = torch.tensor(
        [
            [1 / 3, 1 / 3, 1 / 3],  # foreground
            [1.0, 0.0, 0.0],  # head
            [0.0, 1.0, 0.0],  # upper body
            [0.0, 0.0, 1.0],  # lower body
            [0.5, 0.5, 0.0],  # shoes
        ]
    ).view(1, 5, 1, 3)
    # weighted sums: channel 0 -> fg 2, head 1, upper 2, lower 3, shoes 1.5; channel 1 -> 5, 4, 5, 6, 4.5
    assert torch.allclose(parsing_pool(activations, parsing, foreground=True), torch.tensor([[2.0, 5.0, 3.0, 6.0]]))
    assert torch.allclose(parsing_pool(activations, parsing, foreground=False), torch.tensor([[3.0, 6.0]]))


@pytest.mark.parametrize(
    "variant,dim,cues",
    [
        ("model-s", 512, ()),
        ("model-l-ft", 512, ()),
        ("wfg", 3 * 512, ("parsing",)),
        ("wfg-shared", 3 * 512, ("parsing",)),
        ("wofg", 2 * 512, ("parsing",)),
        ("wofg-ft", 2 * 512, ("parsing",)),
    ],
)
def test_embedding_sizes_and_cues_at_train_and_test_time(variant, dim, cues):
    model = build(variant).eval()
    assert model.embedding_dim == dim and model.train_cues == model.test_cues == cues
    inputs = (torch.randn(2, 3, 64, 32), random_cues(cues, 2, (64, 32))) if cues else (torch.randn(2, 3, 64, 32),)
    with torch.no_grad():
        assert model(*inputs).shape == (2, dim)


def test_resnet50_widths():
    assert build("wfg-shared", "resnet50").embedding_dim == 3 * 2048
    assert build("model-l", "resnet50").embedding_dim == 2048


def test_weight_sharing_uses_one_backbone_for_both_heads():
    exclusive, shared = build("wfg"), build("wfg-shared")
    backbone = sum(p.numel() for p in exclusive.backbone.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert shared.parsing_backbone is None and count(exclusive) == count(shared) + backbone


@pytest.mark.parametrize(
    "plain,tuned",
    [("model-l", "model-l-ft"), ("wfg", "wfg-ft"), ("wfg-shared", "wfg-ft-shared"), ("wofg", "wofg-ft")],
)
def test_fine_tuned_variants_are_the_same_model(plain, tuned):
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(build(plain)) == shapes(build(tuned))


def test_the_backbone_sees_the_scaled_input_and_the_parsing_grid_is_one_sixteenth():
    model = build("wfg", reid_scale=0.5).eval()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[-2:]))
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        everywhere = model(images, {"parsing": torch.full((2, 5, 128, 64), 1 / (128 * 64))})
        activations = model.parsing_backbone(F.interpolate(images, size=(64, 32), mode="bilinear", antialias=True))
    assert seen[0] == (64, 32) and activations.shape[-2:] == (4, 2)  # resnet18, last stride 1: 1/16
    # one parsing cell of the 8 x 4 grid (128 x 64 / 16) lit in every region: the pooled features are
    # the upsampled activations at that cell
    parsing = torch.zeros(2, 5, 128, 64)
    parsing[:, :, 48:64, 16:32] = 1 / 256  # grid cell (3, 1)
    with torch.no_grad():
        lit = model(images, {"parsing": parsing})
    cell = F.interpolate(activations, size=(8, 4), mode="bilinear", align_corners=False)[:, :, 3, 1]
    assert torch.allclose(lit[:, 512:1024], cell, atol=1e-5) and torch.allclose(lit[:, 1024:], cell, atol=1e-5)
    assert torch.allclose(everywhere[:, 512:1024], activations.mean(dim=(2, 3)), atol=1e-4)


def test_cross_entropy_only_with_the_specs_label_smoothing():
    images, cues = torch.randn(8, 3, 64, 32), random_cues(["parsing"], 8, (64, 32))
    for smoothing in (0.0, 0.1):
        model = build("wfg", label_smoothing=smoothing)
        outputs = model(images, cues)
        terms = model.losses(outputs, PIDS)
        assert set(terms) == {"id"}
        assert torch.allclose(terms["id"], F.cross_entropy(outputs["logits"], PIDS, label_smoothing=smoothing))
    assert build("wfg").label_smoothing == 0.0  # without the harness: the paper's plain softmax cross-entropy


def test_combined_is_no_variant_but_the_specs_combination_of_the_wfg_and_wofg_cells():
    from harness.spec import load_spec
    from methods import method_variants

    assert not {"combined", "combined-ft"} & set(method_variants("spreid"))
    jobs = Path(__file__).resolve().parent.parent / "jobs"
    for spec, parts, count in (("spreid.toml", ("wfg", "wofg"), 1), ("spreid-ft.toml", ("wfg-ft", "wofg-ft"), 3)):
        loaded = load_spec(jobs / spec)
        combos = [c for c in loaded.combinations if c.name.startswith("combined")]
        assert len(combos) == count  # one per fine-tuning target
        cells = {c.id for c in loaded.cells}
        for combo in combos:
            assert combo.part_names == tuple(f"spreid:{p}/inception_v3" for p in parts) and combo.normalize == "l2"
            assert {c.id for c in combo.parts} <= cells  # the w/fg and w/o fg rows' own cells


@pytest.mark.slow
def test_spreid_runs_end_to_end_and_writes_plain_and_reranked_rows(tmp_path):
    run, rows, cell_id = run_tiny_grid(tmp_path, "spreid:wfg")
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(r["rerank"] for r in rows) == [False, True]
    assert {(r["method"], r["variant"], r["backbone"]) for r in rows} == {("spreid", "wfg", "resnet18")}
    assert all(r["iterations"] == 10 and 0 <= r["mAP"] <= 1 for r in rows) and cell_id in run.stdout


@pytest.mark.slow
def test_spreid_combined_row_end_to_end_from_the_wfg_and_wofg_cells(tmp_path):
    """`reidbench run` trains w/fg and w/o fg on synthetic data with parsing cues, then writes the
    "combined" rows from those two cells' kept embeddings (5C wide: 3C + 2C)."""
    from harness.spec import load_spec
    from harness.store import Store
    from tests.helpers import cache_env, reidbench, write_spec

    path = write_spec(
        tmp_path,
        grid={"methods": ["spreid:wfg", "spreid:wofg"]},
        train={"iterations": 4, "warmup": 0, "milestones": [3]},
        combine=[{"name": "combined", "method": "spreid", "parts": ["spreid:wfg/resnet18", "spreid:wofg/resnet18"]}],
    )
    run = reidbench("run", path, "--store", "store", cwd=tmp_path, env=cache_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    spec, store = load_spec(path), Store(tmp_path / "store")
    (combo,) = spec.combinations
    rows = store.read().rows
    mine = [r for r in rows if r["cell_id"] == combo.id]
    assert sorted(r["rerank"] for r in mine) == [False, True]
    assert {(r["method"], r["variant"], r["backbone"]) for r in mine} == {("spreid", "combined", "resnet18+resnet18")}
    parts = json.loads(mine[0]["config"])["combination"]["parts"]
    assert [p["cell_id"] for p in parts] == [c.id for c in spec.cells]  # the w/fg and w/o fg rows' own models
    widths = [store.read_embeddings(c.id, "market1501").query.shape[1] for c in spec.cells]
    assert widths == [3 * 512, 2 * 512]


def test_a_fixed_parsing_grid_as_the_authors_parser_at_512_by_512():
    """modelx.py resizes the re-ID activations to the parser's 32 x 32 grid whatever the re-ID input."""
    model = build("wfg", reid_scale=1.0, parsing_grid=(8, 8)).eval()
    images = torch.randn(2, 3, 64, 32)
    parsing = torch.zeros(2, 5, 64, 32)
    parsing[:, :, 8:16, 4:8] = 1 / 32  # grid cell (1, 1) of 8 x 8 (each cell 8 x 4 pixels)
    with torch.no_grad():
        lit = model(images, {"parsing": parsing})
        activations = model.parsing_backbone(images)
    cell = F.interpolate(activations, size=(8, 8), mode="bilinear", align_corners=False)[:, :, 1, 1]
    assert torch.allclose(lit[:, 512:1024], cell, atol=1e-5)


def test_spreid_specs_draw_images_uniformly_as_the_authors_loader_does():
    # The authors' main.py iterates over a shuffled image list, 15 images a batch: no identity sampling.
    from harness.spec import load_spec

    jobs = Path(__file__).resolve().parent.parent / "jobs"
    cells = [c for path in sorted(jobs.glob("spreid*.toml")) for c in load_spec(path).cells]
    assert cells and all(c.train.sampler == "uniform" for c in cells if c.method == "spreid")
    assert {c.train.ids_per_batch * c.train.images_per_id for c in cells if c.method == "spreid"} == {15}
