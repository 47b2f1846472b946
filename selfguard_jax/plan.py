"""Memory plan per device for a model on a (data, model) mesh: params, KV cache and peak activations, and which
common accelerators it fits. Pure arithmetic from the config and the same sharding rules the code uses."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from selfguard_jax.config import ModelConfig
from selfguard_jax.heads import tp_config
from selfguard_jax.sharding import RULES
from selfguard_jax.weights import KV_AXES, is_weight, kv_cache_shape, weight_table

DEVICES_GB = {"TPU v5e (16 GB)": 16, "TPU v4 (32 GB)": 32, "A100/H100 (80 GB)": 80, "H200 (141 GB)": 141}
HEADROOM = 0.9  # leave 10% for XLA scratch and fragmentation


@dataclasses.dataclass(frozen=True)
class Plan:
    params_bytes: float
    cache_bytes: float
    activation_bytes: float

    @property
    def total(self) -> float:
        return self.params_bytes + self.cache_bytes + self.activation_bytes


def _split(shape, axes, mesh: dict[str, int]) -> float:
    """Elements of one device's shard (a dimension the mesh axis does not divide stays whole, as in sharding.py)."""
    n = float(np.prod(shape))
    for dim, logical in zip(shape, axes):
        axis = RULES.get(logical) if logical else None
        if axis and dim % mesh[axis] == 0:
            n /= mesh[axis]
    return n


def plan(cfg: ModelConfig, data: int, model: int, batch: int, max_len: int, dtype_bytes: int = 2,
         prompt_len: int = 512) -> Plan:
    """Bytes per device: params (TP-sharded), the KV cache for batch x max_len, and the largest activation:
    the prefill's float32 attention scores [B/data, N/model, P, P] or MLP hidden, or a decode step's float32
    logits [B/data, V/model] and scores [B/data, N/model, max_len] (P = prompt_len; prefill keeps only the last
    position's logits). Heads the model axis does not divide count as `heads.tp_config` widens them."""
    mesh = {"data": data, "model": model}
    if batch % data:
        raise ValueError(f"batch {batch} does not divide over data={data}; pick a multiple.")
    cfg = tp_config(cfg, model)  # the head counts the sharded params have (heads.py)
    elems = sum(_split(w.shape, w.axes, mesh) for w in jax.tree.leaves(weight_table(cfg), is_leaf=is_weight))
    cache = 2 * _split(kv_cache_shape(cfg, batch, max_len), KV_AXES, mesh) * dtype_bytes
    rows = batch / data
    vocab = cfg.vocab_size / model if cfg.vocab_size % model == 0 else cfg.vocab_size
    heads = cfg.num_heads / model if cfg.num_heads % model == 0 else cfg.num_heads
    P = min(prompt_len, max_len)
    scores = rows * heads * P * P * 4
    mlp = rows * P * cfg.intermediate_size / model * dtype_bytes * 3
    decode = rows * (vocab + heads * max_len) * 4
    return Plan(elems * dtype_bytes, cache, max(scores, mlp, decode))


def describe(cfg: ModelConfig, data: int, model: int, batch: int, max_len: int, dtype_bytes: int = 2,
             prompt_len: int = 512) -> str:
    p = plan(cfg, data, model, batch, max_len, dtype_bytes, prompt_len)
    gb = 2 ** 30
    lines = [f"mesh data={data} model={model}, batch {batch}, max length {max_len} (prompt {prompt_len}), "
             f"{dtype_bytes}-byte weights",
             f"  params      {p.params_bytes / gb:9.2f} GiB per device",
             f"  KV cache    {p.cache_bytes / gb:9.2f} GiB per device",
             f"  activations {p.activation_bytes / gb:9.2f} GiB per device (peak single buffer)",
             f"  total       {p.total / gb:9.2f} GiB per device"]
    for name, cap in DEVICES_GB.items():
        ok = p.total <= cap * 1e9 * HEADROOM
        lines.append(f"  {name:20s} {'fits' if ok else 'does NOT fit'}")
    return "\n".join(lines)
