"""The decoder-only transformer (Llama, Qwen2, Qwen3, Mistral) as a pure function over nested params.

Params are a plain nested dict. `params["layers"]` comes in two layouts: stacked, a dict whose leaves carry a
leading layer axis [L, ...] (the layout `checkpoint.py` reads and writes; the blocks run under `lax.scan`), or
per-layer, a tuple of L dicts of plain arrays (the blocks run unrolled). A scanned step slices each block's
weights out of the stacked arrays, which XLA:CPU materialises as a copy every step, so decode there is about
2x faster per-layer (BENCHMARKS.md); compile time is the price. `forward` is the pure function
everything else calls; `Transformer` is the linen module that declares the stacked params and delegates to it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from selfguard_jax.config import ModelConfig, rope_inv_freq

Params = dict[str, Any]
NEG_INF = float(jnp.finfo(jnp.float32).min)


@struct.dataclass
class KVCache:
    """Keys and values for every layer in the layout of the layer params: [L, B, K, S, H] arrays when stacked,
    tuples of L [B, K, S, H] arrays when per-layer. Slot s of every row is written at the same step; the slot
    axis sits next to the head dim so attention reads each head's keys contiguously, with no transpose."""

    k: Any
    v: Any

    @classmethod
    def from_prefill(cls, kv: "KVCache", length: int) -> "KVCache":
        """A cache of `length` slots holding a prefill's keys/values in its first slots (the rest zero)."""
        def grow(a):
            pad = [(0, 0)] * a.ndim
            pad[-2] = (0, length - a.shape[-2])
            return jnp.pad(a, pad)

        return jax.tree.map(grow, kv)


class SteerInput(NamedTuple):
    """What the model adds at the input of block k: gate_BT[b, t] * add_LD[k] (add_LD already scaled)."""

    add_LD: jax.Array
    gate_BT: jax.Array


class Output(NamedTuple):
    logits_BTV: jax.Array
    kv: KVCache | None
    captured_LBTD: jax.Array | None


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


