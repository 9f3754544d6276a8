"""``usvl text``: refine texts with an LLM (static file, transformers, OpenAI-compatible server)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usvl.text.refine import DEFAULT_INSTRUCTION, REFINERS, build_refiner, exists_error, refine_file
from usvl.text.refine_cache import load_refiner_spec


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
    refine.add_argument("--config", default=None,
                        help="YAML of refiner settings, the same mapping an experiment's text.refiner takes: name "
                             "(the back-end), prompt_file and the back-end's options (e.g. model, gguf_file, "
                             "batch_size, max_new_tokens); flags given here override it.")
    refine.add_argument("--refiner", default=None, choices=sorted(REFINERS),
                        help="The back-end (or name: in --config).")
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


REQUIRED_OPTIONS = {"static": ("path",), "transformers": ("model",), "openai": ("model", "base_url")}
"""The back-end options a refiner cannot do without (constructor keyword names)."""

FLAG_OF_OPTION = {"path": "--refinements", "max_retries": "--retries", "do_sample": "--sample",
                  "max_tokens": "--max-new-tokens"}
"""Command-line flags whose name differs from the back-end option they set."""


def refiner_options(options: argparse.Namespace, name: str) -> dict[str, Any]:
    """The back-end keyword options given on the command line (``None`` where a flag is not given)."""
    if name == "static":
        return {"path": options.refinements}
    common = {"model": options.model, "temperature": options.temperature, "seed": options.seed}
    if name == "transformers":
        return {**common, "gguf_file": options.gguf_file, "device": options.device, "batch_size": options.batch_size,
                "max_new_tokens": options.max_new_tokens, "do_sample": options.sample or None}
    return {**common, "base_url": options.base_url, "api_key_env": options.api_key_env, "timeout": options.timeout,
            "max_retries": options.retries, "concurrency": options.concurrency, "max_tokens": options.max_new_tokens}


def refiner_spec(options: argparse.Namespace) -> dict[str, Any]:
    """The refiner settings: ``--config`` (if any) overridden by the flags; ``name``, ``prompt_file`` and options.

    Raises:
        ValueError: No back-end is named, the config file is not a refiner mapping, or a required option is missing.
    """
    spec = load_refiner_spec(options.config) if options.config else {}
    name = options.refiner or spec.get("name")
    if name not in REFINERS:
        raise ValueError(f"choose the refiner with --refiner or name: in --config, one of {sorted(REFINERS)}; "
                         f"got {name!r}")
    flags = {key: value for key, value in refiner_options(options, name).items() if value is not None}
    spec = {**spec, **flags, "name": name}
    if options.prompt_file:
        spec["prompt_file"] = options.prompt_file
    missing = [FLAG_OF_OPTION.get(key, f"--{key.replace('_', '-')}") for key in REQUIRED_OPTIONS[name]
               if not spec.get(key)]
    if missing:
        raise ValueError(f"the {name} refiner needs {', '.join(missing)}")
    return spec


def refine_main(options: argparse.Namespace) -> int:
    """Run ``usvl text refine``; returns the exit code (0 done, 1 rejections with ``--strict``, 2 unusable input)."""
    try:
        if Path(options.output).exists():
            raise exists_error(options.output)
        spec = refiner_spec(options)
        backend = {key: value for key, value in spec.items() if key not in ("name", "prompt_file")}
        prompt_file = spec.get("prompt_file")
        instruction = Path(prompt_file).read_text(encoding="utf-8").strip() if prompt_file else DEFAULT_INSTRUCTION
        refiner = build_refiner(spec["name"], **backend)
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
