"""Guards: a non-finite loss, unknown names, GPU out-of-memory and checkpoints of another model say what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import usvl.lightning_cli
from usvl.data.sources.registry import read_source
from usvl.data.sources.synthetic import ensure_synthetic
from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import TinyViTCLIP, build_encoder
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask
from usvl.tasks.base import CheckpointMismatchError, NonFiniteLossError


class ConstantLoss(nn.Module):
    """A loss that returns ``value`` (times zero gradients of the logits)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0.0 + self.value


def classification(adapter: MonaAdapter | None = None, **kwargs) -> ClassificationTask:
    task = ClassificationTask(TinyViTCLIP(), PromptSimilarityHead, num_classes=2, class_names=["a", "b"],
                              adapter=adapter, channels_last=False, **kwargs)
    task.set_text_embeddings(torch.randn(2, 3, task.encoder.text_dim, generator=torch.Generator().manual_seed(0)))
    return task


def batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=generator),
            "label": torch.tensor([0, 1]), "name": ["case_007.png", "case_042.png"]}


def test_a_non_finite_training_loss_stops_naming_the_step_and_the_images() -> None:
    task = classification()
    for value in (float("nan"), float("inf"), -float("inf")):
        task.loss = ConstantLoss(value)
        with pytest.raises(NonFiniteLossError, match=r"at global step 0 \(epoch 0\).*case_007\.png, case_042\.png"):
            task.training_step(batch(), 0)
    task.loss = ConstantLoss(1.0)
    assert task.training_step(batch(), 0).item() == 1.0


def test_unknown_names_list_the_valid_choices(tmp_path) -> None:
    with pytest.raises(KeyError, match="embedded/lit-effnet-minilm"):
        build_encoder("embedded/nope")
    with pytest.raises(ValueError, match="baseline.*hybrid"):
        MonaAdapter(variant="nope")
    with pytest.raises(KeyError, match="busi"):
        read_source("nope", tmp_path)
    with pytest.raises(KeyError, match="thyroid"):
        ensure_synthetic("liver", "tiny", seed=0, size=64)
    with pytest.raises(KeyError, match="tiny"):
        ensure_synthetic("thyroid", "huge", seed=0, size=64)


def test_gpu_out_of_memory_names_the_switches_that_lower_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(usvl.lightning_cli, "USVLCLI", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError) as raised:
        usvl.lightning_cli.run_lightning(["fit"])
    message = str(raised.value)
    for switch in ("--data.init_args.batch_size", "--trainer.precision bf16-mixed", "--data.init_args.image_size",
                   "Tried to allocate 2.00 GiB"):
        assert switch in message


def saved_checkpoint(task: ClassificationTask) -> dict:
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    return checkpoint


def test_a_checkpoint_of_another_adapter_or_encoder_is_refused_naming_both() -> None:
    checkpoint = saved_checkpoint(classification(MonaAdapter(bottleneck=8, dropout=0.1)))
    with pytest.raises(CheckpointMismatchError, match=r"adapter MonaAdapter\(variant='baseline'.*this model's "
                                                      r"adapter is MonaAdapter\(variant='freq'"):
        classification(MonaAdapter(variant="freq", bottleneck=8)).on_load_checkpoint(checkpoint)
    classification(MonaAdapter(bottleneck=8, dropout=0.0)).on_load_checkpoint(checkpoint)  # training-only setting

    checkpoint["usvl"]["encoder_id"] = "openclip/ViT-B-16@openai"
    model = classification(MonaAdapter(bottleneck=8))
    with pytest.raises(CheckpointMismatchError, match=f"encoder openclip/ViT-B-16@openai.*{model.encoder.encoder_id}"):
        model.on_load_checkpoint(checkpoint)
