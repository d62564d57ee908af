"""Tiny text encoders (random weights), a word-level tokenizer and a small text dataset for the text tests."""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from transformers import BertTokenizerFast


WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house red blue green small big quick slow "
    "happy sad old new river hill road car train boat city park garden window door light dark morning night"
).split()


def word_tokenizer(tmp_path) -> BertTokenizerFast:
    """A BERT WordPiece tokenizer over `WORDS`."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    assert tokenizer.tokenize("the cat sat") == ["the", "cat", "sat"]
    return tokenizer


def sentences(n: int = 40, seed: int = 0) -> list[str]:
    """`n` sentences of 3 to 14 words: different lengths, so batches need padding."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def text_dataset(n: int = 40, seed: int = 0, pairs: bool = False) -> Dataset:
    columns = {"sentence": sentences(n, seed), "label": [i % 3 for i in range(n)]}
    if pairs:
        columns["other"] = sentences(n, seed + 1)
    return Dataset.from_dict(columns)


TEXT_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    vocab_size=len(WORDS) + 5,
    max_position_embeddings=64,
    num_labels=3,
    initializer_range=0.3,
)


def tiny_text_model(cls, config_cls, seed: int = 0, attn: str = "eager", **overrides):
    """A tiny stock text model with random weights and randomized LayerNorms/biases (stock init sets them to 1/0)."""
    torch.manual_seed(seed)
    extra = {"pad_token_id": 0} if config_cls.model_type in ("roberta", "xlm-roberta") else {}
    config = config_cls(**{**TEXT_TINY, **extra, **overrides})
    config._attn_implementation = attn
    model = cls(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                param.normal_(0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
    return model.eval()


def encode(tokenizer, texts: list[str]) -> dict:
    return dict(tokenizer(texts, padding="longest", return_tensors="pt"))
