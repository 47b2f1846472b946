"""One table for every weight and one for the KV cache: shape, logical axes, Hugging Face name(s) and layout rule,
init. Param shapes, shardings, checkpoint conversion, init and the memory plan are all read from here.

Every weight is stored in the dtype the model is loaded in (norms and biases too, as transformers does).
Layer weights are listed stacked: a leading "layers" axis and one HF key per layer (stacked along that axis);
the per-layer layout drops that axis. Routed experts carry an "expert" axis after it: one HF tensor per expert
(Qwen3-MoE), stacked along it. In a mixture-of-experts stack with dense blocks too (`mlp_only_layers`,
`decoder_sparse_step`) the dense MLP and the experts are two stacks, each over the layers it names (`layer_ids`).
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
    """One param: our `shape` and logical `axes`; its HF key(s) and the HF tensor shape `hf_shape` (per layer, or
    per expert when a layer's entry in `hf` is a tuple of one key per expert); `transpose` when the HF tensor is
    torch's Linear [out, in] (ours is [in, out], then reshaped); `init` is "normal" (std INIT_STD), "ones" or
    "zeros"; `layer_ids` the layers a stack holds when not all of them; `hf_rows` (start, stop) when it is a slice
    of rows of a fused HF tensor (Phi-3's qkv_proj and gate_up_proj)."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    hf: tuple[str, ...]
    hf_shape: tuple[int, ...]
    transpose: bool = False
    init: str = "normal"
    layer_ids: tuple[int, ...] | None = None
    hf_rows: tuple[int, int] | None = None

    @property
    def stacked(self) -> bool:
        return self.axes[0] == "layers"

    @property
    def per_expert(self) -> bool:
        """Whether each layer is read from one HF tensor per expert (stacked along our "expert" axis)."""
        return bool(self.hf) and isinstance(self.hf[0], tuple)

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """The shape of one layer's slice (the whole shape for a weight outside the layers)."""
        return self.shape[1:] if self.stacked else self.shape

    @property
    def piece_shape(self) -> tuple[int, ...]:
        """Our shape of one HF tensor: a layer's slice, or one expert's of it."""
        return self.layer_shape[1:] if self.per_expert else self.layer_shape

    def hf_keys(self) -> tuple[str, ...]:
        """Every HF key this weight reads, flat."""
        return tuple(k for entry in self.hf for k in (entry if isinstance(entry, tuple) else (entry,)))

    def to_ours(self, w_hf: np.ndarray) -> np.ndarray:
        """One HF tensor (one layer's, or one expert's of a layer) in our layout."""
        if self.hf_rows is not None:
            w_hf = w_hf[self.hf_rows[0]:self.hf_rows[1]]
        return (w_hf.T if self.transpose else w_hf).reshape(self.piece_shape)

    def to_hf(self, w: np.ndarray) -> np.ndarray:
        """Inverse of `to_ours`: one of our tensors (one layer's, or one expert's) in the HF layout (its rows, for
        a fused one)."""
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

    sparse = cfg.moe_layers
    dense = tuple(i for i in range(L) if i not in sparse)
    norm_init = "zeros" if cfg.gemma_norms else "ones"  # Gemma's norms scale by (1 + w)

    def layer(name: str, shape, axes, hf_shape, transpose=False, init="normal", ids=None, hf_rows=None) -> Weight:
        ids = tuple(range(L)) if ids is None else ids
        keys = tuple(f"model.layers.{i}.{name}" for i in ids)
        return Weight((len(ids), *shape), ("layers", *axes), keys, hf_shape, transpose, init,
                      None if len(ids) == L else ids, hf_rows)

    def linear(name: str, shape, axes, ids=None, fused: tuple[int, int, int] | None = None) -> Weight:
        """A projection; `fused` = (start, stop, total rows) when it is rows of a fused HF tensor."""
        n_in = D if axes[0] == "embed" else int(np.prod(shape[:-1]))
        if fused is None:
            return layer(f"{name}.weight", shape, axes, (int(np.prod(shape)) // n_in, n_in), transpose=True, ids=ids)
        return layer(f"{name}.weight", shape, axes, (fused[2], n_in), transpose=True, ids=ids, hf_rows=fused[:2])

    def experts(name: str, shape, axes) -> Weight:  # one torch Linear [out, in] per expert
        E = cfg.num_experts
        keys = tuple(tuple(f"model.layers.{i}.mlp.experts.{e}.{name}.weight" for e in range(E)) for i in sparse)
        return Weight((len(sparse), E, *shape), ("layers", "expert", *axes), keys, shape[::-1], True, "normal",
                      None if len(sparse) == L else sparse)

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
        "q": linear(names["q"], (D, N, H), ("embed", "heads", "head_dim"), fused=rows["q"]),
        "k": linear(names["k"], (D, K, H), ("embed", "kv_heads", "head_dim"), fused=rows["k"]),
        "v": linear(names["v"], (D, K, H), ("embed", "kv_heads", "head_dim"), fused=rows["v"]),
        "o": linear("self_attn.o_proj", (N, H, D), ("heads", "head_dim", "embed")),
        "mlp_norm": norm("pre_feedforward_layernorm" if cfg.gemma_norms else "post_attention_layernorm", D, "embed"),
    }
    if dense:
        layers |= {"gate": linear(names["gate"], (D, F), ("embed", "mlp"), dense, fused=rows["gate"]),
                   "up": linear(names["up"], (D, F), ("embed", "mlp"), dense, fused=rows["up"]),
                   "down": linear("mlp.down_proj", (F, D), ("mlp", "embed"), dense)}
    if cfg.gemma_norms:  # norms after attention and after the MLP too
        layers |= {"post_attn_norm": norm("post_attention_layernorm", D, "embed"),
                   "post_mlp_norm": norm("post_feedforward_layernorm", D, "embed")}
    if sparse and cfg.moe_style == "gpt_oss":  # experts stored [E, in, out], gate and up interleaved
        I, E = cfg.moe_intermediate_size, cfg.num_experts
        layers |= {
            "router": linear("mlp.router", (D, E), ("embed", None), sparse),
            "router_bias": layer("mlp.router.bias", (E,), (None,), (E,), init="zeros", ids=sparse),
            "expert_gate_up": layer("mlp.experts.gate_up_proj", (E, D, 2 * I), ("expert", "embed", "expert_mlp"),
                                    (E, D, 2 * I), ids=sparse),
            "expert_gate_up_bias": layer("mlp.experts.gate_up_proj_bias", (E, 2 * I), ("expert", "expert_mlp"),
                                         (E, 2 * I), init="zeros", ids=sparse),
            "expert_down": layer("mlp.experts.down_proj", (E, I, D), ("expert", "expert_mlp", "embed"), (E, I, D),
                                 ids=sparse),
            "expert_down_bias": layer("mlp.experts.down_proj_bias", (E, D), ("expert", "embed"), (E, D),
                                      init="zeros", ids=sparse)}
    elif sparse:
        I, E = cfg.moe_intermediate_size, cfg.num_experts
        layers |= {"router": linear("mlp.gate", (D, E), ("embed", None), sparse),
                   "expert_gate": experts("gate_proj", (D, I), ("embed", "expert_mlp")),
                   "expert_up": experts("up_proj", (D, I), ("embed", "expert_mlp")),
                   "expert_down": experts("down_proj", (I, D), ("expert_mlp", "embed"))}
    if cfg.qkv_bias:
        layers |= {
            "q_bias": layer("self_attn.q_proj.bias", (N, H), ("heads", "head_dim"), (N * H,), init="zeros"),
            "k_bias": layer("self_attn.k_proj.bias", (K, H), ("kv_heads", "head_dim"), (K * H,), init="zeros"),
            "v_bias": layer("self_attn.v_proj.bias", (K, H), ("kv_heads", "head_dim"), (K * H,), init="zeros"),
        }
    if cfg.o_bias:
        layers["o_bias"] = layer("self_attn.o_proj.bias", (D,), ("embed",), (D,), init="zeros")
    if cfg.attention_sinks:
        layers["sinks"] = layer("self_attn.sinks", (N,), ("heads",), (N,))
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


def layer_slice(layers: dict[str, Any], cfg: ModelConfig, i: int) -> dict[str, Any]:
    """Layer i's params out of the stacked layers: each stack holds every layer, or the layers it names."""
    table = weight_table(cfg)["layers"]
    out = {}
    for name, a in layers.items():
        ids = table[name].layer_ids
        if ids is None or i in ids:
            out[name] = a[i if ids is None else ids.index(i)]
    return out


def heterogeneous(cfg: ModelConfig) -> bool:
    """Whether the blocks differ in their weights (dense and mixture-of-experts blocks in one stack), so they
    cannot run under one `lax.scan`."""
    return any(w.layer_ids is not None for w in weight_table(cfg)["layers"].values())


def layers_are_stacked(params: dict[str, Any]) -> bool:
    """Whether `params["layers"]` is the stacked layout (a dict of [L, ...] arrays) or per-layer (a tuple)."""
    return isinstance(params["layers"], dict)


KV_AXES = ("layers", "batch", "kv_heads", "cache", "head_dim")


def kv_cache_shape(cfg: ModelConfig, batch: int, length: int) -> tuple[int, ...]:
    """Keys (and values, the same) of every layer, stacked: [L, B, K, S, H], logical axes KV_AXES. The slot
    axis sits next to the head dim so attention reads each head's keys contiguously; per-layer drops L."""
    return (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
