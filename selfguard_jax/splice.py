"""The thinking / reminder state machine of the decode loop, as one pure function of arrays (no model).

Each step a row either emits the token it sampled or the next id of its queue. A queue is a virtual sequence
Q = head + phrase[skip:] + think_end: `head` is the token the queue starts from (or, where re-tokenising that
token's text with the reminder's text merges them, the merged ids from the junction table), `phrase` a reminder,
and `think_end` a forced close. Budgets count sampled tokens only, as the SafeRemind authors' loop does.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


class Placement(enum.IntEnum):
    """Where a decode-side reminder goes: SafeRemind's entropy trigger, or the authors' static baselines."""

    ENTROPY = 0
    BEFORE_THINK_END = 1
    ANSWER_START = 2


class Choice(enum.IntEnum):
    """Which phrase a new reminder uses when several are given."""

    FIRST = 0
    ROUND_ROBIN = 1
    RANDOM = 2


@struct.dataclass
class ThinkParams:
    """The thinking protocol: the end marker, the caps, and what a stop id inside thinking does."""

    end_E: jax.Array        # [E] the think-end ids, padded with -1
    end_len: jax.Array      # []
    max_think: jax.Array    # [] sampled thinking tokens before a forced close
    max_answer: jax.Array   # [] sampled answer tokens
    eos_closes: jax.Array   # [] bool: a stop id while thinking closes thinking (the authors' loop) instead of ending
    track: jax.Array        # [] bool: rows start in the thinking phase


@struct.dataclass
class ReminderParams:
    """A reminder as arrays: new phrases, thresholds or counts of the same padded shapes reuse the program."""

    phrases_PR: jax.Array     # [P, R] padded
    phrase_len_P: jax.Array   # [P]
    boundary_V: jax.Array     # [V] bool: ids whose text ends with a newline
    junction_PV: jax.Array    # [P, V] row of the junction table for (phrase, token), -1 where nothing merges
    head_KJ: jax.Array        # [K, J] the re-tokenised ids that replace the token (and the phrase's first ids)
    head_len_K: jax.Array     # [K]
    skip_K: jax.Array         # [K] phrase ids the head already covers
    threshold: jax.Array      # []
    sign: jax.Array           # [] +1: trigger when H < threshold ("lt"); -1: when H > threshold ("gt")
    max_reminders: jax.Array  # []
    placement: jax.Array      # [] a Placement
    choice: jax.Array         # [] a Choice


@struct.dataclass
class SpliceState:
    """Per-row phase, counters and queue."""

    thinking: jax.Array     # [B] bool
    think_count: jax.Array  # [B] sampled thinking tokens
    answer_count: jax.Array  # [B] sampled answer tokens
    matched: jax.Array      # [B] leading think-end ids matched by the latest sampled tokens
    count: jax.Array        # [B] reminders started
    cursor: jax.Array       # [B] next queue index to emit, -1 when no queue
    head: jax.Array         # [B] junction row of the queue's head, -1 for the plain token it started from
    phrase: jax.Array       # [B] phrase of the queue, -1 for none
    close: jax.Array        # [B] bool: the queue ends with think_end
    end_from: jax.Array     # [B] leading think_end ids the close leaves out: the model sampled them when its cap hit
    last: jax.Array         # [B] the last token fed to the model

    @classmethod
    def start(cls, batch: int, thinking: jax.Array) -> "SpliceState":
        zeros = jnp.zeros((batch,), jnp.int32)
        return cls(thinking=jnp.full((batch,), thinking), think_count=zeros, answer_count=zeros, matched=zeros,
                   count=zeros, cursor=zeros - 1, head=zeros - 1, phrase=zeros - 1,
                   close=jnp.zeros((batch,), bool), end_from=zeros, last=zeros)


class Emitted(NamedTuple):
    """What a row emits this step."""

    token: jax.Array      # [B] the id fed to the model and recorded
    forced: jax.Array     # [B] the id is not the one sampled (spliced, merged or a forced close)
    starts: jax.Array     # [B] the first id carrying a reminder's text
    drop_prev: jax.Array  # [B] the previous token is replaced: its cache slot is masked, its position reused
    think_end: jax.Array  # [B] thinking ended with this token
    stopped: jax.Array    # [B] a stop id ended the row


def _queue(rp: ReminderParams, tp: ThinkParams, head, phrase, close, end_from):
    """Lengths of a queue's parts: head h, skipped phrase ids, phrase ids emitted, total."""
    k = jnp.maximum(head, 0)
    h = jnp.where(head >= 0, rp.head_len_K[k], 1)
    skip = jnp.where(head >= 0, rp.skip_K[k], 0)
    plen = jnp.where(phrase >= 0, rp.phrase_len_P[jnp.maximum(phrase, 0)] - skip, 0)
    return h, skip, plen, h + plen + jnp.where(close, tp.end_len - end_from, 0)


