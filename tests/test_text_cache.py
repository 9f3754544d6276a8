import logging
from types import SimpleNamespace

import pytest
import torch

from usvl.models.encoders import LiTEffNetMiniLM
from usvl.text import TextEmbeddingCache, load_descriptions
from usvl.text.cache import cache_key


class RecordingModule(SimpleNamespace):
    def set_text_embeddings(self, embeddings):
        self.embeddings = embeddings


@pytest.fixture(scope="module")
def encoder():
    return LiTEffNetMiniLM(embed_dim=16)


def write_descriptions(path, benign, malignant):
    lines = ["provenance:", "  author: test", "classes:", "  benign:"]
    lines += [f"    - {s}" for s in benign] + ["  malignant:"] + [f"    - {s}" for s in malignant]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_shipped_thyroid_descriptions_cover_both_classes_with_several_phrasings():
    descriptions = load_descriptions("configs/text/thyroid_tirads.yaml")
    benign, malignant = descriptions.for_classes(["benign", "malignant"])
    assert len(benign) >= 3 and len(malignant) >= 3
    assert descriptions.provenance["author"]


def test_first_setup_encodes_second_hits_cache(tmp_path, encoder, caplog):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule", "cystic nodule"],
                                      ["irregular hypoechoic nodule", "microcalcifications", "taller than wide"])
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="usvl.text.cache"):
        callback.setup(None, module, "fit")
    assert callback.last_hit is False
    first = module.embeddings
    assert first.shape == (2, 3, 384)
    with caplog.at_level(logging.INFO, logger="usvl.text.cache"):
        callback.setup(None, module, "fit")
    assert callback.last_hit is True
    assert "cache hit" in caplog.text
    assert torch.equal(module.embeddings, first)


def test_cache_key_changes_with_texts_and_encoder():
    texts = [["a"], ["b"]]
    assert cache_key("enc", texts) == cache_key("enc", [["a"], ["b"]])
    assert cache_key("enc", texts) != cache_key("enc", [["a"], ["c"]])
    assert cache_key("enc", texts) != cache_key("other", texts)


def test_missing_class_description_names_the_file(tmp_path, encoder):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["x"], ["y"])
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant", "normal"])
    with pytest.raises(KeyError, match="normal"):
        TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path)).setup(None, module, "fit")
