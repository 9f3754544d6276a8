"""LexiconTask: descriptor heads train on tiny data with masked missing descriptors; metrics; descriptor data modules.

The end-to-end check (smoke fit of configs/thyroid_lexicon.yaml, test metrics, ``usvl predict`` read-out) is
``test_thyroid_lexicon_fit_test_and_predict_read_out`` at the end.
"""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from usvl.lexicon import BIRADS, TIRADS
from usvl.lexicon.base import plural
from usvl.metrics.lexicon import LexiconMetrics, cohen_kappa
from usvl.models.encoders import TinyViTCLIP
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import LexiconTask
from usvl.tasks.gradient_check import parameters_without_gradient
from usvl.tasks.lexicon import MissingDescriptorsError


def _task(lexicon: str = "tirads", **kwargs) -> LexiconTask:
    torch.manual_seed(0)
    names = ["benign", "malignant"] if lexicon == "tirads" else ["benign", "malignant", "normal"]
    task = LexiconTask(TinyViTCLIP(), PromptSimilarityHead, num_classes=len(names), class_names=names,
                       lexicon=lexicon, channels_last=False, **kwargs)
    text = torch.randn(len(names), 3, task.encoder.text_dim, generator=torch.Generator().manual_seed(0))
    task.set_text_embeddings(text)
    return task


