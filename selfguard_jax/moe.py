"""Routed mixture-of-experts feed-forward (Qwen3-MoE, gpt-oss): a float32 router picks k experts per token, and
each (token, expert) row runs through its expert's SwiGLU (gpt-oss: clamped, with biases), weighted by its
routing weight.

No dense [tokens, experts, ...] tensor is built. Rows are sorted by expert and run through grouped matmuls
(`jax.lax.ragged_dot`, one group per expert), or, when there are fewer rows than experts (a small-batch decode
step), each row multiplies the weights of its own expert gathered by index, so only the chosen experts' weights
are read. Expert weights are stacked [E, ...] (`weights.py`), so experts shard over the mesh (expert parallelism).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from selfguard_jax.config import ModelConfig


def route(cfg: ModelConfig, lp: dict[str, Any], x_XD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(expert ids [X, k], routing weights [X, k] float32) of each token, in float32. Qwen3-MoE: softmax over all
    experts, top k, renormalised over the k when `norm_topk_prob`; gpt-oss: top k of the biased logits, softmax
    over those k (transformers' Qwen3MoeTopKRouter, GptOssTopKRouter)."""
    logits_XE = jnp.einsum("xd,de->xe", x_XD.astype(jnp.float32), lp["router"].astype(jnp.float32),
                           preferred_element_type=jnp.float32)
    if cfg.moe_style == "gpt_oss":
        top_XK, expert_XK = jax.lax.top_k(logits_XE + lp["router_bias"].astype(jnp.float32), cfg.num_experts_per_tok)
        return expert_XK.astype(jnp.int32), jax.nn.softmax(top_XK, axis=-1)
    probs_XE = jax.nn.softmax(logits_XE, axis=-1)
    weight_XK, expert_XK = jax.lax.top_k(probs_XE, cfg.num_experts_per_tok)
    if cfg.norm_topk_prob:
        weight_XK = weight_XK / jnp.sum(weight_XK, axis=-1, keepdims=True)
    return expert_XK.astype(jnp.int32), weight_XK


def moe_mlp(cfg: ModelConfig, lp: dict[str, Any], x_BTD: jax.Array) -> jax.Array:
    """The routed experts' output [B, T, D] for the normed block input `x_BTD`."""
    B, T, D = x_BTD.shape
    x_XD = x_BTD.reshape(B * T, D)
    expert_XK, weight_XK = route(cfg, lp, x_XD)
    X, K = expert_XK.shape
    expert_R = expert_XK.reshape(-1)  # row r is token r // K's (r % K)-th choice
    token_R = jnp.arange(X * K, dtype=jnp.int32) // K
    ffn = _clamped_swiglu if cfg.moe_style == "gpt_oss" else _swiglu
    if X * K < cfg.num_experts:
        y_RD = ffn(cfg, lp, x_XD[token_R], lambda a, name: jnp.einsum("rd,rdf->rf", a, lp[name][expert_R]),
                   expert_R)
    else:
        order_R = jnp.argsort(expert_R, stable=True)
        sizes_E = jnp.bincount(expert_R, length=cfg.num_experts).astype(jnp.int32)
        y_sorted = ffn(cfg, lp, x_XD[token_R[order_R]], lambda a, name: jax.lax.ragged_dot(a, lp[name], sizes_E),
                       expert_R[order_R])
        y_RD = jnp.zeros_like(y_sorted).at[order_R].set(y_sorted)
    weighted = y_RD.reshape(X, K, D) * weight_XK.astype(x_BTD.dtype)[..., None]
    return jnp.sum(weighted, axis=1).reshape(B, T, D)


Matmul = Callable[[jax.Array, str], jax.Array]


def _swiglu(cfg: ModelConfig, lp: dict[str, Any], x_RD: jax.Array, matmul: Matmul, expert_R: jax.Array) -> jax.Array:
    """down(silu(gate(x)) * up(x)) per row, `matmul(a, name)` multiplying each row by its expert's weight."""
    return matmul(jax.nn.silu(matmul(x_RD, "expert_gate")) * matmul(x_RD, "expert_up"), "expert_down")


def _clamped_swiglu(cfg: ModelConfig, lp: dict[str, Any], x_RD: jax.Array, matmul: Matmul,
                    expert_R: jax.Array) -> jax.Array:
    """gpt-oss's expert: gate and up interleaved in one product (even, odd columns), gate clamped above and up
    on both sides at `swiglu_limit`, (up + 1) * gate * sigmoid(alpha * gate), biases on both products."""
    gate_up = matmul(x_RD, "expert_gate_up") + lp["expert_gate_up_bias"][expert_R]
    gate = jnp.minimum(gate_up[:, ::2], cfg.swiglu_limit)
    up = jnp.clip(gate_up[:, 1::2], -cfg.swiglu_limit, cfg.swiglu_limit)
    glu = gate * jax.nn.sigmoid(gate * cfg.swiglu_alpha)
    return matmul((up + 1) * glu, "expert_down") + lp["expert_down_bias"][expert_R]
