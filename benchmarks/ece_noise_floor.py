"""The ECE that a perfectly calibrated binary classifier would show on a test set of this size.

For each run's ``test_cases.csv`` (one row per test image, with ``p_<positive class>``), labels are drawn from the
run's own positive-class probabilities (so those probabilities are calibrated by construction) and the ECE is computed
as usvl reports it (:func:`usvl.metrics.calibration.expected_calibration_error`: 15 equal-width bins, L1). The spread
of these ECEs is the floor under which a measured ECE cannot be told apart from sampling noise.

Run: ``.venv/bin/python benchmarks/ece_noise_floor.py RUN_DIR [RUN_DIR ...] [--positive malignant]``
(writes ``benchmarks/results/ece_noise_floor.json``, or ``--output``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from record import print_figure, summary, write_record

from usvl.metrics.calibration import expected_calibration_error


def simulated_ece(positive: np.ndarray, draws: int, seed: int = 0) -> list[float]:
    """ECEs of ``draws`` label sets drawn from ``positive`` (the class-1 probabilities)."""
    generator = np.random.default_rng(seed)
    probabilities = torch.from_numpy(np.stack([1 - positive, positive], axis=1))
    values = []
    for _ in range(draws):
        labels = torch.from_numpy((generator.random(len(positive)) < positive).astype(np.int64))
        values.append(expected_calibration_error(probabilities, labels))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding test_cases.csv")
    parser.add_argument("--positive", default="malignant", help="the positive class name")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--output", type=Path, help="record path (default: results/ece_noise_floor.json)")
    options = parser.parse_args()
    results = {}
    for run in options.runs:
        cases = pd.read_csv(run / "test_cases.csv")
        positive = cases[f"p_{options.positive}"].to_numpy(np.float64)
        values = simulated_ece(positive, options.draws)
        results[str(run)] = {"images": len(cases), "ece_if_calibrated": summary(values),
                             "p90": round(float(np.quantile(values, 0.9)), 4)}
    medians = [r["ece_if_calibrated"]["median"] for r in results.values()]
    write_record("ece_noise_floor", {"draws": options.draws, "bins": 15, "runs": results}, options.output)
    print_figure("ece_noise_floor_median", round(float(np.median(medians)), 4))


if __name__ == "__main__":
    main()
