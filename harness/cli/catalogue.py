"""`reidbench methods` and `reidbench weights`: what is registered, and the backbones' ImageNet weights cache."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from harness.errors import UserError, closest


def add_parsers(sub) -> None:
    methods = sub.add_parser(
        "methods",
        help="list the methods with their variants and cue maps, and the backbones",
        description="The registered methods, one line per variant with the cue maps it needs in "
        "training and at test time, and the registered backbones with their width, their SSP-ReID "
        "tap and whether their ImageNet weights are cached.",
    )
    methods.set_defaults(command=_methods)
    weights = sub.add_parser(
        "weights",
        help="fetch the backbones' ImageNet weights into the cache, or list them",
        description="Pretrained weights are read from torch's hub cache ($TORCH_HOME/hub/checkpoints), "
        "never downloaded by a run: fetch them here, on a machine with internet access.",
    )
    commands = weights.add_subparsers(required=True, metavar="SUBCOMMAND")
    fetch = commands.add_parser(
        "fetch",
        help="download backbones' ImageNet weights into the cache (skips cached ones)",
        description="Download the ImageNet weights of each backbone named (default: every "
        "registered one) into the cache, and print where each went. Cached files are left alone.",
    )
    fetch.add_argument(
        "names", nargs="*", metavar="NAME", help="backbones, or cue models of `cues make` (default: all)"
    )
    fetch.add_argument(
        "--from",
        dest="mirror",
        metavar="URL",
        help="a mirror holding the files under their cache names (https://host/dir or file:///shared/dir)",
    )
    fetch.set_defaults(command=_fetch)
    listing = commands.add_parser(
        "list",
        help="each backbone's weights file and whether it is cached",
        description="One line per registered backbone: where its weights come from, the file in "
        "the cache, and whether it is there.",
    )
    listing.set_defaults(command=_list)


def _methods(args: argparse.Namespace) -> int:
    from methods import method_cues, method_names, method_variants

    rows = []
    for name in method_names():
        for variant in method_variants(name):
            cues = method_cues(name, variant)
            rows.append([name, variant, ", ".join(cues.train) or "-", ", ".join(cues.test) or "-"])
    print(tabulate(rows, headers=["method", "variant", "cues in training", "cues at test"], disable_numparse=True))
    print()
    print(_backbones_table())
    return 0


def _backbones_table() -> str:
    from methods.backbones import backbone_info, backbone_names

    rows = []
    for name in backbone_names():
        info = backbone_info(name)
        rows.append(
            [
                name,
                info.out_channels,
                info.tap_name,
                info.tap_channels,
                "yes" if info.weights.path.is_file() else "no",
                info.source,
            ]
        )
    return tabulate(
        rows,
        headers=["backbone", "channels", "tap", "tap channels", "weights cached", "built from"],
        disable_numparse=True,
    )


def _weights_of(name: str):
    """The weights file of a backbone or of a cue model (`reidbench cues make`)."""
    from harness.cue_tools.models import MODELS
    from methods.backbones import backbone_info

    return MODELS[name].weights if name in MODELS else backbone_info(name).weights


def _all_names() -> list[str]:
    from harness.cue_tools.models import MODELS
    from methods.backbones import backbone_names

    return backbone_names() + list(MODELS)


def _names(given: list[str]) -> list[str]:
    for name in given:
        if name not in _all_names():
            raise UserError(f"weights fetch: unknown backbone or cue model {name!r}; {closest(name, _all_names())}")
    return list(dict.fromkeys(given)) or _all_names()


def _fetch(args: argparse.Namespace) -> int:
    from methods.weights import cache_dir, fetch

    failed = 0
    for name in _names(args.names):
        weights = _weights_of(name)
        try:
            path, downloaded = fetch(weights, mirror=args.mirror, progress=sys.stderr.isatty())
        except Exception as err:  # the network, a mirror without the file, a hash mismatch: say which and go on
            source = weights.url if args.mirror is None else f"{args.mirror.rstrip('/')}/{weights.name}"
            print(f"{name}: could not download {source}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {'downloaded to' if downloaded else 'already cached in'} {path}", flush=True)
    if failed:
        print(f"reidbench: {failed} download(s) failed; the cache is {cache_dir()}.", file=sys.stderr)
    return 1 if failed else 0


def _list(args: argparse.Namespace) -> int:
    from methods.weights import cache_dir

    rows = []
    for name in _all_names():
        weights = _weights_of(name)
        cached = weights.path.is_file()
        size = f"{weights.path.stat().st_size / 2**20:.0f} MiB" if cached else ""
        rows.append([name, "yes" if cached else "no", size, weights.name, weights.url])
    print(tabulate(rows, headers=["backbone or cue model", "cached", "size", "file", "from"], disable_numparse=True))
    print(f"\nCache: {cache_dir()} (TORCH_HOME sets it). `reidbench weights fetch NAME ...` fills it.")
    return 0
