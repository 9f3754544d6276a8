"""Zero-shot classification: `usvl test` on the class descriptions (from a stage-1 checkpoint: test_contrastive.py)."""

import json

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from shipped_configs import CONFIGS, REPO, ZEROSHOT

from usvl.cli import USVLCLI, run_lightning
from usvl.models.encoders import TinyViTCLIP
from usvl.tasks import ZeroShotClassificationTask

TINY_DATA = ["--config", str(CONFIGS / "data" / "tiny.yaml")]


@pytest.mark.parametrize("config", ZEROSHOT, ids=lambda p: str(p.relative_to(REPO)))
def test_every_zeroshot_config_instantiates(config):
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", str(config), "--trainer.logger", "false"])
    assert isinstance(cli.model, ZeroShotClassificationTask)
    assert cli.model.class_names == cli.datamodule.class_names
    assert cli.model.init_from is None


def test_logits_are_scaled_cosine_similarities_with_the_class_prototypes():
    torch.manual_seed(0)
    task = ZeroShotClassificationTask(TinyViTCLIP(depth=2, feature_taps=(1,)), num_classes=2, channels_last=False,
                                      temperature=0.5)
    task.set_text_embeddings(torch.randn(2, 3, task.encoder.text_dim))
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    logits = task(images)
    image = task.encoder.encode_image(task.prepare_images(images)).global_embedding
    expected = 2.0 * torch.nn.functional.normalize(image, dim=-1) @ task.class_text().t()
    assert torch.allclose(logits, expected, atol=1e-5)
    assert logits.abs().max() <= 2.0 + 1e-5
    with pytest.raises(ValueError, match="temperature must be positive"):
        ZeroShotClassificationTask(task.encoder, num_classes=2, temperature=0.0)


def _zeroshot_test(tmp_path, organ, *extra):
    run_lightning(["test", "--config", str(CONFIGS / "zeroshot" / f"{organ}.yaml"), *TINY_DATA,
                   "--trainer.logger.init_args.save_dir", str(tmp_path), *extra])
    written = list(tmp_path.rglob("test_metrics.json"))
    assert len(written) == 1
    return json.loads(written[0].read_text())


@pytest.mark.parametrize(("organ", "classes"), [("thyroid", ["benign", "malignant"]),
                                                ("breast", ["benign", "malignant", "normal"])])
def test_zeroshot_test_writes_test_metrics_without_training(tmp_path, organ, classes):
    report = _zeroshot_test(tmp_path, organ)
    assert set(report["metrics"]) >= {"test/auroc", "test/accuracy", "test/f1", "test/sensitivity",
                                      "test/specificity", "test/loss"}
    assert 0.0 <= report["metrics"]["test/auroc"] <= 1.0
    assert report["checkpoint"] is None and report["class_names"] == classes


def test_zeroshot_refuses_to_fit(tmp_path):
    with pytest.raises(RuntimeError, match="trains nothing"):
        run_lightning(["fit", "--config", str(CONFIGS / "zeroshot" / "thyroid.yaml"), *TINY_DATA,
                       "--config", str(CONFIGS / "trainer" / "smoke.yaml"),
                       "--trainer.logger.init_args.save_dir", str(tmp_path)])
