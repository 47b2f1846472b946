"""Steered greedy generation against PyTorch forward pre-hooks, for every position rule; per-row scales;
the conditional mode decided per row; Self-Guard steering and SafeRemind together in one call."""

import dataclasses

import numpy as np
import pytest

import selfguard_jax as sgj
from selfguard_jax.model import stack_layers, unstack_layers
from selfguard_jax.reminder import Reminder, Thinking
from tiny_models import save_hf_model
from torch_reference import PreHookSteering, reference_generate

PROMPTS = [[5, 17, 33, 8, 91, 42], [12, 4], [150, 3, 77, 19, 20, 21, 22, 23, 24]]
LAYERS, ALPHA, N = [0, 2], 0.8, 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steer")
    model = save_hf_model("qwen3_headdim", folder, initializer_range=0.2)
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    vecs = np.random.default_rng(5).normal(size=(lm.config.num_layers, lm.config.hidden_size)).astype(np.float32)
    return lm, model, vecs


def run_reference(model, vecs, prompt, rule, reminder=None, alpha=ALPHA):
    hook = PreHookSteering(model, vecs, LAYERS, alpha)
    try:
        return reference_generate(model, prompt, N, reminder=reminder, steer=hook, rule=rule)
    finally:
        hook.remove()


@pytest.mark.parametrize("rule", [pytest.param(r, marks=pytest.mark.slow) for r in ("all", "prompt", "generated")] +
                         ["thinking"])
def test_steered_generation_matches_pre_hooks(setup, rule):
    lm, model, vecs = setup
    # think-end id 9 is forced after 10 thinking tokens so "thinking" differs from "generated"
    track = Reminder(token_ids=[1], boundary_ids=[], thinking=Thinking([9], 10, 100), max_reminders=0)
    steer = sgj.Steering.from_vectors(vecs, LAYERS, ALPHA, rule=rule)
    out = lm.generate(PROMPTS, max_new_tokens=N, steering=steer, reminder=track)
    plain = lm.generate(PROMPTS, max_new_tokens=N, reminder=track)
    assert out.tokens != plain.tokens, "steering must change the output for the comparison to mean much"
    for b, p in enumerate(PROMPTS):
        toks, ents, _, _ = run_reference(model, vecs, p, rule, reminder=track)
        assert out.tokens[b] == toks, f"rule {rule} row {b}"
        np.testing.assert_allclose(out.entropy[b], ents, atol=1e-4)


def test_per_row_alphas_equal_separate_runs(setup):
    lm, _, vecs = setup
    p = [PROMPTS[0]] * 3
    batch = lm.generate(p, max_new_tokens=N, steering=sgj.Steering.from_vectors(vecs, LAYERS, 1.0,
                                                                                  row_scales=[0.0, 0.5, 1.0]))
    for b, a in enumerate([0.0, 0.5, 1.0]):
        alone = lm.generate([p[b]], max_new_tokens=N, steering=sgj.Steering.from_vectors(vecs, LAYERS, a))
        assert batch.tokens[b] == alone.tokens[0]
    assert len({tuple(t) for t in batch.tokens}) > 1


@pytest.mark.slow
def test_conditional_mode_is_decided_per_row(setup):
    lm, _, vecs = setup
    steer = sgj.Steering.from_vectors(vecs, LAYERS, ALPHA)
    direction = np.random.default_rng(9).normal(size=lm.config.hidden_size).astype(np.float32)
    states = np.stack([np.asarray(lm.hidden_states([p]))[2, 0, -1] for p in PROMPTS])  # output of block 1
    proj = states @ direction
    srt = np.sort(proj)  # halfway between two rows, so float noise between paths cannot flip a row
    threshold = float(srt[len(srt) // 2 - 1] + srt[len(srt) // 2]) / 2
    cond = steer.when(direction, layer=1, threshold=threshold)
    out = lm.generate(PROMPTS, max_new_tokens=N, steering=cond)
    on = lm.generate(PROMPTS, max_new_tokens=N, steering=steer)
    off = lm.generate(PROMPTS, max_new_tokens=N)
    for b in range(len(PROMPTS)):
        expected = on.tokens[b] if proj[b] > threshold else off.tokens[b]
        assert out.tokens[b] == expected, f"row {b}"
    assert (proj > threshold).any() and (proj <= threshold).any()


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [False, True])
def test_selfguard_plus_saferemind_in_one_call(setup, scan_layers):
    """Both layer layouts (scanned stacked params, unrolled per-layer params) against the PyTorch reference."""
    lm, model, vecs = setup
    layout = stack_layers if scan_layers else unstack_layers
    lm = dataclasses.replace(lm, params=layout(lm.params))
    assert lm.scan_layers == scan_layers
    ents = np.concatenate([run_reference(model, vecs, p, "all")[1][:16] for p in PROMPTS])  # steered entropies
    rem = Reminder(token_ids=[100, 101, 102, 103], boundary_ids=list(range(211)), thinking=Thinking([9], 16, 6),
                   threshold=float(np.quantile(ents, 0.6)) + 1e-3, max_reminders=2)
    steer = sgj.Steering.from_vectors(vecs, LAYERS, ALPHA)
    out = lm.generate(PROMPTS, max_new_tokens=N, steering=steer, reminder=rem)
    fired = 0
    for b, p in enumerate(PROMPTS):
        toks, ents_ref, forced, starts = run_reference(model, vecs, p, "all", reminder=rem)
        assert out.tokens[b] == toks
        assert out.forced[b] == forced and out.reminder_steps[b] == starts
        np.testing.assert_allclose(out.entropy[b], ents_ref, atol=1e-4)
        fired += len(starts)
    assert fired > 0
