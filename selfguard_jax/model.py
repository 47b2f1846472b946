"""The decoder-only transformer (Llama, Qwen2, Qwen3, Mistral, Qwen3-MoE, gpt-oss, Gemma 3, Phi-3) as pure functions
over nested params.

Params are a plain nested dict (their table: `weights.py`). `params["layers"]` comes in two layouts: stacked, a
dict whose leaves carry a leading layer axis [L, ...] (the layout `checkpoint.py` reads and writes; the blocks
run under `lax.scan`), or per-layer, a tuple of L dicts of plain arrays (the blocks run unrolled). Which one a
loaded model uses is its execution policy (`policy.py`). The KV cache is a type per layout (`kv_cache.py`); a
block asks it for its layer and hands the layer back.

Entry points: `forward` (logits of every position), `prefill` (last logits and a KV cache), `decode_step` (one
token per row against the cache, written in place) and `hidden_states` (block outputs). All run the blocks
through one fold, `_blocks`; `Transformer` is a linen module binding the same params. Sliding-window blocks
(`layer_windows`) attend through a narrowed mask, and over a cache read only the blocks their window reaches;
each block's rope comes from `attention_kinds`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selfguard_jax import longrope
from selfguard_jax.attention import attention
from selfguard_jax.attention_kinds import PerLayer, RopeKind, layer_ropes
from selfguard_jax.config import ModelConfig, rope_inv_freq
from selfguard_jax.kv_cache import KVCache, LayerCache, LayerKV, StackedCache
from selfguard_jax.moe import moe_mlp
from selfguard_jax.sharding import constrain
from selfguard_jax.weights import KV_AXES, heterogeneous, layer_slice, layers_are_stacked, weight_table

Params = dict[str, Any]
ACTIVATIONS = {"silu": jax.nn.silu, "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True)}


class SteerInput(NamedTuple):
    """What the model adds at the input of block k: gate_BT[b, t] * add_LD[k] (add_LD already scaled)."""

    add_LD: jax.Array
    gate_BT: jax.Array


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight, as transformers does."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w * x32.astype(x.dtype)


def gemma_rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """Gemma's RMSNorm: scaled by (1 + w), all in float32, cast back last, as transformers does."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * (1.0 + w.astype(jnp.float32))).astype(x.dtype)


def norm(cfg: ModelConfig, x: jax.Array, w: jax.Array) -> jax.Array:
    return (gemma_rms_norm if cfg.gemma_norms else rms_norm)(x, w, cfg.rms_norm_eps)


