"""Attention over keys and values laid out [B, K, S, H]: one fused masked attention, and a blockwise online-softmax
attention that reads only the filled blocks of a long cache. Scores and softmax in float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_INF = float(jnp.finfo(jnp.float32).min)
ATTENTION_BLOCK = 512  # cache slots a decode step reads at a time, on caches of two blocks or more


def attention(q_BTNH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, mask_BTS: jax.Array,
              sinks_N: jax.Array | None = None) -> jax.Array:
    """Grouped-query attention; scores and softmax in float32, probabilities cast back for the value product.
    `sinks_N` (gpt-oss): one learned logit per head that joins the softmax and carries no value."""
    B, T, N, H = q_BTNH.shape
    K = k_BKSH.shape[1]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, k_BKSH, preferred_element_type=jnp.float32)
    scores = scores * (H ** -0.5)
    scores = jnp.where(mask_BTS[:, None, None, :, :], scores, NEG_INF)
    if sinks_N is not None:
        sink = jnp.broadcast_to(sinks_N.astype(jnp.float32).reshape(1, K, N // K, 1, 1), (*scores.shape[:-1], 1))
        probs = jax.nn.softmax(jnp.concatenate([scores, sink], axis=-1), axis=-1)[..., :-1].astype(v_BKSH.dtype)
    else:
        probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSH.dtype)
    out = jnp.einsum("bkgts,bksh->btkgh", probs, v_BKSH)
    return out.reshape(B, T, N, H)


def attention_blocks(q_BTNH: jax.Array, k_cache: jax.Array | tuple, v_cache: jax.Array | tuple, mask_BTS: jax.Array, attend_len: jax.Array,
                     block: int = ATTENTION_BLOCK, sinks_N: jax.Array | None = None,
                     attend_from: jax.Array | None = None) -> jax.Array:
    """Attention over the cache's first `attend_len` slots, rounded up to whole blocks, with an online softmax:
    a block past the filled ones is skipped under `lax.cond`, so a step costs what rows have filled, not the
    preallocated length. The cache is a tuple of [B, K, block, H] arrays (`block_cache`: each block a buffer of
    its own, read in place) or one [B, K, S, H] array (each block a slice, which XLA may copy). A row's result
    does not depend on how many blocks past its own filled ones are read: masked blocks leave the sums as they
    are, bit for bit. `attend_from` (a sliding-window layer): a slot before it is masked for every row, so the
    blocks wholly before it are skipped the same way."""
    B, T, N, H = q_BTNH.shape
    if isinstance(k_cache, tuple):
        block, n = k_cache[0].shape[2], len(k_cache)
    else:
        n = k_cache.shape[2] // block
        if k_cache.shape[2] % block:
            raise ValueError(f"a cache of {k_cache.shape[2]} slots is not a whole number of {block}-slot blocks; "
                             "size it with kv_cache.cache_length.")
    K = (k_cache[0] if isinstance(k_cache, tuple) else k_cache).shape[1]
    G = N // K
    q_BTKGH = q_BTNH.reshape(B, T, K, G, H)

    def part(x, j: int) -> jax.Array:
        return x[j] if isinstance(x, tuple) else x[:, :, j * block:(j + 1) * block]

    def update(j: int, carry):
        m, l, acc = carry
        valid = mask_BTS[:, None, None, :, j * block:(j + 1) * block]
        s = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, part(k_cache, j), preferred_element_type=jnp.float32)
        s = jnp.where(valid, s * (H ** -0.5), NEG_INF)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.where(valid, jnp.exp(s - m_new[..., None]), 0.0)
        scale = jnp.exp(m - m_new)
        v = part(v_cache, j)
        pv = jnp.einsum("bkgts,bksh->bkgth", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return m_new, l * scale + jnp.sum(p, axis=-1), acc * scale[..., None] + pv

    if sinks_N is None:
        carry = (jnp.full((B, K, G, T), NEG_INF, jnp.float32), jnp.zeros((B, K, G, T), jnp.float32),
                 jnp.zeros((B, K, G, T, H), jnp.float32))
    else:  # the sink starts the running softmax: max at its logit, its exp (one) in the sum, nothing in the values
        sink = jnp.broadcast_to(sinks_N.astype(jnp.float32).reshape(1, K, G, 1), (B, K, G, T))
        carry = (sink, jnp.ones((B, K, G, T), jnp.float32), jnp.zeros((B, K, G, T, H), jnp.float32))
    n_used = (attend_len + block - 1) // block
    if attend_from is None:
        carry = update(0, carry)
    for j in range(0 if attend_from is not None else 1, n):
        read = j < n_used if attend_from is None else (j < n_used) & ((j + 1) * block > attend_from)
        carry = jax.lax.cond(read, functools.partial(update, j), lambda c: c, carry)
    _, l, acc = carry
    dtype = (v_cache[0] if isinstance(v_cache, tuple) else v_cache).dtype
    return (acc / l[..., None]).astype(dtype).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


