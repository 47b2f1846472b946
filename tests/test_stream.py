"""Continuous batching: a queue decoded in fewer slots than requests gives every request exactly what it gets
decoded alone; attention reads only the filled blocks of the cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import selfguard_jax as sgj
from selfguard_jax.attention import attention, attention_blocks
from selfguard_jax.kv_cache import BlockedCache, LayerCache, write_blocks
from tiny_models import SPECS

rng = np.random.default_rng(0)
QUEUE = [rng.integers(3, 200, size=int(n)).tolist() for n in rng.integers(2, 30, size=9)]
BUDGETS = [int(n) for n in rng.choice([6, 14, 30], size=9)]  # few distinct budgets: few programs to compile


def alone(lm, q, **kw):
    return lm.generate([QUEUE[q]], max_new_tokens=BUDGETS[q], **kw)


def assert_same(stream, q, single, r=0):
    """Request q of the stream equals row r of `single` (a request decoded alone, or the queue as one batch)."""
    assert stream.tokens[q] == single.tokens[r], f"request {q}"
    np.testing.assert_allclose(stream.entropy[q], single.entropy[r], atol=1e-5)
    assert stream.forced[q] == single.forced[r]
    assert stream.reminder_steps[q] == single.reminder_steps[r]
    assert stream.stop_reason[q] == single.stop_reason[r]
    assert stream.think_tokens[q] == single.think_tokens[r]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_stream_equals_each_request_alone(hf_dirs, name):
    """Nine requests through 3 slots (refills, early stops). qwen3_headdim: against each request decoded alone.
    Every other architecture: against the whole queue in one fixed batch with no refill (one compile instead of
    nine), which the first case and the ragged-batch parity tests tie to decoding alone."""
    folder, _ = hf_dirs[name]
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    plain = lm.generate(QUEUE, max_new_tokens=BUDGETS)
    common = np.bincount([t for row in plain.tokens for t in row[1:-1]]).argmax()
    lm.config = dataclasses.replace(lm.config, eos_token_ids=(int(common),))  # some requests stop early
    out = lm.generate(QUEUE, max_new_tokens=BUDGETS, slots=3)
    assert [len(t) for t in out.tokens] != BUDGETS, "some request must stop on its stop id"
    if name == "qwen3_headdim":
        for q in range(len(QUEUE)):
            assert_same(out, q, alone(lm, q))
        return
    fixed = lm.generate(QUEUE, max_new_tokens=BUDGETS, slots=len(QUEUE))
    for q in range(len(QUEUE)):
        assert_same(out, q, fixed, q)


@pytest.mark.slow
def test_stream_with_reminders_steering_and_closes_mid_reminder(hf_dirs):
    """Per-request reminders on/off and steering strengths in one stream; refills land while other slots are
    forcing a reminder or a close."""
    folder, _ = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    vecs = np.random.default_rng(1).normal(size=(lm.config.num_layers, lm.config.hidden_size)).astype(np.float32)
    rem = sgj.Reminder(token_ids=[100, 101, 102, 103, 104], boundary_ids=list(range(0, 211, 2)),
                       thinking=sgj.Thinking([7], 9, 5), threshold=99.0, max_reminders=2)
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
        poisoned = [BlockedCache.cut(LayerCache(k=(x,), v=(x,))).k[0][0] for x in poisoned]
    got = attention_blocks(q, *poisoned, valid, jnp.int32(filled))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_blocked_cache_write_lands_in_each_rows_slot():
    """One new slot per row, at a different block for each row, lands where an array cache's write puts it."""
    B, K, S, H = 3, 2, 1536, 4
    cache = jax.random.normal(jax.random.PRNGKey(0), (B, K, S, H))
    new = jax.random.normal(jax.random.PRNGKey(1), (B, K, 1, H))
    index = jnp.array([3, 511, 1100])
    blocks = write_blocks(BlockedCache.cut(LayerCache(k=(cache,), v=(cache,))).k[0][0], new, index)
    want = jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))(cache, new, index)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=2), np.asarray(want))


def test_row_groups_read_only_their_own_filled_blocks():
    """Rows in groups of 2, each group filled to a different length: a group never reads past its own longest
    row (NaN there), the step's new slot lands in each row's place, and the result equals fused attention."""
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    B, N, K, H, S = 4, 4, 2, 8, 2048
    fill = jnp.array([100, 1500, 300, 200])  # group 0 reads 3 blocks, group 1 one block
    q = jax.random.normal(keys[0], (B, 1, N, H))
    k, v = (jax.random.normal(key, (B, K, S, H)) for key in keys[1:3])
    k_new, v_new = (jax.random.normal(key, (B, K, 1, H)) for key in keys[3:5])
    rows = jnp.arange(B)
    k_full, v_full = k.at[rows, :, fill - 1].set(k_new[:, :, 0]), v.at[rows, :, fill - 1].set(v_new[:, :, 0])
    valid = jnp.arange(S)[None, None, :] < fill[:, None, None]
    want = attention(q, k_full, v_full, valid)
    poison = jnp.arange(S)[None, None, :, None] >= jnp.array([1536, 1536, 512, 512])[:, None, None, None]
    blocked = BlockedCache.cut(LayerCache(k=(jnp.where(poison, jnp.nan, k),), v=(jnp.where(poison, jnp.nan, v),)),
                               groups=2)
    got, layer = blocked.layer(0).attend(q, k_new, v_new, valid, fill - 1, fill)
    k_groups = layer.k
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    written = jnp.concatenate([jnp.concatenate(g, axis=2) for g in k_groups])
    np.testing.assert_array_equal(np.asarray(written[rows, :, fill - 1]), np.asarray(k_new[:, :, 0]))


def test_a_refilled_prompt_lands_in_its_row_of_a_blocked_cache():
    B, K, S, H, T = 4, 2, 1536, 4, 600  # the prompt spans two blocks
    cache = jnp.zeros((B, K, S, H))
    prompt = jax.random.normal(jax.random.PRNGKey(2), (1, K, T, H))
    blocked = BlockedCache.cut(LayerCache(k=(cache,), v=(cache,)), groups=2).write_prompt(
        LayerCache(k=(prompt,), v=(prompt,)), jnp.int32(3))
    got = jnp.concatenate([jnp.concatenate(g, axis=2) for g in blocked.k[0]])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(cache.at[3, :, :T].set(prompt[0])))


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [False, True])
def test_blockwise_attention_over_a_long_cache_equals_the_fused_one(hf_dirs, scan_layers):
    """A cache of 1,536 slots (three 512-slot blocks) decoded with filled-block attention, in a stream (per-row
    writes, refills, row groups) and in one fixed batch (one write slot for all rows), gives each request what the
    fused whole-cache attention gives it in one fixed batch: per-layer caches cut into block buffers, stacked ones
    sliced."""
    folder, _ = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder, scan_layers=scan_layers)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=(), max_position_embeddings=2048)
    queue, budgets = QUEUE, [1010, 7, 30, 600, 5, 9, 700, 3, 12]
    filled = lm.with_policy(cache_layout="filled" if scan_layers else "blocked")  # on CPU: groups of 4 rows
    stream = filled.generate(queue, max_new_tokens=budgets, slots=8)
    fixed = filled.generate(queue, max_new_tokens=budgets)
    dense = lm.with_policy(cache_layout="dense").generate(queue, max_new_tokens=budgets)
    for q in range(len(queue)):
        for out in (stream, fixed):
            assert out.tokens[q] == dense.tokens[q], f"request {q}"
            np.testing.assert_allclose(out.entropy[q], dense.entropy[q], atol=1e-4)
