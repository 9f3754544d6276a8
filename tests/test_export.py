"""``usvl export`` (ONNX) and prediction from the exported file.

Runs of three shipped experiments in their smoke configs (Mona classification, Mona segmentation, the tiny ViT with
LoRA and test-time flip), built and saved without training, with perturbed adapter weights so that the adapters (and
the LoRA merge) change the outputs. Each is exported and checked against the PyTorch task with onnxruntime at batch
sizes 1 and 3; ``usvl predict --model usvl.export.OnnxModel`` must write what the PyTorch path writes. The Mona
classification run stores a calibration record, so its temperature is checked in the graph and its threshold in the
predictions.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from PIL import Image
from shipped_configs import CONFIGS, smoke

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install 'usvl[export]'")
pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime: pip install 'usvl[export]'")

import onnx  # noqa: E402

import usvl.export.onnx as export_module  # noqa: E402
from usvl.cli import USVLCLI, main, run_lightning  # noqa: E402
from usvl.export import OnnxModel, ParityError, export_run, export_task, load_task  # noqa: E402
from usvl.export.onnx import (  # noqa: E402
    ExportError,
    check_parity,
    inference_session,
    onnx_input,
    parity_images,
    torch_onnx_export,
    torch_reference,
)
from usvl.text import TextEmbeddingCache  # noqa: E402

torch.set_num_threads(1)  # as the rest of the suite (tests/test_lora_and_full.py sets it at collection)

TOLERANCE = 1e-4
RUNS = {
    "mona_cls": ("thyroid_cls", []),
    "mona_seg": ("breast_seg", []),
    "lora_vit_cls": ("tiny_vit_cls", ["--model.init_args.adapter", str(CONFIGS / "adapters" / "lora.yaml"),
                                      "--model.init_args.test_time_flip", "true"]),
}
"""Run name -> (experiment, extra arguments to its smoke config)."""

CALIBRATED = {"mona_cls": {"temperature": 0.5, "threshold": 0.37, "threshold_method": "youden",
                           "target_sensitivity": None, "validation_images": 8, "validation": {"ece": 0.1}}}
"""Runs whose checkpoint stores a calibration record (as ``usvl fit`` leaves it): its temperature must be in the
graph and its threshold must decide ``usvl predict`` from the file as it decides the PyTorch task's."""

SIZES = {"a.png": (90, 60), "b.jpg": (64, 64), "c.png": (40, 120)}
"""Images to predict: name -> (width, height)."""


def perturb_adapters(task: torch.nn.Module) -> None:
    """Add noise to the adapter weights (Mona starts as identity, LoRA's B at zero), so they change the outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        adapters = [p for n, p in task.named_parameters() if ".adapter." in n or ".lora_" in n]
        for parameter in adapters:
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    assert adapters, "no adapter weights"


def build_run(experiment: str, extra: list[str], root: Path,
              calibration: dict | None = None) -> tuple[Path, Path]:
    """A run folder as ``usvl fit`` leaves it (``config.yaml``, a checkpoint), without the training steps.

    The model of the smoke config is built by the ``usvl`` CLI, gets its class text from the ``TextEmbeddingCache``
    callback, and is saved by the trainer, with perturbed adapters standing in for trained ones.
    """
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  run=False, seed_everything_default=0,
                  args=[*smoke(experiment), *extra, "--trainer.logger.init_args.save_dir", str(root)])
    text = next(callback for callback in cli.trainer.callbacks if isinstance(callback, TextEmbeddingCache))
    text.setup(cli.trainer, cli.model, "fit")
    perturb_adapters(cli.model)
    run = root / experiment / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    cli.trainer.strategy.connect(cli.model)
    if calibration:
        cli.model.calibration = dict(calibration)
    cli.trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False), encoding="utf-8")
    return run / "config.yaml", run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, usvl_cache) -> dict[str, tuple[Path, Path]]:
    """Lazily built runs: name -> (run config, checkpoint)."""

    class Runs(dict):
        def __missing__(self, name):
            experiment, extra = RUNS[name]
            self[name] = build_run(experiment, extra, tmp_path_factory.mktemp(name), CALIBRATED.get(name))
            return self[name]

    return Runs()


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Lazily exported runs: name -> ExportReport (torchscript exporter, opset 17); ``.independent[name]``.

    ``.independent[name]`` holds this test's own max abs differences per output: PyTorch outputs of the loaded task
    on other images than the export's check, taken before the export (which merges LoRA in place), against
    onnxruntime on the written file, at batch sizes 1 and 3.
    """
    folder = tmp_path_factory.mktemp("onnx")

    class Exports(dict):
        independent: dict[str, dict[str, float]] = {}

        def __missing__(self, name):
            config, checkpoint = runs[name]
            task = load_task(config, checkpoint)
            batches = [parity_images(batch_size, (64, 64), seed=100) for batch_size in (1, 3)]
            expected = [torch_reference(task, images) for images in batches]
            report = export_task(task, folder / f"{name}.onnx", 64, checkpoint=checkpoint)
            self.independent[name] = onnx_differences(report.path, batches, expected)
            self[name] = report
            return report

    return Exports()


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("new")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    for name, (width, height) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(root / "images" / name)
    return root


