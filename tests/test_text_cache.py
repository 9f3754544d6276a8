import json
import logging
import os
import random
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_open_clip_config

from usvl.models.encoders import LiTEffNetMiniLM
from usvl.text import TextEmbeddingCache, load_descriptions
from usvl.text.cache import ablate, cache_key, derangement
from usvl.text.prompts import expand_templates


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
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"), free_text_tower=False)
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


def test_cache_key_changes_with_texts_encoder_and_weights():
    texts = [["a"], ["b"]]
    assert cache_key("enc", texts) == cache_key("enc", [["a"], ["b"]])
    assert cache_key("enc", texts) != cache_key("enc", [["a"], ["c"]])
    assert cache_key("enc", texts) != cache_key("other", texts)
    assert cache_key("enc", texts, "w1") != cache_key("enc", texts, "w2")


def test_missing_class_description_names_the_file(tmp_path, encoder):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["x"], ["y"])
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant", "normal"])
    with pytest.raises(KeyError, match="normal"):
        TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path)).setup(None, module, "fit")


# --- keyed by weights, validated on read, text tower released -------------------------------------------------------


def test_weights_fingerprint_hashes_the_files_once_per_version(tmp_path, encoder):
    from usvl.models.encoders.weights import file_fingerprint, files_fingerprint

    assert encoder.weights_fingerprint == files_fingerprint(encoder.weight_files()) != "none"
    assert any(path.name == "model.safetensors" for path in encoder.weight_files())
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"one")
    first = file_fingerprint(weights)
    assert file_fingerprint(weights) == first
    weights.write_bytes(b"two")  # same path and size, new content and mtime
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert file_fingerprint(weights) != first
    assert files_fingerprint([]) == "none"


def _open_clip(config, checkpoint, seed):
    from usvl.models.encoders import OpenCLIPEncoder

    torch.manual_seed(seed)
    random = OpenCLIPEncoder(str(config), allow_random=True, feature_taps=(1, 2, 3))
    torch.save(random.model.state_dict(), checkpoint)
    return OpenCLIPEncoder(str(config), pretrained=str(checkpoint), feature_taps=(1, 2, 3))


def test_replaced_local_checkpoint_misses_the_cache(tmp_path):
    config = write_tiny_open_clip_config(tmp_path, timm_trunk=False)
    checkpoint = tmp_path / "weights.pt"
    first = _open_clip(config, checkpoint, seed=0)
    assert first.weight_files() == [config, checkpoint]
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"))
    module = RecordingModule(encoder=first, class_names=["benign", "malignant"])
    callback.setup(None, module, "fit")
    callback.setup(None, module, "fit")
    assert callback.last_hit is True
    before, fingerprint = module.embeddings, first.weights_fingerprint
    second = _open_clip(config, checkpoint, seed=1)  # the same file name, other weights
    assert second.encoder_id == first.encoder_id
    assert second.weights_fingerprint != fingerprint
    module.encoder = second
    callback.setup(None, module, "fit")
    assert callback.last_hit is False
    assert not torch.allclose(module.embeddings, before)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_new_hub_revision_changes_the_fingerprint(tmp_path):
    from usvl.models.encoders.common import hf_model_files
    from usvl.models.encoders.weights import files_fingerprint

    repo = tmp_path / "models--org--tiny"
    for revision, content in (("aaa", b"old"), ("bbb", b"new")):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(content)
        (snapshot / "flax_model.msgpack").write_bytes(b"ignored")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa")
    old = hf_model_files("org/tiny", cache_dir=str(tmp_path))
    assert [p.name for p in old] == ["config.json", "model.safetensors"]
    (repo / "refs" / "main").write_text("bbb")
    new = hf_model_files("org/tiny", cache_dir=str(tmp_path))
    assert files_fingerprint(new) != files_fingerprint(old)
    assert hf_model_files("org/absent", cache_dir=str(tmp_path)) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_texts"])
def test_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, encoder, caplog, damage):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"), free_text_tower=False)
    callback.setup(None, module, "fit")
    good, path = module.embeddings, callback.last_path
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        record = torch.load(path, weights_only=True)
        record["texts"] = [["something else"], ["irregular nodule"]]
        torch.save(record, path)
    with caplog.at_level(logging.WARNING, logger="usvl.text.cache"):
        callback.setup(None, module, "fit")
    assert callback.last_hit is False
    assert "encoding the descriptions again" in caplog.text
    assert torch.allclose(module.embeddings, good)
    callback.setup(None, module, "fit")
    assert callback.last_hit is True
    assert not list(path.parent.glob("*.tmp"))