def _queue_token(rp: ReminderParams, tp: ThinkParams, head, phrase, close, end_from, c, first):
    """Q[c]; `first` is Q[0] when the head is a plain token."""
    h, skip, plen, _ = _queue(rp, tp, head, phrase, close, end_from)
    J, R, E = rp.head_KJ.shape[1], rp.phrases_PR.shape[1], tp.end_E.shape[0]
    t_head = jnp.where(head >= 0, rp.head_KJ[jnp.maximum(head, 0), jnp.clip(c, 0, J - 1)], first)
    t_phrase = rp.phrases_PR[jnp.maximum(phrase, 0), jnp.clip(skip + c - h, 0, R - 1)]
    t_end = tp.end_E[jnp.clip(c - h - plen + end_from, 0, E - 1)]
    tok = jnp.where(c < h, t_head, jnp.where(c < h + plen, t_phrase, t_end))
    starts = (phrase >= 0) & (((c == h) & (skip == 0)) | ((c == 0) & (head >= 0) & (skip > 0)))
    return tok, starts


class _Sampled(NamedTuple):
    """What the sampled token means for the protocol."""

    matched: jax.Array      # leading think-end ids matched so far
    ends: jax.Array         # it completes the think-end marker
    eos_close: jax.Array    # a stop id inside thinking that closes it
    still: jax.Array        # a thinking token after which thinking goes on
    cap: jax.Array          # ... and the thinking budget is spent
    think_count: jax.Array
    answer_count: jax.Array


def _read_sampled(tp: ThinkParams, s: SpliceState, sampled, is_stop, counted, thinking) -> _Sampled:
    """Budgets (sampled tokens only), the whole-marker end of thinking, stop ids inside thinking."""
    end_at = tp.end_E[jnp.clip(s.matched, 0, tp.end_E.shape[0] - 1)]
    matched = jnp.where(sampled == end_at, s.matched + 1, jnp.where(sampled == tp.end_E[0], 1, 0))
    matched = jnp.where(counted & thinking, matched, 0)
    ends = counted & thinking & (matched >= tp.end_len)
    eos_close = counted & thinking & is_stop & tp.eos_closes
    still = counted & thinking & ~ends & ~eos_close
    think_count = s.think_count + (counted & thinking)
    return _Sampled(matched, ends, eos_close, still, still & (think_count >= tp.max_think), think_count,
                    s.answer_count + (counted & ~thinking))


def _pick_phrase(rp: ReminderParams, count: jax.Array, random_phrase: jax.Array) -> jax.Array:
    P = rp.phrases_PR.shape[0]
    return jnp.select([rp.choice == Choice.ROUND_ROBIN, rp.choice == Choice.RANDOM],
                      [count % P, random_phrase], jnp.zeros_like(count))


