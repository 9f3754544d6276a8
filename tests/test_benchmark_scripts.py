"""The benchmark scripts' measuring code on tiny cases: ``benchmarks/train_throughput.py``, ``benchmarks/predict.py``.

The scripts import their helpers as top-level modules (``record``, ``clocks``, ...) from their own folder, so that
folder is put on ``sys.path`` here, as running a script does (last, so it shadows no installed module).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))

import ece_noise_floor  # noqa: E402
import embedding_collapse  # noqa: E402
import predict as predict_benchmark  # noqa: E402
import train_throughput  # noqa: E402
from train_throughput import Case  # noqa: E402

SUMMARY_KEYS = {"median", "min", "max", "spread", "runs"}


def test_train_throughput_measures_speed_memory_flops_and_mfu_of_a_case_in_its_own_process():
    results = [train_throughput.measure_isolated(Case("tiny-vit", "lora", 64, batch), "cpu", "fp32", repeats=2,
                                                 warmup=1, peak=0.5) for batch in (2, 4)]
    small, large = results
    for result, batch in zip(results, (2, 4), strict=True):
        assert result["case"] == {"encoder": "tiny-vit", "adapter": "lora", "size": 64, "batch": batch,
                                  "channels_last": True}
        for key in ("train_images_per_s", "inference_images_per_s", "step_seconds"):
            assert set(result[key]) == SUMMARY_KEYS and len(result[key]["runs"]) == 2 and result[key]["median"] > 0
        assert result["train_images_per_s"]["runs"] == pytest.approx(
            [batch / seconds for seconds in result["step_seconds"]["runs"]], rel=0.01)
        memory = result["memory"]
        assert memory["peak_reset"] and memory["peak_mib"] >= memory["growth_mib"] > 0
        assert result["achieved_tflops"] == pytest.approx(
            result["flops_per_step"] / 1e12 / result["step_seconds"]["median"], rel=0.01)
        assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 0.5, rel=0.01)
        assert result["trainable_params"] > 0 and result["label"] in train_throughput.table_row(result)
    # a training step's FLOPs grow with the batch (the weights' share is the same for both)
    assert 1.8 < large["flops_per_step"] / small["flops_per_step"] < 2.2


def test_train_throughput_cases_and_known_peaks(monkeypatch):
    cpu = train_throughput.build_cases(["table", "vit", "scaling"], "cpu", False, None, None)
    assert len(cpu) == 10 + 2 + 9
    assert {case.size for case in cpu if case.encoder == "vit-b16"} == {224}
    assert {(case.size, case.batch) for case in cpu if case.encoder == "embedded"} >= {(512, 32), (384, 8)}
    chosen = train_throughput.build_cases(["vit"], "cuda", False, [224], [32, 64])
    assert [(c.adapter, c.batch) for c in chosen] == [("mona-hybrid", 32), ("lora", 32), ("mona-hybrid", 64),
                                                      ("lora", 64)]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert train_throughput.peak_tflops(torch.device("cuda"), "bf16", None)[0] == 989.0
    assert train_throughput.peak_tflops(torch.device("cuda"), "fp32", None)[0] == 67.0
    assert train_throughput.peak_tflops(torch.device("cpu"), "fp32", None) == (None, None)
    assert train_throughput.peak_tflops(torch.device("cpu"), "fp32", 2.0)[0] == 2.0


def write_predictions(path: Path, rows: list[tuple[str, float, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "p_benign", "p_malignant", "prediction", "threshold"])
        for name, malignant, prediction in rows:
            writer.writerow([name, f"{1 - malignant:.6f}", f"{malignant:.6f}", prediction, "0.5"])
    return path


def test_predict_agreement_finds_the_largest_probability_difference_and_changed_predictions(tmp_path):
    reference = write_predictions(tmp_path / "a.csv", [("x", 0.2, "benign"), ("y", 0.7, "malignant")])
    other = write_predictions(tmp_path / "b.csv", [("y", 0.45, "benign"), ("x", 0.2, "benign")])
    check = predict_benchmark.agreement(reference, other)
    assert check["max_abs_probability_difference"] == pytest.approx(0.25)
    assert check["predictions_changed"] == 1 and check["images"] == 2
    assert check["probability_columns"] == ["p_benign", "p_malignant"]
    with pytest.raises(ValueError, match="different images"):
        predict_benchmark.agreement(reference, write_predictions(tmp_path / "c.csv", [("x", 0.2, "benign")]))


def test_predict_compares_the_checkpoint_with_its_onnx_export(thyroid_cls_fit, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime: pip install 'usvl[export]'")
    (tmp_path / "new" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate([(80, 60), (64, 64), (50, 90)]):
        Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(
            tmp_path / "new" / "images" / f"i{index}.png")
    onnx = tmp_path / "model.onnx"
    assert predict_benchmark.export(thyroid_cls_fit.config, thyroid_cls_fit.checkpoint, onnx) > 0 and onnx.is_file()
    result = predict_benchmark.compare(thyroid_cls_fit.config, thyroid_cls_fit.checkpoint, onnx, tmp_path / "new",
                                       repeats=1, work=tmp_path / "runs")
    assert result["images"] == 3
    check = result["agreement"]
    assert check["images"] == 3 and check["predictions_changed"] == 0
    assert check["max_abs_probability_difference"] <= 1e-4 and len(check["probability_columns"]) == 2
    speeds = result["images_per_s"]
    assert set(speeds) == {"pytorch", "onnx"} and all(speed["median"] > 0 for speed in speeds.values())
    assert result["ratio"]["runs"] == [pytest.approx(speeds["onnx"]["median"] / speeds["pytorch"]["median"],
                                                     rel=1e-3)]
    assert all(result["wall_images_per_s"][way]["median"] < speeds[way]["median"] for way in speeds)


def test_ece_noise_floor_shrinks_with_more_images_and_stays_under_a_miscalibrated_ece():
    generator = np.random.default_rng(1)
    small = np.median(ece_noise_floor.simulated_ece(generator.uniform(0.05, 0.95, 200), draws=200))
    large = np.median(ece_noise_floor.simulated_ece(generator.uniform(0.05, 0.95, 5000), draws=50))
    assert large < small / 3  # sampling noise falls like 1 / sqrt(n)
    positive = generator.uniform(0.05, 0.95, 500)
    labels = torch.from_numpy((generator.random(500) < positive ** 2).astype(np.int64))  # probabilities too high
    from usvl.metrics.calibration import expected_calibration_error
    measured = expected_calibration_error(torch.from_numpy(np.stack([1 - positive, positive], 1)), labels)
    assert measured > np.quantile(ece_noise_floor.simulated_ece(positive, draws=200), 0.99)


def test_collapse_statistics_tell_a_collapsed_batch_from_a_spread_one():
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(16, 8, generator=generator)
    collapsed = 40 * torch.ones(16, 8) + 0.01 * torch.randn(16, 8, generator=generator)
    prototypes = torch.stack([torch.ones(8), -torch.ones(8)])
    healthy = embedding_collapse.collapse_statistics(spread, spread[:, :2], prototypes)
    stuck = embedding_collapse.collapse_statistics(collapsed, collapsed[:, :2] * 0, prototypes)
    assert abs(healthy["mean_pair_cosine"]) < 0.2 and stuck["mean_pair_cosine"] > 0.999
    assert stuck["embedding_norm"] == pytest.approx(40 * 8 ** 0.5, rel=1e-3)
    assert stuck["logit_spread"] == 0 and healthy["logit_spread"] > 0.5
    assert healthy["prototype_cosine"] == pytest.approx(-1.0)
    assert np.isnan(embedding_collapse.collapse_statistics(spread, spread[:, :2], None)["prototype_cosine"])


def test_unit_linear_head_logits_do_not_grow_with_the_embedding_norm():
    from usvl.models.encoders.base import ImageFeatures

    head = embedding_collapse.UnitLinearHead([8], embed_dim=8, num_classes=2)
    torch.nn.init.normal_(head.linear.weight)
    embedding = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    prototypes = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    small = head(ImageFeatures(global_embedding=embedding, maps=[]), prototypes)
    large = head(ImageFeatures(global_embedding=100 * embedding, maps=[]), prototypes)
    torch.testing.assert_close(small, large)
