"""Text that reaches every pixel: the similarity conditioning of the segmentation head, next to FiLM and none."""

import pytest
import torch

from usvl.models.encoders import TinyViTCLIP
from usvl.models.encoders.base import ImageFeatures
from usvl.models.heads import MultiScaleSegmentationHead, PixelTextSimilarity

DIMS = [8, 16, 32]
EMBED = 12


def _features(batch: int = 2, size: int = 16) -> ImageFeatures:
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(batch, c, size // 2**i, size // 2**i, generator=generator) for i, c in enumerate(DIMS)]
    return ImageFeatures(global_embedding=torch.randn(batch, EMBED, generator=generator), maps=maps)


def _head(**kwargs) -> MultiScaleSegmentationHead:
    torch.manual_seed(0)
    return MultiScaleSegmentationHead(DIMS, EMBED, decoder_dim=16, upsample_steps=1, **kwargs)


def test_similarity_maps_are_scaled_cosines_per_pixel_and_prompt():
    layer = PixelTextSimilarity(4, 3, init_scale=10.0)
    x = torch.randn(2, 4, 5, 6)
    prompts = torch.randn(7, 3)
    maps = layer(x, prompts)
    assert maps.shape == (2, 7, 5, 6)
    assert maps.abs().max() <= 10.0 + 1e-4
    pixel = torch.nn.functional.normalize(layer.project(x)[0, :, 1, 2], dim=0)
    expected = 10.0 * pixel @ torch.nn.functional.normalize(prompts, dim=-1).t()
    assert torch.allclose(maps[0, :, 1, 2], expected, atol=1e-5)
    assert torch.allclose(layer(x, prompts.expand(2, 7, 3)), maps, atol=1e-6)  # per-image prompts [B, P, D]


def test_similarity_logits_depend_on_the_text_at_every_image():
    head = _head(text_conditioning="similarity").eval()
    features = _features()
    text = torch.randn(EMBED)
    logits = head(features, text, (16, 16))
    assert logits.shape == (2, 1, 16, 16)
    other = head(features, torch.randn(EMBED), (16, 16))
    # Different class prototypes give different masks, and differently per pixel (not one shift for the image).
    difference = (logits - other).abs()
    assert difference.max() > 1e-3
    assert difference.flatten(1).std(dim=1).min() > 1e-5
    # A positive rescaling of the text is the same prompt (cosine similarity).
    assert torch.allclose(head(features, 3.0 * text, (16, 16)), logits, atol=1e-5)
    with pytest.raises(ValueError, match="needs a text embedding"):
        head(features, None, (16, 16))
    with pytest.raises(ValueError, match="num_prompts"):
        head(features, torch.randn(3, EMBED), (16, 16))


def test_similarity_with_one_prompt_per_class():
    head = _head(text_conditioning="similarity", num_prompts=3)
    features = _features()
    prompts = torch.randn(3, EMBED)
    logits = head(features, prompts, (16, 16))
    assert logits.shape == (2, 1, 16, 16)
    swapped = head(features, prompts[[1, 0, 2]], (16, 16))
    assert not torch.allclose(logits, swapped)
    assert head(features, prompts.expand(2, 3, EMBED), (16, 16)).shape == logits.shape


def test_gradient_reaches_every_new_layer_and_the_text():
    head = _head(text_conditioning="similarity")
    text = torch.randn(EMBED, requires_grad=True)
    head(_features(), text, (16, 16)).square().mean().backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert text.grad.abs().sum() > 0
    assert head.uses_text


def test_film_and_none_still_work():
    features = _features()
    film = _head(text_conditioning="film")
    plain = _head(text_conditioning="none")
    assert film.uses_text and not plain.uses_text
    # FiLM starts as the identity, so with the same other weights both heads agree at initialisation.
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if not k.startswith("film.")})
    assert torch.allclose(film(features, torch.randn(EMBED), (16, 16)), plain(features, None, (16, 16)))
    assert film.similarity is None and plain.similarity is None and plain.film is None
    with pytest.raises(ValueError, match="text_conditioning"):
        _head(text_conditioning="clipseg")


def test_segmentation_task_with_similarity_head_passes_the_gradient_check_and_follows_the_prototypes():
    from usvl.tasks import SegmentationTask

    def head(dims, dim, outputs):
        return MultiScaleSegmentationHead(dims, dim, outputs, decoder_dim=16, text_conditioning="similarity",
                                          upsample_steps=3)

    task = SegmentationTask(encoder=TinyViTCLIP(), head=head, num_classes=3,
                            class_names=["benign", "malignant", "normal"], channels_last=False)
    assert task.uses_text
    assert any(n.startswith("encoder.text_projection") for n, p in task.named_parameters() if p.requires_grad)
    generator = torch.Generator().manual_seed(0)
    task.set_text_embeddings(torch.randn(3, 2, task.encoder.text_dim, generator=generator))
    task.check_gradients(64)  # raises if a trainable parameter (text projection, similarity layers) gets no gradient
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=generator)
    task.eval()
    with torch.no_grad():
        before = task(images)
        task.set_text_embeddings(torch.randn(3, 2, task.encoder.text_dim, generator=generator))
        after = task(images)
    assert before.shape == (2, 1, 64, 64)
    assert (before - after).abs().max() > 1e-4


ABLATION_OVERLAYS = {
    "shuffled": ("thyroid_cls", "shuffle", True),
    "random": ("breast_seg", "random", True),
    "no_text_seg": ("breast_seg", "none", False),
    "no_text_cls": ("thyroid_cls", "none", False),
}


@pytest.mark.parametrize("overlay", sorted(ABLATION_OVERLAYS))
def test_ablation_overlays_instantiate_on_their_experiments(overlay):
    from lightning.pytorch import LightningDataModule, LightningModule
    from shipped_configs import CONFIGS

    from usvl.cli import USVLCLI
    from usvl.text import TextEmbeddingCache

    experiment, ablation, uses_text = ABLATION_OVERLAYS[overlay]
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=["--config", str(CONFIGS / f"{experiment}.yaml"),
                        "--config", str(CONFIGS / "text" / "ablation" / f"{overlay}.yaml"),
                        "--trainer.logger", "false"])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, TextEmbeddingCache))
    assert callback.ablation == ablation
    assert cli.model.uses_text is uses_text
    if overlay == "no_text_seg":
        assert cli.model.head.text_conditioning == "none"
    if overlay == "no_text_cls":
        assert type(cli.model.head).__name__ == "LinearClassifierHead"
