"""Logits and hidden states against transformers' PyTorch models, float32, ragged batches (tolerance 1e-4)."""

import numpy as np
import pytest
import torch

import selfguard_jax as sgj
from tiny_models import spec_params

TOL = 1e-4


def ragged_batch(lengths, T, pad_side, vocab=200, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for b, n in enumerate(lengths):
        sl = slice(T - n, T) if pad_side == "left" else slice(0, n)
        ids[b, sl] = rng.integers(3, vocab, n)
        mask[b, sl] = 1
    return ids, mask


def hf_positions(mask):
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def hf_run(model, ids, mask, **kw):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(hf_positions(mask)), **kw)


@pytest.mark.parametrize("name", spec_params())
@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_logits_and_hidden_states_match_hf(hf_dirs, name, pad_side):
    folder, model = hf_dirs[name]
    lm = sgj.load(folder)
    ids, mask = ragged_batch([9, 4, 12, 1], 12, pad_side)
    ref = hf_run(model, ids, mask, output_hidden_states=True)
    logits = np.asarray(lm.forward(ids, mask))
    valid = mask.astype(bool)
    err = np.abs(logits - ref.logits.numpy())[valid].max()
    assert err < TOL, f"{name} {pad_side}: logits max abs err {err}"
    hs = np.asarray(lm.hidden_states(ids, mask))
    ref_hs = np.stack([h.numpy() for h in ref.hidden_states])
    assert hs.shape == ref_hs.shape
    herr = np.abs(hs - ref_hs)[:, valid].max()
    assert herr < TOL, f"{name} {pad_side}: hidden_states max abs err {herr}"
    print(f"{name} {pad_side}: logits max |diff| {err:.1e}, hidden states {herr:.1e}")


def test_unrolled_equals_scan(hf_dirs):
    folder, _ = hf_dirs["qwen3_headdim"]
    ids, mask = ragged_batch([7, 3], 7, "left")
    a = sgj.load(folder, scan_layers=True).forward(ids, mask)
    b = sgj.load(folder, scan_layers=False).forward(ids, mask)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_stacked_params_with_a_cache_agree_scanned_and_sliced(hf_dirs):
    """Stacked params run under the scan or as static slices (training's choice); with a KV cache both write the
    same slots and give the same logits as the per-layer layout."""
    import jax.numpy as jnp

    from selfguard_jax.model import decode_step, prefill, unstack_layers

    folder, _ = hf_dirs["mistral_gqa"]
    lm = sgj.load(folder, scan_layers=True)
    ids, mask = (jnp.asarray(a) for a in ragged_batch([5, 3], 5, "left"))
    S = 8
    outs = []
    for params, scan in ((lm.params, True), (lm.params, False), (unstack_layers(lm.params), False)):
        _, cache = prefill(params, lm.config, ids, mask, cache_len=S, scan_layers=scan)
        valid = jnp.zeros((2, S), bool).at[:, :5].set(mask.astype(bool)).at[:, 5].set(True)
        logits, cache = decode_step(params, lm.config, jnp.array([3, 4]), jnp.sum(mask, 1), valid, cache,
                                    jnp.int32(5), scan_layers=scan)
        k = jnp.stack(cache.k) if isinstance(cache.k, tuple) else cache.k
        outs.append((np.asarray(logits), np.asarray(k)))
    for logits, k in outs[1:]:
        np.testing.assert_allclose(logits, outs[0][0], atol=1e-5)
        np.testing.assert_allclose(k, outs[0][1], atol=1e-5)
    assert np.abs(outs[0][1][:, :, :, 5]).max() > 0  # the new slot was written


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [True, False])
def test_linen_module_applies_to_the_loaded_params(hf_dirs, scan_layers):
    """`lm.module` binds `lm.params` as they are (either layout) and gives transformers' logits; its init draws
    params of the same structure and shapes."""
    import jax

    from selfguard_jax.model import causal_mask, positions_from_mask

    folder, model = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder, scan_layers=scan_layers)
    ids, mask = ragged_batch([6, 3], 6, "left")
    args = (ids, positions_from_mask(mask), causal_mask(mask))
    logits = np.asarray(lm.module.apply({"params": lm.params}, *args))
    ref = hf_run(model, ids, mask).logits.numpy()
    assert np.abs(logits - ref)[mask.astype(bool)].max() < TOL
    fresh = lm.module.init(jax.random.PRNGKey(0), *args)["params"]
    shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
    assert shapes(fresh) == shapes(lm.params)
