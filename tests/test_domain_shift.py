"""Training-domain statistics and the out-of-range fraction: small in-domain, large under an acquisition shift."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from shipped_configs import smoke

from usvl.cli import run_lightning
from usvl.data.domain_stats import FEATURES, DomainRange, fit_domain_range, image_statistics, statistics_in_chunks
from usvl.data.synthetic import render_sample


def rendered(seeds, acquisition=None) -> torch.Tensor:
    """Synthetic thyroid images at 64 px, ``uint8 [N, 1, 64, 64]``."""
    return torch.from_numpy(np.stack([render_sample("thyroid", s, size=64, acquisition=acquisition).image
                                      for s in seeds]))[:, None]


def test_statistics_of_simple_images():
    flat = torch.full((2, 1, 16, 16), 90, dtype=torch.uint8)
    stats = image_statistics(flat)
    assert stats.shape == (2, len(FEATURES)) and stats[:, 0].tolist() == [90.0, 90.0]
    assert stats[:, 1:].abs().max() == 0
    noise = torch.rand(1, 1, 64, 64) * 255
    smooth = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    assert image_statistics(smooth)[0, 2] > image_statistics(noise)[0, 2] + 0.5
    assert statistics_in_chunks(torch.cat([noise, smooth]), chunk=1).shape == (2, len(FEATURES))


def test_in_domain_fraction_is_small_and_a_shift_raises_it():
    box = fit_domain_range(image_statistics(rendered(range(100))))
    assert box.images == 100 and 0.0 <= box.train_outside <= 0.15
    in_domain = float(box.outside(image_statistics(rendered(range(1000, 1030)))).double().mean())
    assert in_domain <= 0.3  # 30 images against a box from 100: a few percent in expectation, noisy at this size
    for name in ("high_gain", "deep", "compounded"):
        shifted = float(box.outside(image_statistics(rendered(range(1000, 1030), name))).double().mean())
        assert shifted >= in_domain + 0.4, name


def test_range_record_round_trip_and_checks():
    box = fit_domain_range(torch.rand(40, 4, dtype=torch.float64), percentiles=(5.0, 95.0))
    again = DomainRange.from_record(json.loads(json.dumps(box.to_record())))
    assert again == box
    with pytest.raises(ValueError, match="percentiles"):
        fit_domain_range(torch.rand(4, 4), percentiles=(50.0, 10.0))
    with pytest.raises(ValueError, match="at least one"):
        fit_domain_range(torch.empty(0, 4))


def test_fit_stores_the_range_and_test_reports_the_fraction(tmp_path, usvl_cache, caplog):
    root = tmp_path / "runs"
    run_lightning(["fit", *smoke("thyroid_cls"), "--trainer.logger.init_args.save_dir", str(root)])
    run = root / "thyroid_cls" / "version_0"
    own = json.loads((run / "test_metrics.json").read_text())
    checkpoint = own["checkpoint"]
    record = torch.load(checkpoint, map_location="cpu", weights_only=False)["usvl"]["domain"]
    assert record["features"] == list(FEATURES) and record["images"] == 24
    assert 0.0 <= own["metrics"]["test/ood_fraction"] <= 0.5
    with caplog.at_level(logging.INFO, logger="usvl.domain_monitor"):
        run_lightning(["test", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint,
                       "--data.init_args.test_acquisition", "high_gain",
                       "--trainer.logger.init_args.save_dir", str(tmp_path / "shifted")])
    shifted = json.loads(next((tmp_path / "shifted").rglob("test_metrics.json")).read_text())
    assert shifted["metrics"]["test/ood_fraction"] >= 0.75 > own["metrics"]["test/ood_fraction"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "outside the training range" in
                r.getMessage()]
    assert warnings and "nothing was refused" in warnings[0].getMessage()