def embed(params: Params, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """Token embeddings; Gemma's times sqrt(hidden), that factor rounded to the params dtype as transformers does."""
    x = jnp.take(params["embed"], tokens, axis=0)
    if cfg.embed_scale:
        x = x * jnp.asarray(np.float32(cfg.hidden_size ** 0.5)).astype(x.dtype)
    return x


def rope_tables(cfg: ModelConfig, positions_BT: jax.Array, dtype: Any,
                kind: RopeKind | None = None) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, R] (R the rotary dims) in the half-split layout (HF's rotate_half), computed in float32,
    for one rope kind (default: the config's full-attention rope). LongRoPE takes its long factors for a row's
    whole call once one of its positions passes the original context length: transformers' choice at batch 1 (it
    decides over the whole batch), so that a row's output does not depend on the other rows."""
    theta, rope = (None, None) if kind is None else (kind.theta, kind.rope)
    rope_type = (rope or cfg.rope)["rope_type"]

    def tables(inv_freq, attn_factor):
        freqs = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        return (jnp.cos(emb) * attn_factor).astype(dtype), (jnp.sin(emb) * attn_factor).astype(dtype)

    short = tables(*rope_inv_freq(cfg, theta, rope))
    if rope_type != "longrope":
        return short
    long = tables(*rope_inv_freq(cfg, theta, rope, long=True))
    original = (rope or cfg.rope)["original_max_position_embeddings"]
    use_long = jnp.max(positions_BT, axis=1)[:, None, None] + 1 > original
    return jax.tree.map(lambda a, b: jnp.where(use_long, a, b), long, short)


def apply_rope(x_BTNH: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array) -> jax.Array:
    """Rope over the first R dims of each head (all of them unless the rotary is partial); the rest pass."""
    R = cos_BTR.shape[-1]
    x, rest = x_BTNH[..., :R], x_BTNH[..., R:]
    rotated = jnp.concatenate([-x[..., R // 2:], x[..., :R // 2]], axis=-1)
    out = x * cos_BTR[:, :, None, :] + rotated * sin_BTR[:, :, None, :]
    return out if R == x_BTNH.shape[-1] else jnp.concatenate([out, rest], axis=-1)


def block(cfg: ModelConfig, lp: Params, x_BTD: jax.Array, cos: jax.Array, sin: jax.Array, mask_BTS: jax.Array,
          cache_layer: LayerKV | None = None, write_index: jax.Array | None = None,
          attend_len_B: jax.Array | None = None,
          switch: tuple[jax.Array, jax.Array] | None = None,
          attend_from_B: jax.Array | None = None) -> tuple[jax.Array, LayerKV | tuple[jax.Array, jax.Array]]:
    """One decoder block. Without a cache layer it attends over its own keys and returns them ([B, K, T, H]);
    with one, the layer writes the new keys at `write_index` and attends (kv_cache), and comes back updated.
    `switch` (longrope.switch_step) re-rotates the cached keys of rows passing LongRoPE's original context;
    `attend_from_B` (a sliding block's first window slot) lets the filled-block attention skip the blocks before it."""
    h = norm(cfg, x_BTD, lp["attn_norm"])
    q = jnp.einsum("btd,dnh->btnh", h, lp["q"])
    k = jnp.einsum("btd,dkh->btkh", h, lp["k"])
    v = jnp.einsum("btd,dkh->btkh", h, lp["v"])
    if cfg.qkv_bias:
        q, k, v = q + lp["q_bias"], k + lp["k_bias"], v + lp["v_bias"]
    if cfg.qk_norm:
        q, k = norm(cfg, q, lp["q_norm"]), norm(cfg, k, lp["k_norm"])
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cfg.query_pre_attn_scalar is not None and cfg.query_pre_attn_scalar != cfg.head_dim:
        # attention scales scores by head_dim ** -0.5; Gemma's scale is query_pre_attn_scalar ** -0.5
        q = q * jnp.asarray((cfg.head_dim / cfg.query_pre_attn_scalar) ** 0.5, q.dtype)
    k_BKTH, v_BKTH = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    sinks = lp.get("sinks")
    if cache_layer is None:
        attn_BTNH, kv_out = attention(q, k_BKTH, v_BKTH, mask_BTS, sinks), (k_BKTH, v_BKTH)
    else:
        if switch is not None:
            cache_layer = cache_layer.replace(k=longrope.to_long(cfg, cache_layer.k, switch))
        attn_BTNH, kv_out = cache_layer.attend(q, k_BKTH, v_BKTH, mask_BTS, write_index, attend_len_B, sinks,
                                               attend_from_B)
    B, T, N, H = attn_BTNH.shape
    # one [B*T, N*H] x [N*H, D] product: XLA:CPU transposed the [N, H, D] weight (a copy every step) otherwise
    out = jnp.einsum("btx,xd->btd", attn_BTNH.reshape(B, T, N * H), lp["o"].reshape(N * H, -1))
    if cfg.o_bias:
        out = out + lp["o_bias"]
    if cfg.gemma_norms:
        out = norm(cfg, out, lp["post_attn_norm"])
    x_BTD = x_BTD + out
    h = norm(cfg, x_BTD, lp["mlp_norm"])
    if "router" in lp:  # a mixture-of-experts block
        return x_BTD + moe_mlp(cfg, lp, h), kv_out
    gate = jnp.einsum("btd,df->btf", h, lp["gate"])
    up = jnp.einsum("btd,df->btf", h, lp["up"])
    out = jnp.einsum("btf,fd->btd", ACTIVATIONS[cfg.hidden_act](gate) * up, lp["down"])
    if cfg.gemma_norms:
        out = norm(cfg, out, lp["post_mlp_norm"])
    return x_BTD + out, kv_out


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
    x, (k, v), _ = _blocks(params, cfg, tokens_BT, positions_from_mask(mask_BT), causal_mask(mask_BT),
                           steer=steer, keep_kv=True, scan_layers=scan_layers)

    def grow(a: jax.Array) -> jax.Array:
        pad = [(0, 0)] * a.ndim
        pad[-2] = (0, cache_len - T)
        return constrain(jnp.pad(a, pad), KV_AXES[-a.ndim:])

    cache = StackedCache(k, v) if layers_are_stacked(params) else LayerCache(k, v)
    return _logits(params, cfg, x[:, -1:])[:, 0], jax.tree.map(grow, cache)


def decode_step(params: Params, cfg: ModelConfig, tokens_B: jax.Array, positions_B: jax.Array,
                kv_valid_BS: jax.Array, cache: KVCache, write_index: jax.Array, *, steer: SteerInput | None = None,
                attend_len_B: jax.Array | None = None, scan_layers: bool = True) -> tuple[jax.Array, KVCache]:
    """One token per row: its keys/values are written into slot `write_index` of the cache (a scalar, or one slot
    per row; in place under jit), then it attends to the slots `kv_valid_BS` marks (the new slot included). A cache
    that reads only filled blocks reads each row's first `attend_len_B` slots (default: all). Returns (logits
    [B, V] float32, the cache). `steer.gate_BT` is [B, 1]."""
    if attend_len_B is None:
        attend_len_B = jnp.full(tokens_B.shape, kv_valid_BS.shape[1], jnp.int32)
    x, cache, _ = _blocks(params, cfg, tokens_B[:, None], positions_B[:, None], kv_valid_BS[:, None, :], steer=steer,
                          cache=cache, write_index=write_index, attend_len_B=attend_len_B, scan_layers=scan_layers)
    return _logits(params, cfg, x)[:, 0], cache


def hidden_states(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, *,
                  at_B: jax.Array | None = None, steer: SteerInput | None = None,
                  scan_layers: bool = True, positions_BT: jax.Array | None = None) -> jax.Array:
    """Block outputs [L, B, T, D] in the params dtype (not final-normed), or [L, B, D] at token at_B[b] of each
    row when `at_B` is given (extraction needs only that). Positions come from `mask_BT` unless given."""
    def pick(x_BTD: jax.Array) -> jax.Array:
        return x_BTD if at_B is None else x_BTD[jnp.arange(x_BTD.shape[0]), at_B]

    positions_BT = positions_from_mask(mask_BT) if positions_BT is None else positions_BT
    _, _, picked = _blocks(params, cfg, tokens_BT, positions_BT, causal_mask(mask_BT), steer=steer,
                           pick=pick, scan_layers=scan_layers)
    return picked


def hf_hidden_states(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, *,
                     at_B: jax.Array | None = None, steer: SteerInput | None = None,
                     scan_layers: bool = True, positions_BT: jax.Array | None = None) -> jax.Array:
    """Transformers' `output_hidden_states` as float32 [L + 1, B, T, D] ([L + 1, B, D] at token at_B[b] of each
    row): [0] the embeddings, [k + 1] the output of block k, the last one final-normed as transformers returns it."""
    blocks = hidden_states(params, cfg, tokens_BT, mask_BT, at_B=at_B, steer=steer, scan_layers=scan_layers,
                           positions_BT=positions_BT)
    embeds = embed(params, cfg, tokens_BT if at_B is None else tokens_BT[jnp.arange(len(at_B)), at_B])
    last = norm(cfg, blocks[-1], params["final_norm"])
    return jnp.concatenate([embeds[None], blocks[:-1], last[None]]).astype(jnp.float32)


def _logits(params: Params, cfg: ModelConfig, x_BTD: jax.Array) -> jax.Array:
    x_BTD = norm(cfg, x_BTD, params["final_norm"])
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,dv->btv", x_BTD, head, preferred_element_type=jnp.float32)
    cap = cfg.final_logit_softcapping
    return logits if cap is None else jnp.tanh(logits / cap) * cap


def _blocks(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, positions_BT: jax.Array, mask_BTS: jax.Array, *,
            steer: SteerInput | None = None, cache: KVCache | None = None, write_index: jax.Array | None = None,
            attend_len_B: jax.Array | None = None, keep_kv: bool = False,
            pick: Callable[[jax.Array], jax.Array] | None = None, scan_layers: bool = True):
    """Embed, then the L blocks as one fold. Returns (x_BTD, kv, picked): kv is the cache with the new tokens
    written at `write_index` when a cache is given, else this call's (keys, values) when `keep_kv` ([L, B, K, T, H]
    for stacked params, tuples of L for per-layer), else None; picked is pick(block output) stacked [L, ...], or
    None without `pick`."""
    x_BTD = embed(params, cfg, tokens_BT)
    kinds, layer_kind = layer_ropes(cfg)
    ropes = PerLayer(layer_kind, tuple(rope_tables(cfg, positions_BT, x_BTD.dtype, k) for k in kinds))
    layer_mask = _windowed_masks(cfg, positions_BT, mask_BTS, cache is not None)
    layer_from = _window_starts(cfg, positions_BT)
    switch = None if cache is None else longrope.switch_step(cfg, positions_BT, mask_BTS[:, -1, :])

    def body(carry, lp, add_D, i):
        x, cache = carry
        if add_D is not None:
            x = x + (steer.gate_BT[:, :, None] * add_D[None, None, :]).astype(x.dtype)
        cos, sin = ropes.at(i)
        if cache is None:
            x, kv = block(cfg, lp, x, cos, sin, layer_mask(i))
        else:
            x, layer = block(cfg, lp, x, cos, sin, layer_mask(i), cache.layer(i), write_index, attend_len_B, switch,
                             layer_from(i))
            cache, kv = cache.with_layer(i, layer), None
        return (x, cache), (kv if keep_kv else None, None if pick is None else pick(x))

    add_LD = None if steer is None else steer.add_LD
    (x_BTD, cache), (kv, picked) = _fold(params, cfg, scan_layers, body, (x_BTD, cache), add_LD)
    if kv is not None and layers_are_stacked(params) and isinstance(kv[0], tuple):  # unrolled over stacked params
        kv = (jnp.stack(kv[0]), jnp.stack(kv[1]))
    if isinstance(picked, tuple):
        picked = jnp.stack(picked)
    return x_BTD, cache if cache is not None else kv, picked


def _windowed_masks(cfg: ModelConfig, positions_BT: jax.Array, mask_BTS: jax.Array,
                    cached: bool) -> Callable[[Any], jax.Array]:
    """i -> block i's mask: `mask_BTS`, and for a sliding-window block (`layer_windows`) only the keys less than
    the window behind the query in position. Key positions: the inputs' own, or with a cache, each valid slot's
    count of valid slots before it (the positions `positions_from_mask` gives). The window is applied as a mask;
    the filled-block attention also skips the blocks wholly before it (`_window_starts`)."""
    if not any(cfg.layer_windows):
        return lambda i: mask_BTS
    k_pos_BS = jnp.cumsum(mask_BTS[:, -1], axis=-1) - 1 if cached else positions_BT
    dist_BTS = positions_BT[:, :, None] - k_pos_BS[:, None, :]
    windows_L = jnp.asarray(cfg.layer_windows, jnp.int32)

    def mask(i) -> jax.Array:
        w = windows_L[i]
        return mask_BTS & ((w == 0) | (dist_BTS < w))

    return mask


def _window_starts(cfg: ModelConfig, positions_BT: jax.Array) -> Callable[[Any], jax.Array | None]:
    """i -> block i's first cache slot any of a row's queries can see ([B]; 0 for a full block), None without
    sliding blocks. A slot's key position (its count of valid slots before it) is at most its index, so every
    slot before `min(position) - window + 1` is outside the window: the filled-block attention skips those blocks."""
    if not any(cfg.layer_windows):
        return lambda i: None
    first_B = jnp.min(positions_BT, axis=1).astype(jnp.int32) + 1
    windows_L = jnp.asarray(cfg.layer_windows, jnp.int32)
    return lambda i: jnp.where(windows_L[i] > 0, first_B - windows_L[i], 0)


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
