"""The registered backbones, their taps and last stride, and the ImageNet weights cache with its commands."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading

import pytest
import torch

from harness.cli import main
from methods import backbones
from methods.backbones import MissingWeights, backbone_info, backbone_names, create_backbone
from methods.weights import WeightsFile

PAPER_BACKBONES = {"resnet50", "resnet152", "resnet50m", "densenet121", "inception_v3", "inception_v4", "xception"}
# (tap name, tap channels, final channels), as documented in methods/backbones.py
DOCUMENTED = {
    "resnet18": ("res4b", 256, 512),
    "resnet50": ("res4f", 1024, 2048),
    "resnet152": ("res4b35", 1024, 2048),
    "resnet50m": ("res4f", 1024, 3072),
    "densenet121": ("transition2", 256, 1024),
    "inception_v3": ("mixed_6e", 768, 2048),
    "inception_v4": ("inception_b7", 1024, 1536),
    "xception": ("middle_flow", 728, 2048),
}


def test_the_papers_backbones_are_registered():
    assert PAPER_BACKBONES | {"resnet18"} == set(backbone_names()) == set(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_backbone_taps_and_last_stride(name):
    """Random weights; a 64 x 32 input: 1/32 with last stride 2, 1/16 with 1; the tap stays where it is."""
    tap_name, tap_channels, channels = DOCUMENTED[name]
    info = backbone_info(name)
    assert (info.tap_name, info.tap_channels, info.out_channels) == (tap_name, tap_channels, channels)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 32)
    shapes = {}
    for last_stride in (2, 1):
        net = create_backbone(name, last_stride=last_stride).train()  # training mode: no auxiliary classifier output
        assert (net.tap_name, net.tap_channels, net.out_channels) == (tap_name, tap_channels, channels)
        final, tap = net.forward_with_tap(x)
        grid = (2, 1) if last_stride == 2 else (4, 2)
        assert final.shape == (2, channels, *grid)
        assert tap.shape == (2, tap_channels, 4, 2)  # every tap is at 1/16, whatever the last stride
        assert torch.isfinite(final).all()
        shapes[last_stride] = {k: v.shape for k, v in net.state_dict().items()}
    (final.square().mean() + tap.square().mean()).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []  # DDP needs every parameter used
    assert shapes[1] == shapes[2]  # the same weights load either way
    with torch.no_grad():  # the plain forward, in eval mode (ResNet50-M's fusion BatchNorm needs two samples to train)
        for last_stride, grid in ((2, (2, 1)), (1, (4, 2))):
            assert create_backbone(name, last_stride=last_stride).eval()(x[:1]).shape == (1, channels, *grid)


def test_resnet50m_pools_to_yu_et_al_embedding():
    """Final map = [res5c, fused mid-level vector everywhere]; pooled: [gap(res5c), fuse(gap(res5a), gap(res5b))]."""
    torch.manual_seed(0)
    net = create_backbone("resnet50m").eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        final, tap = net.forward_with_tap(x)
        res4 = net.layer3(net.layer2(net.layer1(net.stem(x))))
        res5a = net.layer4[0](res4)
        res5b = net.layer4[1](res5a)
        fused = net.fuse(torch.cat([res5a.mean(dim=(2, 3)), res5b.mean(dim=(2, 3))], dim=1))
        expected = torch.cat([net.layer4[2](res5b).mean(dim=(2, 3)), fused], dim=1)
        pooled = net.forward_pooled(x)
    assert torch.equal(res4, tap)  # SSP-ReID's tap: res4f, as the authors' code (methods/backbones.py)
    assert torch.equal(final[:, :2048], net.layer4[2](res5b))
    assert torch.allclose(final[:, 2048:], fused[:, :, None, None].expand(-1, -1, 4, 2))
    assert pooled.shape == (2, 3072) and torch.allclose(pooled, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["inception_v3", "inception_v4", "xception"])
def test_inception_style_backbones_see_inputs_scaled_to_plus_minus_one(name):
    """reidbench normalises with ImageNet statistics; these weights were trained on [-1, 1]."""
    first = next(m for m in create_backbone(name).modules() if isinstance(m, backbones._Renormalise))
    mean, std = (
        torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(backbones.IMAGENET_STD).view(1, 3, 1, 1),
    )
    black, white = (torch.full((1, 3, 1, 1), v) for v in (0.0, 1.0))
    assert torch.allclose(first((black - mean) / std), -torch.ones(1, 3, 1, 1), atol=1e-6)
    assert torch.allclose(first((white - mean) / std), torch.ones(1, 3, 1, 1), atol=1e-6)


def test_inception_v3_takes_reid_sized_inputs():
    net = create_backbone("inception_v3", last_stride=2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 128, 64)).shape == (1, 2048, 4, 2)
        assert net(torch.randn(1, 3, 100, 36)).shape == (1, 2048, 4, 2)  # ceil(100/32), ceil(36/32)


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    """Pretrained weights come from the cache only, never downloaded (torchvision's, timm's, ours)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for name in ("resnet18", "xception", "resnet50m"):
        with pytest.raises(MissingWeights) as caught:
            create_backbone(name, pretrained=True)
        assert f"`reidbench weights fetch {name}`" in str(caught.value)
        assert str(tmp_path / "hub" / "checkpoints" / backbone_info(name).weights.name) in str(caught.value)
    assert not any(tmp_path.rglob("*.*"))


