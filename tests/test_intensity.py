"""Per-image intensity standardisation (issue 11 item 4): what each method undoes, the field of view, the tasks."""

from __future__ import annotations

import pytest
import torch

from usvl.data.intensity import standardise_intensity
from usvl.models.encoders import TinyViTCLIP
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask


def _scans(count: int = 4, size: int = 64) -> torch.Tensor:
    """Grey images in [0.1, 0.7] with a black band on the left (outside the field of view)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 1, size, size, generator=generator) * 0.6 + 0.1
    images[..., :10] = 0.0
    return images


def _inside(images: torch.Tensor) -> torch.Tensor:
    return images[..., 10:]


def test_percentile_undoes_a_gain_and_dynamic_range_change():
    images = _scans()
    brighter_and_flatter = (images * 0.6 + 0.25) * (images > 0)
    plain, shifted = (standardise_intensity(x, "percentile") for x in (images, brighter_and_flatter))
    assert (_inside(plain) - _inside(shifted)).abs().max() < 0.02
    assert (_inside(images) - _inside(brighter_and_flatter)).abs().max() > 0.1
    assert plain.min() == 0 and plain.max() == 1


def test_equalise_undoes_any_monotone_change_and_flattens_the_histogram():
    images = _scans()
    compressed = images.pow(0.5)
    plain, shifted = (standardise_intensity(x, "equalise") for x in (images, compressed))
    assert (_inside(plain) - _inside(shifted)).abs().max() < 0.02
    quartiles = torch.quantile(_inside(plain).flatten(), torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(quartiles, torch.tensor([0.25, 0.5, 0.75]), atol=0.02)


@pytest.mark.parametrize("method", ["percentile", "equalise"])
def test_outside_the_field_of_view_stays_black_and_is_not_counted(method):
    images = _scans()
    wider_band = images.clone()
    wider_band[..., 10:20] = 0.0
    assert (standardise_intensity(images, method)[..., :10] == 0).all()
    without_band = standardise_intensity(images[..., 10:], method)
    assert torch.allclose(standardise_intensity(images, method)[..., 10:], without_band)


def test_each_image_and_channel_is_standardised_alone():
    scan = _scans(count=1).expand(-1, 3, -1, -1)
    images = torch.cat([scan, scan * 0.5])
    images[0, 2] = images[0, 2] * 0.3
    result = standardise_intensity(images, "percentile")
    assert torch.allclose(result[0, 0], result[1, 0], atol=0.01)
    assert torch.allclose(result[0, 0], result[0, 2], atol=0.01)


def test_none_is_the_identity_and_unknown_names_are_refused():
    images = _scans()
    assert standardise_intensity(images, "none") is images
    with pytest.raises(ValueError, match="percentile, equalise"):
        standardise_intensity(images, "zscore")


def _task(method: str) -> ClassificationTask:
    torch.manual_seed(0)
    task = ClassificationTask(TinyViTCLIP(), PromptSimilarityHead, num_classes=2, class_names=["benign", "malignant"],
                              channels_last=False, intensity_standardisation=method)
    task.set_text_embeddings(torch.randn(2, 3, task.encoder.text_dim, generator=torch.Generator().manual_seed(0)))
    return task.eval()


def test_the_task_standardises_before_its_normalisation_and_keeps_the_setting():
    images = (_scans() * 255).round().to(torch.uint8)
    gained = ((_scans() * 0.6 + 0.25) * (_scans() > 0) * 255).round().to(torch.uint8)
    plain, standardised = _task("none"), _task("percentile")
    assert standardised.hparams["intensity_standardisation"] == "percentile"
    expected = standardise_intensity(images.float() / 255, "percentile").expand(-1, 3, -1, -1)
    expected = (expected - standardised.image_mean) / standardised.image_std
    assert torch.allclose(standardised.prepare_images(images), expected)
    with torch.no_grad():
        drift_plain = (plain(images) - plain(gained)).abs().max()
        drift_standardised = (standardised(images) - standardised(gained)).abs().max()
    assert drift_standardised < drift_plain / 5
    with pytest.raises(ValueError, match="intensity_standardisation"):
        _task("histogram")


def test_a_standardised_task_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime: pip install 'usvl[export]'")
    from usvl.export import export_task

    report = export_task(_task("equalise"), tmp_path / "equalise.onnx", 64, exporter="torchscript")
    assert report.parity and max(report.parity.values()) <= 1e-4