def _batch(count: int = 8, seed: int = 1, missing: float = 0.25) -> dict:
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    descriptors = {name: [rng.choice(values) if rng.random() > missing else "" for _ in range(count)]
                   for name, values in TIRADS.single.items()}
    descriptors["echogenic_foci"] = [rng.choice(["none", "punctate", "rim;macrocalcification"]) for _ in range(count)]
    return {"image": torch.randint(0, 256, (count, 3, 64, 64), dtype=torch.uint8, generator=generator),
            "label": torch.tensor([0, 1] * (count // 2)), "name": [f"img{i}.png" for i in range(count)],
            "descriptors": descriptors}


def test_descriptor_heads_train_on_tiny_data():
    task, batch = _task(), _batch()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    targets = task.descriptor_targets(batch)
    lexicon_losses = []
    for _ in range(12):
        output = task.compute_step(batch, "train")
        with torch.no_grad():
            features = task.image_features(batch["image"])
            losses = task.descriptor_losses(task.describe(features), targets, probabilities=False)
            lexicon_losses.append(float(sum(task.descriptor_weights[k] * v for k, v in losses.items())))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert lexicon_losses[-1] < 0.7 * lexicon_losses[0]
    assert task.descriptor_head.heads["composition"].weight.grad is not None


def test_missing_descriptors_are_masked_out_of_their_loss_not_dropped():
    task, batch = _task(), _batch(missing=0.0)
    batch["descriptors"]["composition"][0] = ""  # image 0 has no composition
    targets = task.descriptor_targets(batch)
    assert targets["composition"][0] == -1 and targets["margin"][0] >= 0
    logits = {name: torch.randn(8, size, generator=torch.Generator().manual_seed(3))
              for name, size in TIRADS.head_sizes().items()}
    changed = {name: value.clone() for name, value in logits.items()}
    changed["composition"][0] = torch.tensor([9.0, -9.0, 9.0, -9.0])  # any logits for the masked image
    before = task.descriptor_losses(logits, targets, probabilities=False)
    after = task.descriptor_losses(changed, targets, probabilities=False)
    assert after["composition"] == pytest.approx(float(before["composition"]))
    expected = torch.nn.functional.cross_entropy(logits["composition"][1:], targets["composition"][1:])
    assert float(before["composition"]) == pytest.approx(float(expected))
    changed["margin"][0, 0] += 5.0  # image 0 still counts for its other descriptors
    assert float(task.descriptor_losses(changed, targets, probabilities=False)["margin"]) != \
        pytest.approx(float(before["margin"]))
    nobody = {**targets, "shape": torch.full((8,), -1)}
    loss = task.descriptor_losses(logits, nobody, probabilities=False)["shape"]
    assert float(loss) == 0.0
    output = task.compute_step(batch, "train")
    assert len(output.target) == 8  # the classifier keeps every image
    with pytest.raises(MissingDescriptorsError, match="SyntheticDescriptorDataModule"):
        task.compute_step({k: v for k, v in batch.items() if k != "descriptors"}, "train")


def test_gradient_check_reaches_the_descriptor_heads():
    task = _task().train()
    task.check_gradients(64)  # raises when a head gets no gradient
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    unused = parameters_without_gradient(task, lambda: task(images))  # forward alone: the class logits only
    assert unused and all(name.startswith("descriptor_head.") for name in unused)


def test_evaluation_steps_update_the_lexicon_metrics_with_flip_averaging():
    task, batch = _task(test_time_flip=True).eval(), _batch()
    with torch.no_grad():
        output = task.compute_step(batch, "val")
        values = task.val_lexicon_metrics.compute()
    assert output.predictions.shape == (8,)
    expected = {f"{name}_{kind}" for name in TIRADS.descriptors for kind in ("accuracy", "kappa")}
    expected |= {"category_accuracy", "category_kappa_quadratic", "category_kappa_linear", "points_mae",
                 "score_auroc", "classifier_auroc"}
    assert set(values) == expected
    assert 0.0 <= float(values["score_auroc"]) <= 1.0 and 0.0 <= float(values["composition_accuracy"]) <= 1.0


def test_lexicon_metrics_on_known_predictions():
    lexicon = TIRADS
    truth = {"composition": torch.tensor([3, 3, 2, 0, -1]), "echogenicity": torch.tensor([3, 4, 2, 0, 1]),
             "shape": torch.tensor([1, 0, 0, 0, 0]), "margin": torch.tensor([2, 0, 0, 0, 0]),
             "echogenic_foci": torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [-1] * 4],
                                            dtype=torch.float32)}
    probabilities = {}
    for name, size in lexicon.head_sizes().items():
        target = truth[name]
        if target.ndim == 1:
            probabilities[name] = torch.nn.functional.one_hot(target.clamp_min(0), size).float()
        else:
            probabilities[name] = target.clamp_min(0)
    labels = torch.tensor([1, 1, 0, 0, 0])
    metrics = LexiconMetrics(lexicon, positive_class=1)
    metrics.update(probabilities, truth, torch.tensor([0.9, 0.2, 0.3, 0.1, 0.4]), labels)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["composition_accuracy"] == 1.0 and values["composition_kappa"] == pytest.approx(1.0)
    assert values["echogenic_foci_accuracy"] == 1.0
    assert values["category_accuracy"] == 1.0 and values["category_kappa_quadratic"] == pytest.approx(1.0)
    assert values["points_mae"] == pytest.approx(0.0, abs=1e-6)
    assert values["score_auroc"] == 1.0 and values["classifier_auroc"] == pytest.approx(4 / 6)
    assert math.isnan(cohen_kappa(torch.tensor([1, 1]), torch.tensor([1, 1]), 3))


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn(weights):
    generator = torch.Generator().manual_seed(4)
    truth = torch.randint(0, 5, (200,), generator=generator)
    predicted = (truth + torch.randint(-1, 2, (200,), generator=generator)).clamp(0, 4)
    assert cohen_kappa(predicted, truth, 5, weights) == pytest.approx(
        cohen_kappa_score(truth.numpy(), predicted.numpy(), weights=weights, labels=list(range(5))), abs=1e-9)


def test_breast_readout_of_an_image_called_normal_reports_no_mass():
    task = _task("birads").eval()
    task.calibration = {"temperature": 1.0, "bias": [0.0, 0.0, 50.0], "threshold": None}  # every image: normal
    with torch.no_grad():
        predicted = task.predict_step(_batch(), 0)
    assert predicted["readout"][0]["sentence"] == "No focal mass: BI-RADS 1-like."
    assert set(predicted["descriptors"]) == set(BIRADS.descriptors)


def test_synthetic_descriptor_data_module_carries_the_generators_descriptors(tiny_thyroid, tmp_path):
    from usvl.data.descriptors import SyntheticDescriptorDataModule, read_metadata_descriptors

    metadata = read_metadata_descriptors(tiny_thyroid)
    first = sorted(metadata)[0]
    override = tmp_path / "descriptors.csv"
    override.write_text(f"name,composition,label\n{first},,1\n", encoding="utf-8")
    module = SyntheticDescriptorDataModule(preset="thyroid", profile="tiny", image_size=64, batch_size=4,
                                           descriptor_file=str(override), decode_cache=False)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert set(batch["descriptors"]) == set(TIRADS.descriptors)
    for i, name in enumerate(batch["name"]):
        for key in TIRADS.descriptors:
            assert batch["descriptors"][key][i] == metadata[name][key]
    assert module.descriptors_by_name[first]["composition"] == ""  # the file's empty cell: no composition
    assert module.descriptors_by_name[first]["margin"] == metadata[first]["margin"]
    assert "tirads_points" not in module.descriptors_by_name[first]


