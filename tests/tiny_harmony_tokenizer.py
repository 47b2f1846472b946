"""A small byte-level BPE tokenizer with gpt-oss's harmony special tokens and gpt-oss's own chat template (trained in
the test, nothing downloaded): the harmony counterpart of tiny_tokenizer.py."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from selfguard_jax.prompts import SAFEREMIND_REMINDER, SELF_REMINDER_SUFFIX, SELF_REMINDER_SYSTEM

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
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|return|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(folder)
    return fast
