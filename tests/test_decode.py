"""Greedy decoding against transformers' generate; batch invariance; sampling; one compile per bucket."""

import numpy as np
import pytest
import torch

import selfguard_jax as sgj
from selfguard_jax import decode
from tiny_models import spec_params

PROMPTS = [[5, 17, 33, 8, 91, 42, 7], [12, 4], [150, 3, 77, 19, 20, 21, 22, 23, 24, 25, 26], [60, 61, 62, 63]]


def hf_greedy(model, prompts, n):
    """transformers' generate, one prompt at a time (no padding question on the reference side)."""
    outs = []
    for p in prompts:
        with torch.no_grad():
            g = model.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        outs.append(g[0, len(p):].tolist())
    return outs


@pytest.mark.parametrize("name", spec_params(fast=("qwen3_headdim",)))
def test_greedy_equals_transformers_generate(hf_dirs, name):
    folder, model = hf_dirs[name]
    lm = sgj.load(folder)
    lm.config = __import__("dataclasses").replace(lm.config, eos_token_ids=())
    out = lm.generate(PROMPTS, max_new_tokens=32)
    assert out.tokens == hf_greedy(model, PROMPTS, 32)
    assert all(len(e) == 32 for e in out.entropy)


@pytest.mark.slow
def test_batch_invariance(hf_dirs):
    folder, _ = hf_dirs["qwen3_headdim"]
    lm = sgj.load(folder)
    batch = lm.generate(PROMPTS, max_new_tokens=20)
    for p, toks in zip(PROMPTS, batch.tokens):
        assert lm.generate([p], max_new_tokens=20).tokens[0] == toks


@pytest.mark.slow
def test_eager_twin_equals_jit(hf_dirs):
    folder, _ = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder)
    a = lm.generate(PROMPTS[:2], max_new_tokens=6)
    b = lm.generate(PROMPTS[:2], max_new_tokens=6, eager=True)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(np.array(a.entropy), np.array(b.entropy), atol=1e-5)


@pytest.mark.parametrize("scan_layers", [pytest.param(True, marks=pytest.mark.slow), False])
def test_decode_loop_updates_the_cache_in_place(hf_dirs, scan_layers):
    """The compiled decode program holds no copy of a whole KV-cache buffer: each step writes one slot in place.
    Per-layer params are read where they lie: no op of the loop produces an array of a weight's shape."""
    import re

    import jax

    folder, _ = hf_dirs["mistral_gqa"]
    lm = sgj.load(folder, scan_layers=scan_layers)
    assert lm.scan_layers == scan_layers
    B, T, N = 3, 16, 32  # B * T must not equal a weight dimension, or prefill activations look like weights
    hlo = decode.lower(lm, [[1] * T] * B, sgj.GenerationSpec(max_new_tokens=N)).compile().as_text()
    c = lm.config
    slab = f"{B},{c.num_kv_heads},{T + N},{c.head_dim}"
    cache = f"f32[{c.num_layers},{slab}]" if scan_layers else f"f32[{slab}]"
    assert cache in hlo, "the cache shape must appear for the check to mean anything"
    assert not [line for line in hlo.splitlines() if " copy(" in line and cache in line]
    if not scan_layers:
        weights = {f"f32[{','.join(map(str, a.shape))}]" for a in jax.tree.leaves(lm.params["layers"]) if a.ndim >= 2}
        made = [m.group(0) for line in hlo.splitlines() if (m := re.search(r"= (f32\[[0-9,]+\])\{[^}]*\} ([a-z-]+)\(", line))
                and m.group(1) in weights and m.group(2) not in ("parameter", "get-tuple-element", "bitcast", "tuple")]
        assert weights and not made, made