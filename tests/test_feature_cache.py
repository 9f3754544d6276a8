"""Frozen-feature cache: same metrics with and without it, the tower runs once per image, keys, corruption, safety."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from shipped_configs import CONFIGS

from usvl.cli import USVLCLI
from usvl.data import BatchAugment, SyntheticDataModule
from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import LiTEffNetMiniLM, TinyViTCLIP
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask, ZeroShotClassificationTask
from usvl.tasks import feature_cache as feature_cache_module
from usvl.tasks.feature_cache import FeatureCacheRefusedError, check_switch, open_frozen_features


class MapReadingHead(PromptSimilarityHead):
    """A classification head that does not declare ``uses_maps = False`` (as a head reading the maps would)."""

    uses_maps = True


@pytest.fixture
def feature_root(tmp_path, monkeypatch):
    """A cache folder of the test's own, so no other test's tables are found."""
    root = tmp_path / "features"
    monkeypatch.setattr(feature_cache_module, "default_root", lambda: root)
    return root


def _task(switch="auto", adapter=None, encoder=None, head=PromptSimilarityHead, flip=False) -> ClassificationTask:
    task = ClassificationTask(encoder or TinyViTCLIP(depth=2, feature_taps=(1,)), head, 2, adapter=adapter,
                              channels_last=False, feature_cache=switch, test_time_flip=flip)
    task.set_text_embeddings(torch.randn(2, 2, task.encoder.text_dim, generator=torch.Generator().manual_seed(1)))
    return task


def _data(augment=None, stages=("fit", "test")) -> SyntheticDataModule:
    datamodule = SyntheticDataModule(preset="thyroid", profile="tiny", image_size=64, batch_size=8, augment=augment)
    for stage in stages:
        datamodule.setup(stage)
    return datamodule


def _count_tower_images(task) -> list[int]:
    """Record the batch size of every run of the image tower."""
    counts: list[int] = []
    original = task.encoder.tower_features

    def counted(images):
        counts.append(images.shape[0])
        return original(images)

    task.encoder.tower_features = counted
    return counts


def _fit_and_test(switch, tmp_path, flip=False):
    seed_everything(0)
    task = _task(switch, flip=flip)
    counts = _count_tower_images(task)
    datamodule = _data(stages=())
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path)
    trainer.fit(task, datamodule=datamodule)
    validation = {name: float(value) for name, value in trainer.callback_metrics.items()}
    test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    return validation, test, sum(counts)


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "test_time_flip"])
def test_the_cache_gives_the_metrics_of_the_encoder_and_runs_the_tower_once_per_image(tmp_path, feature_root, flip):
    """Same seed, same metrics (float tolerance: cached features were encoded in other batches than a later epoch's
    step would encode them in, and kernels may sum in another order for another batch; in practice they are equal).
    """
    validation, test, tower_images = _fit_and_test(False, tmp_path / "off", flip)
    cached_validation, cached_test, cached_tower_images = _fit_and_test(True, tmp_path / "on", flip)
    assert cached_validation == pytest.approx(validation, rel=1e-5, abs=1e-6)
    assert cached_test == pytest.approx(test, rel=1e-5, abs=1e-6)
    views = 2 if flip else 1
    train, val, test_images, gradient_check = 24, 8, 8, 2
    assert tower_images == 2 * train + 2 * views * val + views * test_images + gradient_check
    assert cached_tower_images == train + views * (val + test_images) + gradient_check
    assert len(list(feature_root.glob("*.pt"))) == 1 + 2 * views  # train; val and test per view
    _, again, reread_tower_images = _fit_and_test(True, tmp_path / "again", flip)
    assert reread_tower_images == gradient_check and again == pytest.approx(test, rel=1e-5, abs=1e-6)


def _open(task, datamodule, root, stage="test"):
    return open_frozen_features(task, SimpleNamespace(datamodule=datamodule, precision="32-true"), stage, root)


def _fill(task, datamodule, features, split="test"):
    dataset = datamodule.datasets[split]
    task.frozen_features = features
    with torch.no_grad():
        task.image_features(dataset.images, dataset.names)


def _hit(task, datamodule, root) -> bool:
    return _open(task, datamodule, root).tables[("test", "image")].hit


def test_changed_weights_or_pixels_miss_and_replace_the_stale_entry(tmp_path):
    task, datamodule = _task(), _data(stages=("test",))
    features = _open(task, datamodule, tmp_path)
    assert not features.tables[("test", "image")].hit
    _fill(task, datamodule, features)
    assert _hit(task, datamodule, tmp_path)
    with torch.no_grad():
        next(task.encoder.model.visual.parameters()).add_(0.01)
    assert not _hit(task, datamodule, tmp_path)
    _fill(task, datamodule, _open(task, datamodule, tmp_path))
    assert _hit(task, datamodule, tmp_path) and len(list(tmp_path.glob("*.pt"))) == 1  # the stale entry is gone
    datamodule.datasets["test"].images[0, 0, 0, 0] ^= 1
    assert not _hit(task, datamodule, tmp_path)
    assert not _hit(task, _resized(), tmp_path)


def _resized() -> SyntheticDataModule:
    datamodule = SyntheticDataModule(preset="thyroid", profile="tiny", image_size=48, batch_size=8)
    datamodule.setup("test")
    return datamodule


@pytest.mark.parametrize("damage", ["garbage", "non-finite", "other names"])
def test_a_corrupt_file_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    task, datamodule = _task(), _data(stages=("test",))
    _fill(task, datamodule, _open(task, datamodule, tmp_path))
    path = next(tmp_path.glob("*.pt"))
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        record = torch.load(path, weights_only=True)
        if damage == "non-finite":
            record["features"][0, 0] = float("nan")
        else:
            record["names"] = list(reversed(record["names"]))
        torch.save(record, path)
    with caplog.at_level(logging.WARNING, logger="usvl.tasks.feature_cache"):
        features = _open(task, datamodule, tmp_path)
    assert not features.tables[("test", "image")].hit
    assert "encoding the images again" in caplog.text
    _fill(task, datamodule, features)
    assert _hit(task, datamodule, tmp_path)


def _unsafe_case(case):
    if case == "adapter":
        return _task(adapter=MonaAdapter(bottleneck=8, points=[1])), _data(stages=()), "parameters before the head"
    if case == "augment":
        return _task(), _data(augment=BatchAugment(), stages=()), "training augmentation"
    if case == "batch-norm statistics":
        encoder = LiTEffNetMiniLM(pretrained=False, norm_stats="adapt")
        return _task(encoder=encoder), _data(stages=()), "follow training mode"
    return _task(head=MapReadingHead), _data(stages=()), "reads the feature maps"


@pytest.mark.parametrize("case", ["adapter", "augment", "batch-norm statistics", "head reads maps"])
def test_unsafe_fits_are_refused_when_asked_and_off_with_the_reason_under_auto(tmp_path, caplog, case):
    task, datamodule, reason = _unsafe_case(case)
    task.feature_cache = True
    with pytest.raises(FeatureCacheRefusedError, match=reason):
        _open(task, datamodule, tmp_path, "fit")
    task.feature_cache = "auto"
    with caplog.at_level(logging.INFO, logger="usvl.tasks.feature_cache"):
        assert _open(task, datamodule, tmp_path, "fit") is None
    assert "Frozen-feature cache off in fit" in caplog.text and reason in caplog.text


def test_evaluation_caches_whatever_the_adapter_and_false_turns_it_off(tmp_path):
    datamodule = _data(stages=("test",))
    adapted = _task(adapter=MonaAdapter(bottleneck=8, points=[1]))
    assert ("test", "image") in _open(adapted, datamodule, tmp_path).tables  # test trains nothing
    zeroshot = ZeroShotClassificationTask(TinyViTCLIP(depth=2, feature_taps=(1,)), 2, channels_last=False)
    assert _open(zeroshot, datamodule, tmp_path) is not None
    assert _open(_task(switch=False), datamodule, tmp_path) is None
    assert _open(_task(head=MapReadingHead), datamodule, tmp_path) is None


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("true", True), ("false", False)])
def test_the_config_switch_reaches_the_task(value, expected):
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", str(CONFIGS / "tiny_vit_cls.yaml"), "--trainer.logger", "false",
                        "--model.init_args.feature_cache", value])
    assert cli.model.feature_cache == expected and type(cli.model.feature_cache) is type(expected)
    with pytest.raises(ValueError, match="feature_cache must be"):
        check_switch("yes")
