"""The fully trained baselines (configs/baselines): what they are, and a fit-test-predict smoke run of each."""

import json

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from shipped_configs import BASELINES, CONFIGS, smoke

from usvl.cli import USVLCLI, run_lightning
from usvl.models.adapters import NoAdapter
from usvl.models.baselines import LinearClassifierHead, TrainableEfficientNetLite0, UNetDecoderHead
from usvl.models.encoders.embedded import build_efficientnet_lite0

EXPERIMENT = {"unet_effnet": "breast_seg", "effnet_classifier": "thyroid_cls"}
"""The full config each baseline section is combined with (it brings data, trainer and text)."""


def baseline_args(section: str) -> list[str]:
    """``--config <experiment> --model <section>`` of a baseline."""
    return ["--config", str(CONFIGS / f"{EXPERIMENT[section]}.yaml"), "--model",
            str(CONFIGS / "baselines" / f"{section}.yaml")]


def test_every_baseline_has_an_experiment():
    assert {path.stem for path in BASELINES} == set(EXPERIMENT)


@pytest.mark.parametrize("section", BASELINES, ids=lambda p: p.stem)
def test_baseline_section_instantiates_fully_trainable_from_the_packaged_weights(section):
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=[*baseline_args(section.stem), "--data.init_args.image_size", "64", "--trainer.logger", "false"])
    task = cli.model
    assert isinstance(task.encoder, TrainableEfficientNetLite0) and isinstance(task.adapter, NoAdapter)
    assert not task.uses_text
    counts = task.parameter_counts()
    assert counts["trainable_params"] == counts["total_params"]
    packaged = build_efficientnet_lite0(pretrained=True).state_dict()
    tower = task.encoder.image_tower.state_dict()
    assert tower and all(torch.equal(value, packaged[key]) for key, value in tower.items())
    task.eval()
    with torch.no_grad():
        output = task(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8))
    expected = (2, 1, 64, 64) if section.stem == "unet_effnet" else (2, cli.datamodule.num_classes)
    assert output.shape == expected


def test_unet_baseline_is_the_smp_unet(monkeypatch):
    import segmentation_models_pytorch as smp

    monkeypatch.setenv("USVL_FOLD_BATCH_NORMS", "0")  # the same arithmetic as smp's, to float precision

    encoder = TrainableEfficientNetLite0(head_conv=False, pretrained=False)
    head = UNetDecoderHead(encoder.feature_dims, encoder.embed_dim, 1)
    unet = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=1)
    ours = {**encoder.image_tower.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}
    assert sum(p.numel() for p in [*encoder.parameters(), *head.parameters()]) == sum(
        p.numel() for p in unet.parameters())
    unet.encoder.model.load_state_dict({k: v for k, v in ours.items() if not k.startswith("head.")})
    unet.decoder.load_state_dict(head.decoder.state_dict())
    unet.segmentation_head.load_state_dict(head.segmentation_head.state_dict())
    encoder.eval(), head.eval(), unet.eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = unet(images)
        actual = head(encoder.encode_image(images), None, images.shape[-2:])
    torch.testing.assert_close(actual, expected)


def test_classifier_baseline_is_the_timm_classifier():
    import timm

    encoder = TrainableEfficientNetLite0(pretrained=False)
    head = LinearClassifierHead(encoder.feature_dims, encoder.embed_dim, 3, dropout=0.2)
    classifier = timm.create_model("tf_efficientnet_lite0", num_classes=3, drop_rate=0.2)
    classifier.load_state_dict({**encoder.image_tower.state_dict(), **head.classifier.state_dict(
        prefix="classifier.")})
    encoder.eval(), head.eval(), classifier.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(head(encoder.encode_image(images)), classifier(images))


def test_unet_head_needs_one_map_per_decoder_block():
    with pytest.raises(ValueError, match="one decoder channel count per map"):
        UNetDecoderHead([24, 40, 112, 320], 320, 1)


def test_baseline_encoder_has_no_text_tower():
    with pytest.raises(RuntimeError, match="no text tower"):
        TrainableEfficientNetLite0(pretrained=False).encode_text_raw(["a lesion"])


def test_text_cache_encodes_nothing_for_a_head_without_text(tmp_path):
    from types import SimpleNamespace

    from usvl.text import TextEmbeddingCache

    module = SimpleNamespace(uses_text=False, class_names=["benign", "malignant"],
                             encoder=TrainableEfficientNetLite0(pretrained=False))
    callback = TextEmbeddingCache(str(CONFIGS / "text" / "thyroid_tirads.yaml"), cache_dir=str(tmp_path))
    callback.setup(None, module, "fit")
    assert callback.last_path is None and not any(tmp_path.iterdir())


class TrainingLosses(Callback):
    """Records the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Keep the step's loss."""
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module", params=sorted(EXPERIMENT))
def baseline_run(request, tmp_path_factory, usvl_cache):
    section = request.param
    root = tmp_path_factory.mktemp(section)
    args = [*baseline_args(section), *smoke(EXPERIMENT[section])[2:], "--trainer.logger.init_args.save_dir",
            str(root), "--trainer.max_epochs", "6"]
    recorder = TrainingLosses()
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  args=["fit", *args], trainer_defaults={"callbacks": [recorder]})
    return section, args, root / EXPERIMENT[section] / "version_0", cli.model, recorder.losses


def test_baseline_training_loss_falls(baseline_run):
    """Six epochs of three steps on the tiny data: the last epoch's mean training loss is below the first's."""
    _, _, _, _, losses = baseline_run
    assert len(losses) == 18
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_baseline_checkpoint_holds_every_weight(baseline_run):
    _, _, run, model, _ = baseline_run
    checkpoint = torch.load(next((run / "checkpoints").glob("*.ckpt")), map_location="cpu", weights_only=False)
    assert set(checkpoint["state_dict"]) == set(model.state_dict())
    assert "text_embeddings" not in checkpoint["usvl"]
    assert checkpoint["usvl"]["encoder_id"].startswith("baseline/efficientnet-lite0@")


def test_baseline_checkpoint_reloads_to_the_same_test_metrics_and_predicts(baseline_run, tmp_path):
    section, args, run, _, _ = baseline_run
    checkpoint = str(next((run / "checkpoints").glob("*.ckpt")))
    common = [*args, "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", checkpoint]
    run_lightning(["test", *common])
    standalone = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())["metrics"]
    after_fit = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert set(standalone) == set(after_fit)
    for key, value in after_fit.items():
        assert standalone[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
    run_lightning(["predict", *common])
    if section == "unet_effnet":
        assert len(list(tmp_path.rglob("predictions/*.png"))) == 8
    else:
        assert len(next(tmp_path.rglob("predictions.csv")).read_text().splitlines()) == 1 + 8
