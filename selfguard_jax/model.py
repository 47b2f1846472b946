"""The decoder-only transformer (Llama, Qwen2, Qwen3, Mistral, Qwen3-MoE) as pure functions over nested params.

Params are a plain nested dict (their table: `weights.py`). `params["layers"]` comes in two layouts: stacked, a
dict whose leaves carry a leading layer axis [L, ...] (the layout `checkpoint.py` reads and writes; the blocks
run under `lax.scan`), or per-layer, a tuple of L dicts of plain arrays (the blocks run unrolled). A scanned step
slices each block's weights out of the stacked arrays, which XLA:CPU materialises as a copy every step, so decode
there is about 2x faster per-layer (BENCHMARKS.md); compile time is the price.

Entry points: `forward` (logits of every position), `prefill` (last logits and a KV cache), `decode_step` (one
token per row against the cache, written in place) and `hidden_states` (block outputs). All run the blocks
through one fold, `_blocks`; `Transformer` is a linen module binding the same params.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from selfguard_jax.config import ModelConfig, rope_inv_freq
from selfguard_jax.moe import moe_mlp
from selfguard_jax.sharding import constrain
from selfguard_jax.weights import KV_AXES, heterogeneous, layer_slice, layers_are_stacked, weight_table

Params = dict[str, Any]
NEG_INF = float(jnp.finfo(jnp.float32).min)
ATTENTION_BLOCK = 512  # cache slots a decode step reads at a time, on caches of two blocks or more


@struct.dataclass
class KVCache:
    """Keys and values for every layer in the layout of the layer params: [L, B, K, S, H] arrays when stacked,
    tuples of L [B, K, S, H] arrays when per-layer, or, cut for the blockwise attention (`block_cache`), tuples of
    L tuples of row groups of tuples of [B / groups, K, block, H] blocks. The slot axis sits next to the head dim,
    so attention reads each head's keys contiguously, with no transpose."""

    k: Any
    v: Any


class SteerInput(NamedTuple):
    """What the model adds at the input of block k: gate_BT[b, t] * add_LD[k] (add_LD already scaled)."""

    add_LD: jax.Array
    gate_BT: jax.Array


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight, as transformers does."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w * x32.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions_BT: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, H] in the half-split layout (HF's rotate_half), computed in float32."""
    inv_freq, attn_factor = rope_inv_freq(cfg)
    freqs = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (jnp.cos(emb) * attn_factor).astype(dtype), (jnp.sin(emb) * attn_factor).astype(dtype)


def apply_rope(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    half = x_BTNH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], axis=-1)
    return x_BTNH * cos_BTH[:, :, None, :] + rotated * sin_BTH[:, :, None, :]


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


def attention_blocks(q_BTNH: jax.Array, k_cache: Any, v_cache: Any, mask_BTS: jax.Array, attend_len: jax.Array,
                     block: int = ATTENTION_BLOCK, sinks_N: jax.Array | None = None) -> jax.Array:
    """Attention over the cache's first `attend_len` slots, rounded up to whole blocks, with an online softmax:
    a block past the filled ones is skipped under `lax.cond`, so a step costs what rows have filled, not the
    preallocated length. The cache is a tuple of [B, K, block, H] arrays (`block_cache`: each block a buffer of
    its own, read in place) or one [B, K, S, H] array (each block a slice, which XLA may copy). A row's result
    does not depend on how many blocks past its own filled ones are read: masked blocks leave the sums as they
    are, bit for bit."""
    B, T, N, H = q_BTNH.shape
    if isinstance(k_cache, tuple):
        block, n = k_cache[0].shape[2], len(k_cache)
    else:
        n = k_cache.shape[2] // block
        if k_cache.shape[2] % block:
            raise ValueError(f"a cache of {k_cache.shape[2]} slots is not a whole number of {block}-slot blocks; "
                             "size it with decode.cache_length.")
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
    carry = update(0, carry)
    for j in range(1, n):
        carry = jax.lax.cond(j < n_used, functools.partial(update, j), lambda c: c, carry)
    _, l, acc = carry
    dtype = (v_cache[0] if isinstance(v_cache, tuple) else v_cache).dtype
    return (acc / l[..., None]).astype(dtype).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def block_cache(cache: KVCache, block: int = ATTENTION_BLOCK, groups: int = 1) -> KVCache:
    """A per-layer cache with each layer's [B, K, S, H] slab cut into `groups` row groups of S / block arrays of
    [B / groups, K, block, H], so the blockwise attention reads every block in place (a slice of one buffer is a
    copy on XLA:CPU) and each row group reads only as far as its own rows have filled."""
    if not isinstance(cache.k, tuple):
        raise ValueError("only a per-layer cache (tuples of [B, K, S, H]) can be cut into blocks.")
    B, S = cache.k[0].shape[0], cache.k[0].shape[2]
    if S % block or B % groups:
        raise ValueError(f"a cache of {B} rows and {S} slots cannot be cut into {groups} row groups of "
                         f"{block}-slot blocks.")
    n = B // groups

    def cut(a: jax.Array) -> tuple:
        return tuple(tuple(a[g:g + n, :, j:j + block] for j in range(0, S, block)) for g in range(0, B, n))

    return KVCache(k=tuple(map(cut, cache.k)), v=tuple(map(cut, cache.v)))