def test_text_tower_is_released_after_encoding_and_reloads_when_needed(tmp_path, encoder):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "kept"), free_text_tower=False).setup(
        None, module, "fit")
    assert encoder._text_tower, "free_text_tower=False keeps the tower"
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"))
    callback.setup(None, module, "fit")
    assert not encoder._text_tower
    before, after = callback.last_memory_mb
    assert after < before
    assert encoder.encode_text_raw(["a nodule"]).shape == (1, 384)  # loads again on demand
    module.needs_text_tower = True
    TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "again")).setup(None, module, "fit")
    assert encoder._text_tower, "a module that needs the text tower keeps it"


# --- text ablations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 4, 6])
def test_shuffle_is_a_seeded_derangement(count):
    permutations = {tuple(derangement(count, seed)) for seed in range(20)}
    for permutation in permutations:
        assert sorted(permutation) == list(range(count))
        assert all(index != target for index, target in enumerate(permutation))
    assert derangement(count, 3) == derangement(count, 3)
    assert len(permutations) > 1 or count == 2
    assert derangement(1, 0) == [0]


def test_random_ablation_keeps_each_norm_and_is_seeded():
    embeddings = torch.randn(3, 4, 16) * torch.arange(1, 13).view(3, 4, 1)
    ablated, record = ablate(embeddings, "random", seed=5)
    assert record == {"ablation": "random", "seed": 5}
    assert torch.allclose(ablated.norm(dim=-1), embeddings.norm(dim=-1), rtol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(ablated, embeddings, dim=-1)
    assert cosine.abs().max() < 0.9
    assert torch.equal(ablate(embeddings, "random", seed=5)[0], ablated)
    assert not torch.equal(ablate(embeddings, "random", seed=6)[0], ablated)
    assert ablate(embeddings, "none")[0] is embeddings
    with pytest.raises(ValueError, match="ablation"):
        ablate(embeddings, "zero")


def test_shuffle_ablation_is_applied_after_the_cache_read_and_recorded(tmp_path, encoder, caplog):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    plain = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache")).setup(None, plain, "fit")
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"), ablation="shuffle")
    with caplog.at_level(logging.WARNING, logger="usvl.text.cache"):
        callback.setup(None, module, "fit")
    assert callback.last_hit is True
    assert "TEXT ABLATION 'shuffle'" in caplog.text and "benign <- malignant" in caplog.text
    assert torch.equal(module.embeddings, plain.embeddings[[1, 0]])
    stored = torch.load(callback.last_path, weights_only=True)["embeddings"]
    assert torch.equal(stored, plain.embeddings), "the cache keeps the true encoding"
    assert callback.state_dict()["permutation"] == [1, 0] == module.text_record["permutation"]
    with pytest.raises(ValueError, match="ablation"):
        TextEmbeddingCache(str(descriptions), ablation="zero")


def test_ablation_is_saved_in_the_checkpoint(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from usvl.models.encoders import TinyViTCLIP
    from usvl.models.heads import PromptSimilarityHead
    from usvl.tasks import ClassificationTask

    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"), ablation="random",
                                  ablation_seed=3)
    task = ClassificationTask(TinyViTCLIP(), head=PromptSimilarityHead, num_classes=2,
                              class_names=["benign", "malignant"], channels_last=False)
    batches = [{"image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), "label": torch.tensor([0, 1])}]
    trainer = pl.Trainer(max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("TextEmbeddingCache"))
    assert state["ablation"] == "random" and state["seed"] == 3
    true = torch.load(callback.last_path, weights_only=True)["embeddings"]
    saved = checkpoint["usvl"]["text_embeddings"]
    assert torch.allclose(saved.norm(dim=-1), true.norm(dim=-1), rtol=1e-5) and not torch.allclose(saved, true)


# --- prompt templates and refinements --------------------------------------------------------------------------------


def test_templates_expand_with_every_phrase():
    assert expand_templates(["An image of {}.", "{} on ultrasound."], ["a cyst", "a mass"]) == [
        "An image of a cyst.", "A cyst on ultrasound.", "An image of a mass.", "A mass on ultrasound."]


def test_descriptions_with_an_ensemble_and_plain_lists(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        "templates: ['An ultrasound image of {}.', '{} on ultrasound.']\n"
        "phrases: {benign: [a cyst]}\n"
        "classes: {benign: [A smooth oval nodule.], malignant: [An irregular nodule.]}\n")
    descriptions = load_descriptions(path)
    assert descriptions.classes == {
        "benign": ["A smooth oval nodule.", "An ultrasound image of a cyst.", "A cyst on ultrasound."],
        "malignant": ["An irregular nodule."]}
    assert descriptions.sentences["benign"] == ["A smooth oval nodule."]
    for shipped in ("thyroid_tirads", "breast_birads", "lymph_node", "prostate"):
        loaded = load_descriptions(f"configs/text/{shipped}.yaml")
        assert loaded.templates and loaded.provenance["date"] == "2026-11-29" and loaded.provenance["lexicon"]
        for name, texts in loaded.classes.items():
            assert len(texts) == len(loaded.sentences[name]) + len(loaded.templates) * len(loaded.phrases[name])
            assert not any("{}" in text for text in texts)


@pytest.mark.parametrize("yaml_text, message", [
    ("templates: ['no slot']\nphrases: {benign: [x]}\nclasses: {benign: [y]}\n", "exactly one"),
    ("templates: ['{} a']\nclasses: {benign: [y]}\n", "both 'templates'"),
    ("templates: ['{} a']\nphrases: {cyst: [x]}\nclasses: {benign: [y]}\n", "cyst"),
])
def test_bad_ensembles_are_rejected(tmp_path, yaml_text, message):
    path = tmp_path / "d.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        load_descriptions(path)


def test_refined_sentences_replace_the_descriptions(tmp_path, encoder):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    refined = tmp_path / "refined.jsonl"
    refined.write_text(json.dumps({"source": "smooth oval nodule", "refined": "An oval nodule with smooth margins.",
                                   "accepted": True, "model": "tiny-llm@abc", "date": "2026-11-29"}) + "\n")
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "cache"), refined=str(refined),
                                  free_text_tower=False)
    callback.setup(None, module, "fit")
    record = torch.load(callback.last_path, weights_only=True)
    assert record["texts"] == [["An oval nodule with smooth margins."], ["irregular nodule"]]
    assert "tiny-llm@abc" in record["provenance"]["refinement"]
    assert module.text_record["refined"] == str(refined)


def test_a_configured_refiner_runs_once_and_later_runs_read_its_cache(tmp_path, encoder, caplog):
    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    table = tmp_path / "static.jsonl"
    table.write_text(json.dumps({"source": "smooth oval nodule", "refined": "An oval nodule with smooth margins."})
                     + "\n")
    spec = {"name": "static", "path": str(table)}
    texts = []
    for _ in range(2):
        module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
        callback = TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "text"), refiner=spec,
                                      free_text_tower=False)
        with caplog.at_level(logging.INFO, logger="usvl.text"):
            callback.setup(None, module, "fit")
        texts.append(torch.load(callback.last_path, weights_only=True)["texts"])
    assert texts[0] == texts[1] == [["An oval nodule with smooth margins."], ["irregular nodule"]]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Refinement cache miss" in m for m in messages) == 1
    assert sum("Refinement cache hit" in m for m in messages) == 1
    assert sum("Text-embedding cache hit" in m for m in messages) == 1
    (refined,) = (tmp_path / "refined").glob("*.jsonl")
    assert module.text_record["refined"] == str(refined)
    table.write_text(json.dumps({"source": "smooth oval nodule", "refined": "A smooth, oval nodule."}) + "\n")
    module = RecordingModule(encoder=encoder, class_names=["benign", "malignant"])
    TextEmbeddingCache(str(descriptions), cache_dir=str(tmp_path / "text"), refiner=spec,
                       free_text_tower=False).setup(None, module, "fit")
    assert len(list((tmp_path / "refined").glob("*.jsonl"))) == 2  # an edited refiner input refines again


def test_refined_file_and_refiner_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        TextEmbeddingCache("d.yaml", refined="r.jsonl", refiner={"name": "static", "path": "r.jsonl"})


def test_refining_leaves_the_random_streams_as_they_were(tmp_path, monkeypatch):
    from usvl.text import refine_cache

    descriptions = write_descriptions(tmp_path / "d.yaml", ["smooth oval nodule"], ["irregular nodule"])
    table = tmp_path / "static.jsonl"
    table.write_text(json.dumps({"source": "irregular nodule", "refined": "An irregular nodule."}) + "\n")
    original = refine_cache.refine_texts

    def reseeding_refiner(*args, **kwargs):  # as an LLM's seeded generation does
        torch.manual_seed(1234)
        random.seed(1234)
        np.random.seed(1234)
        return original(*args, **kwargs)

    monkeypatch.setattr(refine_cache, "refine_texts", reseeding_refiner)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    refine_cache.cached_refinement(descriptions, {"name": "static", "path": str(table)}, tmp_path / "refined")
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
