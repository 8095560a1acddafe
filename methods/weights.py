"""ImageNet weights for the backbones: one cache folder, filled ahead of time by `reidbench weights fetch`.

Compute nodes are often offline, so building a model never downloads anything: each backbone's
weights are one file in torch's hub cache, ``$TORCH_HOME/hub/checkpoints`` (by default
``~/.cache/torch/hub/checkpoints``), the folder torchvision reads its own weights from. timm's
weights go to the same folder, as the file timm names (its GitHub release, or the Hugging Face hub's
``model.safetensors`` renamed ``timm_<model>.<tag>.safetensors``), and are loaded through timm's
own loader from that file; no Hugging Face cache is involved. `fetch` is the only function here
that uses the network, through ``torch.hub.download_url_to_file`` (temporary file, then rename).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch


class MissingWeights(RuntimeError):
    """Pretrained weights were asked for but are not in the local cache."""


@dataclass(frozen=True)
class WeightsFile:
    """Where a backbone's ImageNet weights come from and their file name in the cache."""

    url: str
    file: str = ""  # the cache's name for it; default: the URL's last part
    check_hash: bool = False  # the name carries the first hex digits of the file's SHA-256 (torchvision's)

    @property
    def name(self) -> str:
        return self.file or self.url.rsplit("/", 1)[-1]

    @property
    def path(self) -> Path:
        return cache_dir() / self.name


_HASH = re.compile(r"-([a-f0-9]+)\.")  # torchvision's convention: resnet50-0676ba61.pth


def cache_dir() -> Path:
    """The one folder every backbone's weights are read from: torch's hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def missing_message(names: list[str], files: list[Path]) -> str:
    return (
        f"ImageNet weights for {', '.join(names)} are not cached: expected {', '.join(map(str, files))}. "
        f"Run `reidbench weights fetch {' '.join(names)}` on a machine with internet access "
        f"(compute nodes are often offline; TORCH_HOME must point at the same cache there), "
        f"or set pretrained = false in the spec's [method_options.<method>] table."
    )


def require_cached(name: str, weights: WeightsFile) -> Path:
    """The cached weights file of backbone `name`; MissingWeights names the command that fetches it."""
    if not weights.path.is_file():
        raise MissingWeights(missing_message([name], [weights.path]))
    return weights.path


def fetch(weights: WeightsFile, *, mirror: str | None = None, progress: bool = True) -> tuple[Path, bool]:
    """Download `weights` into the cache unless it is there: (its path, whether it was downloaded).

    `mirror` is a base URL holding the files under their cache names (``https://host/weights`` or
    ``file:///shared/weights``), for sites that keep a copy.
    """
    path = weights.path
    if path.is_file():
        return path, False
    url = weights.url if mirror is None else f"{mirror.rstrip('/')}/{weights.name}"
    found = _HASH.search(weights.name) if weights.check_hash else None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(path), found.group(1) if found else None, progress=progress)
    return path, True
