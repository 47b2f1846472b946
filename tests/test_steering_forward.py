"""Steering at the input of chosen blocks against PyTorch forward pre-hooks doing the same; no recompiles."""

import numpy as np
import torch

import selfguard_jax as sgj
from compiles import count_compiles
from test_parity import hf_run, ragged_batch


def hooked(model, add_by_layer):
    """Register pre-hooks adding a vector to the input of the given decoder blocks; returns the handles."""
    handles = []
    for k, vec in add_by_layer.items():
        t = torch.tensor(vec, dtype=torch.float32)

        def pre_hook(module, args, kwargs, t=t):
            return (args[0] + t,) + args[1:], kwargs if args else None

        def pre_hook_kw(module, args, kwargs, t=t):
            if args:
                return (args[0] + t,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = kwargs["hidden_states"] + t
            return args, kwargs

        handles.append(model.model.layers[k].register_forward_pre_hook(pre_hook_kw, with_kwargs=True))
    return handles


def test_steering_matches_pre_hooks(hf_dirs):
    folder, model = hf_dirs["qwen3_headdim"]
    lm = sgj.load(folder)
    L, D = lm.config.num_layers, lm.config.hidden_size
    vecs = np.random.default_rng(1).normal(size=(L, D)).astype(np.float32)
    layers, alpha = [0, 2], 0.7
    ids, mask = ragged_batch([8, 5, 3], 8, "left")
    handles = hooked(model, {k: alpha * vecs[k] for k in layers})
    try:
        ref = hf_run(model, ids, mask).logits.numpy()
    finally:
        for h in handles:
            h.remove()
    plain = hf_run(model, ids, mask).logits.numpy()
    got = np.asarray(lm.forward(ids, mask, steering=sgj.Steering.from_vectors(vecs, layers, alpha)))
    valid = mask.astype(bool)
    assert np.abs(ref - plain)[valid].max() > 1e-2, "the steering must change the logits for the test to mean much"
    assert np.abs(got - ref)[valid].max() < 1e-4


def test_changing_layers_or_alpha_does_not_recompile(hf_dirs):
    folder, _ = hf_dirs["qwen2_tied"]
    lm = sgj.load(folder)
    L, D = lm.config.num_layers, lm.config.hidden_size
    vecs = np.ones((L, D), np.float32)
    ids, mask = ragged_batch([6, 4], 6, "left")
    lm.forward(ids, mask, steering=sgj.Steering.from_vectors(vecs, [0], 0.1))
    with count_compiles() as compiled:
        outs = [np.asarray(lm.forward(ids, mask, steering=sgj.Steering.from_vectors(vecs * s, layers, a)))
                for s, layers, a in [(1, [1], 0.3), (2, [0, 2], 0.5), (3, [2], -1.0)]]
    assert compiled == []
    assert not np.allclose(outs[0], outs[1])


def test_per_row_scales_equal_separate_runs(hf_dirs):
    folder, _ = hf_dirs["llama3_rope"]
    lm = sgj.load(folder)
    vecs = np.random.default_rng(2).normal(size=(lm.config.num_layers, lm.config.hidden_size)).astype(np.float32)
    ids, mask = ragged_batch([5, 5, 5], 5, "left")
    batch = lm.forward(ids, mask, steering=sgj.Steering.from_vectors(vecs, [1], 1.0, row_scales=[0.0, 0.5, 1.0]))
    for b, a in enumerate([0.0, 0.5, 1.0]):
        alone = lm.forward(ids[b:b + 1], mask[b:b + 1], steering=sgj.Steering.from_vectors(vecs, [1], a))
        np.testing.assert_allclose(np.asarray(batch[b]), np.asarray(alone[0]), atol=1e-5)
