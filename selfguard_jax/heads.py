"""Attention heads and MLP width laid out for a tensor-parallel `model` axis that they do not divide evenly.

Serving engines' rule: replicate each KV head only as often as needed (r = model / gcd(K, model) copies, so the
K * r copies divide over the axis) and pad each KV head's group of G query heads to a multiple of r with
zero heads, so every chip holds whole query heads and the one KV copy they read. The widened model computes
the same function exactly: a zero query head's output meets zero rows of the output projection, and each copy
of a KV head holds the same keys and values. A 28-query / 4-KV head model on model=8 becomes 32 / 8 heads:
4 query heads and 1 KV head per chip, instead of every attention weight and the whole KV cache on every chip.

The MLP's hidden width, when wider than 128 per chip, is padded with zero units to a multiple of 128 per chip
(silu(0) * 0 = 0, exact): TPU
tiles a weight's minor dimension by 128, and an 18,944-wide MLP on model=8 (2,368 per chip) otherwise arrives
in a layout the matmul cannot use, so the compiler copies every stacked MLP weight once per program (0.9 GiB
per chip for R1-Distill-Qwen-7B).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selfguard_jax.config import ModelConfig
from selfguard_jax.weights import weight_table

QUERY_HEAD_WEIGHTS = ("q", "q_bias", "o", "sinks")  # their "heads" axis is padded per KV group
KV_HEAD_WEIGHTS = ("k", "v", "k_bias", "v_bias")  # their "kv_heads" axis is repeated
MLP_WEIGHTS = ("gate", "up", "down")  # their "mlp" axis is padded with zero units
LANES = 128  # TPU's tile width: each chip's MLP shard is made a multiple of it


def tp_config(cfg: ModelConfig, model: int) -> ModelConfig:
    """`cfg` with the head counts and MLP width the widened params have on a model axis of `model` (unchanged
    when the axis divides both head counts and the MLP into multiples of 128)."""
    if model <= 1:
        return cfg
    N, K, F = cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    if N % model or K % model:
        r = model // math.gcd(K, model)
        N, K = K * (-(-(N // K) // r) * r), K * r
    if F > LANES * model:  # a shard narrower than one tile (test-sized models) stays as it is
        F = -(-F // (LANES * model)) * LANES * model
    return dataclasses.replace(cfg, num_heads=N, num_kv_heads=K, intermediate_size=F)


def widen(name: str, a: Any, cfg: ModelConfig, model: int, stacked: bool) -> Any:
    """Layer param `name` (numpy or jax; with a leading layer axis when `stacked`) in the widened layout for a
    model axis of `model`; a param without a head or MLP axis, or already widened, comes back as it is."""
    wide = tp_config(cfg, model)
    if wide == cfg or name not in QUERY_HEAD_WEIGHTS + KV_HEAD_WEIGHTS + MLP_WEIGHTS:
        return a
    axes = weight_table(cfg)["layers"][name].axes
    axis = next(i for i, x in enumerate(axes) if x in ("heads", "kv_heads", "mlp")) - (0 if stacked else 1)
    xp = jnp if isinstance(a, jax.Array) else np
    K, n = cfg.num_kv_heads, a.shape[axis]  # n: this array's count (params widened for another axis have more)
    want = {**dict.fromkeys(MLP_WEIGHTS, wide.intermediate_size), **dict.fromkeys(KV_HEAD_WEIGHTS, wide.num_kv_heads),
            **dict.fromkeys(QUERY_HEAD_WEIGHTS, wide.num_heads)}[name]
    if n >= want or (name in KV_HEAD_WEIGHTS and want % n):
        return a  # already as wide (or wider, for a larger model axis, which also divides this one)
    if name in MLP_WEIGHTS:
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, want - n)
        return xp.pad(a, pad)
    if name in KV_HEAD_WEIGHTS:  # copies stay next to each other: [k0, k0, k1, k1, ...]
        return xp.repeat(a, want // n, axis=axis)
    grouped = a.reshape(a.shape[:axis] + (K, n // K) + a.shape[axis + 1:])  # zero heads stay last in each group
    pad = [(0, 0)] * grouped.ndim
    pad[axis + 1] = (0, want // K - n // K)
    return xp.pad(grouped, pad).reshape(a.shape[:axis] + (want,) + a.shape[axis + 1:])


def widen_params(params: dict, cfg: ModelConfig, model: int) -> dict:
    """Params (stacked or per-layer layout) widened for a model axis of `model`."""
    layers = params["layers"]
    if isinstance(layers, dict):
        return params | {"layers": {k: widen(k, a, cfg, model, True) for k, a in layers.items()}}
    return params | {"layers": tuple({k: widen(k, a, cfg, model, False) for k, a in lp.items()} for lp in layers)}