def write_prompt(cache: KVCache, kv: KVCache, row: jax.Array) -> KVCache:
    """The cache with one row's prompt keys/values (kv, [1, K, T, H] per layer, as `prefill` returns them) written
    into row `row`, slots [0, T): a slot refilled with a new request."""
    def put(c: jax.Array, n: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (0,) * (c.ndim - 4) + (row, 0, 0, 0))

    if not (isinstance(cache.k, tuple) and isinstance(cache.k[0], tuple)):
        return jax.tree.map(put, cache, kv)

    def spread(groups: tuple, n_1KTH: jax.Array) -> tuple:  # blocked: the prompt spans the first blocks
        rows, block, T = groups[0][0].shape[0], groups[0][0].shape[2], n_1KTH.shape[2]
        out = []
        for g, blocks in enumerate(groups):
            local = row - g * rows
            local = jnp.where((local >= 0) & (local < rows), local, rows)  # another group's row: dropped
            out.append(tuple(a.at[local, :, :min(block, T - j * block)].set(
                n_1KTH[0, :, j * block:(j + 1) * block].astype(a.dtype), mode="drop") if j * block < T else a
                for j, a in enumerate(blocks)))
        return tuple(out)

    return KVCache(k=tuple(map(spread, cache.k, kv.k)), v=tuple(map(spread, cache.v, kv.v)))


def attend_blocked(q_BTNH: jax.Array, k_new_BKTH: jax.Array, v_new_BKTH: jax.Array, kv_in: tuple, mask_BTS: jax.Array,
                   write_index: jax.Array, attend_len: jax.Array | None,
                   sinks_N: jax.Array | None = None) -> tuple[jax.Array, tuple, tuple]:
    """One decode step's write and attention over a blocked cache (`block_cache`), row group by row group: each
    group reads the blocks up to its own longest `attend_len` (scalar or [B]). Returns (attention [B, T, N, H],
    the layer's key groups, its value groups)."""
    k_groups, v_groups = kv_in
    B, n = q_BTNH.shape[0], k_groups[0][0].shape[0]
    index_B = jnp.broadcast_to(write_index, (B,))
    fill_B = jnp.broadcast_to(sum(a.shape[2] for a in k_groups[0]) if attend_len is None else attend_len, (B,))
    outs, keys, values = [], [], []
    for g, (k_blocks, v_blocks) in enumerate(zip(k_groups, v_groups)):
        r = slice(g * n, (g + 1) * n)
        keys.append(write_blocks(k_blocks, k_new_BKTH[r], index_B[r]))
        values.append(write_blocks(v_blocks, v_new_BKTH[r], index_B[r]))
        outs.append(attention_blocks(q_BTNH[r], keys[-1], values[-1], mask_BTS[r], jnp.max(fill_B[r]),
                                     sinks_N=sinks_N))
    return jnp.concatenate(outs), tuple(keys), tuple(values)


