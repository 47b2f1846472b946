"""The thinking / reminder state machine (`splice.advance`) driven by hand, without a model: each case feeds a
scripted stream of sampled ids and entropies and checks what the row emits."""

import jax.numpy as jnp

from selfguard_jax.reminder import Reminder, Thinking
from selfguard_jax.splice import SpliceState, advance

V = 50
PHRASE = [40, 41, 42]
NL, END, EOS = 10, 20, 2  # a newline-ending id, the think-end id, a stop id


def drive(sampled, entropy=None, stops=(EOS,), **rem):
    """Run one row through `advance`; returns the emitted (token, forced, starts, drop_prev, think_end) per
    step and the final state. The model samples every step, forced or not: scripts put 0 where the sample is
    ignored. Stops after a stop id ends the row."""
    keys = ("end_ids", "max_think_tokens", "max_answer_tokens", "eos_closes")
    think = dict(dict(end_ids=[END], max_think_tokens=100, max_answer_tokens=100), **{k: rem.pop(k) for k in keys
                                                                                       if k in rem})
    r = Reminder(**dict(dict(token_ids=PHRASE, boundary_ids=[NL], threshold=1.0), **rem), thinking=Thinking(**think))
    rp, tp = r.params(V), r.thinking.params()
    s = SpliceState.start(1, jnp.bool_(True)).replace(last=jnp.array([7]))
    out, done = [], jnp.array([False])
    entropy = entropy or [0.1] * len(sampled)
    for tok, h in zip(sampled, entropy):
        tok_ = jnp.array([tok])
        e, s = advance(rp, tp, s, tok_, jnp.array([h], jnp.float32), jnp.isin(tok_, jnp.array(stops)), done,
                       jnp.array([0]))
        out.append((int(e.token[0]), bool(e.forced[0]), bool(e.starts[0]), bool(e.drop_prev[0]),
                    bool(e.think_end[0])))
        if bool(e.stopped[0]):
            break
    return out, s


def tokens(out):
    return [o[0] for o in out]


def test_entropy_trigger_splices_after_the_boundary_and_forced_ids_cost_no_budget():
    out, s = drive([5, NL, 0, 0, 0, 6, 7], max_think_tokens=6)
    assert tokens(out) == [5, NL, 40, 41, 42, 6, 7]  # the row carries on after the phrase
    assert [o[1] for o in out] == [False, False, True, True, True, False, False]
    assert [o[2] for o in out].index(True) == 2
    assert int(s.think_count[0]) == 4 and int(s.count[0]) == 1


def test_high_entropy_does_not_trigger_under_lt_and_does_under_gt():
    ents = [0.1, 3.0, 0.1, 0.1, 0.1]
    assert tokens(drive([5, NL, 6, 7, 8], entropy=ents)[0]) == [5, NL, 6, 7, 8]
    assert tokens(drive([5, NL, 0, 0, 0], entropy=ents, criterion="gt")[0]) == [5, NL, 40, 41, 42]


def test_thinking_cap_forces_the_close_after_a_reminder_in_flight():
    out, s = drive([5, NL, 0, 0, 0, 0], max_think_tokens=2)
    assert tokens(out) == [5, NL, 40, 41, 42, END]  # cap reached at the trigger: phrase, then </think>
    assert out[-1][4] and not bool(s.thinking[0])


def test_answer_budget_counts_sampled_answer_tokens():
    out, s = drive([5, END, 6, 7, 8], max_answer_tokens=2, max_reminders=0)
    assert out[1][4] and int(s.answer_count[0]) == 3  # the loop ends the row at the cap; here we only count


def test_junction_rewrites_the_trigger_token():
    """text(NL) + reminder re-tokenises as [NL2, 41, 42]: the trigger id becomes NL2 and the phrase's first id
    is skipped."""
    NL2 = 12
    out, _ = drive([5, NL, 0, 0], junctions=[{NL: [NL2, 41, 42]}])
    assert tokens(out) == [5, NL2, 41, 42]
    assert [o[1] for o in out] == [False, True, True, True] and out[1][2]


def test_before_think_end_replaces_the_models_close_and_refeeds_the_token_before_it():
    out, s = drive([5, 6, END, 0, 0, 0], placement="before_think_end", junctions=[{6: [16, 41, 42]}])
    assert tokens(out) == [5, 6, 16, 41, 42, END]  # 6 is re-fed merged (16); then the rest, then </think>
    assert out[2][3], "the token before </think> is replaced in place"
    assert out[-1][4] and not bool(s.thinking[0])
    out, _ = drive([5, 6, END, 0, 0, 0], placement="before_think_end")
    assert tokens(out) == [5, 6, 40, 41, 42, END] and not any(o[3] for o in out)


def test_stop_id_while_thinking_closes_the_thinking_as_the_authors_loop_does():
    out, s = drive([5, EOS, 0, 6, 7], max_reminders=0)
    assert tokens(out) == [5, EOS, END, 6, 7] and out[2][4] and not bool(s.thinking[0])
    out, _ = drive([5, EOS, 6], max_reminders=0, eos_closes=False)
    assert tokens(out) == [5, EOS]  # the row ends


def test_only_the_whole_sampled_marker_ends_thinking():
    """A two-id marker [20, 21]: 21 alone, 20 alone, or the marker's ids forced inside a phrase never end it."""
    out, s = drive([21, 20, 5, NL, 0, 0, 20, 21, 9], token_ids=[20, 21], end_ids=[20, 21])
    assert tokens(out) == [21, 20, 5, NL, 20, 21, 20, 21, 9]
    assert [o[4] for o in out] == [False] * 7 + [True, False]
    assert bool(s.thinking[0]) is False


def test_answer_start_placement_splices_after_the_close():
    out, _ = drive([5, END, 0, 0, 0, 6], placement="answer_start")
    assert tokens(out) == [5, END, 40, 41, 42, 6]


def test_thinking_protocol_without_a_reminder():
    t = Thinking(end_ids=[END], max_think_tokens=3, max_answer_tokens=5)
    assert t.params().max_think == 3 and Thinking.tracked([END]).params().eos_closes == jnp.bool_(False)
