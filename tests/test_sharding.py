"""On 8 fake CPU devices: forward and generate (steering and reminders on) under (data, model) meshes equal
the single-device result; loading straight onto shardings."""

import dataclasses

import jax
import numpy as np
import pytest

import selfguard_jax as sgj
from selfguard_jax import sharding
from selfguard_jax.reminder import Reminder, Thinking
from tiny_models import save_hf_model

PROMPTS = [[5, 17, 33, 8, 91, 42], [12, 4], [150, 3, 77, 19, 20, 21, 22, 23, 24], [7, 7, 8], [99]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    f = tmp_path_factory.mktemp("mesh")
    # 8 heads / 4 kv heads / mlp 128 / vocab 256 divide every mesh axis size up to 8 on some axes, not others
    save_hf_model("qwen3_headdim", f, initializer_range=0.2, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=16, intermediate_size=128, vocab_size=256)
    return f


@pytest.mark.parametrize("shape", [(8, 1)] + [pytest.param(s, marks=pytest.mark.slow)
                                               for s in ((4, 2), (2, 4), (1, 8))])
def test_mesh_equals_single_device(folder, shape):
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (conftest)"
    single = sgj.load(folder)
    single.config = dataclasses.replace(single.config, eos_token_ids=())
    meshed = sgj.load(folder, mesh=sharding.make_mesh(*shape))
    meshed.config = single.config
    ids = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 9, 9, 9, 9]])
    mask = (ids > 0).astype(np.int32)
    np.testing.assert_allclose(np.asarray(meshed.forward(ids, mask)), np.asarray(single.forward(ids, mask)),
                               atol=1e-5)
    vecs = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    steer = sgj.Steering.from_vectors(vecs, [1, 2], 0.5)
    rem = Reminder(token_ids=[100, 101, 102], boundary_ids=list(range(256)), thinking=Thinking([9], 12, 6),
                   threshold=9.0, max_reminders=2)
    a = single.generate(PROMPTS, max_new_tokens=20, steering=steer, reminder=rem)
    b = meshed.generate(PROMPTS, max_new_tokens=20, steering=steer, reminder=rem)
    assert a.tokens == b.tokens and a.reminder_steps == b.reminder_steps
    assert sum(map(len, a.reminder_steps)) > 0
    np.testing.assert_allclose(np.concatenate(a.entropy), np.concatenate(b.entropy), atol=1e-4)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_params_land_on_their_shardings(folder, scan_layers):
    mesh = sharding.make_mesh(2, 4)
    lm = sgj.load(folder, mesh=mesh, scan_layers=scan_layers)
    layers = lm.params["layers"] if scan_layers else lm.params["layers"][-1]
    lead = (None,) if scan_layers else ()
    assert layers["q"].sharding.spec == jax.sharding.PartitionSpec(*lead, None, "model", None)
    assert layers["attn_norm"].sharding.is_fully_replicated
    resharded = sgj.load(folder, scan_layers=scan_layers).with_mesh(mesh)
    assert jax.tree.map(lambda a: a.sharding, resharded.params) == jax.tree.map(lambda a: a.sharding, lm.params)
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh(3, 2)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_prefill_lays_out_the_kv_cache_on_the_mesh_in_context(folder, scan_layers):
    """The cache is created batch over `data`, kv heads over `model` (weights.KV_AXES), even from replicated
    inputs, where XLA alone would leave it replicated."""
    import jax.numpy as jnp

    from selfguard_jax.model import prefill

    lm = sgj.load(folder, scan_layers=scan_layers)  # params on one device, inputs replicated
    ids = jnp.ones((4, 5), jnp.int32)
    run = jax.jit(lambda p, i: prefill(p, lm.config, i, jnp.ones_like(i), cache_len=8, scan_layers=scan_layers)[1])
    mesh = sharding.make_mesh(2, 4)
    params = jax.device_put(lm.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    with jax.set_mesh(mesh):
        cache = run(params, ids)
    lead = (None,) if scan_layers else ()
    want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*lead, "data", "model", None, None))
    for k in jax.tree.leaves(cache):
        assert k.sharding.is_equivalent_to(want, k.ndim), k.sharding
    assert all(k.sharding.is_fully_replicated for k in jax.tree.leaves(run(params, ids)))