def write_blocks(blocks: tuple, new_BKTH: jax.Array, index: jax.Array) -> tuple:
    """A blocked cache slab with one new slot per row written at slot `index` (scalar or [B]) of the whole, in
    place: each block takes the rows whose slot falls in it."""
    B, block = new_BKTH.shape[0], blocks[0].shape[2]
    index_B = jnp.broadcast_to(index, (B,))
    rows = jnp.arange(B)
    out = []
    for j, a in enumerate(blocks):
        local = index_B - j * block
        local = jnp.where((local >= 0) & (local < block), local, block)  # out of range: dropped
        out.append(a.at[rows, :, local].set(new_BKTH[:, :, 0].astype(a.dtype), mode="drop"))
    return tuple(out)


def write_slots(cache_BKSH: jax.Array, new_BKTH: jax.Array, index: jax.Array) -> jax.Array:
    """The cache with `new` written at slot `index` (one for every row) or `index[b]` (one per row), in place."""
    new_BKTH = new_BKTH.astype(cache_BKSH.dtype)
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(cache_BKSH, new_BKTH, (0, 0, index, 0))
    return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))(cache_BKSH, new_BKTH, index)


def block(cfg: ModelConfig, lp: Params, x_BTD: jax.Array, cos: jax.Array, sin: jax.Array, mask_BTS: jax.Array,
          kv_in: tuple[jax.Array, jax.Array] | None, write_index: jax.Array | None,
          attend_len: jax.Array | None = None):
    """One decoder block. Without kv_in it attends over its own keys; with it, writes them at write_index first.

    Returns the block output and this block's (k, v) [B, K, S, H]: the new tokens' keys without a cache, the
    updated cache with.
    """
    h = rms_norm(x_BTD, lp["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dnh->btnh", h, lp["q"])
    k = jnp.einsum("btd,dkh->btkh", h, lp["k"])
    v = jnp.einsum("btd,dkh->btkh", h, lp["v"])
    if cfg.qkv_bias:
        q, k, v = q + lp["q_bias"], k + lp["k_bias"], v + lp["v_bias"]
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_BKTH, v_BKTH = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    sinks = lp.get("sinks")
    if kv_in is None:
        keys, values = k_BKTH, v_BKTH
        attn_BTNH = attention(q, keys, values, mask_BTS, sinks)
    elif isinstance(kv_in[0], tuple):  # a blocked cache (block_cache)
        attn_BTNH, keys, values = attend_blocked(q, k_BKTH, v_BKTH, kv_in, mask_BTS, write_index, attend_len, sinks)
    else:
        keys = write_slots(kv_in[0], k_BKTH, write_index)
        values = write_slots(kv_in[1], v_BKTH, write_index)
        if attend_len is None or keys.shape[2] < 2 * ATTENTION_BLOCK:  # short caches: one fused attention
            attn_BTNH = attention(q, keys, values, mask_BTS, sinks)
        else:
            attn_BTNH = attention_blocks(q, keys, values, mask_BTS, jnp.max(attend_len), sinks_N=sinks)
    kv_out = (keys, values)
    B, T, N, H = attn_BTNH.shape
    # one [B*T, N*H] x [N*H, D] product: XLA:CPU transposed the [N, H, D] weight (a copy every step) otherwise
    out = jnp.einsum("btx,xd->btd", attn_BTNH.reshape(B, T, N * H), lp["o"].reshape(N * H, -1))
    if cfg.o_bias:
        out = out + lp["o_bias"]
    x_BTD = x_BTD + out
    h = rms_norm(x_BTD, lp["mlp_norm"], cfg.rms_norm_eps)
    if "router" in lp:  # a mixture-of-experts block
        return x_BTD + moe_mlp(cfg, lp, h), kv_out
    gate = jnp.einsum("btd,df->btf", h, lp["gate"])
    up = jnp.einsum("btd,df->btf", h, lp["up"])
    x_BTD = x_BTD + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, lp["down"])
    return x_BTD, kv_out


