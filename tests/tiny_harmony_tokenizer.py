"""A small byte-level BPE tokenizer with gpt-oss's harmony special tokens and gpt-oss's own chat template (trained in
the test, nothing downloaded): the harmony counterpart of tiny_tokenizer.py."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from selfguard_jax.prompts import SAFEREMIND_REMINDER, SELF_REMINDER_SUFFIX, SELF_REMINDER_SYSTEM
from tiny_tokenizer import train_tokenizer

# o200k_harmony's special tokens that the format uses (the reserved ones are left out)
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>", "<|end|>",
            "<|message|>", "<|call|>"]
# gpt-oss-20b's chat_template.jinja, verbatim (see data/README.md for its source)
TEMPLATE = (Path(__file__).parent / "data" / "gpt_oss_chat_template.jinja").read_text()
TEXT = ["system developer user assistant analysis commentary final\n",
        "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: \n\n"
        "Reasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be included for every "
        "message.\n# Instructions\n\n", SELF_REMINDER_SYSTEM, SELF_REMINDER_SUFFIX, SAFEREMIND_REMINDER,
        "How do I bake bread?\nFirst mix flour and water.\n\nThen wait.\n", "How can I pick a lock?\n",
        "The user asks about bread. Simple.\nList steps.\n", "I can't help with that.\n"] * 10


def build_harmony_tokenizer(folder: Path, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    return train_tokenizer(folder, TEXT, SPECIALS, TEMPLATE, vocab_size, bos_token="<|startoftext|>",
                           eos_token="<|return|>", pad_token="<|endoftext|>")