def test_thyroid_lexicon_fit_test_and_predict_read_out(tmp_path, usvl_cache):
    from smoke_runs import smoke_fit

    from usvl.cli import run_lightning

    fit = smoke_fit("thyroid_lexicon", tmp_path / "runs")
    metrics = json.loads((fit.run / "test_metrics.json").read_text())["metrics"]
    for key in ("test/auroc", "test/score_auroc", "test/classifier_auroc", "test/category_kappa_quadratic",
                "test/composition_accuracy", "test/echogenic_foci_kappa", "test/loss_lexicon"):
        assert key in metrics
    assert torch.load(fit.checkpoint, map_location="cpu", weights_only=False)["usvl"]["lexicon"] == "tirads"
    run_lightning(["predict", "--config", str(fit.config), "--ckpt_path", str(fit.checkpoint),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "predict")])
    folder = next((tmp_path / "predict").rglob("predictions.csv")).parent
    rows = list(csv.DictReader((folder / "predictions.csv").open(encoding="utf-8")))
    assert rows and list(rows[0])[:5] == ["name", "p_benign", "p_malignant", "prediction", "threshold"]
    for row in rows:
        record = json.loads((folder / row["json"]).read_text(encoding="utf-8"))
        assert record["sentence"] == row["sentence"]
        assert row["sentence"].endswith(f": {row['category']}, {plural(int(row['points']), 'points')}")
        assert record["category"] == TIRADS.category(int(row["points"]))
        decided = {name: record["descriptors"][name]["value"] for name in TIRADS.single}
        decided["echogenic_foci"] = [v for v in record["descriptors"]["echogenic_foci"]["values"] if v != "none"]
        assert TIRADS.points(decided) == int(row["points"]) and row["composition"] == decided["composition"]
        assert sum(record["descriptors"]["margin"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert record["prediction"] == row["prediction"]
        overlay = Image.open(folder / "overlays" / f"{row['name'].rsplit('.', 1)[0]}.png")
        assert overlay.height > 256  # the image (256 px) with the read-out panel below it

    # A folder as a clinic sends it: PNG, JPEG, a DICOM frame and a 3-frame DICOM cine loop; one row per image or
    # frame, each with its descriptors, points and sentence.
    import numpy as np
    from dicom_files import write_us_dicom

    mixed = tmp_path / "mixed"
    (mixed / "images").mkdir(parents=True)
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)).save(mixed / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(mixed / "images" / "b.jpg")
    write_us_dicom(mixed / "images" / "c.dcm", rng.integers(0, 256, (80, 96), dtype=np.uint8))
    write_us_dicom(mixed / "images" / "d.dcm", rng.integers(0, 256, (3, 80, 96), dtype=np.uint8))
    size = yaml.safe_load(fit.config.read_text())["data"]["init_args"]["image_size"]
    run_lightning(["predict", "--config", str(fit.config), "--ckpt_path", str(fit.checkpoint),
                   "--data", "usvl.data.FolderDataModule", "--data.root", str(mixed), "--data.image_size", str(size),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "mixed_predict")])
    folder = next((tmp_path / "mixed_predict").rglob("predictions.csv")).parent
    rows = list(csv.DictReader((folder / "predictions.csv").open(encoding="utf-8")))
    assert [row["name"] for row in rows] == ["a.png", "b.jpg", "c.dcm", "d.dcm#frame001", "d.dcm#frame002",
                                             "d.dcm#frame003"]
    for row in rows:
        record = json.loads((folder / row["json"]).read_text(encoding="utf-8"))
        assert row["sentence"] and record["sentence"] == row["sentence"] and record["name"] == row["name"]
        assert record["category"] == TIRADS.category(int(row["points"]))
    assert len({row["json"] for row in rows}) == len(rows) == len(list((folder / "overlays").glob("*.png")))
