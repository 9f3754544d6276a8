"""The CPU fast paths of every ``usvl`` command, each switched off in turn: training step time with and without them.

Run (about 4 minutes on an idle 2-core CPU): ``.venv/bin/python benchmarks/fast_paths.py [--rounds 3] [--steps 6]
[--size 224] [--batch 32] [--threads N]``.

Two settings, four combinations, each measured in a fresh process (the allocator setting is process-wide):

* the allocator (:mod:`usvl.utils.allocator`; ``USVL_ALLOCATOR=system`` turns it off): glibc keeps freed memory
  instead of mapping and faulting large blocks in again every step;
* batch-norm folding (:mod:`usvl.models.fold_batch_norm`; ``USVL_FOLD_BATCH_NORMS=0`` turns it off): the frozen
  tower's eval-mode batch norms computed inside their convolutions.

Each process trains the embedded encoder with Mona after stages 2-6 and the prompt head (the demo's model;
``train_throughput.build``) on a random batch: warm-up steps, then ``--steps`` timed steps, and reports the median
step time and the minor page faults per step. The combinations are interleaved over ``--rounds`` rounds; the figure,
printed last, is the median step time with both fast paths off over that with both on. Results:
``benchmarks/results/fast_paths.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from record import REPO, machine, print_figure, summary, write_record

COMBINATIONS = {
    "both on": {},
    "allocator off": {"USVL_ALLOCATOR": "system"},
    "folding off": {"USVL_FOLD_BATCH_NORMS": "0"},
    "both off": {"USVL_ALLOCATOR": "system", "USVL_FOLD_BATCH_NORMS": "0"},
}


def worker(size: int, batch: int, steps: int, warmup: int, threads: int) -> dict[str, float]:
    """Time ``steps`` training steps in this process, under the environment's settings."""
    from train_throughput import Case, build, train_step

    from usvl.utils.allocator import keep_freed_memory
    from usvl.utils.threads import configure_threads

    configure_threads(threads)
    keep_freed_memory()
    setup = build(Case("embedded", "mona-2-6", size, batch), torch.device("cpu"))
    setup.task.train()
    for _ in range(warmup):
        train_step(setup, "fp32")
    seconds, faults = [], []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        train_step(setup, "fp32")
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"step_seconds": statistics.median(seconds), "page_faults_per_step": statistics.median(faults)}


def run_worker(environment: dict[str, str], options: argparse.Namespace) -> dict[str, float]:
    """:func:`worker` in a fresh process with ``environment`` added."""
    command = [sys.executable, __file__, "--worker", "--size", str(options.size), "--batch", str(options.batch),
               "--steps", str(options.steps), "--warmup", str(options.warmup), "--threads", str(options.threads)]
    env = {key: value for key, value in os.environ.items() if key not in ("USVL_ALLOCATOR", "USVL_FOLD_BATCH_NORMS")}
    result = subprocess.run(command, env={**env, **environment}, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the allocator settles in ~2)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: USVL_THREADS or cores)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default="")
    options = parser.parse_args()
    from usvl.utils.threads import configure_threads

    options.threads = configure_threads(options.threads)
    if options.worker:
        print(json.dumps(worker(options.size, options.batch, options.steps, options.warmup, options.threads)))
        return
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in COMBINATIONS}
    for round_index in range(options.rounds):
        for name, environment in COMBINATIONS.items():
            results[name].append(run_worker(environment, options))
            print(f"round {round_index + 1}/{options.rounds} {name}: {results[name][-1]['step_seconds']:.3f} s/step, "
                  f"{results[name][-1]['page_faults_per_step']:.0f} page faults/step", flush=True)
    steps = {name: summary([r["step_seconds"] for r in runs], digits=4) for name, runs in results.items()}
    faults = {name: summary([r["page_faults_per_step"] for r in runs], digits=0) for name, runs in results.items()}
    speedup = steps["both off"]["median"] / steps["both on"]["median"]
    record = {
        "figure": {"name": "fast_paths_speedup", "value": round(speedup, 3),
                   "meaning": "median training step time with both fast paths off over both on"},
        "settings": {"model": "embedded encoder, Mona after stages 2-6, prompt head, AdamW", "size": options.size,
                     "batch": options.batch, "steps": options.steps, "warmup": options.warmup,
                     "rounds": options.rounds, "threads": options.threads,
                     "combinations": {name: env or "defaults" for name, env in COMBINATIONS.items()}},
        "machine": machine(load_before),
        "step_seconds": steps,
        "page_faults_per_step": faults,
        "images_per_s": {name: round(options.batch / s["median"], 2) for name, s in steps.items()},
        "note": options.note,
    }
    write_record("fast_paths", record, None if options.output is None else Path(options.output))
    for name in COMBINATIONS:
        print(f"{name:>14}: {steps[name]['median']:.3f} s/step, {options.batch / steps[name]['median']:.1f} images/s, "
              f"{faults[name]['median']:.0f} page faults/step")
    print_figure("fast_paths_speedup", speedup)


if __name__ == "__main__":
    main()
