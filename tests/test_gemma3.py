"""Gemma 3 (text) against transformers' Gemma3ForCausalLM on tiny random configs, float32 (tolerance 1e-4): logits
and hidden states of ragged batches longer than the sliding window, greedy generation past the window (fixed
batch, a refilling stream of slots), and the window in the blocked KV-cache attention."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_decode import hf_greedy
from test_parity import TOL, hf_run, ragged_batch
from tiny_models import GEMMA_SPECS, save_hf_model

import selfguard_jax as sgj
from selfguard_jax.config import ConfigError, ModelConfig
from selfguard_jax.kv_cache import BlockedCache, LayerCache, StackedCache
from selfguard_jax.model import decode_step, prefill, unstack_layers

PROMPTS = [[5, 17, 33, 8, 91, 42, 7], [12, 4], [150, 3, 77, 19, 20, 21, 22, 23, 24, 25, 26], [60, 61, 62, 63]]


@pytest.fixture(scope="module")
def gemma_dirs(tmp_path_factory):
    out = {}
    for name in GEMMA_SPECS:
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, save_hf_model(name, folder))
    return out


@pytest.mark.parametrize("name", list(GEMMA_SPECS))
@pytest.mark.parametrize("pad_side", ["left", pytest.param("right", marks=pytest.mark.slow)])
def test_logits_and_hidden_states_match_hf(gemma_dirs, name, pad_side):
    """12 positions against windows of 5 and 4: the sliding layers see only part of the sequence."""
    folder, model = gemma_dirs[name]
    lm = sgj.load(folder)
    ids, mask = ragged_batch([9, 4, 12, 1], 12, pad_side)
    ref = hf_run(model, ids, mask, output_hidden_states=True)
    valid = mask.astype(bool)
    err = np.abs(np.asarray(lm.forward(ids, mask)) - ref.logits.numpy())[valid].max()
    hs = np.asarray(lm.hidden_states(ids, mask))
    herr = np.abs(hs - np.stack([h.numpy() for h in ref.hidden_states]))[:, valid].max()
    print(f"{name} {pad_side}: logits max |diff| {err:.1e}, hidden states {herr:.1e}")
    assert err < TOL and herr < TOL


def test_the_window_changes_the_logits(gemma_dirs):
    """The parity above can fail: without the window the same weights give other logits past it."""
    folder, model = gemma_dirs["gemma3"]
    lm = sgj.load(folder)
    windows = tuple(1000 if w else 0 for w in lm.config.layer_windows)  # sliding blocks (their rope) kept
    wide = dataclasses.replace(lm, config=dataclasses.replace(lm.config, layer_windows=windows))
    ids, mask = ragged_batch([12], 12, "left")
    a, b = np.asarray(lm.forward(ids, mask)), np.asarray(wide.forward(ids, mask))
    assert np.abs(a[:, :5] - b[:, :5]).max() < 1e-5  # inside the window nothing changes
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [True, False])
def test_greedy_past_the_window_equals_transformers_generate(gemma_dirs, scan_layers):
    folder, model = gemma_dirs["gemma3"]
    lm = sgj.load(folder, scan_layers=scan_layers)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    ref = hf_greedy(model, PROMPTS, 16)
    assert lm.generate(PROMPTS, max_new_tokens=16).tokens == ref
    assert lm.generate(PROMPTS, max_new_tokens=16, slots=2).tokens == ref  # the stream: slots refilled


@pytest.mark.slow
def test_blocked_cache_decode_keeps_the_window(gemma_dirs):
    """Decode steps over a cache cut into 4-slot blocks (the filled-block attention) and over the plain cache give
    the logits of a forward over the whole sequence, steps well past the window included."""
    folder, _ = gemma_dirs["gemma3_pattern"]
    lm = sgj.load(folder, scan_layers=False)
    params, cfg = unstack_layers(lm.params, lm.config), lm.config
    ids, mask = (jnp.asarray(a) for a in ragged_batch([6, 3], 6, "left"))
    extra = jnp.asarray([[9, 8, 7, 6, 5, 4, 3, 2, 11, 12], [21, 22, 23, 24, 25, 26, 27, 28, 29, 30]])
    S, n = 16, extra.shape[1]
    full_ids = jnp.concatenate([ids, extra], 1)
    full_mask = jnp.concatenate([mask, jnp.ones_like(extra)], 1)
    want = np.asarray(lm.forward(full_ids, full_mask))[:, 6:]
    step = jax.jit(decode_step, static_argnames=("cfg", "scan_layers"))
    for blocked in (False, True):
        _, cache = prefill(params, cfg, ids, mask, cache_len=S, scan_layers=False)
        cache = BlockedCache.cut(cache, block=4, groups=2) if blocked else cache
        valid = jnp.zeros((2, S), bool).at[:, :6].set(mask.astype(bool))
        pos = jnp.sum(mask, 1)
        for t in range(n):
            valid = valid.at[:, 6 + t].set(True)
            logits, cache = step(params, cfg, extra[:, t], pos + t, valid, cache, jnp.int32(6 + t),
                                 attend_len_B=jnp.full((2,), 7 + t), scan_layers=False)
            err = np.abs(np.asarray(logits) - want[:, t]).max()
            assert err < TOL, (blocked, t, err)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["stacked", "blocked"])
def test_sliding_blocks_read_only_their_window(gemma_dirs, layout):
    """The sliding blocks' cache slots wholly before their window hold NaN (the full block's do not): one decode
    step over the filled blocks (scanned 512-slot slices, or per-layer 4-slot buffers in two row groups, each
    group from its own window) never reads them and equals the masked attention over the clean cache."""
    folder, _ = gemma_dirs["gemma3_pattern"]
    lm = sgj.load(folder, scan_layers=layout == "stacked")
    cfg = lm.config
    stacked = layout == "stacked"
    S, pos = (1536, jnp.array([1200, 1100])) if stacked else (16, jnp.array([13, 9]))
    assert set(cfg.layer_windows) == {0, 4}
    shape = (cfg.num_layers, 2, cfg.num_kv_heads, S, cfg.head_dim)
    k, v = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in (0, 1))
    sliding = jnp.asarray([w > 0 for w in cfg.layer_windows])[:, None, None, None, None]
    if stacked:  # blocks 0 and 1 end before both rows' windows (1197 and 1097)
        before = jnp.arange(S)[None, None, None, :, None] < 1024
    else:  # row 0's window starts at slot 10 (its group skips 2 blocks of 4), row 1's at 6 (1 block)
        before = jnp.arange(S)[None, None, None, :, None] < jnp.array([8, 4])[None, :, None, None, None]
    poison = sliding & before
    valid = jnp.arange(S)[None, :] <= pos[:, None]
    tokens = jnp.array([5, 17])

    def step(k, v, filled: bool, params):
        if stacked:
            cache = StackedCache(k, v, filled=filled)
        else:
            cache = LayerCache(tuple(k), tuple(v))
            cache = BlockedCache.cut(cache, block=4, groups=2) if filled else cache
        logits, _ = jax.jit(decode_step, static_argnames=("cfg", "scan_layers"))(
            params, cfg, tokens, pos, valid, cache, pos, attend_len_B=pos + 1, scan_layers=stacked)
        return np.asarray(logits)

    params = lm.params if stacked else unstack_layers(lm.params, cfg)
    want = step(k, v, False, params)
    got = step(jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v), True, params)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_legacy_config_form_reads_the_same(gemma_dirs):
    """Hub configs written before transformers 5: rope_theta / rope_local_base_freq / rope_scaling and
    sliding_window_pattern instead of rope_parameters and layer_types."""
    folder, _ = gemma_dirs["gemma3_pattern"]
    v5 = json.loads((folder / "config.json").read_text())
    legacy = {k: v for k, v in v5.items() if k not in ("rope_parameters", "layer_types")}
    legacy |= {"rope_theta": 1_000_000.0, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6}
    assert ModelConfig.from_dict(legacy) == ModelConfig.from_dict(v5)
    cfg = ModelConfig.from_dict(v5)
    assert cfg.layer_windows == (4,) * 5 + (0, 4)
    assert (cfg.local_rope_theta, cfg.rope_theta, cfg.sliding_window) == (10000.0, 1_000_000.0, 4)


def test_attention_softcapping_is_refused(gemma_dirs):
    """transformers' Gemma 3 never applies attn_logit_softcapping: a config setting it is refused, not run."""
    folder, _ = gemma_dirs["gemma3"]
    hf = json.loads((folder / "config.json").read_text()) | {"attn_logit_softcapping": 50.0}
    with pytest.raises(ConfigError, match="attn_logit_softcapping"):
        ModelConfig.from_dict(hf)


@pytest.mark.slow
def test_export_round_trips_through_transformers(gemma_dirs, tmp_path):
    """export_hf writes a folder transformers loads as the same Gemma 3 (config, (1 + w) norms, tied head)."""
    from transformers import AutoModelForCausalLM

    from selfguard_jax.checkpoint import export_hf

    folder, model = gemma_dirs["gemma3"]
    lm = sgj.load(folder)
    export_hf(lm.params, lm.config, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids, mask = ragged_batch([9, 12], 12, "left")
    a, b = hf_run(again, ids, mask).logits.numpy(), hf_run(model, ids, mask).logits.numpy()
    assert np.abs(a - b)[mask.astype(bool)].max() < 1e-6