def forward(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, positions_BT: jax.Array, mask_BTS: jax.Array,
            *, steer: SteerInput | None = None, scan_layers: bool = True) -> jax.Array:
    """Logits [B, T, V] float32 of every position. mask_BTS[b, t, s] says whether token t of row b may attend to
    token s (causal and padding for a padded batch, `causal_mask`; training adds segment boundaries)."""
    x, _, _ = _blocks(params, cfg, tokens_BT, positions_BT, mask_BTS, steer=steer, scan_layers=scan_layers)
    return _logits(params, cfg, x)


def prefill(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, *,
            steer: SteerInput | None = None, cache_len: int, scan_layers: bool = True) -> tuple[jax.Array, KVCache]:
    """Run left-padded prompts: (logits [B, V] float32 at the last position, a KVCache of `cache_len` slots holding
    the prompts' keys/values in its first T slots, zeros after). Positions come from `mask_BT`. On a mesh in
    context (`jax.set_mesh`) the cache is laid out by KV_AXES."""
    T = tokens_BT.shape[1]
    if cache_len < T:
        raise ValueError(f"cache_len {cache_len} is shorter than the prompt length {T}.")
    x, kv, _ = _blocks(params, cfg, tokens_BT, positions_from_mask(mask_BT), causal_mask(mask_BT), steer=steer,
                       keep_kv=True, scan_layers=scan_layers)

    def grow(a: jax.Array) -> jax.Array:
        pad = [(0, 0)] * a.ndim
        pad[-2] = (0, cache_len - T)
        return constrain(jnp.pad(a, pad), KV_AXES[-a.ndim:])

    return _logits(params, cfg, x[:, -1:])[:, 0], jax.tree.map(grow, kv)


def decode_step(params: Params, cfg: ModelConfig, tokens_B: jax.Array, positions_B: jax.Array,
                kv_valid_BS: jax.Array, cache: KVCache, write_index: jax.Array, *, steer: SteerInput | None = None,
                attend_len: jax.Array | None = None, scan_layers: bool = True) -> tuple[jax.Array, KVCache]:
    """One token per row: its keys/values are written into slot `write_index` of the cache (a scalar, or one slot
    per row; in place under jit), then it attends to the slots `kv_valid_BS` marks (the new slot included), reading
    only the first `attend_len` slots when given (a scalar, or one per row: a blocked cache's row groups then
    each read as far as their own rows). Returns (logits [B, V] float32, the cache). `steer.gate_BT` is
    [B, 1]."""
    x, cache, _ = _blocks(params, cfg, tokens_B[:, None], positions_B[:, None], kv_valid_BS[:, None, :], steer=steer,
                          cache=cache, write_index=write_index, attend_len=attend_len, scan_layers=scan_layers)
    return _logits(params, cfg, x)[:, 0], cache


def hidden_states(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, *,
                  at_B: jax.Array | None = None, steer: SteerInput | None = None,
                  scan_layers: bool = True) -> jax.Array:
    """Block outputs [L, B, T, D] in the params dtype (not final-normed), or [L, B, D] at token at_B[b] of each
    row when `at_B` is given (extraction needs only that). Positions come from `mask_BT`."""
    def pick(x_BTD: jax.Array) -> jax.Array:
        return x_BTD if at_B is None else x_BTD[jnp.arange(x_BTD.shape[0]), at_B]

    _, _, picked = _blocks(params, cfg, tokens_BT, positions_from_mask(mask_BT), causal_mask(mask_BT), steer=steer,
                           pick=pick, scan_layers=scan_layers)
    return picked


def hf_hidden_states(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, *,
                     at_B: jax.Array | None = None, steer: SteerInput | None = None,
                     scan_layers: bool = True) -> jax.Array:
    """Transformers' `output_hidden_states` as float32 [L + 1, B, T, D] ([L + 1, B, D] at token at_B[b] of each
    row): [0] the embeddings, [k + 1] the output of block k, the last one final-normed as transformers returns it."""
    blocks = hidden_states(params, cfg, tokens_BT, mask_BT, at_B=at_B, steer=steer, scan_layers=scan_layers)
    embeds = jnp.take(params["embed"], tokens_BT if at_B is None else tokens_BT[jnp.arange(len(at_B)), at_B], axis=0)
    last = rms_norm(blocks[-1], params["final_norm"], cfg.rms_norm_eps)
    return jnp.concatenate([embeds[None], blocks[:-1], last[None]]).astype(jnp.float32)


