"""KV heads the model axis does not divide, and MLP shards padded to 128 (heads.py): on 8 fake CPU devices a
14-query / 2-KV head Qwen2 (7 query heads per KV head, as R1-Distill-Qwen-7B's 28 / 4) shards its attention
weights and KV cache over model=4 and model=8 and still equals transformers' logits and the single-device
generation."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import selfguard_jax as sgj
from selfguard_jax import heads, sharding
from selfguard_jax.config import ModelConfig
from selfguard_jax.model import prefill
from selfguard_jax.plan import plan
from selfguard_jax.reminder import Reminder, Thinking
from tiny_models import save_hf_model

PROMPTS = [[5, 17, 33, 8, 91, 42], [12, 4], [150, 3, 77, 19, 20, 21, 22, 23, 24], [7, 7, 8], [99]]
R1_7B = ModelConfig.from_dict(dict(architectures=["Qwen2ForCausalLM"], hidden_size=3584, num_hidden_layers=28,
                                   num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                                   vocab_size=152064))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    f = tmp_path_factory.mktemp("heads")
    torch_model = save_hf_model("qwen2_tied", f, initializer_range=0.2, num_attention_heads=14, num_key_value_heads=2,
                                hidden_size=112, intermediate_size=1100, vocab_size=256)
    return f, torch_model


def test_tp_config_replicates_kv_heads_only_as_needed():
    assert heads.tp_config(R1_7B, 8).num_heads == 32 and heads.tp_config(R1_7B, 8).num_kv_heads == 8
    assert heads.tp_config(R1_7B, 4) == R1_7B  # 28 and 4 divide by 4, 18,944 / 4 by 128: nothing to widen
    assert heads.tp_config(R1_7B, 8).intermediate_size == 19456  # 2,368 per chip padded to 2,432 = 19 x 128
    qwen32 = dataclasses.replace(R1_7B, num_heads=40, num_kv_heads=8)
    assert (heads.tp_config(qwen32, 16).num_heads, heads.tp_config(qwen32, 16).num_kv_heads) == (48, 16)
    one = plan(R1_7B, 1, 1, 64, 4608)
    eight = plan(R1_7B, 1, 8, 64, 4608)
    assert eight.cache_bytes == one.cache_bytes / 4  # one KV head per chip instead of all four
    assert eight.params_bytes < one.params_bytes / 7


def test_gemma3_27b_and_phi4_reasoning_on_model_8():
    """Gemma 3 27B's 32 / 16 heads and 21,504-wide MLP divide over 8 chips as they are; Phi-4-reasoning's 10 KV heads
    do not: each is held 4 times (40 / 40 heads, 5 query heads and their 5 KV copies per chip) and its 17,920-wide
    MLP (2,240 per chip) is padded to 18,432 (2,304 = 18 x 128)."""
    configs = Path(__file__).resolve().parent.parent / "benchmarks" / "configs"
    gemma = ModelConfig.from_pretrained(configs / "gemma-3-27b")
    assert heads.tp_config(gemma, 8) == gemma
    phi = ModelConfig.from_pretrained(configs / "phi-4-reasoning")
    wide = heads.tp_config(phi, 8)
    assert (wide.num_heads, wide.num_kv_heads, wide.intermediate_size) == (40, 40, 18432)
    k = np.arange(10, dtype=np.float32).reshape(1, 10, 1)  # KV head h's copies serve query heads 4h .. 4h + 3
    np.testing.assert_array_equal(heads.widen("k", k, phi, 8, stacked=False)[0, :, 0], np.arange(40) // 4)
    assert plan(phi, 1, 8, 8, 1024).cache_bytes == plan(phi, 1, 1, 8, 1024).cache_bytes / 2  # 5 of 10 heads' worth


def test_widen_numpy_and_jax_agree_and_keep_every_head():
    cfg = dataclasses.replace(R1_7B, hidden_size=8, head_dim=2)
    q = np.arange(8 * 28 * 2, dtype=np.float32).reshape(1, 8, 28, 2)
    wide = heads.widen("q", q, cfg, 8, stacked=True)
    assert wide.shape == (1, 8, 32, 2)
    np.testing.assert_array_equal(np.asarray(heads.widen("q", jnp.asarray(q), cfg, 8, True)), wide)
    by_group = wide.reshape(1, 8, 4, 8, 2)
    np.testing.assert_array_equal(by_group[:, :, :, :7], q.reshape(1, 8, 4, 7, 2))
    assert not by_group[:, :, :, 7].any()
    k = np.arange(8 * 4 * 2, dtype=np.float32).reshape(8, 4, 2)
    np.testing.assert_array_equal(heads.widen("k", k, cfg, 8, stacked=False), np.repeat(k, 2, axis=1))
    assert heads.widen("k", heads.widen("k", k, cfg, 8, False), cfg, 8, False).shape == (8, 8, 2)
    for name, a in (("k", k), ("q", q[0])):  # params widened for model=8, then moved to model=16
        again = heads.widen(name, heads.widen(name, a, cfg, 8, False), cfg, 16, False)
        np.testing.assert_array_equal(again, heads.widen(name, a, cfg, 16, False))
    down = np.ones((3, 18944, 8), np.float32)
    wide_down = heads.widen("down", down, cfg, 8, stacked=True)
    assert wide_down.shape == (3, 19456, 8) and wide_down[:, 18944:].sum() == 0 and wide_down.sum() == down.sum()


@pytest.mark.slow
@pytest.mark.parametrize("shape,scan_layers", [((1, 8), True), ((1, 8), False), ((2, 4), True)])
def test_sharded_equals_unsharded_when_kv_heads_do_not_divide(model, shape, scan_layers):
    folder, torch_model = model
    single = sgj.load(folder, scan_layers=scan_layers)
    single.config = dataclasses.replace(single.config, eos_token_ids=())
    mesh = sharding.make_mesh(*shape)
    meshed = sgj.load(folder, mesh=mesh, scan_layers=scan_layers)
    meshed.config = single.config
    layers = meshed.params["layers"] if scan_layers else meshed.params["layers"][0]
    wide = heads.tp_config(single.config, shape[1])
    assert layers["k"].shape[-2] == wide.num_kv_heads and layers["q"].shape[-2] == wide.num_heads
    assert layers["down"].shape[-2] == wide.intermediate_size == {4: 1536, 8: 2048}[shape[1]]  # 1,100 padded
    assert "model" in layers["k"].sharding.spec and "model" in layers["q_bias"].sharding.spec

    ids = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 9, 9, 9, 9], [3, 1, 4, 1, 5]])
    mask = (ids > 0).astype(np.int32)
    with torch.no_grad():
        want = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(meshed.forward(ids, mask))
    np.testing.assert_allclose(got[mask > 0], want[mask > 0], atol=1e-4)
    np.testing.assert_allclose(got, np.asarray(single.forward(ids, mask)), atol=1e-4)

    vecs = np.random.default_rng(0).normal(size=(3, 112)).astype(np.float32)
    steer = sgj.Steering.from_vectors(vecs, [1, 2], 0.5)
    rem = Reminder(token_ids=[100, 101, 102], boundary_ids=list(range(256)), thinking=Thinking([9], 12, 6),
                   threshold=9.0, max_reminders=2)
    a = single.generate(PROMPTS, max_new_tokens=20, steering=steer, reminder=rem)
    b = meshed.generate(PROMPTS, max_new_tokens=20, steering=steer, reminder=rem)
    assert a.tokens == b.tokens and a.reminder_steps == b.reminder_steps
    assert sum(map(len, a.reminder_steps)) > 0
    np.testing.assert_allclose(np.concatenate(a.entropy), np.concatenate(b.entropy), atol=1e-4)


def test_kv_cache_is_sharded_over_the_widened_heads(model):
    folder, _ = model
    mesh = sharding.make_mesh(1, 8)
    lm = sgj.load(folder, mesh=mesh, scan_layers=True)
    ids = jnp.ones((2, 5), jnp.int32)
    with jax.set_mesh(mesh):
        _, cache = jax.jit(lambda p, i: prefill(p, lm.config, i, jnp.ones_like(i), cache_len=8))(lm.params, ids)
    assert cache.k.shape[2] == 8  # 2 KV heads, each held by the 4 chips whose query heads read it
    assert cache.k.sharding.spec[2] == "model"
    assert cache.k.addressable_shards[0].data.shape[2] == 1
