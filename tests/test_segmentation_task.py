import json
import math
from pathlib import Path

import pytest
import torch
from shipped_configs import smoke

from usvl.cli import run_lightning
from usvl.models.encoders.base import ImageFeatures
from usvl.models.encoders.weights import EFFICIENTNET_LITE0, MINILM_L6_V2
from usvl.models.heads import FiLM, MultiScaleSegmentationHead
from usvl.tasks.losses import DiceCELoss

REPO = Path(__file__).resolve().parents[1]
SMOKE = smoke("breast_seg")
EMBEDDED_DIMS = [24, 40, 112, 320]


@pytest.fixture(scope="module")
def encoder(embedded_encoder_factory):
    return embedded_encoder_factory().eval()


def _features(encoder, size: int, batch: int = 2) -> ImageFeatures:
    with torch.no_grad():
        return encoder.encode_image(torch.randn(batch, 3, size, size))


@pytest.mark.parametrize("size", [64, 72])
def test_head_gives_logits_at_the_input_size(encoder, size):
    head = MultiScaleSegmentationHead(encoder.feature_dims, encoder.embed_dim)
    features = _features(encoder, size)
    assert [m.shape[1] for m in features.maps] == EMBEDDED_DIMS
    logits = head(features, torch.randn(encoder.embed_dim), (size, size))
    assert logits.shape == (2, 1, size, size)
    assert torch.isfinite(logits).all()
    # The logit bias starts at the foreground prior, so training does not start with half the image as lesion.
    assert torch.sigmoid(logits).mean().item() < 0.3


def test_head_is_small():
    head = MultiScaleSegmentationHead(EMBEDDED_DIMS, 256, decoder_dim=64)
    assert 100_000 <= sum(p.numel() for p in head.parameters()) <= 300_000


def test_film_starts_as_identity_and_learns(encoder):
    film = FiLM(256, 64)
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(film(x, torch.randn(256)), x)
    assert torch.equal(film(x, torch.randn(2, 256)), x)

    head = MultiScaleSegmentationHead(encoder.feature_dims, encoder.embed_dim, text_conditioning="film")
    plain = MultiScaleSegmentationHead(encoder.feature_dims, encoder.embed_dim, text_conditioning="none")
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("film.")})
    features = _features(encoder, 64)
    text = torch.randn(encoder.embed_dim)
    assert torch.allclose(head(features, text, (64, 64)), plain(features, None, (64, 64)))
    head(features, text, (64, 64)).sum().backward()
    assert head.film.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs a text embedding"):
        head(features, None, (64, 64))


