"""Which descriptor limits the zero-shot TI-RADS score: its AUROC with each descriptor's term held constant.

Run: ``.venv/bin/python benchmarks/zeroshot_lexicon_terms.py <stage-1 checkpoint> [extra CLI arguments]``.

Builds ``configs/zeroshot/thyroid_lexicon.yaml`` from the stage-1 checkpoint as ``usvl test`` does, predicts the
descriptor probabilities of the test split, and prints per descriptor: the mean predicted probability of each value
against its frequency in the test split, and the AUROC (benign vs malignant) of the expected ACR points when that
descriptor's probabilities are replaced by their test-set mean (the descriptor then ranks no image). A descriptor
whose removal raises the AUROC hurts the score.
"""

from __future__ import annotations

import sys

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torchmetrics.functional.classification import binary_auroc

from usvl.cli import USVLCLI
from usvl.lexicon import TIRADS


def predict(checkpoint: str, extra: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Descriptor probabilities, encoded targets and labels of the test split."""
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", "configs/zeroshot/thyroid_lexicon.yaml", "--model.init_args.init_from",
                        checkpoint, "--trainer.logger", "false", *extra])
    model, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("test")
    model.setup("test")
    model.eval()
    probabilities, targets, labels = [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            logits = model.describe(model.image_features(batch["image"]))
            probabilities.append(model.descriptor_probabilities({k: v[None] for k, v in logits.items()}))
            targets.append(model.descriptor_targets(batch))
            labels.append(batch["label"])
    joined = {name: torch.cat([p[name] for p in probabilities]) for name in TIRADS.descriptors}
    true = {name: torch.cat([t[name] for t in targets]) for name in TIRADS.descriptors}
    return joined, true, torch.cat(labels)


def main() -> None:
    """Print the value frequencies and the AUROC of the score without each descriptor."""
    probabilities, targets, labels = predict(sys.argv[1], sys.argv[2:])
    score = TIRADS.expected_points(probabilities)
    print(f"AUROC of the expected ACR points: {float(binary_auroc(score, labels)):.3f}")
    for name in TIRADS.descriptors:
        values = TIRADS.single.get(name) or TIRADS.multi[name]
        target = targets[name]
        frequency = (torch.bincount(target[target >= 0], minlength=len(values)).float() / int((target >= 0).sum())
                     if name in TIRADS.single else target.clamp(min=0).float().mean(0))
        predicted = probabilities[name].mean(0)
        held = dict(probabilities)
        held[name] = predicted.expand_as(probabilities[name])
        without = float(binary_auroc(TIRADS.expected_points(held), labels))
        pairs = ", ".join(f"{value} {float(p):.3f}/{float(f):.3f}"
                          for value, p, f in zip(values, predicted, frequency, strict=True))
        print(f"{name}: AUROC without it {without:.3f}; mean predicted / true frequency: {pairs}")


if __name__ == "__main__":
    main()
