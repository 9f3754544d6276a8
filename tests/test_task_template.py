"""The task template: abstract hooks, injectable loss, one head factory, schedules, the fit-start gradient check."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import TinyViTCLIP
from usvl.models.heads import MultiScaleSegmentationHead, PromptSimilarityHead
from usvl.tasks import AdaptedEncoderTask, ClassificationTask, SegmentationTask
from usvl.tasks.schedules import SizedByTrainer, WarmupCosineSchedule

SEG_HEAD = partial(MultiScaleSegmentationHead, decoder_dim=16, norm_groups=4, upsample_steps=0)


def _applied_learning_rates(scheduler_factory, steps: int) -> list[float]:
    """The learning rate each optimiser step really applied (SGD on a parameter with gradient 1)."""
    parameter = nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = scheduler_factory(optimizer)
    applied = []
    for _ in range(steps):
        before = parameter.item()
        parameter.grad = torch.ones(())
        optimizer.step()
        applied.append(before - parameter.item())
        scheduler.step()
    return applied


def test_warmup_starts_at_the_warmup_factor_when_sized_by_the_trainer():
    def sized_by_trainer(optimizer):
        scheduler = WarmupCosineSchedule(optimizer, warmup_fraction=0.05)
        assert isinstance(scheduler, SizedByTrainer)
        scheduler.set_total_steps(1000)  # what the task does in configure_optimizers, before the first step
        return scheduler

    # Warm-up of 50 steps: step k runs at (k + 1) / 50 of the base rate, the first step included.
    assert _applied_learning_rates(sized_by_trainer, 4) == pytest.approx([0.02, 0.04, 0.06, 0.08])
    # The same as a schedule given its length up front.
    assert _applied_learning_rates(partial(WarmupCosineSchedule, total_steps=1000), 4) == pytest.approx(
        [0.02, 0.04, 0.06, 0.08])


def test_the_task_sizes_schedules_that_follow_the_protocol():
    assert not isinstance(torch.optim.lr_scheduler.StepLR(torch.optim.SGD([nn.Parameter(torch.zeros(()))]), 1),
                          SizedByTrainer)


def test_the_base_task_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        AdaptedEncoderTask(TinyViTCLIP())

    class NoMetrics(AdaptedEncoderTask):
        def configure_losses(self):
            return nn.CrossEntropyLoss()

        def compute_step(self, batch, stage):
            raise AssertionError

    with pytest.raises(TypeError, match="configure_metrics"):
        NoMetrics(TinyViTCLIP())


def _classification(**kwargs) -> ClassificationTask:
    task = ClassificationTask(TinyViTCLIP(), PromptSimilarityHead, num_classes=2, class_names=["a", "b"],
                              channels_last=False, **kwargs)
    task.set_text_embeddings(torch.randn(2, 3, task.encoder.text_dim, generator=torch.Generator().manual_seed(0)))
    return task


def _batch(size: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=generator),
            "label": torch.tensor([0, 1, 1, 0])}


def test_classification_default_loss_is_cross_entropy_and_a_loss_can_be_injected():
    task, batch = _classification(label_smoothing=0.1), _batch()
    logits = task(batch["image"]).float()
    output = task.compute_step(batch, "train")
    assert output.loss.item() == pytest.approx(F.cross_entropy(logits, batch["label"], label_smoothing=0.1).item())
    assert output.predictions.shape == (4,)

    weighted = _classification(loss=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0])))
    weighted.load_state_dict(task.state_dict(), strict=False)
    expected = F.cross_entropy(logits, batch["label"], weight=torch.tensor([1.0, 5.0]))
    assert weighted.compute_step(batch, "train").loss.item() == pytest.approx(expected.item())
    assert "loss" not in weighted.hparams


def test_each_stage_gets_its_own_metric_collection():
    task = _classification()
    assert {task.train_metrics.prefix, task.val_metrics.prefix, task.test_metrics.prefix} == {
        "train/", "val/", "test/"}
    task.val_metrics.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))
    assert not any(metric.update_called for metric in task.test_metrics.values())


def test_one_head_factory_builds_every_head():
    for head in (PromptSimilarityHead, SEG_HEAD):
        module = head([64, 64], 32, 2)
        assert isinstance(module, nn.Module)
    assert SEG_HEAD([64], 32, 3).classifier.out_channels == 3


def _segmentation(feature_taps, points=None) -> SegmentationTask:
    encoder = TinyViTCLIP(depth=4, feature_taps=feature_taps)
    task = SegmentationTask(encoder, SEG_HEAD, num_classes=2, class_names=["benign", "malignant"],
                            adapter=MonaAdapter(bottleneck=8, points=points), channels_last=False)
    task.set_text_embeddings(torch.randn(2, 3, encoder.text_dim))
    return task


def test_gradient_check_names_adapters_after_the_last_tapped_block():
    task = _segmentation(feature_taps=(0, 1))
    with pytest.raises(RuntimeError, match="never receive a gradient") as error:
        task.check_gradients(64)
    message = str(error.value)
    points = [f"encoder.{name}" for name, _ in task.encoder.adapter_points]
    assert f"{points[2]} (" in message and f"{points[3]} (" in message
    assert points[1] not in message
    assert "feature_taps" in message and "points" in message


def test_gradient_check_passes_and_leaves_no_trace():
    task = _segmentation(feature_taps=(1, 2, 3))
    task.train()
    buffers = {name: buffer.clone() for name, buffer in task.named_buffers()}
    torch.manual_seed(123)
    task.check_gradients(64)
    after_check = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_check, torch.rand(3)), "the check must not move the run's random stream"
    assert all(p.grad is None for p in task.parameters())
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in task.named_buffers())
    # Adapters only up to the last tap are fine as well.
    _segmentation(feature_taps=(0, 1), points=[0, 1]).check_gradients(64)
