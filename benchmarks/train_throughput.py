"""Training throughput of the embedded encoder with Mona adapters at different placements and resolutions.

Run: ``.venv/bin/python benchmarks/train_throughput.py [--threads N] [--repeats R]``. Prints a Markdown table of
median images/s over R timed steps (after one warm-up step) for a batch of 32; results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from usvl.models.adapters import MonaAdapter, NoAdapter
from usvl.models.encoders import LiTEffNetMiniLM
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask
from usvl.utils.threads import configure_threads

CASES = {
    "no adapter (linear probe)": (NoAdapter, {}, True),
    "Mona after stages 0-6": (MonaAdapter, {}, True),
    "Mona after stages 2-6": (MonaAdapter, {"points": [2, 3, 4, 5, 6]}, True),
    "Mona after stages 2-6, contiguous memory": (MonaAdapter, {"points": [2, 3, 4, 5, 6]}, False),
    "Mona after stages 4-6": (MonaAdapter, {"points": [4, 5, 6]}, True),
}


def measure(adapter, size: int, batch: int, repeats: int, channels_last: bool = True) -> tuple[float, float]:
    task = ClassificationTask(LiTEffNetMiniLM(), PromptSimilarityHead, 2, adapter=adapter, channels_last=channels_last)
    task.set_text_embeddings(torch.randn(2, 4, 384))
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch,))
    task.train()
    times = []
    for step in range(repeats + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(task(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    task.eval()
    with torch.no_grad():
        task(images)
        start = time.perf_counter()
        task(images)
        inference = batch / (time.perf_counter() - start)
    return batch / statistics.median(times), inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 192])
    options = parser.parse_args()
    threads = configure_threads(options.threads)
    print(f"threads={threads} batch={options.batch} repeats={options.repeats} (median)")
    measure(NoAdapter(), options.sizes[0], options.batch, 1)  # warm-up: first-use costs of the kernels
    print("| adapter | size | train img/s | inference img/s |")
    print("|---|---|---|---|")
    for size in options.sizes:
        for name, (adapter_class, kwargs, channels_last) in CASES.items():
            train, inference = measure(adapter_class(**kwargs), size, options.batch, options.repeats, channels_last)
            print(f"| {name} | {size} | {train:.1f} | {inference:.1f} |", flush=True)


if __name__ == "__main__":
    main()
