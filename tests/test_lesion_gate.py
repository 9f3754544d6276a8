"""The lesion gate of segmentation: its statistic, its choice on validation, its use in test and predict only."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from usvl.callbacks import Calibration
from usvl.metrics.lesion_gate import apply_lesion_gate, fit_lesion_gate, image_dice, lesion_confidence
from usvl.models.encoders import TinyViTCLIP
from usvl.models.heads import MultiScaleSegmentationHead
from usvl.tasks import SegmentationTask


def test_lesion_confidence_is_the_mean_probability_over_the_predicted_pixels():
    probability = torch.zeros(3, 1, 4, 4)
    probability[0, 0, :2, :2] = torch.tensor([[0.6, 0.8], [1.0, 0.2]])  # 0.2 is below the pixel threshold
    probability[1, 0] = 0.4  # nothing above 0.5
    probability[2, 0, 0, 0] = 0.55
    assert lesion_confidence(probability, 0.5).tolist() == pytest.approx([0.8, 0.0, 0.55])


def test_image_dice_scores_empty_pairs_one_and_a_false_lesion_zero():
    predicted = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]).bool()
    target = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()
    assert image_dice(predicted, target).tolist() == pytest.approx([2 / 3, 1.0, 0.0, 0.0])


def test_the_gate_is_chosen_between_false_lesions_and_true_ones():
    # Four lesion images predicted with confidence 0.9-0.96 (Dice 0.8), four normal images with false lesions of
    # confidence 0.6-0.75 and two normal images predicted empty: any threshold in (0.75, 0.9] is best.
    confidence = torch.tensor([0.9, 0.92, 0.94, 0.96, 0.6, 0.65, 0.7, 0.75, 0.0, 0.0])
    dice = torch.tensor([0.8] * 4 + [0.0] * 4 + [1.0] * 2)
    empty = torch.tensor([False] * 4 + [True] * 6)
    record = fit_lesion_gate(confidence, dice, empty)
    assert record["threshold"] == pytest.approx(0.9)  # the lowest candidate reaching the best score
    assert record["validation"]["dice"] == pytest.approx((3.2 + 2) / 10)
    assert record["validation"]["dice_gated"] == pytest.approx((3.2 + 6) / 10)
    assert record["validation"]["fp_rate_normal"] == pytest.approx(4 / 6)
    assert record["validation"]["fp_rate_normal_gated"] == 0.0
    assert record["validation"]["lesions_gated"] == 0 and record["validation_images"] == 10


def test_the_gate_stays_open_where_gating_only_loses():
    confidence = torch.tensor([0.6, 0.7, 0.9])
    record = fit_lesion_gate(confidence, torch.tensor([0.7, 0.8, 0.9]), torch.tensor([False, False, False]))
    assert record["threshold"] == 0.0 and record["validation"]["fp_rate_normal"] is None
    with pytest.raises(ValueError, match="non-empty"):
        fit_lesion_gate(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.bool))


def test_apply_lesion_gate_empties_only_low_confidence_masks():
    probability = torch.zeros(3, 1, 2, 2)
    probability[0, 0, 0] = 0.95
    probability[1, 0, 0] = 0.6
    masks = probability > 0.5
    gated, emptied = apply_lesion_gate(masks, probability, 0.5, 0.9)
    assert emptied.tolist() == [False, True, False]  # the third had nothing to empty
    assert torch.equal(gated[0], masks[0]) and not gated[1].any() and not gated[2].any()


def _task() -> SegmentationTask:
    torch.manual_seed(0)
    task = SegmentationTask(TinyViTCLIP(), MultiScaleSegmentationHead, num_classes=3,
                            class_names=["benign", "malignant", "normal"], channels_last=False)
    task.set_text_embeddings(torch.randn(3, 2, task.encoder.text_dim, generator=torch.Generator().manual_seed(0)))
    return task.eval()


def _batch(count: int = 6, seed: int = 1) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(count, 1, 64, 64, dtype=torch.uint8)
    mask[: count // 2, :, 16:40, 16:40] = 1  # half the images have a lesion, half are normal
    return {"image": torch.randint(0, 256, (count, 3, 64, 64), dtype=torch.uint8, generator=generator),
            "mask": mask, "name": [f"img{i}.png" for i in range(count)]}


def test_the_task_gates_in_test_and_predict_but_not_in_fit():
    task, batch = _task(), _batch()
    logits = torch.full((len(batch["name"]), 1, 64, 64), 2.0)  # a lesion everywhere, confidence 0.88
    task.forward = lambda images, output_size=None: logits
    plain = logits.sigmoid() > task.threshold
    task.lesion_gate = {"threshold": 1.01}  # above any confidence: every mask is emptied
    fitting = SimpleNamespace(testing=False, predicting=False)
    testing = SimpleNamespace(testing=True, predicting=False)
    task._trainer = fitting
    assert torch.equal(task.predict_masks(logits), plain)
    task._trainer = testing
    assert not task.predict_masks(logits).any() and task.gated_images == len(batch["name"])
    task._trainer = SimpleNamespace(testing=False, predicting=True)
    with torch.no_grad():
        assert not task.predict_step(batch, 0)["mask"].any()
    task.lesion_gate = None
    assert torch.equal(task.predict_masks(logits), plain)


def test_the_gate_survives_a_checkpoint_round_trip():
    task = _task()
    task.lesion_gate = {"statistic": "mean_lesion_probability", "threshold": 0.8}
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    reloaded = _task()
    reloaded.on_load_checkpoint(checkpoint)
    assert reloaded.lesion_gate == task.lesion_gate
    del checkpoint["usvl"]["lesion_gate"]
    reloaded.on_load_checkpoint(checkpoint)  # a checkpoint fitted without the gate: none
    assert reloaded.lesion_gate is None


class _Loader:
    def __init__(self, batches: list[dict[str, object]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _trainer(best: str, batches: _Loader) -> SimpleNamespace:
    return SimpleNamespace(
        fast_dev_run=False, checkpoint_callback=SimpleNamespace(best_model_path=best),
        datamodule=SimpleNamespace(val_dataloader=lambda: batches, setup=lambda stage: None), num_val_batches=[2],
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext), is_global_zero=True,
        strategy=SimpleNamespace(barrier=lambda name=None: None))


def test_the_callback_chooses_the_gate_on_validation_and_stores_it(tmp_path):
    task = _task()
    best = tmp_path / "best.ckpt"
    torch.save({"state_dict": {k: v for k, v in task.state_dict().items() if k in task.trainable_state_keys()}}, best)
    batches = _Loader([_batch(6, seed) for seed in range(3)])
    Calibration(enabled=False).on_fit_end(_trainer(str(best), batches), task)
    assert task.lesion_gate is None  # off by default
    Calibration(enabled=False, lesion_gate=True).on_fit_end(_trainer(str(best), batches), task)
    with torch.no_grad():  # the record is that of the first num_val_batches batches
        images = torch.cat([batch["image"] for batch in batches.batches[:2]])
        masks = torch.cat([batch["mask"] for batch in batches.batches[:2]])
        probability = task(images).float().sigmoid()
    expected = fit_lesion_gate(lesion_confidence(probability, 0.5), image_dice(probability > 0.5, masks),
                               ~masks.flatten(1).bool().any(dim=1))
    assert task.lesion_gate["threshold"] == pytest.approx(expected["threshold"])
    assert task.lesion_gate["validation_images"] == 12 and task.lesion_gate["checkpoint"] == "best.ckpt"
    assert torch.load(best, map_location="cpu", weights_only=False)["usvl"]["lesion_gate"] == task.lesion_gate


def test_a_checkpoint_without_a_gate_gets_one_before_its_test_when_asked():
    task, batches = _task(), _Loader([_batch(6, 0)])
    Calibration(lesion_gate=False).on_test_start(_trainer("", batches), task)
    assert task.lesion_gate is None
    Calibration(lesion_gate=True).on_test_start(_trainer("", batches), task)
    assert task.lesion_gate is not None and task.lesion_gate["checkpoint"] is None
    stored = dict(task.lesion_gate, threshold=0.123)
    task.lesion_gate = stored
    Calibration(lesion_gate=True).on_test_start(_trainer("", batches), task)  # a stored gate is kept
    assert task.lesion_gate is stored


def test_the_onnx_export_carries_the_gate_and_its_runtime_applies_it():
    from usvl.export.onnx import export_metadata
    from usvl.export.runtime import OnnxModel

    task = _task()
    assert "lesion_gate" not in export_metadata(task, (64, 64), None, 17)
    task.lesion_gate = {"statistic": "mean_lesion_probability", "threshold": 0.9}
    metadata = export_metadata(task, (64, 64), None, 17)
    runtime = OnnxModel.__new__(OnnxModel)  # the file-free part: what predict_step does with the outputs
    runtime.kind, runtime.threshold = "segmentation", float(metadata["threshold"])
    runtime.lesion_gate = json.loads(metadata["lesion_gate"])
    probability = torch.zeros(2, 1, 4, 4)
    probability[0, 0, 0] = 0.95
    probability[1, 0, 0] = 0.7
    runtime.run = lambda images: {"probability": probability}
    masks = runtime.predict_step({"image": torch.zeros(2, 3, 4, 4), "name": ["a", "b"]}, 0)["mask"]
    assert masks[0].any() and not masks[1].any()
