"""Training-time overhead of the lexicon descriptor heads: ``LexiconTask`` against ``ClassificationTask``.

Run: ``nice -n 10 .venv/bin/python benchmarks/lexicon_overhead.py [--rounds 4] [--steps 3] [--batch 32]``.

Both models are built by the CLI from the shipped configs (``configs/thyroid_cls.yaml`` and
``configs/thyroid_lexicon.yaml``: embedded encoder, Mona after stages 2-6, 224 px), with the same seed, so they
differ only in the descriptor heads. One training step is what ``usvl fit`` does per batch: ``compute_step`` on a
batch (32 random 224 px images with labels and, for the lexicon model, descriptor strings that it encodes into
targets), backward, AdamW step. After two warm-up steps each, the models alternate, ``--steps`` steps at a time, for
``--rounds`` rounds (the order flips every round, so a drift of the machine's speed favours neither). Printed: the
median seconds per step of each and their ratio. Data loading and validation, which the heads do not change, are
left out, so the ratio is an upper bound of the heads' share of a fit's time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from lightning.pytorch import LightningDataModule, LightningModule

from usvl.cli import USVLCLI
from usvl.lexicon import TIRADS


def build(config: str) -> LightningModule:
    """The config's model, as the CLI instantiates it (tiny data profile: nothing is generated)."""
    torch.manual_seed(0)
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", config, "--trainer.logger", "false", "--data.init_args.profile", "tiny"])
    model = cli.model
    model.set_text_embeddings(torch.randn(model.num_classes, 3, model.encoder.text_dim))
    return model.train()


def batch(size: int, image_size: int, seed: int) -> dict:
    """Random images and labels, with random TI-RADS descriptor strings (one in five missing)."""
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    descriptors = {name: [rng.choice([*values, ""]) for _ in range(size)] for name, values in TIRADS.single.items()}
    descriptors["echogenic_foci"] = [rng.choice(["none", "punctate", "rim;macrocalcification", ""])
                                     for _ in range(size)]
    return {"image": torch.randint(0, 256, (size, 3, image_size, image_size), dtype=torch.uint8, generator=generator),
            "label": torch.randint(0, 2, (size,), generator=generator), "name": [f"{i}.png" for i in range(size)],
            "descriptors": descriptors}


def steps(model: LightningModule, optimizer: torch.optim.Optimizer, data: dict, count: int) -> float:
    """Seconds per training step over ``count`` steps."""
    start = time.perf_counter()
    for _ in range(count):
        loss = model.compute_step(data, "train").loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    models = {"classifier": build("configs/thyroid_cls.yaml"), "lexicon": build("configs/thyroid_lexicon.yaml")}
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for k, m in models.items()}
    data = batch(args.batch, args.image_size, 0)
    for name, model in models.items():
        steps(model, optimizers[name], data, 2)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in order:
            times[name].append(steps(models[name], optimizers[name], data, args.steps))
            print(f"round {round_index + 1} {name}: {times[name][-1]:.3f} s/step", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"median s/step: classifier {medians['classifier']:.3f}, lexicon {medians['lexicon']:.3f}; "
          f"ratio {medians['lexicon'] / medians['classifier']:.3f} (threads {torch.get_num_threads()}, "
          f"batch {args.batch}, {args.image_size} px)")


if __name__ == "__main__":
    main()
