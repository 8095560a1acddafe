"""SPReID's parsing network, the LIP layout, the Table 1 metrics and the parsing cues it writes."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import inception

from harness import data
from harness.cli import main
from harness.cli.data import check_files
from harness.data import lip
from harness.data.body_maps import lip_regions
from harness.data.cues import load_cue
from harness.data.synthetic.layouts import write_layout
from harness.data.transforms import CueTransform
from harness.errors import UserError
from harness.human_parsing.metrics import confusion_matrix, parsing_scores
from harness.human_parsing.run import LipImages, Recipe, load, lr_factor, train, write_cues
from harness.store import Store
from methods.spreid_parsing import ASPP_RATES, _GridReduction, build_parsing_net
from tests import helpers


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_parsing_net(pretrained=False).eval()


def test_output_stride_16_and_logits_at_input_size(net):
    with torch.no_grad():
        assert net.forward_features(torch.randn(1, 3, 128, 128)).shape == (1, 2048, 8, 8)
        assert net(torch.randn(2, 3, 128, 128)).shape == (2, 20, 128, 128)
        odd = torch.randn(1, 3, 100, 70)  # not a multiple of 16: the map is ceil(H/16) x ceil(W/16)
        assert net.forward_features(odd).shape[-2:] == (7, 5) and net(odd).shape == (1, 20, 100, 70)
        assert net(odd, size=(33, 21)).shape == (1, 20, 33, 21)


def test_last_block_dilated_grid_reduction_unstrided_aspp_rates(net):
    blocks = list(net.backbone)
    mixed_7a, last = blocks[-3], blocks[-2:]
    assert isinstance(mixed_7a, _GridReduction) and mixed_7a.stride == 1
    for block in last:  # Mixed_7b, Mixed_7c: every spatial filter at rate 2 along its long side(s)
        for conv in (m for m in block.modules() if isinstance(m, torch.nn.Conv2d)):
            kh, kw = conv.kernel_size
            assert conv.dilation == (2 if kh > 1 else 1, 2 if kw > 1 else 1)
    for block in blocks[:-2]:
        assert all(m.dilation == (1, 1) for m in block.modules() if isinstance(m, torch.nn.Conv2d))
    assert tuple(b[0].dilation[0] for b in net.aspp.branches) == ASPP_RATES == (3, 6, 9, 12)
    assert net.aspp.project[0].in_channels == 4 * 256 + 2 * 512 and net.classifier.out_channels == 20


def test_aspp_as_the_authors_code_or_as_the_papers_sentence():
    """modelx.py Classifier: image pooling (512) + 1x1 (512) + four atrous 3x3 (256), projected to 1024;
    the paper's sentence alone: four atrous branches, projected to 256. 44.9 M against 40.9 M parameters."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    authors, paper = build_parsing_net(pretrained=False), build_parsing_net(pretrained=False, aspp="paper")
    assert (authors.aspp.out_channels, authors.classifier.in_channels) == (1024, 1024)
    assert (paper.aspp.out_channels, paper.aspp.project[0].in_channels) == (256, 4 * 256)
    assert (count(authors), count(paper)) == (44_880_884, 40_929_780)
    # the image-pooling branch is the same at every position: a constant image gives a constant map
    x = torch.zeros(1, 2048, 4, 3)
    with torch.no_grad():
        pooled = authors.aspp.eval().pooling(x.mean(dim=(2, 3), keepdim=True))
        assert authors.aspp(torch.randn(2, 2048, 4, 3)).shape == (2, 1024, 4, 3) and pooled.shape == (1, 512, 1, 1)


@pytest.mark.parametrize("block,channels", [(inception.InceptionB, 288), (inception.InceptionD, 768)])
def test_grid_reduction_is_torchvisions_block_when_unpadded(block, channels):
    torch.manual_seed(0)
    original = block(channels).eval()
    x = torch.randn(1, channels, 9, 9)
    with torch.no_grad():
        expected = original(x)
        assert torch.equal(_GridReduction(original, stride=2, padding=0)(x), expected)  # same branches, same order
        same = _GridReduction(original, stride=1, padding=1)(x)
    assert same.shape == (1, expected.shape[1], 9, 9)


