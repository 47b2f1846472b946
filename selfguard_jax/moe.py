"""Routed mixture-of-experts feed-forward (Qwen3-MoE, gpt-oss): a float32 router picks k experts per token, and
each (token, expert) row runs through its expert's SwiGLU (gpt-oss: clamped, with biases), weighted by its
routing weight.

No dense [tokens, experts, ...] tensor is built. Rows are sorted by expert and run through grouped matmuls
(`jax.lax.ragged_dot`, one group per expert), or, when there are fewer rows than experts (a small-batch decode
step), each row multiplies the weights of its own expert gathered by index, so only the chosen experts' weights
are read. Expert weights are stacked [E, ...] (`weights.py`) and split over the `model` mesh axis. On a mesh in
context (`jax.set_mesh`) whose `model` axis splits them, the dispatch is expert-parallel (`jax.shard_map`):
tokens stay replicated over that axis, each chip runs the rows routed to its own experts against its own weights,
and the partial outputs are summed over the axis, so activations move and weights never do.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from selfguard_jax.config import ModelConfig
from selfguard_jax.sharding import RULES

EXPERT_AXIS = RULES["expert"]


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


def expert_shards(cfg: ModelConfig) -> int:
    """How many ways the mesh in context splits the experts: its `model` axis size when that divides the expert
    count (as `sharding.spec_for` then lays the stack out), else 1 (no mesh, or experts replicated)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or EXPERT_AXIS not in mesh.axis_names:
        return 1
    n = mesh.shape[EXPERT_AXIS]
    return n if cfg.num_experts % n == 0 else 1


def moe_mlp(cfg: ModelConfig, lp: dict[str, Any], x_BTD: jax.Array) -> jax.Array:
    """The routed experts' output [B, T, D] for the normed block input `x_BTD`; expert-parallel on a mesh in
    context that splits the experts."""
    B, T, D = x_BTD.shape
    x_XD = x_BTD.reshape(B * T, D)
    expert_XK, weight_XK = route(cfg, lp, x_XD)
    experts = {k: v for k, v in lp.items() if k.startswith("expert_")}
    shards = expert_shards(cfg)
    if shards == 1:
        return _routed(cfg, experts, x_XD, expert_XK, weight_XK, 0).reshape(B, T, D)
    local = jax.shard_map(partial(_expert_parallel, cfg), in_specs=(P(EXPERT_AXIS), P(), P(), P()), out_specs=P(),
                          axis_names={EXPERT_AXIS})
    return local(experts, x_XD, expert_XK, weight_XK).reshape(B, T, D)


def _expert_parallel(cfg: ModelConfig, experts: dict[str, jax.Array], x_XD: jax.Array, expert_XK: jax.Array,
                     weight_XK: jax.Array) -> jax.Array:
    """One chip's share inside `shard_map`: its own experts' rows, summed with the other chips' over the axis."""
    first = jax.lax.axis_index(EXPERT_AXIS) * experts["expert_down"].shape[0]
    return jax.lax.psum(_routed(cfg, experts, x_XD, expert_XK, weight_XK, first), EXPERT_AXIS)


def _routed(cfg: ModelConfig, experts: dict[str, jax.Array], x_XD: jax.Array, expert_XK: jax.Array,
            weight_XK: jax.Array, first: jax.Array | int) -> jax.Array:
    """Sum over each token's k choices of weight x expert(token) [X, D], for the choices among the experts held
    here (global ids `first` .. `first + E_local - 1`; all of them when `experts` is the whole stack)."""
    X, K = expert_XK.shape
    E = experts["expert_down"].shape[0]
    local_R = expert_XK.reshape(-1) - first  # row r is token r // K's (r % K)-th choice
    token_R = jnp.arange(X * K, dtype=jnp.int32) // K
    mine_R = None if E == cfg.num_experts else (local_R >= 0) & (local_R < E)
    ffn = _clamped_swiglu if cfg.moe_style == "gpt_oss" else _swiglu
    if X * K < E:  # few rows: gather each row's expert (rows of other chips' experts clipped, then dropped)
        expert_R = local_R if mine_R is None else jnp.clip(local_R, 0, E - 1)
        y_RD = ffn(cfg, experts, x_XD[token_R], lambda a, name: jnp.einsum("rd,rdf->rf", a, experts[name][expert_R]),
                   expert_R)
    else:  # rows sorted by expert, other chips' rows last, outside every group
        key_R = local_R if mine_R is None else jnp.where(mine_R, local_R, E)
        order_R = jnp.argsort(key_R, stable=True)
        sizes_E = jnp.bincount(key_R, length=E).astype(jnp.int32)  # ids == E are dropped
        y_sorted = ffn(cfg, experts, x_XD[token_R[order_R]],
                       lambda a, name: jax.lax.ragged_dot(a, experts[name], sizes_E),
                       jnp.minimum(key_R[order_R], E - 1))
        y_RD = jnp.zeros_like(y_sorted).at[order_R].set(y_sorted)
    if mine_R is not None:
        y_RD = jnp.where(mine_R[:, None], y_RD, 0)
    weighted = y_RD.reshape(X, K, -1) * weight_XK.astype(x_XD.dtype)[..., None]
    return jnp.sum(weighted, axis=1)


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