def _logits(params: Params, cfg: ModelConfig, x_BTD: jax.Array) -> jax.Array:
    x_BTD = rms_norm(x_BTD, params["final_norm"], cfg.rms_norm_eps)
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("btd,dv->btv", x_BTD, head, preferred_element_type=jnp.float32)


def _blocks(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, positions_BT: jax.Array, mask_BTS: jax.Array, *,
            steer: SteerInput | None = None, cache: KVCache | None = None, write_index: jax.Array | None = None,
            attend_len: jax.Array | None = None, keep_kv: bool = False,
            pick: Callable[[jax.Array], jax.Array] | None = None, scan_layers: bool = True):
    """Embed, then the L blocks as one fold. Returns (x_BTD, kv, picked): kv is the cache with the new tokens
    written at `write_index` when a cache is given, else this call's keys/values when `keep_kv` (in the layout of
    the layer params), else None; picked is pick(block output) stacked [L, ...], or None without `pick`."""
    if cfg.sliding_window is not None and mask_BTS.shape[-1] > cfg.sliding_window:
        raise ValueError(f"sequence length {mask_BTS.shape[-1]} exceeds the sliding window {cfg.sliding_window} "
                         "of this config; sliding-window attention is not implemented, use shorter inputs.")
    x_BTD = jnp.take(params["embed"], tokens_BT, axis=0)
    cos, sin = rope_tables(cfg, positions_BT, x_BTD.dtype)
    layer_mask = _windowed_masks(cfg, positions_BT, mask_BTS, cache is not None)

    def body(carry, lp, add_D, i):
        x, cache = carry
        if add_D is not None:
            x = x + (steer.gate_BT[:, :, None] * add_D[None, None, :]).astype(x.dtype)
        kv_in = None if cache is None else (cache.k[i], cache.v[i])
        x, (k, v) = block(cfg, lp, x, cos, sin, layer_mask(i), kv_in, write_index, attend_len)
        if cache is not None:
            cache = _set_layer(cache, i, k, v)
        kv = KVCache(k, v) if keep_kv and cache is None else None
        return (x, cache), (kv, None if pick is None else pick(x))

    add_LD = None if steer is None else steer.add_LD
    (x_BTD, cache), (kv, picked) = _fold(params, cfg, scan_layers, body, (x_BTD, cache), add_LD)
    if kv is not None and layers_are_stacked(params) and isinstance(kv.k, tuple):  # unrolled over stacked params
        kv = KVCache(k=jnp.stack(kv.k), v=jnp.stack(kv.v))
    if isinstance(picked, tuple):
        picked = jnp.stack(picked)
    return x_BTD, cache if cache is not None else kv, picked


def _windowed_masks(cfg: ModelConfig, positions_BT: jax.Array, mask_BTS: jax.Array,
                    cached: bool) -> Callable[[Any], jax.Array]:
    """i -> block i's mask: `mask_BTS`, and for a sliding-window block (`layer_windows`) only the keys less than
    the window behind the query in position. Key positions: the inputs' own, or with a cache, each valid slot's
    count of valid slots before it (the positions `positions_from_mask` gives). The window is applied as a mask:
    a sliding block reads the whole cache like a full one."""
    if not any(cfg.layer_windows):
        return lambda i: mask_BTS
    k_pos_BS = jnp.cumsum(mask_BTS[:, -1], axis=-1) - 1 if cached else positions_BT
    dist_BTS = positions_BT[:, :, None] - k_pos_BS[:, None, :]
    windows_L = jnp.asarray(cfg.layer_windows, jnp.int32)

    def mask(i) -> jax.Array:
        w = windows_L[i]
        return mask_BTS & ((w == 0) | (dist_BTS < w))

    return mask


