"""``usvl data``: generate the embedded synthetic datasets."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from usvl.data.sources.synthetic import ensure_synthetic, synthetic_root
from usvl.data.synthetic import PRESETS, PROFILES


def build_parser() -> argparse.ArgumentParser:
    """The ``usvl data`` argument parser."""
    parser = argparse.ArgumentParser(prog="usvl data", description="Embedded ultrasound data tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="Generate a synthetic dataset in the release layout.")
    generate.add_argument("--preset", required=True, choices=sorted(PRESETS))
    generate.add_argument("--profile", default="default", choices=sorted(PROFILES))
    generate.add_argument("--root", default=None, help="Output folder (default: the usvl data cache).")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--size", type=int, default=256, help="Image side length in pixels.")
    generate.add_argument("--workers", type=int, default=None, help="Processes (default: available cores).")
    return parser


def data_main(argv: Sequence[str]) -> int:
    """Run ``usvl data``; returns the exit code."""
    options = build_parser().parse_args(list(argv))
    if options.command == "generate":
        root = options.root or synthetic_root(options.preset, options.profile, options.seed, options.size)
        path = ensure_synthetic(options.preset, options.profile, options.seed, options.size, str(root),
                                options.workers)
        print(path)
    return 0
