"""Every encoder backend x every adapter kind: fit -> test -> predict for a few steps on the tiny smoke data.

Each fit takes three steps on one repeated batch: the training loss must fall (the adapter, projections and head
learn), the test metrics must be finite and the predictions must have one row (or mask) per predicted image.

Backends are real code paths with tiny random weights saved the way real checkpoints are (open_clip model configs,
transformers folders, timm towers), plus the embedded encoder with its packaged weights. About 1.5 s per cell.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tiny_models import save_tiny_hf_clip, save_tiny_text_model, write_tiny_open_clip_config
from torch.utils.data import DataLoader

from usvl.data import SyntheticDataModule
from usvl.models.adapters import FullFineTune, LoRAAdapter, MonaAdapter, NoAdapter
from usvl.models.encoders import build_encoder
from usvl.models.heads import MultiScaleSegmentationHead, PromptSimilarityHead
from usvl.tasks import ClassificationTask, SegmentationTask
from usvl.text import TextEmbeddingCache

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
TAPS = (1, 2, 3)
BACKENDS = ["embedded", "tiny-vit-clip", "openclip-openai", "openclip-timm", "hf-clip", "hf-siglip", "timm+hf-cnn"]
ADAPTERS = {
    "mona-baseline": lambda: MonaAdapter("baseline", bottleneck=8),
    "mona-hybrid": lambda: MonaAdapter("hybrid", bottleneck=8, freq_size=(4, 3)),
    "lora": lambda: LoRAAdapter(r=2, alpha=4),
    "none": NoAdapter,
    "full": FullFineTune,
}
LEARNING_RATES = {"full": 1e-4}
"""AdamW learning rate per adapter kind (default 1e-3): full fine-tuning needs a smaller one, as in practice."""


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "openclip-openai": write_tiny_open_clip_config(root, timm_trunk=False, image_size=SIZE),
        "openclip-timm": write_tiny_open_clip_config(root, timm_trunk=True, image_size=SIZE),
        "hf-clip": save_tiny_hf_clip(root / "clip", "clip", image_size=SIZE),
        "hf-siglip": save_tiny_hf_clip(root / "siglip", "siglip", image_size=SIZE),
        "text": save_tiny_text_model(root / "bert"),
    }


def build_backend(backend: str, saved: dict[str, Path]):
    torch.manual_seed(0)
    if backend == "embedded":
        return build_encoder("embedded/lit-effnet-minilm", embed_dim=32)
    if backend == "tiny-vit-clip":
        return build_encoder("test/tiny-vit-clip", img_size=SIZE)
    if backend.startswith("openclip"):
        return build_encoder(f"openclip/{saved[backend]}", allow_random=True, feature_taps=TAPS, image_size=SIZE)
    if backend.startswith("hf-"):
        return build_encoder(f"hf/{saved[backend]}", feature_taps=TAPS)
    return build_encoder(f"timm+hf/resnet18+{saved['text']}", embed_dim=32, feature_taps=TAPS,
                         image_pretrained=False)


STEPS = 3


class RepeatedBatch(SyntheticDataModule):
    """Every training step sees the same batch (augmentation off), so its loss must fall if the steps learn."""

    def train_dataloader(self):
        batch = next(iter(super().train_dataloader()))
        return DataLoader([batch] * STEPS, batch_size=None)


class LossRecorder(pl.Callback):
    """Collects the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def fit_test_predict(task, preset: str, task_name: str, tmp_path: Path, descriptions: str):
    """Fit a few steps on one repeated batch, then test and predict one batch each.

    Returns:
        The test metrics, the prediction batches, the training losses, and the size of the predicted batch.
    """
    data = RepeatedBatch(preset=preset, profile="tiny", task=task_name, image_size=SIZE, batch_size=4)
    recorder = LossRecorder()
    trainer = pl.Trainer(max_steps=STEPS, limit_val_batches=1, limit_test_batches=1, limit_predict_batches=1,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[recorder,
                                    TextEmbeddingCache(descriptions=str(REPO / "configs" / "text" / descriptions))])
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == STEPS
    results = trainer.test(task, datamodule=data, verbose=False)[0]
    predictions = trainer.predict(task, datamodule=data)
    expected = min(data.eval_batch_size, len(data.predict_dataloader().dataset))
    return results, predictions, recorder.losses, expected


def assert_training_learns(losses: list[float]) -> None:
    """The loss on the repeated batch is finite and falls from the first step to the last."""
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < losses[0], losses


def up_to_last_tap(encoder) -> list[int]:
    """Adapter points up to the last tapped one: the only ones whose output reaches a segmentation head."""
    return list(range(max(encoder.feature_taps) + 1))


def trainable_snapshot(task) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_classification_fit_test_predict(backend, adapter, saved_models, tmp_path):
    encoder = build_backend(backend, saved_models)
    task = ClassificationTask(encoder, partial(PromptSimilarityHead), num_classes=2,
                              class_names=["benign", "malignant"], adapter=ADAPTERS[adapter](),
                              optimizer=partial(torch.optim.AdamW, lr=LEARNING_RATES.get(adapter, 1e-3)))
    before = trainable_snapshot(task)
    results, predictions, losses, expected = fit_test_predict(task, "thyroid", "classification", tmp_path,
                                                              "thyroid_tirads.yaml")
    assert_training_learns(losses)
    assert math.isfinite(results["test/auroc"]) and math.isfinite(results["test/loss"])
    (batch,) = predictions
    assert len(batch["name"]) == expected and batch["probabilities"].shape == (expected, 2)
    assert torch.allclose(batch["probabilities"].sum(-1), torch.ones(expected), atol=1e-5)
    assert torch.equal(batch["prediction"], batch["probabilities"].argmax(-1))
    changed = [n for n, p in task.named_parameters() if n in before and not torch.equal(before[n], p)]
    adapted = [n for n in changed if n.startswith("encoder.") and "_projection" not in n]
    assert bool(adapted) == (adapter != "none"), (backend, adapter, changed[:5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_segmentation_fit_test_predict(backend, saved_models, tmp_path):
    encoder = build_backend(backend, saved_models)
    task = SegmentationTask(encoder, partial(MultiScaleSegmentationHead, decoder_dim=16, norm_groups=4),
                            num_classes=3, class_names=["benign", "malignant", "normal"],
                            adapter=MonaAdapter("hybrid", bottleneck=8, freq_size=(4, 3),
                                                points=up_to_last_tap(encoder)))
    results, predictions, losses, expected = fit_test_predict(task, "breast", "segmentation", tmp_path,
                                                              "breast_birads.yaml")
    assert_training_learns(losses)
    assert math.isfinite(results["test/dice"]) and math.isfinite(results["test/loss"])
    (batch,) = predictions
    assert len(batch["name"]) == expected and batch["mask"].shape[0] == expected
    assert batch["mask"].shape[-2:] == (SIZE, SIZE) and batch["mask"].dtype == torch.uint8