def test_timm_weights_are_where_timm_says():
    from timm.models import get_pretrained_cfg

    v4, xception = get_pretrained_cfg("inception_v4.tf_in1k"), get_pretrained_cfg("legacy_xception.tf_in1k")
    assert (
        backbone_info("inception_v4").weights.url
        == f"https://huggingface.co/{v4.hf_hub_id}/resolve/main/model.safetensors"
    )
    assert backbone_info("xception").weights.url == xception.url


@pytest.fixture
def web(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _serve_resnet18(root) -> tuple[str, dict]:
    """Random resnet18 weights under a torchvision-style name carrying their SHA-256 prefix."""
    state = backbones._resnet("resnet18", None, 2).state_dict()
    state = {k.replace("stem.0", "conv1").replace("stem.1", "bn1"): v for k, v in state.items()}
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    tmp = root / "tmp.pth"
    torch.save(state, tmp)
    name = f"resnet18-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(root / name)
    return name, state


def test_fetch_downloads_into_the_cache_once(tmp_path, monkeypatch, capsys, web):
    root, base = web
    name, state = _serve_resnet18(root)
    weights = WeightsFile(f"{base}/{name}", check_hash=True)
    monkeypatch.setitem(
        backbones._BACKBONES, "resnet18", dataclasses.replace(backbone_info("resnet18"), weights=weights)
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name

    assert main(["weights", "fetch", "resnet18"]) == 0
    assert f"resnet18: downloaded to {cached}" in capsys.readouterr().out
    assert cached.read_bytes() == (root / name).read_bytes()
    assert main(["weights", "fetch", "resnet18"]) == 0
    assert f"resnet18: already cached in {cached}" in capsys.readouterr().out

    net = create_backbone("resnet18", pretrained=True)
    assert torch.equal(net.stem[0].weight, state["conv1.weight"]) and torch.equal(
        net.layer4[1].bn2.weight, state["layer4.1.bn2.weight"]
    )
    assert main(["weights", "list"]) == 0
    assert any(line.split()[:2] == ["resnet18", "yes"] for line in capsys.readouterr().out.splitlines())


def test_fetch_from_a_mirror_and_a_corrupt_download(tmp_path, monkeypatch, capsys, web):
    root, base = web
    name, _ = _serve_resnet18(root)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    # the official URL is unreachable; the mirror has the file under its cache name
    weights = WeightsFile(f"{base}/gone/{name}", check_hash=True)
    monkeypatch.setitem(
        backbones._BACKBONES, "resnet18", dataclasses.replace(backbone_info("resnet18"), weights=weights)
    )
    assert main(["weights", "fetch", "resnet18"]) == 1
    assert "resnet18: could not download" in capsys.readouterr().err and not (cache / name).exists()
    assert main(["weights", "fetch", "resnet18", "--from", base + "/"]) == 0
    assert (cache / name).is_file()
    # a file whose bytes do not match the hash in its name is refused and not left in the cache
    wrong = "resnet18-00000000.pth"
    (root / wrong).write_bytes((root / name).read_bytes())
    weights = WeightsFile(f"{base}/{wrong}", check_hash=True)
    monkeypatch.setitem(
        backbones._BACKBONES, "resnet18", dataclasses.replace(backbone_info("resnet18"), weights=weights)
    )
    assert main(["weights", "fetch", "resnet18"]) == 1
    assert "invalid hash value" in capsys.readouterr().err and not (cache / wrong).exists()


def test_methods_lists_variants_cues_and_backbones(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:4] == ["baseline", "bnneck", "-", "-"] for line in out.splitlines())
    for name in backbone_names():
        tap_name, tap_channels, channels = DOCUMENTED[name]
        assert any(line.split()[:4] == [name, str(channels), tap_name, str(tap_channels)] for line in out.splitlines())


def test_run_stops_before_anything_when_pretrained_weights_are_missing(tmp_path, make_spec, monkeypatch, capsys):
    monkeypatch.setenv("REIDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / backbone_info("resnet18").weights.name).write_bytes(b"cached")
    spec = make_spec(
        grid={"backbones": ["resnet18", "densenet121", "xception"]},
        train={"iterations": 1, "ids_per_batch": 2, "pretrained": True},
        synthetic={"ids": 12},
    )
    assert main(["run", str(spec), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "`reidbench weights fetch densenet121 xception`" in err and "Traceback" not in err
    assert "resnet18" not in err  # cached
    assert not (tmp_path / "store").exists() and not (tmp_path / "cache").exists()  # no data was made either
    # --dry-run says where a run would stop (it reads the training data for the steps: the synthetic set is made)
    assert main(["run", str(spec), "--store", str(tmp_path / "store"), "--dry-run"]) == 0
    assert "A run would stop here" in capsys.readouterr().out and not (tmp_path / "store").exists()
