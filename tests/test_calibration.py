"""Calibration and operating point: temperature scaling, thresholds on validation, ECE/Brier, storage and use.

The end-to-end checks (a smoke fit stores the record in its best checkpoint, ``usvl test`` reports the metrics and
draws the diagram, ``usvl predict`` writes calibrated probabilities and the class at the stored threshold) are in
``test_predict_folder.py``, which fits the smoke model once for both.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from usvl.callbacks import Calibration, store_calibration
from usvl.metrics.calibration import (
    brier_score,
    calibrated_probabilities,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    fit_temperature_and_bias,
    reliability_bins,
    sensitivity_threshold,
    youden_threshold,
)
from usvl.models.encoders import TinyViTCLIP
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask

# Six validation scores of the positive class, by hand: descending 0.9 (+), 0.8 (+), 0.6 (-), 0.35 (+), 0.3 (-),
# 0.1 (-). Cuts (threshold midway below the lowest kept score): >=0.85: sens 1/3 spec 1; >=0.7: 2/3, 1 (J 2/3);
# >=0.475: 2/3, 2/3; >=0.325: 1, 2/3 (J 2/3); >=0.2: 1, 1/3; >=0.05: 1, 0.
SCORES = torch.tensor([0.1, 0.3, 0.35, 0.6, 0.8, 0.9])
LABELS = torch.tensor([0, 0, 1, 0, 1, 1])


def _labels_drawn_at(logits: torch.Tensor, temperature: float, seed: int = 0) -> torch.Tensor:
    """Labels drawn from the (view-averaged) softmax of ``logits / temperature``: that temperature is the truth."""
    probabilities = calibrated_probabilities(logits, temperature)
    return torch.multinomial(probabilities, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


@pytest.mark.parametrize(("classes", "views", "true_temperature"), [(2, 1, 2.5), (3, 1, 0.5), (2, 2, 1.8)])
def test_fit_temperature_recovers_a_known_temperature(classes, views, true_temperature):
    generator = torch.Generator().manual_seed(classes * 10 + views)
    logits = 3.0 * torch.randn(views, 6000, classes, generator=generator)
    labels = _labels_drawn_at(logits, true_temperature)
    fitted = fit_temperature(logits if views > 1 else logits[0], labels)
    assert fitted == pytest.approx(true_temperature, rel=0.06)


def test_fitted_temperature_minimises_the_validation_nll():
    logits = 4.0 * torch.randn(500, 3, generator=torch.Generator().manual_seed(3))
    labels = _labels_drawn_at(logits, 2.0, seed=1)
    fitted = fit_temperature(logits, labels)

    def nll(temperature: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / temperature, labels))

    assert nll(fitted) < nll(fitted * 1.05) and nll(fitted) < nll(fitted / 1.05) and nll(fitted) < nll(1.0)


def test_youden_threshold_by_hand():
    cut = youden_threshold(SCORES, LABELS)
    # J = 2/3 at >=0.7 and at >=0.325: the higher threshold wins the tie.
    assert cut.threshold == pytest.approx(0.7)
    assert (cut.sensitivity, cut.specificity) == pytest.approx((2 / 3, 1.0))


@pytest.mark.parametrize(("target", "threshold", "specificity"),
                         [(0.9, 0.325, 2 / 3), (2 / 3, 0.7, 1.0), (0.3, 0.85, 1.0), (1.0, 0.325, 2 / 3)])
def test_target_sensitivity_threshold_is_the_highest_reaching_it_by_hand(target, threshold, specificity):
    cut = sensitivity_threshold(SCORES, LABELS, target)
    assert cut.threshold == pytest.approx(threshold)
    assert cut.sensitivity >= target and cut.specificity == pytest.approx(specificity)
    with pytest.raises(ValueError, match="target"):
        sensitivity_threshold(SCORES, LABELS, 0.0)


def test_ece_and_brier_by_hand():
    # Two classes: p1 in bins 1 (0.1, 0.12 -> labels 0, 1), 10 (0.7 -> 1) and 13 (0.9 -> 1) of 15.
    p1 = torch.tensor([0.1, 0.12, 0.7, 0.9])
    binary = torch.stack([1 - p1, p1], dim=1)
    labels = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(binary, labels) == pytest.approx(2 / 4 * 0.39 + 1 / 4 * 0.3 + 1 / 4 * 0.1)
    assert brier_score(binary, labels) == pytest.approx((0.01 + 0.7744 + 0.09 + 0.01) / 4)
    # Three classes: top-label confidences 0.7 (right), 0.5 (wrong), 0.82 (right); Brier summed over classes.
    three = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.09, 0.09, 0.82]])
    labels3 = torch.tensor([0, 1, 2])
    assert expected_calibration_error(three, labels3) == pytest.approx((0.3 + 0.5 + 0.18) / 3, abs=1e-6)
    assert brier_score(three, labels3) == pytest.approx((0.14 + 0.78 + 0.0486) / 3)
    # The diagram's bins give the same ECE.
    for probabilities, truth in ((binary, labels), (three, labels3)):
        bins = reliability_bins(probabilities, truth)
        total = sum(bins["count"])
        ece = sum(n / total * abs(f - c) for c, f, n in zip(bins["confidence"], bins["frequency"], bins["count"],
                                                            strict=True) if n)
        assert ece == pytest.approx(expected_calibration_error(probabilities, truth), abs=1e-6)


def test_fit_calibration_record_for_two_and_three_classes():
    logits = 3.0 * torch.randn(400, 2, generator=torch.Generator().manual_seed(5))
    labels = _labels_drawn_at(logits, 3.0)
    record = fit_calibration(logits, labels, "sensitivity", 0.9)
    assert record["temperature"] == pytest.approx(3.0, rel=0.25)
    assert record["threshold_method"] == "sensitivity" and record["target_sensitivity"] == 0.9
    assert record["validation"]["sensitivity_at_threshold"] >= 0.9
    assert record["validation"]["nll"] <= record["validation"]["nll_uncalibrated"]
    assert record["validation_images"] == 400

    three = fit_calibration(3.0 * torch.randn(300, 3, generator=torch.Generator().manual_seed(6)),
                            torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(7)))
    assert three["threshold"] is None and three["threshold_method"] == "argmax"
    assert "sensitivity_at_threshold" not in three["validation"]

    one_class = fit_calibration(logits[:10], torch.ones(10, dtype=torch.long))
    assert (one_class["threshold"], one_class["threshold_method"]) == (0.5, "default")
    with pytest.raises(ValueError, match="threshold method"):
        fit_calibration(logits, labels, "f1")


def _task(**kwargs) -> ClassificationTask:
    torch.manual_seed(0)
    task = ClassificationTask(TinyViTCLIP(), PromptSimilarityHead, num_classes=2, class_names=["benign", "malignant"],
                              channels_last=False, **kwargs)
    task.set_text_embeddings(torch.randn(2, 3, task.encoder.text_dim, generator=torch.Generator().manual_seed(0)))
    return task.eval()


def _batch(count: int = 6, seed: int = 1) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (count, 3, 64, 64), dtype=torch.uint8, generator=generator),
            "label": torch.tensor([0, 1] * (count // 2)), "name": [f"img{i}.png" for i in range(count)]}


RECORD = {"temperature": 0.05, "threshold": 0.9, "threshold_method": "youden", "target_sensitivity": None,
          "validation_images": 6, "validation": {"ece": 0.1}}


def test_calibration_survives_a_checkpoint_round_trip(tmp_path):
    task = _task()
    task.calibration = dict(RECORD)
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    reloaded = _task()
    assert reloaded.calibration is None and reloaded.temperature == 1.0 and reloaded.decision_threshold is None
    reloaded.on_load_checkpoint(torch.load(tmp_path / "model.ckpt", map_location="cpu", weights_only=False))
    assert reloaded.calibration == RECORD
    assert (reloaded.temperature, reloaded.decision_threshold) == (0.05, 0.9)
    old = {"state_dict": checkpoint["state_dict"], "usvl": {k: v for k, v in checkpoint["usvl"].items()
                                                            if k != "calibration"}}
    reloaded.on_load_checkpoint(old)  # a checkpoint from before calibration: plain probabilities, argmax
    assert reloaded.calibration is None and reloaded.temperature == 1.0


def test_plain_metrics_stay_plain_while_test_and_predict_use_the_stored_calibration():
    task, batch = _task(test_time_flip=True), _batch()
    with torch.no_grad():
        plain = ((task(batch["image"]).float().softmax(-1) + task(batch["image"].flip(-1)).float().softmax(-1)) / 2)
        task.calibration = dict(RECORD)
        output = task.compute_step(batch, "test")
        predicted = task.predict_step(batch, 0)
    assert torch.equal(output.predictions, plain[:, 1])  # test/accuracy, test/auroc, ... exactly as before
    logits = torch.stack([task(batch["image"]), task(batch["image"].flip(-1))]).float().detach()
    calibrated = calibrated_probabilities(logits, 0.05)
    assert torch.allclose(predicted["probabilities"], calibrated, atol=1e-6)
    assert not torch.allclose(calibrated, plain, atol=1e-3)
    assert predicted["threshold"] == 0.9
    assert torch.equal(predicted["prediction"], (calibrated[:, 1] >= 0.9).long())
    for threshold, decided in ((0.0, 1), (1.01, 0)):  # the stored threshold decides, whatever the argmax says
        task.calibration["threshold"] = threshold
        with torch.no_grad():
            assert task.predict_step(batch, 0)["prediction"].tolist() == [decided] * len(batch["name"])
    task.calibration["threshold"] = 0.9
    task.test_calibration.threshold = task.decision_threshold  # as on_test_epoch_end does
    values = task.test_calibration.compute()
    assert values["ece"] == pytest.approx(expected_calibration_error(calibrated, batch["label"]), abs=1e-6)
    assert values["ece_uncalibrated"] == pytest.approx(expected_calibration_error(plain, batch["label"]), abs=1e-6)
    assert values["brier"] == pytest.approx(brier_score(calibrated, batch["label"]), abs=1e-6)
    called = calibrated[:, 1] >= 0.9
    assert values["sensitivity_at_threshold"] == pytest.approx(float(called[batch["label"] == 1].double().mean()))


class _Loader:
    """Validation batches, iterated like a data loader."""

    def __init__(self, batches: list[dict[str, object]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_the_callback_fits_on_the_best_checkpoint_stores_the_record_and_puts_the_weights_back(tmp_path):
    task = _task()
    best = tmp_path / "best.ckpt"
    checkpoint = {"state_dict": {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v
                                 for k, v in task.state_dict().items() if k in task.trainable_state_keys()}}
    torch.save(checkpoint, best)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    batches = _Loader([_batch(8, seed) for seed in range(3)])
    trainer = SimpleNamespace(
        fast_dev_run=False, checkpoint_callback=SimpleNamespace(best_model_path=str(best)),
        datamodule=SimpleNamespace(val_dataloader=lambda: batches), num_val_batches=[2],
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext), is_global_zero=True,
        strategy=SimpleNamespace(barrier=lambda name=None: None))
    Calibration(threshold="sensitivity", target_sensitivity=0.75).on_fit_end(trainer, task)

    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())  # the weights are put back
    best_task = _task()
    best_task.load_state_dict(checkpoint["state_dict"], strict=False)
    with torch.no_grad():  # the record is that of the best weights on the first num_val_batches batches
        logits = torch.cat([best_task.view_logits(batch["image"]) for batch in batches.batches[:2]], dim=1)
    labels = torch.cat([batch["label"] for batch in batches.batches[:2]])
    expected = fit_calibration(logits, labels, "sensitivity", 0.75)
    assert task.calibration["temperature"] == pytest.approx(expected["temperature"], rel=1e-4)
    assert task.calibration["threshold"] == pytest.approx(expected["threshold"], rel=1e-4)
    assert task.calibration["validation_images"] == 16 and task.calibration["checkpoint"] == "best.ckpt"
    stored = torch.load(best, map_location="cpu", weights_only=False)["usvl"]["calibration"]
    assert stored == task.calibration
    with pytest.raises(ValueError, match="threshold"):
        Calibration(threshold="f1")


def test_store_calibration_keeps_the_rest_of_the_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "usvl": {"class_names": ["a", "b"]}}, path)
    store_calibration(path, RECORD)
    stored = torch.load(path, map_location="cpu", weights_only=False)
    assert stored["usvl"] == {"class_names": ["a", "b"], "calibration": RECORD}
    assert torch.equal(stored["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def _labels_drawn_with_bias(logits: torch.Tensor, temperature: float, bias: list[float], seed: int = 0):
    probabilities = calibrated_probabilities(logits, temperature, bias)
    return torch.multinomial(probabilities, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


@pytest.mark.parametrize(("true_temperature", "true_bias"), [(1.6, [0.0, 0.8]), (0.7, [0.0, -0.6, 0.5])])
def test_fit_temperature_and_bias_recovers_both(true_temperature, true_bias):
    logits = 3.0 * torch.randn(8000, len(true_bias), generator=torch.Generator().manual_seed(len(true_bias)))
    labels = _labels_drawn_with_bias(logits, true_temperature, true_bias)
    temperature, bias = fit_temperature_and_bias(logits, labels)
    assert temperature == pytest.approx(true_temperature, rel=0.08)
    assert bias[0] == 0.0 and bias[1:] == pytest.approx(true_bias[1:], abs=0.12)
    expected = (logits / true_temperature + torch.tensor(true_bias)).softmax(-1)
    assert torch.allclose(calibrated_probabilities(logits, true_temperature, true_bias), expected, atol=1e-6)


def test_temperature_bias_scaling_corrects_probabilities_that_are_too_high():
    logits = 3.0 * torch.randn(3000, 2, generator=torch.Generator().manual_seed(11))
    labels = _labels_drawn_with_bias(logits, 2.0, [0.0, -1.0])  # the model's positive scores are too high
    plain = fit_calibration(logits, labels)
    biased = fit_calibration(logits, labels, scaling="temperature_bias")
    assert plain["scaling"] == "temperature" and plain["bias"] is None
    assert biased["scaling"] == "temperature_bias" and biased["bias"][1] < -0.5
    assert biased["validation"]["ece"] < plain["validation"]["ece"]
    assert biased["validation"]["nll"] < plain["validation"]["nll"]
    with pytest.raises(ValueError, match="scaling"):
        fit_calibration(logits, labels, scaling="isotonic")
    with pytest.raises(ValueError, match="scaling"):
        Calibration(scaling="isotonic")


def test_the_task_and_its_onnx_graph_apply_the_stored_bias():
    from usvl.export.graph import ClassificationGraph

    task, batch = _task(test_time_flip=True), _batch()
    task.calibration = {**RECORD, "temperature": 0.5, "bias": [0.0, -2.0], "scaling": "temperature_bias"}
    with torch.no_grad():
        logits = torch.stack([task(batch["image"]), task(batch["image"].flip(-1))]).float()
        expected = calibrated_probabilities(logits, 0.5, [0.0, -2.0])
        assert not torch.allclose(expected, calibrated_probabilities(logits, 0.5), atol=1e-3)
        assert torch.allclose(task.predict_step(batch, 0)["probabilities"], expected, atol=1e-6)
        _, graph_probabilities = ClassificationGraph(task)(batch["image"])
    assert torch.allclose(graph_probabilities, expected, atol=1e-5)