def advance(rp: ReminderParams, tp: ThinkParams, s: SpliceState, sampled: jax.Array, entropy: jax.Array,
            is_stop: jax.Array, done: jax.Array, random_phrase: jax.Array) -> tuple[Emitted, SpliceState]:
    """One step of every row: emit the sampled token or the queue's next id, update the phase and start a
    queue where the protocol says (an entropy trigger, a thinking cap, a stop id inside thinking, the end of
    thinking for the static placements)."""
    live = ~done
    queued = (s.cursor >= 0) & live
    counted = ~queued & live
    was_thinking = s.thinking & live
    q_tok, q_starts = _queue_token(rp, tp, s.head, s.phrase, s.close, s.end_from, s.cursor, s.last)
    q_finished = queued & (s.cursor + 1 >= _queue(rp, tp, s.head, s.phrase, s.close, s.end_from)[3])
    close_done = q_finished & s.close
    e = _read_sampled(tp, s, sampled, is_stop, counted, was_thinking)

    room = s.count < rp.max_reminders
    crit = rp.sign * (rp.threshold - entropy) > 0
    trigger = e.still & ~is_stop & room & rp.boundary_V[sampled] & crit & (rp.placement == Placement.ENTROPY)
    before_end = room & (rp.placement == Placement.BEFORE_THINK_END)
    replace_end = e.ends & before_end  # the model's own </think> becomes reminder + </think>
    ends = (e.ends & ~replace_end) | close_done
    at_answer = ends & room & (rp.placement == Placement.ANSWER_START)

    # a new queue, from this step's token (the token before it when the model's </think> is replaced)
    with_phrase = trigger | ((e.cap | e.eos_close) & before_end) | replace_end | at_answer
    with_close = e.cap | e.eos_close | replace_end
    new = (with_phrase | with_close) & (counted | close_done)
    pick = _pick_phrase(rp, s.count, random_phrase)
    anchor = jnp.where(replace_end, s.last, jnp.where(close_done, q_tok, sampled))
    can_merge = with_phrase & ~close_done & ~(replace_end & (tp.end_len > 1))
    n_head = jnp.where(can_merge, rp.junction_PV[pick, anchor], -1)
    n_phrase = jnp.where(with_phrase, pick, -1)
    drop_prev = new & replace_end & (n_head >= 0)
    c0 = jnp.where(replace_end & (n_head < 0), 1, 0)  # Q[0] was fed already: emit Q[1] now
    # a cap that hits while the model is part way through a several-id think-end marker completes that marker
    n_from = jnp.where(with_close & ~with_phrase, e.matched, 0)
    n_tok, n_starts = _queue_token(rp, tp, n_head, n_phrase, with_close, n_from, c0, anchor)
    n_len = _queue(rp, tp, n_head, n_phrase, with_close, n_from)[3]
    fresh = new & ~close_done  # the new queue's first id stands at this step

    token = jnp.where(queued, q_tok, jnp.where(fresh, n_tok, sampled))
    cursor = jnp.where(queued & ~q_finished, s.cursor + 1, -1)
    cursor = jnp.where(new, jnp.where(c0 + 1 < n_len, c0 + 1, -1), cursor)
    forced = queued | (fresh & ((c0 > 0) | (n_tok != sampled)))
    emitted = Emitted(token=jnp.where(live, token, 0), forced=live & forced,
                      starts=live & jnp.where(queued, q_starts, fresh & n_starts), drop_prev=drop_prev,
                      think_end=ends, stopped=counted & is_stop & ~(was_thinking & tp.eos_closes))
    state = SpliceState(
        thinking=s.thinking & ~ends, think_count=e.think_count, answer_count=e.answer_count, matched=e.matched,
        count=s.count + (new & with_phrase), cursor=cursor, head=jnp.where(new, n_head, s.head),
        phrase=jnp.where(new, n_phrase, s.phrase), close=jnp.where(new, with_close, s.close),
        end_from=jnp.where(new, n_from, s.end_from),
        last=jnp.where(live, token, s.last))
    return emitted, state
