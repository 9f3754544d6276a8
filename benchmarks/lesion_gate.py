"""A shift grid's finished segmentation runs tested again with the lesion gate (``calibration.lesion_gate``).

For every finished run of the grid (optionally only some methods) and every test set of the grid, runs the real
``usvl test --config <run>/config.yaml --ckpt_path <best> <test set args> --calibration.lesion_gate true``: the
checkpoint was fitted without a gate, so the callback chooses one on the run's validation split (the default
acquisition) before the test, exactly as a fit with the switch on stores it. The results land next to the grid's
own test sets (``<run>/test_sets/<name>-<hash>/``, the hash covering the gate argument), and the table, the grid's
shift table for the gated tests, in ``--output``.

Run (resumable; each test about 1-2 min on one core):
``.venv/bin/python benchmarks/lesion_gate.py --grid configs/shift/breast_seg.yaml --jobs 2``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from usvl.reproduce.grid import load_grid
from usvl.reproduce.runner import plan
from usvl.reproduce.shift_table import shift_frame, shift_markdown
from usvl.reproduce.test_sets import best_checkpoint, plan_tests, run_tests
from usvl.utils.atomic import write_csv_atomic, write_text_atomic

GATE = ("--calibration.lesion_gate", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=Path("configs/shift/breast_seg.yaml"))
    parser.add_argument("--methods", nargs="*", help="only these methods (default: all)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/lesion_gate"))
    options = parser.parse_args()

    grid = load_grid(options.grid)
    gated_sets = {name: {"label": f"{spec['label']}, lesion gate chosen on validation",
                         "args": (*spec["args"], *GATE)} for name, spec in grid.test_sets.items()}
    gated = dataclasses.replace(grid, name=f"{grid.name}_lesion_gate", output=options.output / grid.name,
                                test_sets=gated_sets)
    runs = [run for run in plan(grid) if run.done and (not options.methods or run.cell.method in options.methods)]
    kept = []
    for run in runs:
        try:
            best_checkpoint(run)
            kept.append(run)
        except FileNotFoundError as missing:  # checkpoints are not committed: runs made on another machine
            print(f"skipped, no checkpoint here: {missing}")
    runs = kept
    tests = plan_tests(runs, gated_sets)
    failed = run_tests(tests, jobs=options.jobs)
    frame = shift_frame(gated, tests)
    frame["own_test_split"] = frame["test_set"] == "in_domain"  # its args only add the gate
    command = "python " + " ".join(sys.argv)
    gated.output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(gated.output / "shift_table.md", shift_markdown(gated, frame, command))
    write_csv_atomic(gated.output / "shift_table.csv", frame)
    summary = frame[frame["test_set"] != "in_domain"].groupby("method")["fp_rate_normal_mean"].mean()
    print(f"{len(tests)} gated tests, {failed} failed; tables in {gated.output}")
    for method, value in summary.items():
        print(f"{method} false lesions on normal images, shifted mean: {value:.3f}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
