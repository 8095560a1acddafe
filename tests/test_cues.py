"""Cue maps: exact in the synthetic data, aligned with the image under the transforms, and refused
with an error naming the file when missing, unreadable or of the wrong size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from harness import data
from harness.cli import main
from harness.data import loader
from harness.data.body_maps import DENSEPOSE_FLIP, KEYPOINT_FLIP, dsap_images
from harness.data.cues import CUES, REGISTRY, Cue, CueError, cue_path, load_cue, random_cues, register_cue
from harness.data.geometry import PROBABILITY_MAP
from harness.data.synthetic.layouts import write_layout
from harness.data.synthetic.render import Scene
from harness.data.transforms import CueTransform

LEFT_ARM, RIGHT_ARM = 14, 15
LIP_FLIP = np.arange(20)  # a mirrored person's LIP labels: left and right arms, legs and shoes swap
LIP_FLIP[14:20] = [15, 14, 17, 16, 19, 18]


def front_view_shot(seed: int = 0):
    """A person seen from the front with both arms and legs visible and unoccluded."""
    scene = Scene(seed, 6)
    for pid in range(200):
        for cam in range(6):
            for r in scene.shots(pid, cam, 1, occlusion=0.0):
                if r.keypoints[:, 2].all() and (r.lip == LEFT_ARM).sum() > 10 and (r.lip == RIGHT_ARM).sum() > 10:
                    return r
    raise AssertionError("no front view found")


def raw_cues(r):
    return {"parsing": r.lip, "densepose": r.iuv, "pose": r.keypoints.copy(), "mask": r.mask.astype(np.uint8) * 255}


def test_synthetic_cues_are_exact():
    r = front_view_shot()
    assert ((r.iuv[..., 0] > 0) == (r.lip > 0)).all(), "DensePose parts cover exactly the labelled body"
    assert (r.mask >= (r.lip > 0)).all(), "the person mask contains every labelled pixel"
    x, y = r.keypoints[5, :2].astype(int)  # left wrist
    assert r.lip[y, x] == LEFT_ARM and r.iuv[y, x, 0] in (19, 21)  # lower left arm, front or back
    x, y = r.keypoints[0, :2].astype(int)  # head
    assert r.lip[y, x] in (1, 2, 13)


def peak(heatmap: torch.Tensor) -> tuple[int, int]:
    index = int(heatmap.argmax())
    return index % heatmap.shape[1], index // heatmap.shape[1]


def test_flip_moves_parsing_and_keypoints_with_the_body():
    r = front_view_shot()
    image = torch.from_numpy(r.image.copy()).permute(2, 0, 1).contiguous()
    plain = CueTransform((128, 64), train=False, heatmap_stride=1)
    flipped = CueTransform((128, 64), train=True, flip=1.0, padding=0, random_erasing=0, heatmap_stride=1)
    img0, cues0 = plain(image, raw_cues(r))
    img1, cues1 = flipped(image, raw_cues(r))
    assert torch.equal(img1, img0.flip(-1))
    assert torch.allclose(cues1["parsing"], cues0["parsing"].flip(-1)) and torch.equal(
        cues1["mask"], cues0["mask"].flip(-1)
    )
    lip = LIP_FLIP[np.fliplr(r.lip)]  # the flipped image's labels: its left arm is the original right arm
    for joint, arm in ((5, LEFT_ARM), (6, RIGHT_ARM)):  # left and right wrist
        x, y = peak(cues1["pose"][joint])
        assert lip[y, x] == arm, f"flipped keypoint {joint} does not lie on the flipped image's arm {arm}"
        x0, y0 = peak(cues0["pose"][KEYPOINT_FLIP[joint]])
        assert (x, y) == (63 - x0, y0)


def test_flip_swaps_the_dsap_images_of_left_and_right_parts():
    r = front_view_shot()
    image = torch.from_numpy(r.image.copy()).permute(2, 0, 1).contiguous()
    plain = CueTransform((128, 64), train=False)
    flipped = CueTransform((128, 64), train=True, flip=1.0, padding=0, random_erasing=0)
    dsap0 = plain(image, {"densepose": r.iuv})[1]["densepose"]
    dsap1 = flipped(image, {"densepose": r.iuv})[1]["densepose"]
    for part in range(1, 25):  # the flipped person's part shows what the original's mirror part showed
        assert torch.equal(dsap1[part - 1], dsap0[DENSEPOSE_FLIP[part] - 1])
    assert DENSEPOSE_FLIP[19] == 20 and DENSEPOSE_FLIP[1] == 1  # left/right lower arm swap, torso stays
    part = 19 if (r.iuv[..., 0] == 19).any() else 21  # lower left arm, front or back
    assert (r.iuv[..., 0] == part).any() and not torch.equal(dsap0[part - 1], dsap0[part])  # left and right differ


def test_crop_and_resize_keep_keypoints_on_the_body():
    r = front_view_shot()
    image = torch.from_numpy(r.image.copy()).permute(2, 0, 1).contiguous()
    torch.manual_seed(3)
    _, cues = CueTransform((64, 32), train=True, flip=0.0, padding=6, random_erasing=0, heatmap_stride=1)(
        image, raw_cues(r)
    )
    for joint in range(13):
        x, y = peak(cues["pose"][joint])
        assert cues["mask"][0, y, x] > 0.5, f"keypoint {joint} left the person after crop and resize"


def test_parsing_regions_are_l1_normalised_per_channel():
    lip = np.zeros((16, 8), np.uint8)
    lip[2:4, 2:6], lip[6:10, 1:7], lip[14:16, 2:4] = 13, 5, 18
    _, cues = CueTransform((16, 8), train=False)(torch.zeros(3, 16, 8, dtype=torch.uint8), {"parsing": lip})
    sums = cues["parsing"].sum(dim=(1, 2))
    assert torch.allclose(sums, torch.tensor([1.0, 1, 1, 0, 1]))  # no lower body in this map
    assert (cues["parsing"][1][lip != 13] == 0).all() and (cues["parsing"][0][lip == 0] == 0).all()


def test_dsap_images_copy_pixels_to_their_uv_cell():
    pixels = torch.zeros(3, 4, 4)
    pixels[:, 1, 2] = torch.tensor([1.0, 0.5, 0.25])
    iuv = torch.zeros(3, 4, 4, dtype=torch.uint8)
    iuv[:, 1, 2] = torch.tensor([7, 255, 128])  # part 7, u = 1 -> row 31, v ~ 0.5 -> column 16
    dsap = dsap_images(pixels, iuv)
    assert dsap.shape == (24, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None]
    assert torch.allclose(dsap[6, :, 31, 16] * std[:, 0] + mean[:, 0], torch.tensor([1.0, 0.5, 0.25]))
    untouched = dsap[0].reshape(3, -1) * std + mean
    assert torch.allclose(untouched, pixels.mean(dim=(1, 2))[:, None].expand_as(untouched))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    write_layout("market1501", root, ids=6, seed=2)
    return root


def test_loader_batches_carry_exactly_the_declared_cues(market):
    d = data.load_dataset("market1501", market)
    batch = next(
        iter(
            DataLoader(
                loader.ImageDataset(
                    d.query, loader.test_transform((64, 32)), cues=("parsing", "pose"), cue_root=market
                ),
                batch_size=4,
            )
        )
    )
    images, pids, camids, cues = batch
    assert images.shape == (4, 3, 64, 32) and set(cues) == {"parsing", "pose"}
    assert cues["parsing"].shape == (4, 5, 64, 32) and cues["pose"].shape == (4, 13, 4, 2)
    plain = next(iter(DataLoader(loader.ImageDataset(d.query, loader.test_transform((64, 32))), batch_size=4)))
    assert len(plain) == 3 and torch.equal(plain[0], images)


def test_every_cue_loads_from_the_synthetic_data(market):
    sample = data.load_dataset("market1501", market).train[0]
    shapes = {cue: load_cue(market, cue, sample.cue_key, (128, 64)).shape for cue in CUES}
    assert shapes == {
        "saliency": (128, 64),
        "parsing": (128, 64),
        "densepose": (128, 64, 3),
        "pose": (13, 3),
        "mask": (128, 64),
    }


def test_parsing_probabilities_may_come_as_npy(tmp_path):
    probs = np.random.default_rng(0).random((5, 8, 4)).astype(np.float32)
    path = cue_path(tmp_path, "parsing", "a/b.jpg").with_suffix(".npy")
    path.parent.mkdir(parents=True)
    np.save(path, probs)
    assert np.array_equal(load_cue(tmp_path, "parsing", "a/b.jpg", (8, 4)), probs)
    _, cues = CueTransform((8, 4), train=False)(torch.zeros(3, 8, 4, dtype=torch.uint8), {"parsing": probs})
    assert torch.allclose(cues["parsing"].sum(dim=(1, 2)), torch.ones(5))


@pytest.mark.parametrize(
    "cue,content,message",
    [
        ("mask", None, "missing file .*cues/mask/q/1.png"),
        ("mask", b"not a png", "cannot read .*cues/mask/q/1.png"),
        ("saliency", "wrong size", "cues/saliency/q/1.png is 4x4 \\(width x height\\) but its image is 4x8"),
        ("parsing", "label 25", "cues/parsing/q/1.png holds label 25"),
        ("densepose", "grey", "cues/densepose/q/1.png must be an RGB PNG"),
        ("pose", b"1 2 3\n", "cues/pose/q/1.txt must hold 13 lines"),
    ],
)
def test_malformed_cues_name_the_file(tmp_path, cue, content, message):
    path = cue_path(tmp_path, cue, "q/1.jpg")
    path.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "wrong size":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    elif content == "label 25":
        Image.fromarray(np.full((8, 4), 25, np.uint8)).save(path)
    elif content == "grey":
        Image.fromarray(np.zeros((8, 4), np.uint8)).save(path)
    with pytest.raises(CueError, match=message):
        load_cue(tmp_path, cue, "q/1.jpg", (8, 4))


class PartPooling(torch.nn.Module):
    """A tiny method that declares a cue: features pooled by the 5 parsing regions (SPReID-like)."""

    train_cues, test_cues, embedding_dim = ("parsing",), ("parsing",), 40

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.classifier = torch.nn.Linear(40, num_classes)

    def forward(self, images, cues):
        maps = self.conv(images)
        pooled = torch.einsum("nchw,nrhw->nrc", maps, cues["parsing"]).flatten(1)
        return {"logits": self.classifier(pooled)} if self.training else pooled

    def losses(self, outputs, pids):
        return {"id": torch.nn.functional.cross_entropy(outputs["logits"], pids)}


def test_a_method_that_declares_cues_trains_and_extracts_with_them(market):
    from harness.data.sampler import PKBatchSampler
    from harness.engine.train import extract_features, train

    d = data.load_dataset("market1501", market)
    model = PartPooling(d.num_train_ids)
    sampler = PKBatchSampler([s.pid for s in d.train], ids_per_batch=2, images_per_id=2, steps=3, seed=0)
    batches = loader.train_loader(
        d.train,
        sampler,
        loader.train_transform((64, 32), flip=0.5, padding=4, random_erasing=0.5),
        num_workers=0,
        pin_memory=False,
        cues=model.train_cues,
        cue_root=market,
        in_memory=True,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result = train(
        model,
        model.losses,
        batches,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        device=torch.device("cpu"),
        log=lambda message: None,
    )
    assert result.iterations == 3 and np.isfinite(result.losses["id"])
    shards = loader.shard_loader(
        d.query,
        loader.test_transform((64, 32)),
        rank=0,
        world_size=1,
        batch_size=8,
        num_workers=0,
        pin_memory=False,
        cues=model.test_cues,
        cue_root=market,
    )
    assert extract_features(model, shards, torch.device("cpu")).shape == (len(d.query), 40)


def _read_depth(path):
    value = np.load(path)
    if value.ndim != 2:
        raise CueError(f"cue depth: {path} must be an (H, W) array of metres, it is {value.shape}.")
    return value


def _write_depth(stem, raw):
    path = stem.with_name(stem.name + ".npy")
    np.save(path, np.asarray(raw, np.float32))
    return path


@pytest.fixture
def depth_cue():
    """A new cue, as a newcomer would add it: one registry entry, and nothing else anywhere.

    A float32 depth map in metres; the synthetic person stands 2.5 m away on an empty background.
    """
    cue = register_cue(
        Cue(
            "depth",
            PROBABILITY_MAP,
            lambda raw, image: torch.from_numpy(raw)[None],
            lambda batch, size, stride, g: 10 * torch.rand(batch, 1, *size, generator=g),
            suffixes=(".npy",),
            read=_read_depth,
            write=_write_depth,
            synthetic=lambda r: r.mask.astype(np.float32) * 2.5,
        )
    )
    yield cue
    del REGISTRY["depth"]


def test_a_new_cue_is_one_registry_entry(depth_cue, tmp_path, capsys):
    # the synthetic writers write it, `reidbench data check` finds and checks it ...
    root = write_layout("folder", tmp_path, ids=4, seed=0)
    assert main(["data", "check", "folder", str(root)]) == 0
    assert "cues checked: saliency, parsing, densepose, pose, mask, depth" in capsys.readouterr().out
    # ... it loads in its own format, and the loader batches it: moved with the image as the mask is
    d = data.load_dataset("folder", root)
    key = d.query[0].cue_key
    assert cue_path(root, "depth", key).suffix == ".npy"
    depth, mask = (load_cue(root, cue, key, (128, 64)) for cue in ("depth", "mask"))
    assert np.array_equal(depth / 2.5 * 255, mask)
    image = torch.from_numpy(np.array(Image.open(d.query[0].path))).permute(2, 0, 1).contiguous()
    torch.manual_seed(0)
    _, cues = CueTransform((64, 32), train=True, flip=1.0, padding=4, random_erasing=0)(
        image, {"depth": depth, "mask": mask}
    )
    assert cues["depth"].shape == (1, 64, 32) and torch.allclose(cues["depth"] / 2.5, cues["mask"], atol=1e-6)
    batch = next(
        iter(
            DataLoader(
                loader.ImageDataset(d.query, loader.test_transform((64, 32)), cues=("depth",), cue_root=root),
                batch_size=2,
            )
        )
    )
    assert batch[3]["depth"].shape == (2, 1, 64, 32)
    # ... its random maker serves model tests and profiling, and its own reader's checks name the file
    assert random_cues(["depth", "mask"], 3, (64, 32))["depth"].shape == (3, 1, 64, 32)
    np.save(cue_path(root, "depth", key), np.zeros((2, 128, 64), np.float32))
    with pytest.raises(CueError, match="cue depth: .*cues/depth/query/.*\\.npy must be an \\(H, W\\) array of metres"):
        load_cue(root, "depth", key, (128, 64))
    np.save(cue_path(root, "depth", key), np.zeros((64, 64), np.float32))
    with pytest.raises(CueError, match="is 64x64 \\(width x height\\) but its image is 64x128"):
        load_cue(root, "depth", key, (128, 64))


def test_the_registry_refuses_a_second_entry_of_a_name_and_a_source_without_files():
    with pytest.raises(ValueError, match="'mask' is registered twice"):
        register_cue(REGISTRY["mask"])
    with pytest.raises(ValueError, match="its source 'densepose-crops' is not a registered cue with files of its own"):
        register_cue(
            Cue(
                "crops-of-crops",
                REGISTRY["densepose"].geometry,
                REGISTRY["densepose"].tensor,
                REGISTRY["densepose"].random,
                source="densepose-crops",
            )
        )
    with pytest.raises(KeyError, match="unknown cue\\(s\\) depth; known: saliency, parsing"):
        random_cues(["depth"], 1, (8, 4))
