"""Acquisition augmentation: each transform changes what it should, masks move with the geometry only, seeded."""

from __future__ import annotations

import pytest
import torch
from shipped_configs import CONFIGS

from usvl.data import AcquisitionAugment, BatchAugment, SyntheticDataModule

ALL_OFF = {"p_tgc": 0.0, "p_gain": 0.0, "p_dynamic_range": 0.0, "p_speckle": 0.0, "p_blur": 0.0, "p_shadow": 0.0,
           "p_haze": 0.0, "p_zoom": 0.0, "p_sector": 0.0, "p_bars": 0.0}
INTENSITY = ("p_tgc", "p_gain", "p_dynamic_range", "p_speckle", "p_blur", "p_shadow", "p_haze")
GEOMETRY = ("p_zoom", "p_sector", "p_bars")


def only(name: str, **kwargs) -> AcquisitionAugment:
    """An augmentation with one transform always on and the others off."""
    return AcquisitionAugment(**{**ALL_OFF, name: 1.0, **kwargs})


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight textured images (uint8 ``[8, 1, 64, 64]``) with a disc mask each."""
    generator = torch.Generator().manual_seed(1)
    image = (torch.rand(8, 1, 64, 64, generator=generator) * 150 + 50).to(torch.uint8)
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask = (((rows - 30) ** 2 + (cols - 32) ** 2) < 100).to(torch.uint8)[None, None].repeat(8, 1, 1, 1)
    return image, mask


def test_everything_off_is_the_identity(batch):
    image, mask = batch
    out, moved = AcquisitionAugment(**ALL_OFF)(image, mask)
    assert torch.allclose(out, image.float(), atol=1e-3) and torch.equal(moved, mask)


@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_transforms_change_the_image_not_the_mask(batch, name):
    image, mask = batch
    torch.manual_seed(0)
    out, moved = only(name)(image, mask)
    assert torch.equal(moved, mask)
    assert (out - image.float()).abs().mean() > 0.5
    assert out.min() >= 0 and out.max() <= 255 and out.shape == image.shape and out.dtype == torch.float32


def test_intensity_transforms_do_what_they_say(batch):
    image, _ = batch
    torch.manual_seed(0)
    brighter, _ = only("p_gain", gain=(0.2, 0.2))(image)
    assert brighter.mean() > image.float().mean() + 40
    harsher, _ = only("p_dynamic_range", dynamic_range=(0.5, 0.5))(image)
    assert harsher.std() > image.float().std() * 1.5
    blurred, _ = only("p_blur", blur_axial=(2.0, 2.0), blur_lateral=(2.0, 2.0))(image)
    assert blurred.std() < image.float().std() * 0.6
    shadowed, _ = only("p_shadow", shadow_strength=(0.5, 0.5))(image)
    assert (shadowed[:, :, :4] - image[:, :, :4].float()).abs().max() < 3
    assert shadowed[:, :, -8:].mean() < image[:, :, -8:].float().mean() - 2
    tgc, _ = only("p_tgc")(image)
    row_change = (tgc - image.float()).mean(dim=(0, 1, 3))
    assert row_change.std() > 1.0  # a curve over depth, not a constant


@pytest.mark.parametrize("name", GEOMETRY)
def test_geometric_transforms_move_the_mask_with_the_image(batch, name):
    _, mask = batch
    torch.manual_seed(3)
    out, moved = only(name)(mask * 255, mask)
    assert moved.dtype == torch.uint8 and set(moved.unique().tolist()) <= {0, 1}
    assert ((out > 127.5) == moved.bool()).float().mean() > 0.99
    if name == "p_zoom":
        assert not torch.equal(moved, mask)


def test_field_masks_black_out_image_and_mask(batch):
    image, mask = batch
    torch.manual_seed(0)
    out, moved = only("p_bars", bars=(0.2, 0.2))(image, torch.ones_like(mask))
    assert out[..., :10].max() == 0 and moved[..., :10].max() == 0 and moved[..., 20:40].min() == 1
    out, moved = only("p_sector")(image, torch.ones_like(mask))
    for corner in (out[:, :, 0, 0], out[:, :, 0, -1], out[:, :, -1, 0], moved[:, :, 0, 0], moved[:, :, -1, -1]):
        assert corner.max() == 0
    assert moved[:, :, 32, 32].min() == 1 and out[:, :, 32, 32].min() > 0


def test_black_outside_the_field_stays_black(batch):
    image, _ = batch
    framed = image.clone()
    framed[..., :8] = 0
    framed[..., -8:] = 0
    out, _ = only("p_gain", gain=(0.3, 0.3))(framed)
    assert out[..., :5].max() == 0 and out[..., -5:].max() == 0 and out[..., 8:-8].min() > 0


def test_seeded_reproducibility(batch):
    image, mask = batch
    augment = AcquisitionAugment()
    torch.manual_seed(7)
    first = augment(image, mask)
    torch.manual_seed(7)
    second = augment(image, mask)
    torch.manual_seed(8)
    third = augment(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])


def test_three_channel_images(batch):
    image, mask = batch
    torch.manual_seed(0)
    out, moved = AcquisitionAugment(**{name: 1.0 for name in ALL_OFF})(image.repeat(1, 3, 1, 1), mask)
    assert out.shape == (8, 3, 64, 64) and moved.shape == mask.shape


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="probabilities"):
        AcquisitionAugment(p_gain=1.5)
    with pytest.raises(ValueError, match="positive"):
        AcquisitionAugment(zoom=(0.0, 1.0))


class _Training:
    training = True


def test_switch_off_leaves_training_batches_as_they_were(batch):
    image, mask = batch
    plain = SyntheticDataModule(augment=BatchAugment(), task="segmentation", preset="breast")
    assert plain.acquisition_augment is None
    plain.trainer = _Training()
    torch.manual_seed(5)
    out = plain.on_after_batch_transfer({"image": image, "mask": mask}, 0)
    torch.manual_seed(5)
    expected_image, expected_mask = BatchAugment()(image, mask)
    assert torch.equal(out["image"], expected_image) and torch.equal(out["mask"], expected_mask)
    both = SyntheticDataModule(augment=BatchAugment(), acquisition_augment=AcquisitionAugment(),
                               task="segmentation", preset="breast")
    both.trainer = _Training()
    torch.manual_seed(5)
    augmented = both.on_after_batch_transfer({"image": image, "mask": mask}, 0)
    assert not torch.equal(augmented["image"], expected_image)


@pytest.mark.parametrize("experiment", ["thyroid_cls", "breast_seg"])
def test_the_config_fragment_turns_it_on(experiment):
    from lightning.pytorch import LightningDataModule, LightningModule

    from usvl.cli import USVLCLI

    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", str(CONFIGS / f"{experiment}.yaml"), "--config",
                        str(CONFIGS / "data" / "acquisition_augment.yaml"), "--trainer.logger", "false"])
    augment = cli.datamodule.acquisition_augment
    assert isinstance(augment, AcquisitionAugment)
    assert isinstance(cli.datamodule.augment, BatchAugment)
    defaults = AcquisitionAugment()
    assert all(getattr(augment, name) == getattr(defaults, name) for name in (*INTENSITY, *GEOMETRY))


def _cli(*configs: str):
    from lightning.pytorch import LightningDataModule, LightningModule

    from usvl.cli import USVLCLI

    arguments = [item for config in configs for item in ("--config", str(CONFIGS / config))]
    return USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                   args=[*arguments, "--trainer.logger", "false"])


def _geometry_only(augment: AcquisitionAugment | None) -> bool:
    return (isinstance(augment, AcquisitionAugment) and all(getattr(augment, name) == 0.0 for name in INTENSITY)
            and augment.p_sector == 0.0 and augment.p_zoom > 0.0 and augment.p_bars > 0.0)


def test_the_shipped_thyroid_recipe_trains_with_the_geometric_parts_only():
    thyroid = _cli("thyroid_cls.yaml")
    assert _geometry_only(thyroid.datamodule.acquisition_augment)
    assert thyroid.config.calibration.scaling == "temperature_bias"
    assert not thyroid.config.calibration.lesion_gate
    assert _geometry_only(_cli("breast_seg.yaml", "data/geometry_augment.yaml").datamodule.acquisition_augment)


def test_the_shipped_breast_recipe_trains_with_every_part_and_chooses_a_lesion_gate():
    breast = _cli("breast_seg.yaml")
    augment, defaults = breast.datamodule.acquisition_augment, AcquisitionAugment()
    assert isinstance(augment, AcquisitionAugment)
    assert all(getattr(augment, name) == getattr(defaults, name) for name in (*INTENSITY, *GEOMETRY))
    assert breast.config.calibration.lesion_gate
