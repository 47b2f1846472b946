"""Meshes and shardings: a `data` axis for the batch, a `model` axis for tensor parallelism over heads and MLP
and for expert parallelism over routed experts.

One small rule table maps logical axes (declared per weight and for the KV cache in `weights.py`) to mesh axes;
a dimension that the mesh axis does not divide falls back to replication, with a logged note. Attention heads
that the model axis does not divide are widened first (`heads.py`: KV heads repeated only as often as needed,
query heads padded), so each chip holds its own query heads and the KV heads they read.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from selfguard_jax.config import ModelConfig
from selfguard_jax.heads import tp_config, widen_params
from selfguard_jax.weights import is_weight, layers_are_stacked, weight_table

log = logging.getLogger(__name__)

# logical axis -> mesh axis (axes not listed, such as "layers" and "embed", are never sharded)
# Experts are split over `model` (expert parallelism): each device holds whole experts, so an expert's own
# intermediate axis ("expert_mlp") stays unsplit.
RULES = {"batch": "data", "vocab": "model", "heads": "model", "kv_heads": "model", "mlp": "model",
         "expert": "model"}


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over all devices (all processes' devices under jax.distributed)."""
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices; {len(devices)} exist.")
    return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def spec_for(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: Mesh | AbstractMesh, name: str = "") -> P:
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
    """NamedSharding for every param, in the nested params layout: stacked, or per-layer (a tuple of dicts), at
    the widened head counts of `heads.tp_config` for this mesh's model axis."""
    def one(w):
        return NamedSharding(mesh, spec_for(w.shape, w.axes, mesh, w.hf[0]))

    table = weight_table(tp_config(cfg, mesh.shape["model"]))
    out = jax.tree.map(one, table, is_leaf=is_weight)
    if not stacked:
        per_layer = {k: NamedSharding(mesh, P(*s.spec[1:])) for k, s in out["layers"].items()}
        held = {k: w.layer_ids or range(cfg.num_layers) for k, w in table["layers"].items()}
        out["layers"] = tuple({k: s for k, s in per_layer.items() if i in held[k]} for i in range(cfg.num_layers))
    return out


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """`x` laid out by its logical axes on the mesh in context (`jax.set_mesh`); unchanged without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(x.shape, axes, mesh))


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
    """`params` (either layout) widened for the mesh's model axis (`heads.py`) and moved onto their shardings."""
    params = widen_params(params, cfg, mesh.shape["model"])
    return jax.tree.map(jax.device_put, params, param_shardings(cfg, mesh, layers_are_stacked(params)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows over `data`, everything else replicated."""
    return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))

