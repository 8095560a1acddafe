"""The models under test: one file per method, each registering a builder by name.

Every model follows one interface, so the engine never needs to know which method it trains:

- ``model.train_cues`` / ``model.test_cues``: tuples of the cue maps (``"saliency"``, ``"parsing"``,
  ``"densepose"``, ``"pose"``, ``"mask"``) the model needs in training and at test time; only those
  are loaded. A model that declares none is called ``model(images)``; one that declares some is
  called ``model(images, cues)``, ``cues`` a dict from cue name to a batched tensor, shapes in
  harness/data/transforms.py (parsing: 5 l1-normalised regions; densepose: 24 DSAP images 32x32;
  pose: 13 heatmaps at the feature-map size, 1/16 of the input with last_stride 1, else 1/32; saliency and mask: one map at input size);
- ``model.embedding_dim``: the size of the test-time embedding;
- ``model(images, cues)``: in training mode a dict of what the method's losses need, in eval mode
  the embedding, an (N, embedding_dim) tensor;
- ``model.losses(outputs, pids)``: a dict of weighted loss terms whose sum is the training loss;
- optionally ``model.distance(query, gallery)``: the method's own batched distance between blocks of
  test-time outputs (query rows x gallery rows, float32), used instead of the Euclidean distance for
  plain and re-ranked evaluation (see harness/distance.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from methods import backbones as backbones  # noqa: F401  (registers the backbones)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    builder: Callable[..., nn.Module]
    variants: tuple[str, ...]  # the first is the default


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, variants: tuple[str, ...]) -> Callable:
    """Register a model builder ``f(*, variant, backbone, num_classes, **options)`` under `name`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = MethodInfo(name, builder, variants)
        return builder

    return decorate


def method_names() -> list[str]:
    return sorted(_METHODS)


def method_variants(name: str) -> tuple[str, ...]:
    return _METHODS[name].variants


def method_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder, e.g. for checking `[method_options.<name>]` against its signature."""
    return _METHODS[name].builder


def create_model(method: str, *, backbone: str, num_classes: int, variant: str | None = None, **options) -> nn.Module:
    """Build a registered method. Options left as None are dropped, so defaults live in the builder."""
    if method not in _METHODS:
        raise KeyError(f"unknown method {method!r}; registered: {', '.join(method_names())}")
    info = _METHODS[method]
    variant = variant or info.variants[0]
    if variant not in info.variants:
        raise KeyError(f"method {method!r} has no variant {variant!r}; it has {', '.join(info.variants)}")
    options = {k: v for k, v in options.items() if v is not None}
    return info.builder(variant=variant, backbone=backbone, num_classes=num_classes, **options)


from methods import baseline as baseline  # noqa: E402,F401  (registers its method)
from methods import dsa_reid as dsa_reid  # noqa: E402,F401
from methods import gasm as gasm  # noqa: E402,F401
from methods import scsn as scsn  # noqa: E402,F401
from methods import spreid as spreid  # noqa: E402,F401
from methods import ssp_reid as ssp_reid  # noqa: E402,F401
