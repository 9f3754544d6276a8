import json
import subprocess
import sys

import pytest
import torch
import yaml
from shipped_configs import DATASETS, EXPERIMENTS, REPO, smoke

from usvl.cli import main, run_lightning
from usvl.models.encoders.weights import EFFICIENTNET_LITE0, MINILM_L6_V2

# Full configs: the experiments and the dataset configs; fragments and model sections are composed with them here
# and in test_paper_configs.py.
SHIPPED_CONFIGS = EXPERIMENTS + DATASETS
SMOKE = smoke("thyroid_cls")


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_prints_its_full_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_lightning(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("usvl.tasks.")
    assert printed["data"]["class_path"].startswith("usvl.data.")
    assert printed["trainer"]["callbacks"]


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_instantiates(config):
    from lightning.pytorch import LightningDataModule, LightningModule

    from usvl.cli import USVLCLI

    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  run=False, args=["--config", str(config), "--trainer.logger", "false"])
    assert cli.model.num_classes == cli.datamodule.num_classes
    assert cli.model.class_names == cli.datamodule.class_names


@pytest.fixture(scope="module")
def smoke_run(thyroid_cls_fit):
    """The session's thyroid smoke fit (version_0), then a second run of the same command (version_1)."""
    run_lightning(["fit", *thyroid_cls_fit.args])
    return thyroid_cls_fit.save_dir / "thyroid_cls", thyroid_cls_fit.model


def test_fit_keeps_frozen_batchnorm_statistics(smoke_run):
    from usvl.models.encoders import LiTEffNetMiniLM

    _, model = smoke_run
    reference = LiTEffNetMiniLM().image_tower
    trained_buffers = dict(model.encoder.image_tower.named_buffers())
    for name, buffer in reference.named_buffers():
        adapted_name = name if name in trained_buffers else _wrapped_name(name)
        assert torch.equal(trained_buffers[adapted_name], buffer), name


def _wrapped_name(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2] + ["base"] + parts[2:])


def test_fit_writes_config_checkpoint_and_test_metrics(smoke_run):
    run = smoke_run[0] / "version_0"
    assert (run / "config.yaml").is_file()
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"test/auroc", "test/accuracy", "test/f1", "test/sensitivity",
                                       "test/specificity"}
    assert 0.0 <= metrics["metrics"]["test/auroc"] <= 1.0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["total_params"] > 22_713_216  # the frozen MiniLM text tower counts, although loaded lazily
    assert metrics["checkpoint"].endswith(".ckpt") and metrics["peak_memory_mb"] > 0


def test_second_run_does_not_overwrite_the_first(smoke_run):
    assert (smoke_run[0] / "version_0" / "test_metrics.json").is_file()
    assert (smoke_run[0] / "version_1" / "test_metrics.json").is_file()


def test_checkpoint_holds_trainable_weights_only(smoke_run):
    checkpoint_path = next((smoke_run[0] / "version_0" / "checkpoints").glob("*.ckpt"))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    assert not any(key.startswith("encoder.image_tower.conv_stem") for key in checkpoint["state_dict"])
    assert any(".adapter." in key for key in checkpoint["state_dict"])
    assert checkpoint["usvl"]["text_embeddings"].shape[0] == 2
    full_weights = EFFICIENTNET_LITE0.resolve().stat().st_size + MINILM_L6_V2.resolve().stat().st_size
    assert checkpoint_path.stat().st_size < 0.10 * full_weights


def test_test_and_predict_from_checkpoint(smoke_run, tmp_path):
    checkpoint_path = str(next((smoke_run[0] / "version_0" / "checkpoints").glob("*.ckpt")))
    common = [*SMOKE, "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path",
              checkpoint_path]
    run_lightning(["test", *common])
    written = list(tmp_path.rglob("test_metrics.json"))
    standalone = json.loads(written[0].read_text())["metrics"]
    after_fit = json.loads((smoke_run[0] / "version_0" / "test_metrics.json").read_text())["metrics"]
    assert standalone["test/loss"] == pytest.approx(after_fit["test/loss"], abs=1e-5)
    assert standalone["test/auroc"] == pytest.approx(after_fit["test/auroc"], abs=1e-6)
    for calibrated in ("test/ece", "test/brier", "test/sensitivity_at_threshold"):  # the stored calibration reloads
        assert standalone[calibrated] == pytest.approx(after_fit[calibrated], abs=1e-6)
    run_lightning(["predict", *common])
    predictions = list(tmp_path.rglob("predictions.csv"))
    assert predictions
    rows = predictions[0].read_text().splitlines()
    assert rows[0] == "name,p_benign,p_malignant,prediction,threshold"
    assert len(rows) == 1 + 8


def test_data_generate_command(tmp_path, capsys):
    assert main(["data", "generate", "--preset", "thyroid", "--profile", "tiny", "--root", str(tmp_path / "d"),
                 "--workers", "1", "--size", "64"]) == 0
    assert (tmp_path / "d" / "generator.json").is_file()
    assert json.loads((tmp_path / "d" / "generator.json").read_text())["size"] == 64
    assert str(tmp_path / "d") in capsys.readouterr().out


@pytest.mark.parametrize("module", ["usvl.cli", "usvl.data.synthetic.writer"])
def test_light_modules_import_no_torch_or_lightning(module):
    # The `usvl` console script imports usvl.cli, and so does every process multiprocessing spawns from it (the
    # synthetic-data workers, which then import the writer): with torch and Lightning there, each worker spent ~10 s
    # importing before its first image.
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
