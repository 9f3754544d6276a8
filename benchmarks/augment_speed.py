"""Time acquisition augmentation: batched on the device (usvl) against per-sample (the collate path, usaugment).

Runs on a CPU with one torch thread over batches of synthetic thyroid images at the training size (224 px):

- ``AcquisitionAugment`` on a whole batch (how ``UltrasoundDataModule`` applies it, after the batch reaches the
  device), and the same module called once per image (what a dataset/collate-path transform costs);
- ``BatchAugment`` (the geometric/intensity augmentation already on) on a whole batch, for scale;
- when ``usaugment`` imports (``pip install usaugment``, which pulls in albumentations, OpenCV and scikit-image;
  ``--usaugment-site`` adds a folder it was installed into with ``pip install --target`` to the end of
  ``sys.path``), its four transforms in an albumentations ``Compose``, one numpy image at a time.

Each result is the median over repeats of the CPU milliseconds per image of this process (``time.process_time``,
one thread), which a busy machine disturbs far less than wall time; under load only the ratios mean much.

    python benchmarks/augment_speed.py [--batch 32] [--repeats 5] [--usaugment-site DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def images(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of synthetic thyroid images and masks at ``size`` px (uint8 ``[B, 1, S, S]``)."""
    from usvl.data.synthetic import render_sample

    samples = [render_sample("thyroid", seed, size=256) for seed in range(batch)]
    image = torch.from_numpy(np.stack([s.image for s in samples]))[:, None].float()
    mask = torch.from_numpy(np.stack([s.mask for s in samples]))[:, None].float()
    image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False).round().to(torch.uint8)
    mask = F.interpolate(mask, size=(size, size), mode="nearest").to(torch.uint8)
    return image, mask


def per_image_ms(work: Callable[[], object], count: int, repeats: int) -> float:
    """Median CPU milliseconds per image of ``work`` (which processes ``count`` images), after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append((time.process_time() - start) * 1000.0 / count)
    return round(statistics.median(times), 3)


def usaugment_pipeline() -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """usaugment's four transforms (p=1) in an albumentations Compose, or None when the package is missing."""
    try:
        import albumentations as A
        from usaugment.albumentations import DepthAttenuation, GaussianShadow, HazeArtifact, SpeckleReduction
    except ImportError:
        return None
    compose = A.Compose([DepthAttenuation(p=1.0), GaussianShadow(p=1.0), HazeArtifact(p=1.0),
                         SpeckleReduction(p=1.0)])

    def run(image: np.ndarray, scan_mask: np.ndarray) -> np.ndarray:
        return compose(image=image, scan_mask=scan_mask)["image"]

    return run


def main() -> None:
    """Time the variants and print (and optionally write) the milliseconds per image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--usaugment-site", default=None, help="folder usaugment was pip-installed into (--target)")
    parser.add_argument("--json", default=None, help="also write the results here")
    options = parser.parse_args()
    if options.usaugment_site:
        sys.path.append(options.usaugment_site)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from usvl.data import AcquisitionAugment, BatchAugment

    image, mask = images(options.batch, options.size)
    acquisition, geometric = AcquisitionAugment(), BatchAugment()
    results = {
        "batch": options.batch, "size": options.size, "torch_threads": 1,
        "acquisition_batched_cpu_ms_per_image": per_image_ms(lambda: acquisition(image, mask), options.batch,
                                                         options.repeats),
        "acquisition_per_sample_cpu_ms_per_image": per_image_ms(
            lambda: [acquisition(image[i:i + 1], mask[i:i + 1]) for i in range(options.batch)], options.batch,
            options.repeats),
        "batch_augment_batched_cpu_ms_per_image": per_image_ms(lambda: geometric(image, mask), options.batch,
                                                           options.repeats),
    }
    pipeline = usaugment_pipeline()
    if pipeline is not None:
        floats = [(image[i, 0].numpy() / 255.0).astype(np.float32) for i in range(options.batch)]
        scan_mask = np.ones(floats[0].shape, np.uint8)
        results["usaugment_per_sample_cpu_ms_per_image"] = per_image_ms(
            lambda: [pipeline(f, scan_mask) for f in floats], options.batch, options.repeats)
    print(json.dumps(results, indent=2))
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