def onnx_differences(path: Path, batches: list[torch.Tensor], expected: list[dict[str, np.ndarray]]
                     ) -> dict[str, float]:
    """Max abs difference per output between onnxruntime on ``path`` and the expected outputs of each batch."""
    session = inference_session(path)
    names = [output.name for output in session.get_outputs()]
    worst: dict[str, float] = {}
    for images, reference in zip(batches, expected, strict=True):
        outputs = dict(zip(names, session.run(None, {"image": onnx_input(images)}), strict=True))
        assert set(reference) == set(outputs)
        for name, value in reference.items():
            assert outputs[name].shape == value.shape and value.shape[0] == len(images)
            worst[name] = max(worst.get(name, 0.0), float(np.abs(outputs[name] - value).max()))
    return worst


@pytest.mark.parametrize("name", list(RUNS))
def test_export_matches_pytorch_at_batch_sizes_1_and_3(name, runs, exported):
    report = exported[name]
    assert report.parity and max(report.parity.values()) <= TOLERANCE
    differences = exported.independent[name]
    expected = {"probability"} if report.task == "segmentation" else {"logits", "probabilities"}
    assert set(differences) == expected
    assert max(differences.values()) <= TOLERANCE, differences


@pytest.mark.parametrize("name", list(RUNS))
def test_export_writes_metadata_a_dynamic_batch_axis_and_opset_17(name, runs, exported):
    _, checkpoint = runs[name]
    report = exported[name]
    model = onnx.load(str(report.path))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)["usvl"]
    assert metadata["usvl_task"] == report.task == ("segmentation" if name == "mona_seg" else "classification")
    assert json.loads(metadata["class_names"]) == stored["class_names"]
    assert json.loads(metadata["image_size"]) == [64, 64]
    assert metadata["encoder_id"] == stored["encoder_id"]
    assert metadata["source_checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert metadata["usvl_version"] and metadata["exporter"] == "torchscript"
    if report.task == "segmentation":
        assert float(metadata["threshold"]) == 0.5
    else:
        assert json.loads(metadata["test_time_flip"]) == (name == "lora_vit_cls")
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert all(output.type.tensor_type.shape.dim[0].dim_param for output in model.graph.output)
    assert report.size_bytes == report.path.stat().st_size and report.seconds > 0


def test_lora_is_merged_into_the_exported_weights(exported):
    report = exported["lora_vit_cls"]
    assert report.merged_lora_layers == 4  # one per block of the tiny ViT (nn.MultiheadAttention)
    model = onnx.load(str(report.path))
    names = [init.name for init in model.graph.initializer] + [node.name for node in model.graph.node]
    assert not [name for name in names if "lora" in name.lower()]


def test_a_wrong_normalisation_fails_the_parity_check_and_removes_the_file(runs, tmp_path, monkeypatch):
    config, checkpoint = runs["lora_vit_cls"]
    build = export_module.build_graph

    def wrong_normalisation(task):
        graph = build(task)
        task.image_std.mul_(2.0)  # e.g. a graph that normalises with other statistics than training did
        return graph

    monkeypatch.setattr(export_module, "build_graph", wrong_normalisation)
    target = tmp_path / "broken.onnx"
    with pytest.raises(ParityError, match="logits"):
        export_run(config, checkpoint, target)
    assert not target.exists()


def test_check_parity_names_the_failing_outputs():
    check_parity({"logits": 5e-5, "probabilities": 1e-7}, 1e-4)
    with pytest.raises(ParityError, match=r"probability 0\.002"):
        check_parity({"probability": 2e-3}, 1e-4)
    with pytest.raises(ParityError, match="nan"):
        check_parity({"logits": float("nan")}, 1e-4)


def test_an_operator_without_onnx_conversion_gives_a_clear_error(tmp_path):
    class Spectrum(torch.nn.Module):
        output_names = ("probability",)

        def forward(self, image):
            return torch.fft.rfft2(image).abs()

    with pytest.raises(ExportError, match=r"rfft2.*Try --exporter dynamo"):
        torch_onnx_export(Spectrum(), torch.zeros(1, 3, 8, 8), tmp_path / "fft.onnx", 17, "torchscript")
    with pytest.raises(ValueError, match="opset"):
        torch_onnx_export(Spectrum(), torch.zeros(1, 3, 8, 8), tmp_path / "fft.onnx", 13, "torchscript")


@pytest.mark.slow
def test_dynamo_exporter_matches_pytorch(runs, tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    config, checkpoint = runs["lora_vit_cls"]
    report = export_run(config, checkpoint, tmp_path / "dynamo.onnx", exporter="dynamo")  # opset 18
    assert set(report.parity) == {"logits", "probabilities"} and max(report.parity.values()) <= TOLERANCE
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    assert report.metadata["opset"] == "18" and report.metadata["exporter"] == "dynamo"


def read_csv(folder: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with (folder / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = {row["name"]: row for row in reader}
        return list(reader.fieldnames or []), rows


def predict(config: Path, folder: Path, out: Path, *model: str) -> Path:
    run_lightning(["predict", "--config", str(config), *model, "--data", "usvl.data.FolderDataModule",
                   "--data.root", str(folder), "--trainer.logger.init_args.save_dir", str(out)])
    (predictions,) = sorted(p for p in out.rglob("predictions*") if p.is_dir())
    return predictions


@pytest.mark.parametrize("name", ["mona_cls", "mona_seg"])
def test_onnx_model_predicts_what_the_pytorch_task_predicts(name, runs, exported, new_images, tmp_path):
    config, checkpoint = runs[name]
    torch_folder = predict(config, new_images, tmp_path / "torch", "--ckpt_path", str(checkpoint))
    onnx_folder = predict(config, new_images, tmp_path / "onnx", "--model", "usvl.export.OnnxModel",
                          "--model.init_args.path", str(exported[name].path))
    torch_header, torch_rows = read_csv(torch_folder)
    onnx_header, onnx_rows = read_csv(onnx_folder)
    assert onnx_header == torch_header and sorted(onnx_rows) == sorted(torch_rows) == sorted(SIZES)
    numeric = [column for column in torch_header if column.startswith("p_")]
    for image, expected in torch_rows.items():
        row = onnx_rows[image]
        for column in numeric:
            assert float(row[column]) == pytest.approx(float(expected[column]), abs=TOLERANCE), (image, column)
        exact = [c for c in torch_header if c not in numeric and c not in ("lesion_area_px", "mask", "overlay")]
        assert {c: row[c] for c in exact} == {c: expected[c] for c in exact}
        if "mask" in torch_header:
            torch_mask = np.asarray(Image.open(torch_folder / expected["mask"])) > 0
            onnx_mask = np.asarray(Image.open(onnx_folder / row["mask"])) > 0
            assert torch_mask.shape == onnx_mask.shape == SIZES[image][::-1]
            assert (torch_mask != onnx_mask).mean() <= 0.001  # at most a pixel flips at the threshold


def test_onnx_model_checks_its_input(exported, tmp_path):
    path = exported["mona_cls"].path
    model = OnnxModel(str(path), num_classes=3, class_names=["a", "b", "c"])
    assert model.class_names == ["benign", "malignant"] and model.num_classes == 2 and not model.uses_text
    with pytest.raises(ValueError, match="image_size 64"):
        model.run(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    output = model.predict_step({"image": torch.zeros(2, 1, 64, 64, dtype=torch.uint8), "name": ["x", "y"]}, 0)
    assert output["probabilities"].shape == (2, 2) and output["prediction"].tolist() in ([0, 0], [1, 1])
    record = CALIBRATED["mona_cls"]  # the stored calibration travels with the file
    assert model.calibration == record and model.decision_threshold == output["threshold"] == record["threshold"]
    assert output["prediction"].tolist() == (output["probabilities"][:, 1] >= record["threshold"]).long().tolist()
    assert float(exported["mona_cls"].metadata["temperature"]) == record["temperature"]

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Identity(), (torch.zeros(1, 3, 4, 4),), str(plain), dynamo=False,
                      input_names=["image"])
    with pytest.raises(ValueError, match="no usvl metadata"):
        OnnxModel(str(plain))
    with pytest.raises(FileNotFoundError, match="usvl export"):
        OnnxModel(str(tmp_path / "missing.onnx"))


def test_usvl_export_command(runs, tmp_path, capsys):
    config, checkpoint = runs["lora_vit_cls"]
    target = checkpoint.with_suffix(".onnx")  # the default output
    assert main(["export", "--config", str(config), "--ckpt_path", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference logits" in printed and "usvl.export.OnnxModel" in printed and target.is_file()

    assert main(["export", "--config", str(config), "--ckpt_path", str(tmp_path / "none.ckpt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", "--config", str(config), "--ckpt_path", str(checkpoint), "--image_size", "1", "2",
                 "3"]) == 2


def test_load_task_refuses_a_checkpoint_of_another_model(runs):
    cls_config, cls_checkpoint = runs["mona_cls"]
    _, vit_checkpoint = runs["lora_vit_cls"]
    with pytest.raises(ValueError, match="encoder"):
        load_task(cls_config, vit_checkpoint)
    seg_config, _ = runs["mona_seg"]
    with pytest.raises(KeyError, match="lacks"):
        load_task(seg_config, cls_checkpoint)


@pytest.mark.slow
def test_mona_hybrid_exports_through_the_auto_exporter_and_matches_pytorch(tmp_path, usvl_cache):
    """Mona hybrid computes FFTs (no TorchScript conversion of rfft2): ``auto`` picks dynamo, opset 18."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    hybrid = ["--model.init_args.adapter", str(CONFIGS / "adapters" / "mona_hybrid_effnet.yaml")]
    config, checkpoint = build_run("thyroid_cls", hybrid, tmp_path)
    report = export_run(config, checkpoint, tmp_path / "hybrid.onnx")
    assert report.metadata["exporter"] == "dynamo" and report.metadata["opset"] == "18"
    assert set(report.parity) == {"logits", "probabilities"} and max(report.parity.values()) <= TOLERANCE
