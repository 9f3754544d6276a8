"""``usvl text``: refine texts with an LLM (static file, transformers, OpenAI-compatible server)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usvl.text.refine import DEFAULT_INSTRUCTION, REFINERS, build_refiner, exists_error, refine_file


def build_parser() -> argparse.ArgumentParser:
    """The ``usvl text`` argument parser."""
    parser = argparse.ArgumentParser(prog="usvl text", description="Text tools: LLM refinement with provenance.")
    commands = parser.add_subparsers(dest="command", required=True)
    refine = commands.add_parser(
        "refine", help="Refine texts once with an LLM; write JSONL with provenance and the findings guard's verdict.",
        description="Rewrite each text with the chosen refiner. A refinement that drops or changes a finding of its "
                    "source is rejected and the source text kept; rejections are counted and listed. The output "
                    "is a new JSONL file (never overwritten). Exit code 2 on unusable input; with --strict, 1 when any "
                    "text was rejected.")
    refine.add_argument("--refiner", required=True, choices=sorted(REFINERS))
    refine.add_argument("--input", required=True, help="Texts: .jsonl (strings or {text: ...}) or .yaml "
                                                       "(a list, texts: [...], or classes: {name: [...]}).")
    refine.add_argument("--output", required=True, help="New JSONL file to write.")
    refine.add_argument("--prompt-file", default=None, help="Refinement instruction (default: the built-in one).")
    refine.add_argument("--refinements", default=None, help="static: JSONL of {source, refined} lines.")
    refine.add_argument("--model", default=None, help="transformers: hub id or local folder; openai: model name.")
    refine.add_argument("--gguf-file", default=None, help="transformers: GGUF file inside --model.")
    refine.add_argument("--device", default=None, help="transformers: torch device (default cpu).")
    refine.add_argument("--batch-size", type=int, default=None, help="transformers: texts per batch.")
    refine.add_argument("--sample", action="store_true", help="transformers: seeded sampling instead of greedy.")
    refine.add_argument("--base-url", default=None, help="openai: server root, e.g. http://127.0.0.1:8000/v1.")
    refine.add_argument("--api-key-env", default=None, help="openai: NAME of the environment variable with the key.")
    refine.add_argument("--timeout", type=float, default=None, help="openai: seconds per request.")
    refine.add_argument("--retries", type=int, default=None, help="openai: retries on 429/5xx/connection errors.")
    refine.add_argument("--concurrency", type=int, default=None, help="openai: requests in flight.")
    refine.add_argument("--max-new-tokens", type=int, default=None, help="Generation length limit.")
    refine.add_argument("--temperature", type=float, default=None, help="Sampling temperature.")
    refine.add_argument("--seed", type=int, default=None, help="Sampling seed.")
    refine.add_argument("--strict", action="store_true", help="Exit 1 when any refinement was rejected.")
    return parser


def refiner_options(options: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of the chosen back-end, from the command line.

    Raises:
        ValueError: A required option of the back-end is missing.
    """
    required = {"static": ("refinements",), "transformers": ("model",), "openai": ("model", "base_url")}
    missing = [f"--{name.replace('_', '-')}" for name in required[options.refiner] if not getattr(options, name)]
    if missing:
        raise ValueError(f"the {options.refiner} refiner needs {', '.join(missing)}")
    if options.refiner == "static":
        return {"path": options.refinements}
    common = {"model": options.model, "temperature": options.temperature, "seed": options.seed}
    if options.refiner == "transformers":
        return {**common, "gguf_file": options.gguf_file, "device": options.device, "batch_size": options.batch_size,
                "max_new_tokens": options.max_new_tokens, "do_sample": options.sample or None}
    return {**common, "base_url": options.base_url, "api_key_env": options.api_key_env, "timeout": options.timeout,
            "max_retries": options.retries, "concurrency": options.concurrency, "max_tokens": options.max_new_tokens}


def refine_main(options: argparse.Namespace) -> int:
    """Run ``usvl text refine``; returns the exit code (0 done, 1 rejections with ``--strict``, 2 unusable input)."""
    try:
        if Path(options.output).exists():
            raise exists_error(options.output)
        instruction = Path(options.prompt_file).read_text(encoding="utf-8").strip() if options.prompt_file \
            else DEFAULT_INSTRUCTION
        refiner = build_refiner(options.refiner, **refiner_options(options))
        summary = refine_file(options.input, options.output, refiner, instruction)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:
        print(f"usvl text refine: {error}", file=sys.stderr)
        return 2
    print(summary.format())
    print(f"Refinements written to {options.output}")
    return 1 if options.strict and summary.rejected else 0


def text_main(argv: Sequence[str]) -> int:
    """Run ``usvl text``; returns the exit code."""
    options = build_parser().parse_args(list(argv))
    return refine_main(options)