def _fold(params: Params, cfg: ModelConfig, scan_layers: bool, body: Callable, carry: Any, add_LD: jax.Array | None):
    """body(carry, layer params, add_D, i) -> (carry, y) over the L blocks: under `lax.scan` for stacked params when
    `scan_layers` (ys stacked [L, ...]), else unrolled, over static slices of stacked params or over the per-layer
    dicts (each leaf of ys a tuple of L). Blocks of different weights (dense and MoE) are always unrolled."""
    L = cfg.num_layers
    layers = params["layers"]
    stacked = layers_are_stacked(params)
    if stacked and scan_layers and not heterogeneous(cfg):
        return jax.lax.scan(lambda c, xs: body(c, *xs), carry, (layers, add_LD, jnp.arange(L)))
    if not stacked and len(layers) != L:
        raise ValueError(f"params hold {len(layers)} per-layer dicts but the config has {L} layers.")
    ys = []
    for i in range(L):
        lp = layer_slice(layers, cfg, i) if stacked else layers[i]
        carry, y = body(carry, lp, None if add_LD is None else add_LD[i], i)
        ys.append(y)
    return carry, jax.tree.map(lambda *a: a, *ys)


def _set_layer(cache: KVCache, i, k: jax.Array, v: jax.Array) -> KVCache:
    """The cache with layer i's slabs replaced: a new tuple when per-layer, an in-place update when stacked."""
    if isinstance(cache.k, tuple):
        return KVCache(k=cache.k[:i] + (k,) + cache.k[i + 1:], v=cache.v[:i] + (v,) + cache.v[i + 1:])
    return KVCache(k=jax.lax.dynamic_update_index_in_dim(cache.k, k, i, 0),
                   v=jax.lax.dynamic_update_index_in_dim(cache.v, v, i, 0))


def unstack_layers(params: Params, cfg: ModelConfig | None = None) -> Params:
    """The per-layer layout: `params["layers"]` as a tuple of L dicts (the same arrays, sliced). Stacks over
    different layers (dense and MoE blocks) need `cfg` to say which."""
    if not layers_are_stacked(params):
        return params
    stacked = params["layers"]
    if cfg is not None:
        return params | {"layers": tuple(layer_slice(stacked, cfg, i) for i in range(cfg.num_layers))}
    lengths = {a.shape[0] for a in stacked.values()}
    if len(lengths) != 1:
        raise ValueError("the layer stacks hold different numbers of layers (dense and MoE blocks); pass the "
                         "config: unstack_layers(params, cfg).")
    return params | {"layers": tuple({k: a[i] for k, a in stacked.items()} for i in range(lengths.pop()))}


def stack_layers(params: Params) -> Params:
    """The stacked layout, the one checkpoints are written in."""
    if layers_are_stacked(params):
        return params
    layers = params["layers"]
    names = dict.fromkeys(k for lp in layers for k in lp)
    return params | {"layers": {k: jnp.stack([lp[k] for lp in layers if k in lp]) for k in names}}


class Transformer(nn.Module):
    """The model as a linen module that binds the params: `Transformer(cfg, per_layer=...).apply({"params":
    params}, tokens_BT, positions_BT, mask_BTS)` is `forward(params, ...)`. `per_layer` gives the layout of the
    params (init draws that layout from the weight table; apply checks shapes against it)."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    per_layer: bool = False
    scan_layers: bool = True

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, mask_BTS, steer: SteerInput | None = None):
        params = {name: self.param(name, self._init, name) for name in weight_table(self.cfg)}
        return forward(params, self.cfg, tokens_BT, positions_BT, mask_BTS, steer=steer, scan_layers=self.scan_layers)

    def _init(self, key: jax.Array, name: str):
        node = weight_table(self.cfg)[name]
        if name != "layers":
            return node.initial(key, self.dtype)
        layers = {k: w.initial(jax.random.fold_in(key, n), self.dtype) for n, (k, w) in enumerate(node.items())}
        return unstack_layers({"layers": layers}, self.cfg)["layers"] if self.per_layer else layers


def causal_mask(attention_mask_BT: jax.Array) -> jax.Array:
    """[B, T, T]: causal and key-not-padding; the usual mask for a forward over a padded batch."""
    T = attention_mask_BT.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    return causal[None] & attention_mask_BT.astype(bool)[:, None, :]


def positions_from_mask(attention_mask_BT: jax.Array) -> jax.Array:
    """Position of each token = number of real tokens before it (pads get 0): left or right padding alike."""
    m = attention_mask_BT.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)
