"""One table for every weight and one for the KV cache: shape, logical axes, Hugging Face name(s) and layout rule,
init. Param shapes, shardings, checkpoint conversion, init and the memory plan are all read from here.

Every weight is stored in the dtype the model is loaded in (norms and biases too, as transformers does).
Layer weights are listed stacked: a leading "layers" axis and one HF key per layer (stacked along that axis);
the per-layer layout drops that axis.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core.scope import LazyRng

from selfguard_jax.config import ModelConfig

INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class Weight:
    """One param: our `shape` and logical `axes`; its HF key(s) and the HF tensor shape `hf_shape` (per layer);
    `transpose` when the HF tensor is torch's Linear [out, in] (ours is [in, out], then reshaped); `hf_rows`
    (start, stop) when it is a slice of rows of a fused HF tensor (Phi-3's qkv_proj and gate_up_proj); `init` is
    "normal" (std INIT_STD), "ones" or "zeros"."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    hf: tuple[str, ...]
    hf_shape: tuple[int, ...]
    transpose: bool = False
    init: str = "normal"
    hf_rows: tuple[int, int] | None = None

    @property
    def stacked(self) -> bool:
        return self.axes[0] == "layers"

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """The shape of one layer's slice (the whole shape for a weight outside the layers)."""
        return self.shape[1:] if self.stacked else self.shape

    def to_ours(self, w_hf: np.ndarray) -> np.ndarray:
        """One HF tensor (one layer's, for a layer weight) in our layout."""
        if self.hf_rows is not None:
            w_hf = w_hf[self.hf_rows[0]:self.hf_rows[1]]
        return (w_hf.T if self.transpose else w_hf).reshape(self.layer_shape)

    def to_hf(self, w: np.ndarray) -> np.ndarray:
        """Inverse of `to_ours`: one of our tensors (one layer's) in the HF layout (its rows, for a fused one)."""
        hf_shape = self.hf_shape
        if self.hf_rows is not None:
            hf_shape = (self.hf_rows[1] - self.hf_rows[0], *hf_shape[1:])
        w = w.reshape(hf_shape[::-1] if self.transpose else hf_shape)
        return w.T if self.transpose else w

    def initial(self, key: jax.Array, dtype: Any) -> jax.Array:
        if self.init == "ones":
            return jnp.ones(self.shape, dtype)
        if self.init == "zeros":
            return jnp.zeros(self.shape, dtype)
        return jax.random.normal(key, self.shape, dtype) * INIT_STD


def weight_table(cfg: ModelConfig) -> dict[str, Any]:
    """Every param of `cfg`, nested like the params: {"embed", "layers": {...}, "final_norm"[, "lm_head"]}."""
    L, D, N, K, H, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.intermediate_size, cfg.vocab_size)

    norm_init = "zeros" if cfg.gemma_norms else "ones"  # Gemma's norms scale by (1 + w)

    def layer(name: str, shape, axes, hf_shape, transpose=False, init="normal", hf_rows=None) -> Weight:
        keys = tuple(f"model.layers.{i}.{name}" for i in range(L))
        return Weight((L, *shape), ("layers", *axes), keys, hf_shape, transpose, init, hf_rows)

    def linear(name: str, shape, axes, fused: tuple[int, int, int] | None = None) -> Weight:
        """A projection; `fused` = (start, stop, total rows) when it is rows of a fused HF tensor."""
        n_in = D if axes[0] == "embed" else int(np.prod(shape[:-1]))
        n_out = int(np.prod(shape)) // n_in
        if fused is None:
            return layer(f"{name}.weight", shape, axes, (n_out, n_in), transpose=True)
        return layer(f"{name}.weight", shape, axes, (fused[2], n_in), transpose=True, hf_rows=fused[:2])

    def norm(name: str, size: int, axis: str) -> Weight:
        return layer(f"{name}.weight", (size,), (axis,), (size,), init=norm_init)

    if cfg.model_type == "phi3":  # fused projections, split on load
        qkv = (N + 2 * K) * H
        q_rows, k_rows, v_rows = (0, N * H, qkv), (N * H, (N + K) * H, qkv), ((N + K) * H, qkv, qkv)
        names = dict.fromkeys(("q", "k", "v"), "self_attn.qkv_proj") | dict.fromkeys(("gate", "up"), "mlp.gate_up_proj")
        rows = {"q": q_rows, "k": k_rows, "v": v_rows, "gate": (0, F, 2 * F), "up": (F, 2 * F, 2 * F)}
    else:
        names = {n: f"self_attn.{n}_proj" for n in "qkv"} | {n: f"mlp.{n}_proj" for n in ("gate", "up")}
        rows = dict.fromkeys(names)
    layers = {
        "attn_norm": norm("input_layernorm", D, "embed"),
        "q": linear(names["q"], (D, N, H), ("embed", "heads", "head_dim"), rows["q"]),
        "k": linear(names["k"], (D, K, H), ("embed", "kv_heads", "head_dim"), rows["k"]),
        "v": linear(names["v"], (D, K, H), ("embed", "kv_heads", "head_dim"), rows["v"]),
        "o": linear("self_attn.o_proj", (N, H, D), ("heads", "head_dim", "embed")),
        "mlp_norm": norm("pre_feedforward_layernorm" if cfg.gemma_norms else "post_attention_layernorm", D, "embed"),
        "gate": linear(names["gate"], (D, F), ("embed", "mlp"), rows["gate"]),
        "up": linear(names["up"], (D, F), ("embed", "mlp"), rows["up"]),
        "down": linear("mlp.down_proj", (F, D), ("mlp", "embed")),
    }
    if cfg.gemma_norms:  # norms after attention and after the MLP too
        layers |= {"post_attn_norm": norm("post_attention_layernorm", D, "embed"),
                   "post_mlp_norm": norm("post_feedforward_layernorm", D, "embed")}
    if cfg.qkv_bias:
        layers |= {
            "q_bias": layer("self_attn.q_proj.bias", (N, H), ("heads", "head_dim"), (N * H,), init="zeros"),
            "k_bias": layer("self_attn.k_proj.bias", (K, H), ("kv_heads", "head_dim"), (K * H,), init="zeros"),
            "v_bias": layer("self_attn.v_proj.bias", (K, H), ("kv_heads", "head_dim"), (K * H,), init="zeros"),
        }
    if cfg.o_bias:
        layers["o_bias"] = layer("self_attn.o_proj.bias", (D,), ("embed",), (D,), init="zeros")
    if cfg.qk_norm:
        layers |= {"q_norm": norm("self_attn.q_norm", H, "head_dim"), "k_norm": norm("self_attn.k_norm", H, "head_dim")}
    table: dict[str, Any] = {
        "embed": Weight((V, D), ("vocab", "embed"), ("model.embed_tokens.weight",), (V, D)),
        "layers": layers,
        "final_norm": Weight((D,), ("embed",), ("model.norm.weight",), (D,), init=norm_init),
    }
    if not cfg.tie_word_embeddings:
        table["lm_head"] = Weight((D, V), ("embed", "vocab"), ("lm_head.weight",), (V, D), transpose=True)
    return table


