"""The models under test: one file per method, each registering a builder by name.

Every model follows one interface, so the engine never needs to know which method it trains:

- ``model.train_cues`` / ``model.test_cues``: tuples of the cue maps the model needs in training and
  at test time, as its method declares them per variant at registration (`method_cues`); only those
  are loaded. A model that declares none is called ``model(images)``; one that declares some is
  called ``model(images, cues)``, ``cues`` a dict from cue name to a batched tensor. The cues, their
  files and their tensor forms are the registry's (one table, in harness/data/cues.py);
- ``model.embedding_dim``: the size of the test-time embedding;
- ``model(images, cues)``: in training mode a dict of what the method's losses need, in eval mode
  the embedding, an (N, embedding_dim) tensor;
- ``model.losses(outputs, pids)``: a dict of weighted loss terms whose sum is the training loss;
- optionally ``model.distance(query, gallery)``: the method's own batched distance between blocks of
  test-time outputs (query rows x gallery rows, float32), used instead of the Euclidean distance for
  plain and re-ranked evaluation (see harness/eval/distance.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn

from methods import backbones as backbones  # noqa: F401  (registers the backbones)


@dataclass(frozen=True)
class Cues:
    """The cue maps a variant's model needs: in training, and at test time (names from harness/data/cues.py)."""

    train: tuple[str, ...] = ()
    test: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodInfo:
    name: str
    builder: Callable[..., nn.Module]
    variants: tuple[str, ...]  # the first is the default
    cues: Mapping[str, Cues]  # variant -> its declared cues
    triplet: bool = True  # trains with a triplet loss: needs K >= 2 images of an identity per batch
    revision: int = 0  # raised when the method's models change what they compute (part of its cells' ids)
    new_classifier: bool = False  # its models have `classifier` and `new_classifier(num_classes)`
    views: Mapping[str, str] = field(
        default_factory=dict
    )  # view variant -> the variant whose trained model it infers with


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    *,
    variants: Mapping[str, Cues] | Sequence[str],
    triplet: bool = True,
    revision: int = 0,
    new_classifier: bool = False,
    views: Mapping[str, str] | None = None,
) -> Callable:
    """Register a model builder ``f(*, variant, backbone, num_classes, **options)`` under `name`.

    `variants` maps each variant to the cues its model declares (``model.train_cues``/``test_cues``),
    so listing and checking cues never builds a model; a plain sequence of names means no cues. The
    first variant is the default. The contract test (tests/test_methods.py) holds every built model
    to its declaration. `triplet`: whether its losses include a triplet loss (the spec then needs
    images_per_id >= 2). `revision`: raise it when a change makes the same spec cell compute something
    else (another architecture, other cue maps), so the cell gets a new id and a store never mixes the
    old model's results with the new one's; 0 leaves the ids as they were. `new_classifier`: every
    variant's model has one identity classifier, ``model.classifier`` (an nn.Linear), and builds a
    fresh one with ``model.new_classifier(num_classes)``, so a spec's fine-tuning phase may train a
    new one (`classifier = "new"`, harness/engine/heads.py); the parser refuses that key for other methods.
    `views` maps a variant that is another variant's trained model inferred otherwise (same
    parameters, same training, another test-time embedding) to that variant: a grid that lists both
    trains once, and the training cell's run evaluates the view too (harness/runner.py `todo`). The
    contract test holds both to the same parameters and training cues.
    """
    if isinstance(variants, str):
        raise TypeError(
            f"method {name!r}: variants must be a sequence of names or a mapping, not the string {variants!r}"
        )
    declared = dict(variants) if isinstance(variants, Mapping) else {v: Cues() for v in variants}
    bad = [v for v, cues in declared.items() if not isinstance(cues, Cues)]
    if bad:
        raise TypeError(f"method {name!r}: the cues of variant(s) {', '.join(bad)} must be Cues(train=..., test=...)")
    declared = {v: Cues(tuple(c.train), tuple(c.test)) for v, c in declared.items()}
    views = dict(views or {})
    for view, trained in views.items():
        if view not in declared or trained not in declared or trained in views:
            raise ValueError(
                f"method {name!r}: view {view!r} -> {trained!r} must map a variant to a variant that is not a view"
            )
        if declared[view].train != declared[trained].train:
            raise ValueError(f"method {name!r}: view {view!r} trains with other cues than {trained!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = MethodInfo(
            name,
            builder,
            tuple(declared),
            MappingProxyType(declared),
            triplet,
            revision,
            new_classifier,
            MappingProxyType(views),
        )
        return builder

    return decorate


def method_names() -> list[str]:
    return sorted(_METHODS)


def method_variants(name: str) -> tuple[str, ...]:
    return _METHODS[name].variants


def method_cues(name: str, variant: str | None = None) -> Cues:
    """The cues variant `variant` (default: the first) of method `name` declares, without building it."""
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(method_names())}")
    info = _METHODS[name]
    variant = variant or info.variants[0]
    if variant not in info.cues:
        raise KeyError(f"method {name!r} has no variant {variant!r}; it has {', '.join(info.variants)}")
    return info.cues[variant]


def uses_triplet(name: str) -> bool:
    return _METHODS[name].triplet


def has_new_classifier(name: str) -> bool:
    """Whether the method's models can replace their identity classifier (`new_classifier`), without building one."""
    return _METHODS[name].new_classifier


def method_revision(name: str) -> int:
    """The method's model revision (0 for a method not registered: its cells fail elsewhere, by name)."""
    return _METHODS[name].revision if name in _METHODS else 0


def trained_variant(name: str, variant: str) -> str | None:
    """The variant whose trained model `variant` infers with, when `variant` is a view (else None)."""
    return _METHODS[name].views.get(variant) if name in _METHODS else None


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
