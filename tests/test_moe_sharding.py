"""Expert parallelism (`moe.py`'s shard_map dispatch) on 8 fake CPU devices: the routed block split over `model`
equals transformers' block and the single-device block on both dispatch paths, only activations cross devices,
and greedy decoding on the mesh gives the single-device tokens."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec as P

import selfguard_jax as sgj
from selfguard_jax import sharding
from selfguard_jax.moe import expert_shards, moe_mlp

EXACT = 1e-6  # float32: sharded against single-device (observed <= 2e-8: only the psum's summation order differs)
TOL = 1e-5  # float32: against transformers' block, as test_moe.py's routed-block tests


def _collectives(hlo: str) -> list[tuple[str, int]]:
    """(op, elements) of every array a collective of the compiled program carries."""
    out = []
    for line in hlo.splitlines():
        m = re.search(r"= (.*?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)\(", line)
        if m:
            out += [(m.group(2), int(np.prod([int(d) for d in dims.split(",") if d])))
                    for _, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))]
    return out


# 8 experts, top 2. model=2: 4 experts per device, 1 token = 2 rows < 4, the gathered-weights path; model=8: one
# expert per device, the ragged_dot path (rows of other devices' experts outside every group). 40 tokens: ragged.
@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
@pytest.mark.parametrize("mesh_shape, tokens, ragged", [((4, 2), 1, False), ((1, 8), 1, True),
                                                        pytest.param((2, 4), 40, True, marks=pytest.mark.slow)])
def test_expert_parallel_block_equals_single_device_and_transformers(hf_dirs, name, mesh_shape, tokens, ragged):
    folder, model = hf_dirs[name]
    lm = sgj.load(folder, scan_layers=False)
    cfg, lp = lm.config, lm.params["layers"][0]
    mesh = sharding.make_mesh(*mesh_shape)
    lp_sharded = sharding.shard_params(lm.params, cfg, mesh)["layers"][0]
    assert lp_sharded["expert_down"].sharding.spec == P("model", None, None)
    x = np.random.default_rng(tokens).normal(size=(1, tokens, 64)).astype(np.float32)
    x_rep = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P()))
    fn = jax.jit(lambda lp, x: moe_mlp(cfg, lp, x))
    single = np.asarray(fn(lp, jnp.asarray(x)))
    with jax.set_mesh(mesh):
        assert expert_shards(cfg) == mesh_shape[1]
        jaxpr = str(jax.make_jaxpr(lambda lp, x: moe_mlp(cfg, lp, x))(lp_sharded, x_rep))
        compiled = fn.lower(lp_sharded, x_rep).compile()
    sharded = np.asarray(compiled(lp_sharded, x_rep))
    moved = _collectives(compiled.as_text())
    with torch.no_grad():
        out = model.model.layers[0].mlp(torch.tensor(x))
    ref = (out[0] if isinstance(out, tuple) else out).numpy()
    assert "shard_map" in jaxpr and ("ragged_dot" in jaxpr) == ragged
    assert np.abs(sharded - single).max() <= EXACT
    assert np.abs(sharded - ref).max() < TOL and np.abs(ref).max() > 1e-3
    # only the partial outputs [tokens, D] are summed across devices; no expert weight moves
    assert moved and all(op == "all-reduce" and n <= tokens * 64 for op, n in moved), moved


def test_no_mesh_or_indivisible_experts_keep_the_single_device_dispatch(hf_dirs):
    """8 experts on a model axis of 8 split; the qwen3_moe_mixed config's 6 experts do not divide 8 (replicated by
    `sharding.spec_for`), nor does anything split without a mesh."""
    cfg8 = sgj.load(hf_dirs["qwen3_moe"][0], scan_layers=False).config
    cfg6 = sgj.load(hf_dirs["qwen3_moe_mixed"][0], scan_layers=False).config
    assert expert_shards(cfg8) == 1
    with jax.set_mesh(sharding.make_mesh(1, 8)):
        assert expert_shards(cfg8) == 8 and expert_shards(cfg6) == 1


@pytest.mark.slow
def test_gpt_oss_greedy_tokens_on_an_expert_parallel_mesh_equal_single_device(hf_dirs):
    """gpt-oss (sinks, sliding window, biased router) with experts split 2 ways (4 per device): decode steps of 1
    row (2 rows < 4: the gathered path) and of 5 rows (ragged path) give the single device's greedy tokens."""
    folder, _ = hf_dirs["gpt_oss"]
    single = sgj.load(folder)
    single.config = dataclasses.replace(single.config, eos_token_ids=())
    meshed = sgj.load(folder, mesh=sharding.make_mesh(1, 2, devices=jax.devices()[:2]))
    meshed.config = single.config
    prompts = [[5, 17, 33, 8], [12, 4], [150, 3, 77], [7, 7, 8, 9, 10], [99]]
    for batch in (prompts[:1], prompts):
        assert meshed.generate(batch, max_new_tokens=8).tokens == single.generate(batch, max_new_tokens=8).tokens
