"""``usvl data``: generate the embedded synthetic datasets; check a dataset source for problems."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from usvl.data.manifest import SPLITS
from usvl.data.sources.synthetic import ensure_synthetic, synthetic_root
from usvl.data.synthetic import ACQUISITIONS, PRESETS, PROFILES


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
    generate.add_argument("--acquisition", default=None, choices=sorted(ACQUISITIONS),
                          help="Acquisition profile: the same scenes imaged with other probe/receiver settings.")
    generate.add_argument("--splits", default=None, nargs="+", choices=list(SPLITS),
                          help="Write only these splits (same names and images as in the full dataset).")

    check = commands.add_parser(
        "check", help="Read a dataset source and report counts, sizes, mask statistics and every problem.",
        description="Decode every image and mask of a dataset source once and list every problem by file name. "
                    "Exit code 1 when any error is found (2 on bad usage or an unreadable source).")
    check.add_argument("--source", required=True, help="Registered source name (usvl.data.sources.registry).")
    check.add_argument("--root", required=True, help="Folder of the dataset.")
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="Reader option (repeatable), e.g. dataset=BUSI or include_normal=false; converted to the "
                            "reader's type.")
    check.add_argument("--task", default="classification", choices=("classification", "segmentation"))
    check.add_argument("--class-names", default=None,
                       help="Comma-separated class names in label order (default: from the manifest's labels). "
                            "Passed to readers that take class_names.")
    check.add_argument("--near-threshold", type=int, default=None,
                       help="Largest dHash Hamming distance (of 64) of a near duplicate (default 4; -1: exact only).")
    check.add_argument("--threads", type=int, default=None, help="Decoding threads (default: available cores).")
    check.add_argument("--json", default=None, metavar="PATH", help="Also write the report as JSON.")
    check.add_argument("--strict", action="store_true", help="Exit 1 on warnings too.")
    return parser


def check_main(options: argparse.Namespace) -> int:
    """Run ``usvl data check``; returns the exit code (0 clean, 1 errors, 2 unreadable source or bad options)."""
    from usvl.data.check import check_source, parse_option
    from usvl.data.duplicates import DEFAULT_THRESHOLD

    try:
        reader_options = dict(parse_option(text) for text in options.option)
    except ValueError as error:
        print(f"usvl data check: {error}", file=sys.stderr)
        return 2
    class_names = [c.strip() for c in options.class_names.split(",")] if options.class_names else None
    threshold = DEFAULT_THRESHOLD if options.near_threshold is None else options.near_threshold
    try:
        report = check_source(options.source, options.root, reader_options, options.task, class_names,
                              threshold, options.threads)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"usvl data check: cannot read source {options.source!r} at {options.root}: "
              f"{type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(report.format())
    if options.json:
        print(f"Report written to {report.write_json(options.json)}")
    if report.errors:
        return 1
    return 1 if options.strict and report.warnings else 0


def data_main(argv: Sequence[str]) -> int:
    """Run ``usvl data``; returns the exit code."""
    options = build_parser().parse_args(list(argv))
    if options.command == "generate":
        root = options.root or synthetic_root(options.preset, options.profile, options.seed, options.size,
                                              options.acquisition, options.splits)
        path = ensure_synthetic(options.preset, options.profile, options.seed, options.size, str(root),
                                options.workers, acquisition=options.acquisition, splits=options.splits)
        print(path)
        return 0
    if options.command == "check":
        return check_main(options)
    return 0
