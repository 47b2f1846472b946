"""Self-Guard's Stage 2 in one call: contrastive prompt pairs, vector extraction and its provenance.

The CLI's `extract`, the eval runner and the demo all come through here, so the pairs they build are the same.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from selfguard_jax import chat, extract
from selfguard_jax.prompts import SELF_REMINDER_SYSTEM, SUFFIX_PRESETS
from selfguard_jax.vector_files import VectorMeta


@dataclasses.dataclass(frozen=True)
class SelfGuardVectors:
    vectors: np.ndarray        # [L, D]: v[k] read at hidden_states[k + 1], added at the input of block k
    residual_norms: np.ndarray  # [L] mean residual norm at the read position (for the over-steering check)
    meta: VectorMeta


def prompt_pairs(tokenizer, questions: Sequence[str], suffix: str = "chatgpt") -> tuple[list, list]:
    """(positive, negative) prompt ids: each question with the Stage-1 Self-Reminder prompt and without it,
    both chat-templated up to the assistant's generation prompt."""
    if suffix not in SUFFIX_PRESETS:
        raise ValueError(f"suffix {suffix!r} is unknown; use one of {sorted(SUFFIX_PRESETS)}.")
    pos = [chat.chat_prompt(tokenizer, q, system=SELF_REMINDER_SYSTEM, user_suffix=SUFFIX_PRESETS[suffix])
           for q in questions]
    return pos, [chat.chat_prompt(tokenizer, q) for q in questions]


def extract_selfguard(lm, questions: Sequence[str], *, model_id: str, dataset_name: str, suffix: str = "chatgpt",
                      method: str = "mean_diff", batch_size: int = 16, read: str = "last_token") -> SelfGuardVectors:
    """The Self-Guard steering vectors of `lm` from `questions`, with the metadata a vector file records;
    `read` "authors" reads the states as the authors' trainer did (extract.extract)."""
    if lm.tokenizer is None:
        raise ValueError(f"{model_id} has no tokenizer; Self-Guard extraction chat-templates text questions.")
    if not questions:
        raise ValueError(f"{dataset_name} holds no questions; extraction needs at least one pair.")
    pos, neg = prompt_pairs(lm.tokenizer, questions, suffix)
    vectors, norms = extract.extract(lm, pos, neg, method=method, batch_size=batch_size, read=read)
    meta = VectorMeta(
        model_id=model_id, config_hash=lm.config.config_hash(), num_layers=lm.config.num_layers,
        hidden_size=lm.config.hidden_size, method=method,
        position="last_prompt_token" if read == "last_token" else "authors_trainer_last_column",
        recipe_prompt=f"system: {SELF_REMINDER_SYSTEM} | user suffix: {SUFFIX_PRESETS[suffix]}",
        dataset_name=dataset_name, dataset_size=len(questions),
        extra={"residual_norms": [round(float(x), 4) for x in norms], "dtype": str(lm.dtype), "read": read})
    return SelfGuardVectors(np.asarray(vectors), np.asarray(norms), meta)
