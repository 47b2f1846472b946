"""Meshes and shardings: a `data` axis for the batch, a `model` axis for tensor parallelism over heads and MLP.

One small rule table maps the logical axes of every param and of the KV cache to mesh axes; a dimension that
the mesh axis does not divide falls back to replication, with a logged note.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfguard_jax.config import ModelConfig
from selfguard_jax.model import layers_are_stacked, param_shapes

log = logging.getLogger(__name__)

# logical axis -> mesh axis
RULES = {"batch": "data", "vocab": "model", "heads": "model", "kv_heads": "model", "mlp": "model"}

# per-param logical axes (the leading layer axis of stacked params is never sharded)
PARAM_AXES = {
    "embed": ("vocab", None), "lm_head": (None, "vocab"), "final_norm": (None,),
    "attn_norm": (None, None), "mlp_norm": (None, None), "q_norm": (None, None), "k_norm": (None, None),
    "q": (None, None, "heads", None), "k": (None, None, "kv_heads", None), "v": (None, None, "kv_heads", None),
    "o": (None, "heads", None, None), "q_bias": (None, "heads", None), "k_bias": (None, "kv_heads", None),
    "v_bias": (None, "kv_heads", None), "o_bias": (None, None),
    "gate": (None, None, "mlp"), "up": (None, None, "mlp"), "down": (None, "mlp", None),
}
CACHE_AXES = (None, "batch", "kv_heads", None, None)  # [L, B, K, S, H]


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over all devices (all processes' devices under jax.distributed)."""
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices; {len(devices)} exist.")
    return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def spec_for(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: Mesh, name: str = "") -> P:
    """PartitionSpec from logical axes; a dimension the mesh axis does not divide is replicated."""
    out = []
    for dim, logical in zip(shape, axes):
        mesh_axis = RULES.get(logical) if logical else None
        if mesh_axis is not None and dim % mesh.shape[mesh_axis] != 0:
            log.info("%s: %s dimension %d does not divide mesh axis %s=%d; replicated", name, logical, dim,
                     mesh_axis, mesh.shape[mesh_axis])
            mesh_axis = None
        out.append(mesh_axis)
    return P(*out)


def param_shardings(cfg: ModelConfig, mesh: Mesh, stacked: bool = True) -> dict:
    """NamedSharding for every param, in the nested params layout: stacked, or per-layer (a tuple of dicts)."""
    def one(name, shape):
        return NamedSharding(mesh, spec_for(shape, PARAM_AXES[name], mesh, name))

    shapes = param_shapes(cfg)
    out = {k: one(k, v) for k, v in shapes.items() if k != "layers"}
    layers = {k: one(k, v) for k, v in shapes["layers"].items()}
    per_layer = {k: NamedSharding(mesh, P(*s.spec[1:])) for k, s in layers.items()}
    out["layers"] = layers if stacked else tuple(per_layer for _ in range(cfg.num_layers))
    return out


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
    return jax.tree.map(jax.device_put, params, param_shardings(cfg, mesh, layers_are_stacked(params)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows over `data`, everything else replicated."""
    return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))