def test_head_rejects_maps_of_the_wrong_width():
    head = MultiScaleSegmentationHead(EMBEDDED_DIMS, 256)
    features = ImageFeatures(global_embedding=torch.zeros(1, 256), maps=[torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="Expected maps"):
        head(features, torch.zeros(256))


def _mask(batch: int = 2, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    mask[:, :, 8:20, 10:24] = 1
    return mask


def test_dice_ce_is_low_for_a_perfect_prediction_and_high_for_a_wrong_one():
    loss = DiceCELoss()
    mask = _mask()
    perfect = (mask.float() * 2 - 1) * 20
    assert loss(perfect, mask).item() < 1e-3
    assert loss(-perfect, mask).item() > 10
    assert loss(torch.zeros_like(perfect), mask).item() == pytest.approx(
        math.log(2) + 1 - (2 * 0.5 * mask[0].sum().item() + 1) / (0.5 * mask[0].numel() + mask[0].sum().item() + 1),
        rel=1e-5)


def test_dice_ce_handles_empty_masks():
    loss = DiceCELoss()
    empty = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    assert loss(torch.full((2, 1, 32, 32), -20.0), empty).item() < 1e-3
    # A false positive on an empty mask costs the full Dice term, not NaN.
    logits = torch.full((2, 1, 32, 32), -20.0)
    logits[:, :, :4, :4] = 20.0
    dice = loss.dice_loss(logits, empty)
    assert dice.shape == (2,)
    assert dice.tolist() == pytest.approx([16 / 17, 16 / 17], rel=1e-4)
    logits.requires_grad_(True)
    loss(logits, empty).backward()
    assert torch.isfinite(logits.grad).all()
    # Dice is averaged per image: a mixed batch is the mean of the images' Dice losses.
    mixed = torch.cat([_mask(1), empty[:1]])
    per_image = loss.dice_loss(torch.zeros(2, 1, 32, 32), mixed)
    assert loss.terms(torch.zeros(2, 1, 32, 32), mixed)["dice"].item() == pytest.approx(per_image.mean().item())


def test_dice_ce_validates_its_arguments():
    with pytest.raises(ValueError):
        DiceCELoss(smooth=0.0)
    with pytest.raises(ValueError):
        DiceCELoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


def _task(encoder, **kwargs):
    from usvl.tasks import SegmentationTask

    return SegmentationTask(encoder=encoder, head=MultiScaleSegmentationHead, num_classes=3,
                            class_names=["benign", "malignant", "normal"], channels_last=False, **kwargs)


def test_task_trains_only_what_the_head_uses(embedded_encoder_factory):
    task = _task(embedded_encoder_factory())
    assert task.lesion_classes == ["benign", "malignant"]
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.image_projection") for n in trainable)
    assert any(n.startswith("encoder.text_projection") for n in trainable)
    with pytest.raises(RuntimeError, match="TextEmbeddingCache"):
        task(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    task.set_text_embeddings(torch.randn(3, 2, 384))
    assert task.lesion_text().shape == (256,)
    out = task.predict_step({"image": torch.randint(0, 255, (2, 1, 64, 64), dtype=torch.uint8),
                             "name": ["a", "b"]}, 0)
    assert out["name"] == ["a", "b"]
    assert out["mask"].dtype == torch.uint8 and out["mask"].shape == (2, 1, 64, 64)
    assert set(out["mask"].unique().tolist()) <= {0, 1}

    from usvl.models.heads import MultiScaleSegmentationHead as Head

    no_text = type(task)(encoder=embedded_encoder_factory(), num_classes=3,
                         head=lambda dims, dim, outputs: Head(dims, dim, outputs, text_conditioning="none"))
    assert not any(p.requires_grad for n, p in no_text.named_parameters() if "_projection" in n)
    assert no_text(torch.zeros(1, 1, 64, 64, dtype=torch.uint8)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="lesion_classes"):
        _task(embedded_encoder_factory(), lesion_classes=["cyst"])


@pytest.fixture(scope="module")
def smoke_run(breast_seg_fit):
    return breast_seg_fit.run, breast_seg_fit.model


def test_fit_writes_segmentation_test_metrics(smoke_run):
    run, _ = smoke_run
    payload = json.loads((run / "test_metrics.json").read_text())
    metrics = payload["metrics"]
    assert {"test/dice", "test/iou", "test/hd95", "test/asd", "test/fp_rate_normal", "test/loss"} <= set(metrics)
    cases = ["test/n_both_nonempty", "test/n_true_empty", "test/n_false_positive_empty", "test/n_missed"]
    assert sum(metrics[k] for k in cases) == metrics["test/n_images"] == 8
    # The tiny breast test split has normal images, so the empty-mask cases are exercised.
    assert metrics["test/n_true_empty"] + metrics["test/n_false_positive_empty"] > 0
    assert 0.0 <= metrics["test/dice"] <= 1.0
    assert payload["class_names"] == ["benign", "malignant", "normal"]
    assert 0 < payload["trainable_params"] < payload["total_params"]
    assert payload["checkpoint"].endswith(".ckpt")


def test_checkpoint_holds_trainable_weights_only(smoke_run):
    run, model = smoke_run
    checkpoint_path = next((run / "checkpoints").glob("*.ckpt"))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert keys == model.trainable_state_keys()
    assert not any(k.startswith(("encoder.image_tower.conv_stem", "encoder.image_projection")) for k in keys)
    assert any(".adapter." in k for k in keys)
    assert any(k.startswith("head.similarity.") for k in keys)  # per-pixel text guidance, the recipe default
    assert checkpoint["usvl"]["text_embeddings"].shape[0] == 3
    assert checkpoint["usvl"]["lesion_classes"] == ["benign", "malignant"]
    full_weights = EFFICIENTNET_LITE0.resolve().stat().st_size + MINILM_L6_V2.resolve().stat().st_size
    assert checkpoint_path.stat().st_size < 0.10 * full_weights


def test_test_from_checkpoint_reproduces_the_fit_metrics(smoke_run, tmp_path):
    run, _ = smoke_run
    checkpoint_path = str(next((run / "checkpoints").glob("*.ckpt")))
    run_lightning(["test", *SMOKE, "--trainer.logger.init_args.save_dir", str(tmp_path),
                   "--ckpt_path", checkpoint_path])
    standalone = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())["metrics"]
    after_fit = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert standalone["test/dice"] == pytest.approx(after_fit["test/dice"], abs=1e-6)
    assert standalone["test/loss"] == pytest.approx(after_fit["test/loss"], abs=1e-5)


def test_predict_writes_one_mask_png_per_image_without_overwriting(smoke_run, tmp_path):
    run, _ = smoke_run
    checkpoint_path = str(next((run / "checkpoints").glob("*.ckpt")))
    args = ["predict", *SMOKE, "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path",
            checkpoint_path]
    run_lightning(args)
    run_lightning(args)
    folders = sorted(p for p in tmp_path.rglob("predictions*") if p.is_dir())
    assert len(folders) == 2
    masks = sorted(folders[0].glob("*.png"))
    assert len(masks) == 8
    from PIL import Image

    assert set(Image.open(masks[0]).getdata()) <= {0, 255}
