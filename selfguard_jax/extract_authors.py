"""Hidden states read as the Self-Guard authors' vectors were: IBM activation-steering's trainer
(`SteeringVector.train` -> `read_representations` -> `batched_get_hiddens`).

That trainer sets the tokenizer's pad id to 0, interleaves the pairs (positive 0, negative 0, positive 1,
...), runs consecutive batches of `batch_size` (16 in the authors' run.sh) right-padded to the batch's
longest prompt, with transformers' default positions (0..T-1, pads included) and a padding mask, and reads
`hidden_states[k + 1][row, -1]`: the last column of the batch, a pad token (id 0) for every row shorter than
the batch's longest. This module reproduces that reading; `extract.last_token_states` (the default) reads each
prompt's true last token instead.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from selfguard_jax.buckets import bucket
from selfguard_jax.model import hf_hidden_states

AUTHORS_PAD_ID = 0
AUTHORS_BATCH_SIZE = 16


@functools.partial(jax.jit, static_argnames=("cfg", "scan_layers"))
def _states_at(params, cfg, ids_BT, mask_BT, read_at, scan_layers):
    """[L + 1, B, D] float32 at column `read_at` of every row, positions 0..T-1 (transformers' default)."""
    B, T = ids_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    return hf_hidden_states(params, cfg, ids_BT, mask_BT, at_B=jnp.full((B,), read_at, jnp.int32),
                            scan_layers=scan_layers, positions_BT=positions_BT)


def authors_states(lm, prompts: Sequence[Sequence[int]], batch_size: int = AUTHORS_BATCH_SIZE,
                   pad_id: int = AUTHORS_PAD_ID, desc: str | None = None) -> np.ndarray:
    """Hidden states [N, L + 1, D] float32 of `prompts` in the given order, as the trainer reads them: batches
    of consecutive prompts, right-padded with `pad_id`, read at the batch's last column. Batches are padded
    further to a length bucket for one compile per bucket: causal attention keeps that column unchanged."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token, and at least one prompt is needed.")
    out = np.zeros((len(prompts), lm.config.num_layers + 1, lm.config.hidden_size), np.float32)
    steps = range(0, len(prompts), batch_size)
    for start in tqdm(steps, desc=desc, disable=desc is None or len(steps) < 2, unit="batch"):
        batch = prompts[start:start + batch_size]
        longest = max(len(p) for p in batch)
        T = bucket(longest, 16)
        ids = np.full((batch_size, T), pad_id, np.int32)
        mask = np.zeros((batch_size, T), np.int32)
        for r, p in enumerate(batch):
            ids[r, :len(p)], mask[r, :len(p)] = p, 1
        mask[len(batch):, 0] = 1  # filler rows: one token, discarded
        states = _states_at(lm.params, lm.config, jnp.asarray(ids), jnp.asarray(mask), jnp.int32(longest - 1),
                            lm.scan_layers)
        out[start:start + len(batch)] = np.asarray(states).transpose(1, 0, 2)[:len(batch)]
    return out


def authors_pair_states(lm, positive_ids: Sequence[Sequence[int]], negative_ids: Sequence[Sequence[int]],
                        batch_size: int = AUTHORS_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(positive [N, L + 1, D], negative [N, L + 1, D]) read from the pairs interleaved as the trainer batches them."""
    if len(positive_ids) != len(negative_ids):
        raise ValueError(f"{len(positive_ids)} positives but {len(negative_ids)} negatives: the authors' trainer "
                         "reads contrast pairs.")
    interleaved = [p for pair in zip(positive_ids, negative_ids) for p in pair]
    states = authors_states(lm, interleaved, batch_size, desc="pairs (authors' reading)")
    return states[0::2], states[1::2]
