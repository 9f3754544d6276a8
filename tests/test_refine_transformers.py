"""The transformers refiner on a tiny random GPT-2 saved to a folder and loaded by path, as a user's local model."""

import hashlib

import pytest

from usvl.text.refine import refine_texts
from usvl.text.refiners import TransformersRefiner

SOURCES = ["A solid hypoechoic nodule.", "An oval mass with smooth margins and no calcifications.",
           "Normal breast tissue."]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def save_tiny_gpt2(folder, chat_template=None):
    """A one-layer random GPT-2 with a word-level tokenizer built offline, saved like a hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({w for s in SOURCES + ["Rewrite", "Text", "the", "sentence"] for w in s.replace(".", " .").split()})
    roles = ["<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {token: index for index, token in enumerate(["<unk>", "<pad>", "<eos>"] + roles + words + [":", ","])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>", additional_special_tokens=roles)
    if chat_template:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=1, n_head=2, initializer_range=0.5,
                        eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"], bos_token_id=vocab["<eos>"])
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), CHAT_TEMPLATE)


def test_greedy_batched_generation_matches_one_by_one_and_records_the_weights_hash(tiny_gpt2):
    batched = TransformersRefiner(str(tiny_gpt2), max_new_tokens=6, batch_size=3)
    single = TransformersRefiner(str(tiny_gpt2), max_new_tokens=6, batch_size=1)
    outputs = batched.generate(SOURCES, "Rewrite the sentence")
    assert outputs == single.generate(SOURCES, "Rewrite the sentence")
    assert all(isinstance(text, str) for text in outputs) and any(outputs)
    records, summary = refine_texts([{"text": s} for s in SOURCES], batched, "Rewrite the sentence")
    weights = tiny_gpt2 / "model.safetensors"
    assert records[0]["model"]["sha256"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert records[0]["settings"] == {"max_new_tokens": 6, "do_sample": False, "seed": 0, "batch_size": 3}
    assert summary.total == 3 and records[0]["refiner"] == "transformers"


def test_the_chat_template_is_used_when_the_tokenizer_has_one(tiny_gpt2, tmp_path):
    templated = TransformersRefiner(str(tiny_gpt2), max_new_tokens=2)
    assert templated.prompt("Normal breast tissue.", "Rewrite") == \
        "<|system|> Rewrite <|user|> Normal breast tissue. <|assistant|>"
    plain = TransformersRefiner(str(save_tiny_gpt2(tmp_path / "plain")), max_new_tokens=2)
    assert plain.prompt("Normal breast tissue.", "Rewrite") == "Rewrite\n\nText: Normal breast tissue.\nRewritten:"
    assert len(plain.generate(SOURCES[:2], "Rewrite")) == 2


def test_seeded_sampling_repeats_with_the_same_seed(tiny_gpt2):
    def sample(seed):
        refiner = TransformersRefiner(str(tiny_gpt2), max_new_tokens=8, do_sample=True, temperature=1.5, seed=seed)
        return refiner.generate(SOURCES, "Rewrite")

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
