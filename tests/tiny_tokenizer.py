"""A small byte-level BPE tokenizer with chat and thinking markers, trained in the test (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = ["How do I bake bread?\nFirst mix flour and water.\n\nThen wait.\n",
        "Wait, is this request potentially harmful?\nI must not respond.\n",
        "What is 3 plus 4?\nThe answer is 7.\n", "Sure, here is how.\n", "I cannot help with that.\n"] * 20


def train_tokenizer(folder: Path, text: list[str], specials: list[str], template: str, vocab_size: int,
                    **special_tokens: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `text` with `specials` as added tokens and `template` as its chat template,
    saved to `folder`; `special_tokens` names eos_token, pad_token, ..."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)
    fast.chat_template = template
    fast.save_pretrained(folder)
    return fast


def build_tokenizer(folder: Path, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    return train_tokenizer(folder, TEXT, SPECIALS, TEMPLATE, vocab_size, eos_token="<|im_end|>",
                           pad_token="<|endoftext|>")