def attention(q_BTNH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, mask_BTS: jax.Array) -> jax.Array:
    """Grouped-query attention; scores and softmax in float32, probabilities cast back for the value product."""
    B, T, N, H = q_BTNH.shape
    K = k_BKSH.shape[1]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("btkgh,bksh->bkgts", q_BTKGH, k_BKSH, preferred_element_type=jnp.float32)
    scores = scores * (H ** -0.5)
    scores = jnp.where(mask_BTS[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSH.dtype)
    out = jnp.einsum("bkgts,bksh->btkgh", probs, v_BKSH)
    return out.reshape(B, T, N, H)


def block(cfg: ModelConfig, lp: Params, x_BTD: jax.Array, cos: jax.Array, sin: jax.Array, mask_BTS: jax.Array,
          kv_in: tuple[jax.Array, jax.Array] | None, write_index: jax.Array | None):
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
    if kv_in is None:
        keys, values = k_BKTH, v_BKTH
    else:
        idx = (0, 0, write_index, 0)
        keys = jax.lax.dynamic_update_slice(kv_in[0], k_BKTH.astype(kv_in[0].dtype), idx)
        values = jax.lax.dynamic_update_slice(kv_in[1], v_BKTH.astype(kv_in[1].dtype), idx)
    kv_out = (keys, values)
    attn_BTNH = attention(q, keys, values, mask_BTS)
    B, T, N, H = attn_BTNH.shape
    # one [B*T, N*H] x [N*H, D] product: XLA:CPU transposed the [N, H, D] weight (a copy every step) otherwise
    out = jnp.einsum("btx,xd->btd", attn_BTNH.reshape(B, T, N * H), lp["o"].reshape(N * H, -1))
    if cfg.o_bias:
        out = out + lp["o_bias"]
    x_BTD = x_BTD + out
    h = rms_norm(x_BTD, lp["mlp_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", h, lp["gate"])
    up = jnp.einsum("btd,df->btf", h, lp["up"])
    x_BTD = x_BTD + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, lp["down"])
    return x_BTD, kv_out


def forward(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, positions_BT: jax.Array, mask_BTS: jax.Array,
            *, cache: KVCache | None = None, write_index: jax.Array | None = None, steer: SteerInput | None = None,
            capture: bool = False, capture_at: jax.Array | None = None, return_kv: bool = False,
            last_logits_only: bool = False, scan_layers: bool = True) -> Output:
    """The pure model function: logits [B, T, V] float32, kv, and block outputs [L, B, T, D] when capture
    ([L, B, D] at token capture_at[b] of each row when capture_at is given: extraction needs only that).

    mask_BTS[b, t, s] says whether query t of row b may attend to key s: over the T tokens themselves when
    `cache` is None, else over the cache slots (the new tokens are written at `write_index` first).
    With `return_kv` and no cache, kv holds this call's keys/values (for a prefill), in the cache layout.
    `last_logits_only` computes logits [B, 1, V] for the last position only (a prefill needs no more).
    Per-layer params always run unrolled; stacked params run under `lax.scan` unless `scan_layers` is False
    (then each block's weights are static slices, which training prefers).
    """
    if cfg.sliding_window is not None and mask_BTS.shape[-1] > cfg.sliding_window:
        raise ValueError(f"sequence length {mask_BTS.shape[-1]} exceeds the sliding window {cfg.sliding_window} "
                         "of this config; sliding-window attention is not implemented, use shorter inputs.")
    dtype = params["embed"].dtype
    x = jnp.take(params["embed"], tokens_BT, axis=0)
    cos, sin = rope_tables(cfg, positions_BT, dtype)
    L = cfg.num_layers
    add_LD = steer.add_LD if steer is not None else None
    capture = capture or capture_at is not None

    def pick(x):
        return x if capture_at is None else x[jnp.arange(x.shape[0]), capture_at]

    def layer(x, lp, add_D, kv_in):
        if add_D is not None:
            x = x + (steer.gate_BT[:, :, None] * add_D[None, None, :]).astype(x.dtype)
        return block(cfg, lp, x, cos, sin, mask_BTS, kv_in, write_index)

    per_layer = not layers_are_stacked(params)
    if per_layer and len(params["layers"]) != L:
        raise ValueError(f"params hold {len(params['layers'])} per-layer dicts but the config has {L} layers.")
    if per_layer or not scan_layers:
        kvs, caps = [], []
        for i in range(L):
            lp = params["layers"][i] if per_layer else jax.tree.map(lambda a: a[i], params["layers"])
            kv_in = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = layer(x, lp, None if add_LD is None else add_LD[i], kv_in)
            kvs.append(kv)
            caps.append(pick(x) if capture else None)
        captured = jnp.stack(caps) if capture else None
        if cache is not None:
            kv = _with_layers(cache, kvs)
        elif return_kv:
            kv = KVCache(k=tuple(k for k, _ in kvs), v=tuple(v for _, v in kvs))
            kv = kv if per_layer else KVCache(k=jnp.stack(kv.k), v=jnp.stack(kv.v))
        else:
            kv = None
    else:
        def body(carry, xs):
            x, kc, vc = carry
            lp, add_D, i = xs
            kv_in = None if kc is None else (kc[i], vc[i])
            x, (k, v) = layer(x, lp, add_D, kv_in)
            if kc is not None:
                kc = jax.lax.dynamic_update_index_in_dim(kc, k, i, 0)
                vc = jax.lax.dynamic_update_index_in_dim(vc, v, i, 0)
                k = v = None
            elif not return_kv:
                k = v = None
            return (x, kc, vc), (k, v, pick(x) if capture else None)

        init = (x, None, None) if cache is None else (x, cache.k, cache.v)
        (x, kc, vc), (ks, vs, captured) = jax.lax.scan(body, init, (params["layers"], add_LD, jnp.arange(L)))
        kv = KVCache(k=kc, v=vc) if cache is not None else KVCache(k=ks, v=vs) if return_kv else None

    if last_logits_only:
        x = x[:, -1:]
    x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    logits = jnp.einsum("btd,dv->btv", x, head, preferred_element_type=jnp.float32)
    return Output(logits, kv, captured)


def _with_layers(cache: KVCache, kvs: list[tuple[jax.Array, jax.Array]]) -> KVCache:
    """The cache with every layer's slab replaced: a new tuple when per-layer, in-place updates when stacked."""
    if isinstance(cache.k, tuple):
        return KVCache(k=tuple(k for k, _ in kvs), v=tuple(v for _, v in kvs))
    kc, vc = cache.k, cache.v
    for i, (k, v) in enumerate(kvs):
        kc, vc = kc.at[i].set(k), vc.at[i].set(v)
    return KVCache(k=kc, v=vc)


def layers_are_stacked(params: Params) -> bool:
    """Whether `params["layers"]` is the stacked layout (a dict of [L, ...] arrays) or per-layer (a tuple)."""
    return isinstance(params["layers"], dict)


def unstack_layers(params: Params) -> Params:
    """The per-layer layout: `params["layers"]` as a tuple of L dicts (the same arrays, sliced)."""
    if not layers_are_stacked(params):
        return params
    stacked = params["layers"]
    L = next(iter(stacked.values())).shape[0]
    return params | {"layers": tuple({k: a[i] for k, a in stacked.items()} for i in range(L))}


def stack_layers(params: Params) -> Params:
    """The stacked layout, the one checkpoints are written in."""
    if layers_are_stacked(params):
        return params
    layers = params["layers"]
    return params | {"layers": {k: jnp.stack([lp[k] for lp in layers]) for k in layers[0]}}


def param_shapes(cfg: ModelConfig) -> Params:
    """The shape of every param, the single source of truth for init, conversion and checks."""
    L, D, N, K, H, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.intermediate_size, cfg.vocab_size)
    layers = {
        "attn_norm": (L, D), "q": (L, D, N, H), "k": (L, D, K, H), "v": (L, D, K, H), "o": (L, N, H, D),
        "mlp_norm": (L, D), "gate": (L, D, F), "up": (L, D, F), "down": (L, F, D),
    }
    if cfg.qkv_bias:
        layers |= {"q_bias": (L, N, H), "k_bias": (L, K, H), "v_bias": (L, K, H)}
    if cfg.o_bias:
        layers["o_bias"] = (L, D)
    if cfg.qk_norm:
        layers |= {"q_norm": (L, H), "k_norm": (L, H)}
    shapes: Params = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


