"""Continuous batching: a queue decoded in fewer slots than requests gives every request exactly what it gets
decoded alone; attention reads only the filled blocks of the cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selfguard_jax as sgj
from selfguard_jax.model import KVCache, attention, attention_blocks, block_cache, write_blocks
from tiny_models import SPECS

rng = np.random.default_rng(0)
QUEUE = [rng.integers(3, 200, size=int(n)).tolist() for n in rng.integers(2, 30, size=9)]
BUDGETS = [int(n) for n in rng.choice([6, 14, 30], size=9)]  # few distinct budgets: few programs to compile


def alone(lm, q, **kw):
    return lm.generate([QUEUE[q]], max_new_tokens=BUDGETS[q], **kw)


def assert_same(stream, q, single):
    assert stream.tokens[q] == single.tokens[0], f"request {q}"
    np.testing.assert_allclose(stream.entropy[q], single.entropy[0], atol=1e-5)
    assert stream.forced[q] == single.forced[0]
    assert stream.reminder_steps[q] == single.reminder_steps[0]
    assert stream.stop_reason[q] == single.stop_reason[0]
    assert stream.think_tokens[q] == single.think_tokens[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_stream_equals_each_request_alone(hf_dirs, name):
    folder, _ = hf_dirs[name]
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    plain = lm.generate(QUEUE, max_new_tokens=BUDGETS)
    common = np.bincount([t for row in plain.tokens for t in row[1:-1]]).argmax()
    lm.config = dataclasses.replace(lm.config, eos_token_ids=(int(common),))  # some requests stop early
    out = lm.generate(QUEUE, max_new_tokens=BUDGETS, slots=3)
    assert [len(t) for t in out.tokens] != BUDGETS, "some request must stop on its stop id"
    for q in range(len(QUEUE)):
        assert_same(out, q, alone(lm, q))


@pytest.mark.slow
def test_stream_with_reminders_steering_and_closes_mid_reminder(hf_dirs):
    """Per-request reminders on/off and steering strengths in one stream; refills land while other slots are
    forcing a reminder or a close."""
    folder, _ = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    vecs = np.random.default_rng(1).normal(size=(lm.config.num_layers, lm.config.hidden_size)).astype(np.float32)
    rem = sgj.Reminder(token_ids=[100, 101, 102, 103, 104], boundary_ids=list(range(0, 211, 2)), think_end_ids=[7],
                       threshold=99.0, max_reminders=2, max_think_tokens=9, max_answer_tokens=5)
    on = [q % 3 != 0 for q in range(len(QUEUE))]
    scales = [0.0 if q % 2 else 1.0 for q in range(len(QUEUE))]
    steer = sgj.Steering.from_vectors(vecs, [0, 2], 0.5, row_scales=scales)
    out = lm.generate(QUEUE, max_new_tokens=BUDGETS, slots=2, reminder=rem, reminder_rows=on, steering=steer)
    assert any(out.reminder_steps) and any(7 in t for t in out.tokens)
    for q in range(len(QUEUE)):
        single_rem = rem if on[q] else dataclasses.replace(rem, max_reminders=0)
        single_steer = sgj.Steering.from_vectors(vecs, [0, 2], 0.5 * scales[q])
        assert_same(out, q, alone(lm, q, reminder=single_rem, steering=single_steer))


@pytest.mark.parametrize("blocked", [False, True])
def test_attention_reads_only_the_filled_blocks(blocked):
    """Slots past attend_len hold NaN: the blockwise attention never reads them, and it equals the fused
    attention over the whole cache, whether the cache is one array or cut into block buffers."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    B, N, K, H, S, filled = 3, 4, 2, 8, 2048, 700
    q = jax.random.normal(keys[0], (B, 1, N, H))
    k = jax.random.normal(keys[1], (B, K, S, H))
    v = jax.random.normal(keys[2], (B, K, S, H))
    valid = jnp.arange(S)[None, None, :] < jnp.array([50, 600, filled])[:, None, None]
    want = attention(q, k, v, valid)
    poisoned = [x.at[:, :, 1024:].set(jnp.nan) for x in (k, v)]  # past the first two 512-slot blocks
    if blocked:
        poisoned = [block_cache(KVCache(k=(x,), v=(x,))).k[0] for x in poisoned]
    got = attention_blocks(q, *poisoned, valid, jnp.int32(filled))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_blocked_cache_write_lands_in_each_rows_slot():
    """One new slot per row, at a different block for each row, lands where an array cache's write puts it."""
    B, K, S, H = 3, 2, 1536, 4
    cache = jax.random.normal(jax.random.PRNGKey(0), (B, K, S, H))
    new = jax.random.normal(jax.random.PRNGKey(1), (B, K, 1, H))
    index = jnp.array([3, 511, 1100])
    blocks = write_blocks(block_cache(KVCache(k=(cache,), v=(cache,))).k[0], new, index)
    want = jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))(cache, new, index)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=2), np.asarray(want))


@pytest.mark.slow
def test_blockwise_attention_over_a_long_cache_equals_the_fused_one(hf_dirs):
    """A cache of 1,536 slots (three 512-slot blocks) decoded with filled-block attention in a stream gives each
    request what the fused whole-cache attention gives it alone."""
    folder, _ = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=(), max_position_embeddings=2048)
    queue, budgets = QUEUE[:3], [1010, 7, 30]
    out = lm.generate(queue, max_new_tokens=budgets, slots=2, filled_attention=True)
    for q in range(3):
        single = lm.generate([queue[q]], max_new_tokens=budgets[q], filled_attention=False)
        assert out.tokens[q] == single.tokens[0], f"request {q}"
        np.testing.assert_allclose(out.entropy[q], single.entropy[0], atol=1e-4)