def test_imagenet_weights_come_from_the_cache_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code = main(
        ["parsing", "train", "--root", str(tmp_path / "lip"), "--out", str(tmp_path / "m.pt"), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and f"not cached: expected {tmp_path}/hub/checkpoints/inception_v3_google-" in err
        and "Traceback" not in err
    )
    assert not any(tmp_path.rglob("*.pth"))
    torch.manual_seed(1)
    google = torchvision.models.inception_v3(
        weights=None, aux_logits=True, init_weights=False
    )  # the published file's keys
    cached = tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(google.state_dict(), cached)
    net = build_parsing_net(pretrained=True)
    assert torch.equal(net.backbone[0].conv.weight, google.Conv2d_1a_3x3.conv.weight)
    assert torch.equal(net.backbone[-1].branch_pool.conv.weight, google.Mixed_7c.branch_pool.conv.weight)
    assert torch.equal(net.backbone[-3].block.branch7x7x3_4.conv.weight, google.Mixed_7a.branch7x7x3_4.conv.weight)


def test_learning_rate_groups_follow_the_paper(net):
    groups = net.param_groups(0.01, 0.1, 0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 0.01), ("aspp", 0.1), ("classifier", 0.1)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    recipe = Recipe(iterations=100)
    factors = [lr_factor(t, recipe) for t in range(100)]
    assert (
        factors[0] == 1
        and factors[9] == 1
        and factors[10] == pytest.approx(0.9)
        and factors[99] == pytest.approx(0.9**9)
    )
    assert len(set(factors)) == 10  # "we decay the learning rate 10 times using exponential shift with the rate of 0.9"


def test_scores_of_a_hand_worked_confusion():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 2, 1])  # the last pixel is ignored
    conf = confusion_matrix(pred, target, num_labels=5)
    assert conf[:3, :3].tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]] and conf.sum() == 9
    scores = parsing_scores(conf)  # labels 3 and 4 never occur: left out of both means
    assert scores["overall_acc"] == pytest.approx(100 * 6 / 9)
    assert scores["mean_acc"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert scores["mean_iou"] == pytest.approx(100 * (2 / 4 + 1 / 3 + 3 / 5) / 3)
    pred[1] = 3  # label 3 predicted but absent from the truth: no recall, an IoU of 0
    scores = parsing_scores(confusion_matrix(pred, target, num_labels=5))
    assert scores["overall_acc"] == pytest.approx(100 * 5 / 9)
    assert scores["mean_acc"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 3 / 4) / 3)
    assert scores["mean_iou"] == pytest.approx(100 * (1 / 4 + 1 / 3 + 3 / 5 + 0) / 4)


def test_socks_are_shoes_as_both_authors_group_them():
    """LIP label 8 (Socks) goes with the shoes (18, 19), in SPReID's and in SSP-ReID's code (body_maps.py)."""
    labels = np.asarray([[8, 18, 19, 9, 12, 16, 17, 0]], np.uint8)
    regions = CueTransform((1, 8), train=False)(torch.zeros(3, 1, 8, dtype=torch.uint8), {"parsing": labels})[1]
    shoes, lower = regions["parsing"][4] > 0, regions["parsing"][3] > 0
    assert shoes[0].tolist() == [True, True, True, False, False, False, False, False]
    assert lower[0].tolist() == [False, False, False, True, True, True, True, False]


def test_region_probabilities_group_like_label_maps():
    labels = np.random.default_rng(0).integers(0, 20, (16, 8)).astype(np.uint8)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 20).permute(2, 0, 1).float()
    regions = lip_regions(one_hot)
    assert torch.equal(regions[0], (torch.from_numpy(labels) > 0).float())
    assert torch.equal(regions[1:].sum(0), regions[0])  # head, upper, lower and shoes partition the person
    image = torch.zeros(3, 16, 8, dtype=torch.uint8)
    transform = CueTransform((16, 8), train=False)
    from_png = transform(image, {"parsing": labels})[1]["parsing"]
    from_npy = transform(image, {"parsing": regions.numpy()})[1]["parsing"]
    assert torch.allclose(from_png, from_npy)


def digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_synthetic_lip_has_the_published_layout(tmp_path):
    write_layout("lip", tmp_path / "a", ids=10, seed=1)
    train, val = lip.read(tmp_path / "a", "train"), lip.read(tmp_path / "a", "val")
    assert len(train) == 8 and len(val) == 2
    sizes, seen = set(), set()
    for image_path, label_path in train + val:
        assert re.fullmatch(r"\d+_\d{6}", image_path.stem) and image_path.stem == label_path.stem
        assert (
            image_path.parent
            == tmp_path / "a" / "TrainVal_images" / f"{'val' if (image_path, label_path) in val else 'train'}_images"
        )
        with Image.open(image_path) as image, Image.open(label_path) as labels:
            assert image.format == "JPEG" and labels.mode == "L" and image.size == labels.size
            values = set(np.unique(np.array(labels)).tolist())
            sizes.add(image.size)
        assert values <= set(range(20)) and 0 in values and len(values) >= 4
        seen |= values
    assert {0, 2, 5, 13} <= seen  # background, hair, upper clothes, face
    assert len(sizes) > 1, "LIP's images come in many sizes"
    write_layout("lip", tmp_path / "b", ids=10, seed=1)
    write_layout("lip", tmp_path / "c", ids=10, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_lip_reader_takes_the_nested_unzip_and_names_missing_files(tmp_path):
    write_layout("lip", tmp_path / "flat", ids=6, seed=0)
    nested = tmp_path / "nested"
    for archive in (lip.IMAGES, lip.ANNOTATIONS):
        shutil.copytree(tmp_path / "flat" / archive, nested / archive / archive)
    assert [p.name for p, _ in lip.read(nested, "train")] == [p.name for p, _ in lip.read(tmp_path / "flat", "train")]
    victim = lip.read(nested, "val")[0][1]
    victim.unlink()
    with pytest.raises(UserError, match=f"missing, e.g. {re.escape(str(victim))}"):
        lip.read(nested, "val")
    with pytest.raises(UserError, match="LIP not found: expected the folder"):
        lip.read(tmp_path / "nowhere", "train")


def test_flip_swaps_left_and_right_labels(tmp_path):
    labels = np.zeros((32, 16), np.uint8)
    labels[:, :8] = 14  # left arm on the image's left
    labels[:, 8:] = 18  # left shoe on its right
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(tmp_path / "x.jpg")
    Image.fromarray(labels).save(tmp_path / "x.png")
    _, flipped = LipImages([(tmp_path / "x.jpg", tmp_path / "x.png")], (32, 16), flip=1.0)[0]
    assert (flipped[:, :8] == 19).all() and (flipped[:, 8:] == 15).all()


def test_write_cues_refuses_to_hide_behind_label_pngs(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    write_layout("market1501", tmp_path, ids=4, seed=0)
    with pytest.raises(UserError, match="read in preference to the .npy"):  # the default source, cues/parsing/
        write_cues(None, "market1501", tmp_path, (32, 16), device=torch.device("cpu"), source=None)


def test_a_file_that_is_not_a_parsing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load(tmp_path / "none.pt", torch.device("cpu"))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a model written by `reidbench parsing train`"):
        load(tmp_path / "other.pt", torch.device("cpu"))


def test_parsing_commands_have_help(capsys):
    for command in (["parsing"], ["parsing", "train"], ["parsing", "eval"], ["parsing", "write-cues"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: reidbench {' '.join(command)}")


def test_an_interrupted_training_resumes_where_it_stopped(tmp_path):
    write_layout("lip", tmp_path / "lip", ids=6, seed=0)
    recipe, out = Recipe(iterations=3, input_size=(32, 32), batch_size=2), tmp_path / "m.pt"
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        if "step 2/3" in line and not any("resuming" in seen for seen in lines):
            raise KeyboardInterrupt  # a preemption after step 2's resume point

    kwargs = dict(device=torch.device("cpu"), pretrained=False, workers=0, log_every=1, checkpoint_every=1, log=log)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "lip", out, **kwargs)
    assert not out.exists() and (tmp_path / "m.pt.resume").is_file()
    shutil.copy(tmp_path / "m.pt.resume", tmp_path / "other.pt.resume")
    lines.clear()
    train(recipe, tmp_path / "lip", out, **kwargs)
    steps = [line.split()[2] for line in lines if line.startswith("parsing: step")]
    assert any("resuming from step 2" in line for line in lines) and steps == ["3/3"]
    assert out.is_file() and not (tmp_path / "m.pt.resume").exists()
    with pytest.raises(UserError, match="another recipe"):
        train(
            Recipe(iterations=4, input_size=(32, 32), batch_size=2), tmp_path / "lip", tmp_path / "other.pt", **kwargs
        )


@pytest.mark.slow
def test_train_eval_and_write_cues_end_to_end(tmp_path):
    """Through the CLI: train on synthetic LIP, score it, write cues that the re-ID data loader reads."""

    def reidbench(*args: str) -> str:
        done = helpers.reidbench(*args, cwd=tmp_path, env=helpers.cache_env(tmp_path))
        assert done.returncode == 0, done.stderr
        return done.stdout

    reidbench("data", "synth", "lip", str(tmp_path / "lip"), "--ids", "10")
    model = tmp_path / "parsing.pt"
    reidbench(
        "parsing",
        "train",
        "--root",
        str(tmp_path / "lip"),
        "--out",
        str(model),
        "--iterations",
        "3",
        "--input-size",
        "64x32",
        "--batch-size",
        "4",
        "--no-pretrained",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    out = reidbench(
        "parsing", "eval", "--model", str(model), "--root", str(tmp_path / "lip"), "--device", "cpu", "--workers", "0"
    )
    scores = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"(overall acc\.|mean acc\.|mean IoU)\s+([\d.]+) %", out)
    }
    assert set(scores) == {"overall acc.", "mean acc.", "mean IoU"} and all(0 <= v <= 100 for v in scores.values())
    assert "at 64x32" in out  # the model's own training size by default

    # SPReID Table 1's "Ours" row: the scores land in the store and the report shows them (marked synthetic)
    (row,) = Store(tmp_path / "results").read(methods={"spreid-parsing"}).parsing
    assert (row["variant"], row["test_dataset"], row["synthetic"], row["seed"]) == ("authors", "lip-val", True, 0)
    assert row["mean_iou"] * 100 == pytest.approx(scores["mean IoU"], abs=0.006)
    reidbench("report", "--paper", "spreid", "--table", "1", "--format", "md", "--out", "report")
    ours = next(line for line in (tmp_path / "report" / "spreid-table1.md").read_text().splitlines() if "Ours" in line)
    assert f"{scores['overall acc.']:.2f}" in ours and f"{scores['mean IoU']:.2f}" in ours and "85.07" in ours

    reid = tmp_path / "reid"
    reidbench("data", "synth", "market1501", str(reid), "--ids", "4")
    exact = sorted(p.relative_to(reid) for p in (reid / "cues" / "parsing").rglob("*.png"))  # the renderer's maps
    out = reidbench(
        "parsing",
        "write-cues",
        "--model",
        str(model),
        "--dataset",
        "market1501",
        "--root",
        str(reid),
        "--input-size",
        "64x32",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    dataset = data.load_dataset("market1501", reid)
    samples = {s.path: s for s in dataset.train + dataset.query + dataset.gallery}
    assert f"Wrote {len(samples)} parsing cue map(s) under {reid / 'cues' / 'parsing@spreid'}/" in out
    assert check_files(dataset.train + dataset.query + dataset.gallery, reid, ("parsing@spreid",)) == []
    # its own source: the default source's maps (here the renderer's label PNGs) stay as they were
    assert sorted(p.relative_to(reid) for p in (reid / "cues" / "parsing").rglob("*") if p.is_file()) == exact
    sample = dataset.train[0]
    regions = load_cue(reid, "parsing@spreid", sample.cue_key, (128, 64))
    assert regions.shape == (5, 128, 64) and regions.dtype == np.float32
    assert (regions >= 0).all() and (regions[0] <= 1 + 1e-5).all()
    assert np.allclose(regions[1:].sum(0), regions[0], atol=1e-5)  # the four parts partition the foreground
    image = torch.from_numpy(np.array(Image.open(sample.path))).permute(2, 0, 1)
    cues = CueTransform((128, 64), train=False)(image, {"parsing": regions})[1]
    assert cues["parsing"].shape == (5, 128, 64) and torch.allclose(cues["parsing"].sum(dim=(1, 2)), torch.ones(5))