def _is_norm(name: str) -> bool:
    return name.endswith("norm")


class Transformer(nn.Module):
    """Linen declaration of the params of `param_shapes`, applying the pure `forward`."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    scan_layers: bool = True

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, mask_BTS, **kwargs) -> Output:
        def declare(prefix: str, tree: Params) -> Params:
            out = {}
            for name, shape in tree.items():
                if isinstance(shape, dict):
                    out[name] = declare(prefix + name + "/", shape)
                    continue
                if _is_norm(name):
                    init = nn.initializers.ones
                elif name.endswith("bias"):
                    init = nn.initializers.zeros
                else:
                    init = nn.initializers.normal(0.02)
                out[name] = self.param(prefix + name, init, shape, self.dtype)
            return out

        flat = declare("", param_shapes(self.cfg))
        return forward(flat, self.cfg, tokens_BT, positions_BT, mask_BTS, scan_layers=self.scan_layers, **kwargs)


def nest_params(flat: Params) -> Params:
    """The linen collection (keys like 'layers/q') as the nested dict `forward` takes."""
    out: Params = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def init_params(cfg: ModelConfig, seed: int = 0, dtype: Any = jnp.float32) -> Params:
    """Random params (normal 0.02, norms at one) in the nested layout, through the linen module."""
    module = Transformer(cfg, dtype=dtype)
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = module.init(jax.random.PRNGKey(seed), tokens, tokens, jnp.ones((1, 1, 1), bool))
    return nest_params(variables["params"])


def causal_mask(attention_mask_BT: jax.Array) -> jax.Array:
    """[B, T, T]: causal and key-not-padding; the usual mask for a forward over a padded batch."""
    T = attention_mask_BT.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    return causal[None] & attention_mask_BT.astype(bool)[:, None, :]


def positions_from_mask(attention_mask_BT: jax.Array) -> jax.Array:
    """Position of each token = number of real tokens before it (pads get 0): left or right padding alike."""
    m = attention_mask_BT.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)