def is_weight(x: Any) -> bool:
    return isinstance(x, Weight)


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """The shape of every param (stacked layout), nested like the params."""
    return jax.tree.map(lambda w: w.shape, weight_table(cfg), is_leaf=is_weight)


def init_params(cfg: ModelConfig, seed: int = 0, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Random params (normal INIT_STD, norms at one, biases at zero) in the stacked layout. The n-th weight of the
    table draws from the key flax linen gives the n-th param of a root module, so a seed gives the weights the
    linen-declared model of earlier versions gave (the committed organism checkpoint was trained from them)."""
    root, count = jax.random.PRNGKey(seed), itertools.count(1)

    def draw(w: Weight) -> jax.Array:
        return w.initial(LazyRng.create(root, next(count)).as_jax_rng(), dtype)

    return {top: {k: draw(w) for k, w in node.items()} if top == "layers" else draw(node)
            for top, node in weight_table(cfg).items()}


def layers_are_stacked(params: dict[str, Any]) -> bool:
    """Whether `params["layers"]` is the stacked layout (a dict of [L, ...] arrays) or per-layer (a tuple)."""
    return isinstance(params["layers"], dict)


KV_AXES = ("layers", "batch", "kv_heads", "cache", "head_dim")


def kv_cache_shape(cfg: ModelConfig, batch: int, length: int) -> tuple[int, ...]:
    """Keys (and values, the same) of every layer, stacked: [L, B, K, S, H], logical axes KV_AXES. The slot
    axis sits next to the head dim so attention reads each head's keys contiguously; per-layer drops L."""
    return (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
