"""LongRoPE's switch from short to long factors in a KV cache, as transformers' generate makes it.

A LongRoPE model (Phi-3, Phi-4) rotates with its short factors while a sequence fits the original context and
with its long ones past it. transformers' generate drops its cache at the first step past the original context and
recomputes the whole sequence with the long factors; from then on every key is long. Here the cached keys of a row
are re-rotated in place at that step instead: a rope rotation by angle a followed by one by b is the rotation by
a + b, so turning a short key into a long one is a rotation by position * (long - short inverse frequency) (the
attention factor, common to both, carries over).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from selfguard_jax.config import ModelConfig, rope_inv_freq


def switch_step(cfg: ModelConfig, positions_BT: jax.Array, valid_BS: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """(slot positions [B, S], rows crossing [B]) for a decode step of a LongRoPE model, None for any other model:
    a row crosses when its new token is the first past the original context; a slot's position is the number of
    valid slots before it (pads and spliced-out slots hold none)."""
    rope = cfg.rope
    if rope["rope_type"] != "longrope":
        return None
    crossing_B = positions_BT[:, -1] == rope["original_max_position_embeddings"]
    return jnp.cumsum(valid_BS, axis=-1, dtype=jnp.int32) - 1, crossing_B


def to_long(cfg: ModelConfig, k_cache, switch: tuple[jax.Array, jax.Array]):
    """The cache's keys (one [B, K, S, H] slab, or a blocked cache's row groups of [B / groups, K, block, H]
    blocks) with the rows that cross re-rotated from short to long factors; only when a row crosses (lax.cond)."""
    positions_BS, crossing_B = switch
    short, _ = rope_inv_freq(cfg)
    long, _ = rope_inv_freq(cfg, long=True)
    delta = jnp.asarray((long - short).astype(np.float32))

    def turn(k_BKSH: jax.Array, pos_BS: jax.Array, rows_B: jax.Array) -> jax.Array:
        R = 2 * delta.shape[0]
        freqs = pos_BS.astype(jnp.float32)[..., None] * delta
        emb = jnp.concatenate([freqs, freqs], axis=-1)[:, None]  # [B, 1, S, R]
        cos, sin = jnp.cos(emb).astype(k_BKSH.dtype), jnp.sin(emb).astype(k_BKSH.dtype)
        x, rest = k_BKSH[..., :R], k_BKSH[..., R:]
        out = x * cos + jnp.concatenate([-x[..., R // 2:], x[..., :R // 2]], axis=-1) * sin
        out = jnp.concatenate([out, rest], axis=-1) if R < k_BKSH.shape[-1] else out
        return jnp.where(rows_B[:, None, None, None], out, k_BKSH)

    def all_rows(k):
        if not isinstance(k, tuple):
            return turn(k, positions_BS, crossing_B)
        out, b0 = [], 0
        for blocks in k:  # row groups of blocks
            n, s0, group = blocks[0].shape[0], 0, []
            for a in blocks:
                group.append(turn(a, positions_BS[b0:b0 + n, s0:s0 + a.shape[2]], crossing_B[b0:b0 + n]))
                s0 += a.shape[2]
            out.append(tuple(group))
            b0 += n
        return tuple(out)

    return jax.lax.cond(jnp.any(crossing_B), all_rows, lambda k: k, k_cache)
