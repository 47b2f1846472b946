"""SafeRemind in the jitted loop equals a plain PyTorch loop: ids, entropies (1e-4), injection steps."""

import dataclasses

import numpy as np
import pytest

import selfguard_jax as sgj
from selfguard_jax.reminder import Reminder, Thinking
from compiles import count_compiles
from tiny_models import save_hf_model
from torch_reference import observed_entropies, reference_generate

PROMPTS = [[5, 17, 33, 8, 91, 42, 7], [12, 4], [150, 3, 77, 19, 20, 21, 22, 23, 24, 25, 26]]
PHRASE = [100, 101, 102, 103, 104, 105]
N = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peaked")
    # a larger init than the default gives varied tokens and entropies (2-4.5 nats), so triggers fire
    model = save_hf_model("qwen2_tied", folder, initializer_range=0.2)
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    # a boundary table of a third of the vocabulary: every token the model emits often enough to trigger
    boundary = list(range(0, 211, 3))
    return lm, model, boundary


@pytest.fixture(scope="module")
def entropies(setup):
    """The entropies the reference model's greedy runs observe, to set thresholds that really fire."""
    return np.concatenate([observed_entropies(setup[1], p, 24) for p in PROMPTS])


@pytest.mark.slow
@pytest.mark.parametrize("criterion,quantile,max_rem,max_think", [
    ("lt", 0.5, 1, 1000), ("lt", 0.7, 3, 1000), ("gt", 0.4, 1, 1000), ("gt", 0.3, 3, 1000), ("lt", 0.6, 3, 14),
])
def test_saferemind_equals_reference(setup, entropies, criterion, quantile, max_rem, max_think):
    lm, model, boundary = setup
    ents = entropies
    rem = Reminder(token_ids=PHRASE, boundary_ids=boundary, thinking=Thinking([7], max_think, 10),
                   threshold=float(np.quantile(ents, quantile)) + 1e-3, criterion=criterion, max_reminders=max_rem)
    out = lm.generate(PROMPTS, max_new_tokens=N, reminder=rem)
    fired = 0
    for b, p in enumerate(PROMPTS):
        toks, ents_ref, forced, starts = reference_generate(model, p, N, reminder=rem)
        assert out.tokens[b] == toks, f"row {b}"
        np.testing.assert_allclose(out.entropy[b], ents_ref, atol=1e-4)
        assert out.forced[b] == forced
        assert out.reminder_steps[b] == starts
        fired += len(starts)
        if max_think < 100:
            assert 7 in toks and forced[toks.index(7)], "the think budget must force the close"
    assert fired >= len(PROMPTS), "the trigger must really fire for the comparison to mean something"


def test_changing_threshold_and_reminder_does_not_recompile(setup):
    lm, _, boundary = setup
    base = dict(boundary_ids=boundary, thinking=Thinking([7], 30, 4))
    lm.generate(PROMPTS, max_new_tokens=16, reminder=Reminder(token_ids=PHRASE, threshold=1.0, **base))
    with count_compiles() as compiled:
        lm.generate(PROMPTS, max_new_tokens=16, reminder=Reminder(token_ids=[9, 8, 7], threshold=9.0, criterion="gt",
                                                                   max_reminders=2, **base))
    assert compiled == []


def test_reminder_longer_than_budget_is_truncated_not_overflowing(setup):
    lm, _, boundary = setup
    rem = Reminder(token_ids=list(range(100, 130)), boundary_ids=boundary, thinking=Thinking([7], 1000, 5),
                   threshold=99.0)
    out = lm.generate(PROMPTS[:1], max_new_tokens=12, reminder=rem)
    assert len(out.tokens[0]) == 12 and out.stop_reason[0] == "max_new_tokens"
    assert out.tokens[0][out.reminder_steps[0][0]:] == list(range(100, 100 + 12 - out.reminder_steps[0][0]))


@pytest.mark.slow
def test_several_phrases_round_robin_and_random(setup):
    lm, _, boundary = setup
    phrases = [[100, 101], [110, 111, 112]]
    base = dict(token_ids=phrases, boundary_ids=list(range(211)), thinking=Thinking([7], 1000, 5),
                threshold=99.0, max_reminders=3)
    rr = lm.generate(PROMPTS[:1], max_new_tokens=16, reminder=Reminder(choice="round_robin", **base))
    toks, starts = rr.tokens[0], rr.reminder_steps[0]
    assert len(starts) == 3
    got = [toks[s:s + len(phrases[i % 2])] for i, s in enumerate(starts)]
    assert got == [phrases[0], phrases[1], phrases[0]]
    first = lm.generate(PROMPTS[:1], max_new_tokens=16, reminder=Reminder(choice="first", **base))
    assert all(first.tokens[0][s:s + 2] == phrases[0] for s in first.reminder_steps[0])
    rnd = lm.generate(PROMPTS * 4, max_new_tokens=16, reminder=Reminder(choice="random", **base), seed=1)
    seen = {tuple(t[s:s + 2]) for t, ss in zip(rnd.tokens, rnd.reminder_steps) for s in ss}
    assert seen == {(100, 101), (110, 111)}


@pytest.mark.slow
def test_before_think_end_placement_replaces_the_sampled_close(setup):
    lm, _, _ = setup
    plain = lm.generate(PROMPTS[:1], max_new_tokens=8)
    end = plain.tokens[0][3]
    if end in plain.tokens[0][:3]:
        pytest.skip("the chosen think-end id appears earlier too")
    rem = Reminder(token_ids=[100, 101, 102], boundary_ids=[], thinking=Thinking([end], 1000, 20),
                   placement="before_think_end")
    out = lm.generate(PROMPTS[:1], max_new_tokens=12, reminder=rem)
    assert out.tokens[0][:3] == plain.tokens[0][:3]
    assert out.tokens[0][3:6] == [100, 101, 102] and out.reminder_steps[0] == [3]
    assert out.forced[0][3:6] == [True] * 3 and not any(out.forced[0][:3])
