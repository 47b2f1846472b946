"""Decode a queue of ragged prompts in a fixed number of slots: prefill, then one `lax.while_loop` whose step
samples, advances the thinking / reminder state machine (`splice.advance`), records and feeds the token back;
a slot whose request finished is refilled with the next queued prompt inside the loop (continuous batching).

Prompts are left-padded to one length bucket T. Each slot's cache row holds its request's prompt in slots
[0, T) and its step t at slot T + t (a per-row write index); RoPE positions come from each row's own count of
real tokens and attention reads only the cache blocks its row group has filled. A token replaced after it was fed
(a reminder's junction with it) has its slot masked and its position reused. Nothing leaves the device until
the loop ends, except an optional progress callback when a request finishes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from selfguard_jax.buckets import bucket, pad_rows
from selfguard_jax.model import (ATTENTION_BLOCK, KVCache, SteerInput, block_cache, decode_step, hidden_states,
                                 prefill, write_prompt)
from selfguard_jax.reminder import Reminder, Thinking, no_reminder_params, token_budget, untracked_params
from selfguard_jax.sampling import Sampler, SamplingParams, entropy_nats
from selfguard_jax.splice import Emitted, ReminderParams, SpliceState, ThinkParams, advance
from selfguard_jax.steering import SteerCondition, Steering


class StopReason(enum.IntEnum):
    MAX_NEW_TOKENS = 0
    STOP_ID = 1
    ANSWER_BUDGET = 2


STOP_REASONS = tuple(r.name.lower() for r in StopReason)
ROWS_PER_GROUP = 4  # on CPU, rows that share the filled-block attention's reads (see default_row_groups)


@dataclasses.dataclass(frozen=True)
class DecodeStatic:
    """What shapes the program: changing any of these compiles a new one."""

    max_new_tokens: int            # the longest request's budget: the width of the trace and of the cache
    slots: int                     # rows decoded at once; the queue refills them
    sampler: Sampler = Sampler()
    steer_rule: str | None = None
    conditional: bool = False
    scan_layers: bool = True
    progress: bool = False          # report finished requests to the host (one callback per finish, not per token)
    filled_attention: bool = False  # blockwise attention over the filled cache blocks (model.attention_blocks)
    row_groups: int = 1             # filled-block attention: row groups that each read as far as their rows


@struct.dataclass
class SteerParams:
    add_LD: jax.Array              # [L, D] scale[k] * vectors[k] (zeros when steering is off)
    cond: SteerCondition | None


@struct.dataclass
class DecodeParams:
    """Everything dynamic, as arrays: new values reuse the compiled program."""

    sampling: SamplingParams
    steer: SteerParams
    think: ThinkParams
    reminder: ReminderParams
    stop_Z: jax.Array              # [Z] stop ids, padded with -1


@struct.dataclass
class Requests:
    """The queue: every request's left-padded prompt and its own settings."""

    ids_QT: jax.Array
    mask_QT: jax.Array
    max_new_Q: jax.Array           # [Q] generated positions allowed
    steer_Q: jax.Array             # [Q] steering strength of the request (0: unsteered)
    reminders_Q: jax.Array         # [Q] reminders allowed (0: no reminder)


@struct.dataclass
class Trace:
    """The per-request, per-step record that comes back to the host."""

    tokens: jax.Array      # [Q, N]
    entropy: jax.Array     # [Q, N] float32 nats of the distribution the step sampled from
    forced: jax.Array      # [Q, N]
    starts: jax.Array      # [Q, N] the first id carrying a reminder's text
    dropped: jax.Array     # [Q, N] replaced later by a reminder's junction: not part of the output
    length: jax.Array      # [Q] steps taken
    think_len: jax.Array   # [Q] steps up to and including the end of thinking, -1 when it never ended
    reason: jax.Array      # [Q] a StopReason

    @classmethod
    def empty(cls, Q: int, N: int) -> "Trace":
        zeros = jnp.zeros((Q, N), bool)
        return cls(tokens=jnp.zeros((Q, N), jnp.int32), entropy=jnp.zeros((Q, N), jnp.float32), forced=zeros,
                   starts=zeros, dropped=zeros, length=jnp.zeros((Q,), jnp.int32),
                   think_len=jnp.full((Q,), -1, jnp.int32), reason=jnp.zeros((Q,), jnp.int32))

    def record(self, req_B, t_B, live_B, e: Emitted, entropy_B, finished_B, reason_B) -> "Trace":
        """Write each live slot's step at (its request, its step); other slots write nothing."""
        Q = self.length.shape[0]
        q = jnp.where(live_B, req_B, Q)  # out of range: dropped
        prev = jnp.where(e.drop_prev & (t_B > 0), q, Q)
        first_end = e.think_end & (self.think_len[jnp.minimum(q, Q - 1)] < 0)
        return self.replace(
            tokens=self.tokens.at[q, t_B].set(e.token, mode="drop"),
            entropy=self.entropy.at[q, t_B].set(entropy_B, mode="drop"),
            forced=self.forced.at[q, t_B].set(e.forced, mode="drop"),
            starts=self.starts.at[q, t_B].set(e.starts, mode="drop"),
            dropped=self.dropped.at[prev, t_B - 1].set(True, mode="drop"),
            length=self.length.at[q].set(t_B + 1, mode="drop"),
            think_len=self.think_len.at[jnp.where(first_end, q, Q)].set(t_B + 1, mode="drop"),
            reason=self.reason.at[jnp.where(finished_B, q, Q)].set(reason_B, mode="drop"))


@struct.dataclass
class LoopState:
    step: jax.Array        # []
    next_req: jax.Array    # [] the next queued request
    req: jax.Array         # [B] the request in each slot
    t: jax.Array           # [B] steps since the slot's request started
    done: jax.Array        # [B] the slot holds no running request
    logits: jax.Array      # [B, V] float32: the distribution for the slot's next token
    cache: KVCache
    kv_valid: jax.Array    # [B, S]
    position: jax.Array    # [B] RoPE position of the next token fed
    steer_B: jax.Array     # [B] the slot's steering strength (its request's, after the condition)
    rng: jax.Array
    splice: SpliceState
    trace: Trace


def _step(params, cfg, static: DecodeStatic, dp: DecodeParams, rq: Requests, s: LoopState) -> LoopState:
    """Sample, advance the state machine, record, feed the emitted token."""
    B, T, S = s.done.shape[0], rq.ids_QT.shape[1], s.kv_valid.shape[1]
    live = ~s.done
    keys = jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(s.rng, r), t))(s.req, s.t)
    H = entropy_nats(s.logits)
    sampled = static.sampler(s.logits, keys, dp.sampling)
    is_stop = jnp.any(sampled[:, None] == dp.stop_Z[None, :], axis=-1)
    P = dp.reminder.phrases_PR.shape[0]
    rand = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 7), (), 0, P))(keys)
    reminder = dp.reminder.replace(max_reminders=rq.reminders_Q[s.req])
    e, splice = advance(reminder, dp.think, s.splice, sampled, H, is_stop, s.done, rand)

    over_answer = ~splice.thinking & (splice.answer_count >= dp.think.max_answer) & (splice.cursor < 0) & live
    out_of_room = live & (s.t + 1 >= rq.max_new_Q[s.req])
    finished = e.stopped | over_answer | out_of_room
    reason = jnp.where(e.stopped, StopReason.STOP_ID,
                       jnp.where(over_answer, StopReason.ANSWER_BUDGET, StopReason.MAX_NEW_TOKENS))
    trace = s.trace.record(s.req, s.t, live, e, H, finished, reason)

    rows = jnp.arange(B)
    slot = jnp.minimum(T + s.t, S - 1)  # per row: slots refilled at other steps are at other positions
    write = T + s.step if rq.ids_QT.shape[0] <= B else slot  # no refill possible: one slot for all rows
    kv_valid = s.kv_valid.at[rows, slot].set(True)
    kv_valid = kv_valid.at[rows, slot - 1].set(kv_valid[rows, slot - 1] & ~e.drop_prev)
    position = s.position - e.drop_prev
    gate = _decode_gate(static.steer_rule, s.splice.thinking & live) * s.steer_B
    filled = jnp.where(live, T + s.t + 1, 0) if static.filled_attention else None
    logits, cache = decode_step(params, cfg, e.token, position, kv_valid, s.cache, write,
                                steer=SteerInput(dp.steer.add_LD, gate[:, None]), attend_len=filled,
                                scan_layers=static.scan_layers)
    if static.progress:
        n = jnp.sum(finished)
        jax.lax.cond(n > 0, lambda: jax.debug.callback(_ProgressBar.advance, n), lambda: None)
    return s.replace(step=s.step + 1, t=s.t + live, done=s.done | finished, logits=logits, cache=cache,
                     kv_valid=kv_valid, position=position + 1, splice=splice, trace=trace)


def _decode_gate(rule: str | None, thinking_B: jax.Array) -> jax.Array:
    """Steering gate for a generated token: on for 'all'/'generated', while thinking for 'thinking'."""
    if rule in ("all", "generated"):
        return jnp.ones(thinking_B.shape, jnp.float32)
    if rule == "thinking":
        return thinking_B.astype(jnp.float32)
    return jnp.zeros(thinking_B.shape, jnp.float32)


def _prefill(params, cfg, static: DecodeStatic, dp: DecodeParams, ids_BT, mask_BT, steer_B, cache_len: int):
    on = 1.0 if static.steer_rule in ("all", "prompt") else 0.0
    steer = SteerInput(dp.steer.add_LD, jnp.full(ids_BT.shape, on, jnp.float32) * steer_B[:, None])
    return prefill(params, cfg, ids_BT, mask_BT, steer=steer, cache_len=cache_len, scan_layers=static.scan_layers)


def _init(params, cfg, static: DecodeStatic, dp: DecodeParams, rq: Requests, steer_Q, rng) -> LoopState:
    """Prefill the first B requests into the B slots (slots beyond the queue stay empty)."""
    B, (Q, T), N = static.slots, rq.ids_QT.shape, static.max_new_tokens
    S = cache_length(T + N)
    req = jnp.arange(B)
    first = jnp.minimum(req, Q - 1)
    logits, cache = _prefill(params, cfg, static, dp, rq.ids_QT[first], rq.mask_QT[first], steer_Q[first], S)
    if static.filled_attention and isinstance(cache.k, tuple) and S >= 2 * ATTENTION_BLOCK:
        cache = block_cache(cache, groups=static.row_groups)  # blocks read in place, group by group
    return LoopState(
        step=jnp.int32(0), next_req=jnp.int32(min(B, Q)), req=req, t=jnp.zeros((B,), jnp.int32), done=req >= Q,
        logits=logits, cache=cache,
        kv_valid=jnp.zeros((B, S), bool).at[:, :T].set(rq.mask_QT[first].astype(bool)),
        position=jnp.sum(rq.mask_QT[first], axis=1).astype(jnp.int32), steer_B=steer_Q[first], rng=rng,
        splice=SpliceState.start(B, dp.think.track).replace(last=rq.ids_QT[first, -1]), trace=Trace.empty(Q, N))


def cache_length(n: int) -> int:
    """Cache slots for n positions: a whole number of attention blocks once the cache is long enough for the
    blockwise attention (model.attention_blocks), so a step reads only filled blocks."""
    return n if n < 2 * ATTENTION_BLOCK else -(-n // ATTENTION_BLOCK) * ATTENTION_BLOCK


def _refill(params, cfg, static: DecodeStatic, dp: DecodeParams, rq: Requests, steer_Q, s: LoopState) -> LoopState:
    """Prefill queued requests into free slots, one at a time, until no slot or no request is left."""
    Q, T = rq.ids_QT.shape

    def fill(s: LoopState) -> LoopState:
        b, q = jnp.argmax(s.done), s.next_req
        logits, kv = _prefill(params, cfg, static, dp, rq.ids_QT[q][None], rq.mask_QT[q][None], steer_Q[q][None],
                              T)
        cache = write_prompt(s.cache, kv, b)
        fresh = SpliceState.start(1, dp.think.track).replace(last=rq.ids_QT[q, -1][None])
        splice = jax.tree.map(lambda a, f: a.at[b].set(f[0]), s.splice, fresh)
        valid = jnp.zeros(s.kv_valid.shape[1], bool).at[:T].set(rq.mask_QT[q].astype(bool))
        return s.replace(next_req=q + 1, req=s.req.at[b].set(q), t=s.t.at[b].set(0), done=s.done.at[b].set(False),
                         logits=s.logits.at[b].set(logits[0]), cache=cache, kv_valid=s.kv_valid.at[b].set(valid),
                         position=s.position.at[b].set(jnp.sum(rq.mask_QT[q])), steer_B=s.steer_B.at[b].set(steer_Q[q]),
                         splice=splice)

    return jax.lax.while_loop(lambda s: jnp.any(s.done) & (s.next_req < Q), fill, s)


def _cond(s: LoopState) -> jax.Array:
    return ~jnp.all(s.done)


def _steer_rows(params, cfg, static: DecodeStatic, dp: DecodeParams, rq: Requests) -> jax.Array:
    """Each request's steering strength; conditional steering zeroes it where the unsteered prompt fails the
    condition."""
    if not static.conditional:
        return rq.steer_Q
    at = jnp.full((rq.ids_QT.shape[0],), rq.ids_QT.shape[1] - 1)
    states_LQD = hidden_states(params, cfg, rq.ids_QT, rq.mask_QT, at_B=at, scan_layers=static.scan_layers)
    c = dp.steer.cond
    return rq.steer_Q * (states_LQD[c.layer].astype(jnp.float32) @ c.direction > c.threshold)


def _run(params, cfg, static, dp, rq, rng, loop) -> Trace:
    steer_Q = _steer_rows(params, cfg, static, dp, rq)
    state = _init(params, cfg, static, dp, rq, steer_Q, rng)
    step = functools.partial(_step, params, cfg, static, dp, rq)
    if rq.ids_QT.shape[0] <= static.slots:  # every request has a slot from the start: nothing to refill
        return loop(_cond, step, state).trace
    refill = functools.partial(_refill, params, cfg, static, dp, rq, steer_Q)
    return loop(_cond, lambda s: refill(step(s)), state).trace


@functools.partial(jax.jit, static_argnames=("cfg", "static"))
def _decode_jit(params, cfg, static, dp, rq, rng) -> Trace:
    return _run(params, cfg, static, dp, rq, rng, jax.lax.while_loop)


def _python_loop(cond, body, state):
    while bool(cond(state)):
        state = body(state)
    return state


def _decode_eager(params, cfg, static, dp, rq, rng) -> Trace:
    """The same init, step and refill bodies in a Python loop: slow, but every value can be inspected."""
    return _run(params, cfg, static, dp, rq, rng, _python_loop)


@dataclasses.dataclass
class GenerationOutput:
    """Per row: generated ids (stop id kept, nothing after), entropies (nats), forced flags, the steps where a
    spliced reminder's first id stands, why the row stopped (one of STOP_REASONS), and the number of thinking
    tokens (up to and including the end of thinking; None when thinking never closed or is not tracked)."""

    tokens: list[list[int]]
    entropy: list[list[float]]
    forced: list[list[bool]]
    reminder_steps: list[list[int]]
    stop_reason: list[str]
    think_tokens: list[int | None]


def generate(lm, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] | None = None,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             steering: Steering | None = None, reminder: Reminder | None = None, stop_ids: Sequence[int] | None = None,
             think_end_ids: Sequence[int] | None = None, thinking: Thinking | None = None,
             reminder_rows: Sequence[bool] | None = None, slots: int | None = None, progress: bool = False,
             filled_attention: bool | None = None, eager: bool = False) -> GenerationOutput:
    """Generate for ragged token-id prompts; see DESIGN.md for the contract. Outputs are in prompt order.

    The thinking protocol comes from `thinking`, else from `reminder`, else `think_end_ids` tracks the phase
    without caps (for the 'thinking' steering rule). max_new_tokens (one for all, or one per prompt) defaults to
    `token_budget` of the protocol. `slots` decodes that many prompts at once and refills a slot as soon as its
    prompt finishes (None: all at once); `reminder_rows` switches the reminder off for some prompts and
    `steering.row_scales` sets each prompt's strength, so one stream can mix recipes. A request's output does
    not depend on its slot or on the other requests (greedy, float32). `filled_attention` reads only the cache
    blocks rows have filled (caches of 1,024+ slots); None turns it on except for scanned layers on CPU, where
    XLA copies every block it slices out of the stacked cache.
    """
    static, dp, rq = _prepare(lm, prompts, max_new_tokens, temperature, top_p, top_k, steering, reminder, stop_ids,
                              think_end_ids, thinking, reminder_rows, slots, progress, filled_attention)
    bar = _ProgressBar(len(prompts), static.slots) if progress else None
    run = _decode_eager if eager else _decode_jit
    try:
        trace = jax.device_get(run(lm.params, lm.config, static, dp, rq, jax.random.PRNGKey(seed)))
    finally:
        if bar is not None:
            bar.close()
    return _output(trace, len(prompts))


def lower(lm, prompts: Sequence[Sequence[int]], **kwargs) -> jax.stages.Lowered:
    """The decode program `generate(lm, prompts, **kwargs)` runs, lowered (for its HLO, cost or compile time)."""
    static, dp, rq = _prepare(lm, prompts, **kwargs)
    return _decode_jit.lower(lm.params, lm.config, static, dp, rq, jax.random.PRNGKey(0))


def _prepare(lm, prompts, max_new_tokens=None, temperature=0.0, top_p=1.0, top_k=0, steering=None, reminder=None,
             stop_ids=None, think_end_ids=None, thinking=None, reminder_rows=None, slots=None, progress=False,
             filled_attention=None):
    """Check the inputs and build the program's static settings, dynamic params and request queue."""
    cfg = lm.config
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts, cfg)
    Q = len(prompts)
    if thinking is None and reminder is not None:
        thinking = reminder.thinking()
    elif thinking is None and think_end_ids:
        thinking = Thinking.tracked(think_end_ids)
    if max_new_tokens is None:
        max_new_tokens = token_budget(thinking, reminder)
    budgets = _per_request(max_new_tokens, Q, "max_new_tokens")
    if min(budgets) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {min(budgets)}.")
    if not (0 <= temperature < float("inf") and 0 < top_p <= 1 and top_k >= 0):
        raise ValueError(f"need a finite temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got {temperature}, "
                         f"{top_p}, {top_k}.")
    longest = max(len(p) for p in prompts)
    if longest + max(budgets) > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max(budgets)} exceeds the model's "
                         f"max_position_embeddings {cfg.max_position_embeddings}; shorten either.")
    if slots is not None and slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}.")
    data = lm.mesh.shape["data"] if lm.mesh is not None else 1
    B = -(-min(slots or Q, Q) // data) * data
    if slots is not None and Q % B:  # a whole number of slot-loads: one program for every chunk of a queue
        fill = B - Q % B
        prompts, budgets, Q = prompts + [prompts[-1]] * fill, budgets + [1] * fill, Q + fill
        reminder_rows = None if reminder_rows is None else list(reminder_rows) + [False] * fill
        if steering is not None and steering.row_scales is not None:
            steering = steering.replace(row_scales=jnp.concatenate(
                [steering.row_scale_array(Q - fill), jnp.zeros((fill,), jnp.float32)]))
    T = bucket(longest, 16)
    ids = np.zeros((Q, T), np.int32)
    mask = np.zeros((Q, T), np.int32)
    for q, p in enumerate(prompts):
        ids[q, T - len(p):], mask[q, T - len(p):] = p, 1
    on = [True] * Q if reminder_rows is None else [bool(x) for x in _per_request(reminder_rows, Q, "reminder_rows")]
    rq = Requests(ids_QT=jnp.asarray(ids), mask_QT=jnp.asarray(mask), max_new_Q=jnp.asarray(budgets, jnp.int32),
                  steer_Q=_steer_scales(steering, cfg, Q),
                  reminders_Q=jnp.asarray([reminder.max_reminders * o if reminder else 0 for o in on], jnp.int32))
    cpu = jax.devices()[0].platform == "cpu"
    filled = bool(filled_attention) if filled_attention is not None else not lm.scan_layers or not cpu
    static = DecodeStatic(max_new_tokens=max(budgets), slots=B, sampler=Sampler.for_settings(temperature, top_p, top_k),
                          scan_layers=lm.scan_layers, steer_rule=None if steering is None else steering.rule,
                          conditional=steering is not None and steering.condition is not None,
                          progress=progress, filled_attention=filled, row_groups=default_row_groups(B, filled))
    return static, _params(cfg, temperature, top_p, steering, reminder, thinking, stop_ids), rq


def default_row_groups(slots: int, filled: bool) -> int:
    """Row groups of the blocked cache: groups of 4 rows on CPU, where a step with one row at 4,000 filled slots
    and 15 at 1,100 took 88 ms in groups of 4 against 165 ms in one group, 112 in groups of 2, 99 in groups of 8
    and 926 row by row (0.1b shape, 16 rows); one group elsewhere (not measured)."""
    if not filled or jax.devices()[0].platform != "cpu" or slots % ROWS_PER_GROUP:
        return 1
    return slots // ROWS_PER_GROUP


def _per_request(value, Q: int, name: str) -> list:
    if isinstance(value, (int, np.integer, bool)):
        return [value] * Q
    value = list(value)
    if len(value) != Q:
        raise ValueError(f"{name} holds {len(value)} values for {Q} prompts; give one, or one per prompt.")
    return value


def _steer_scales(steering: Steering | None, cfg, Q: int) -> jax.Array:
    if steering is None:
        return jnp.zeros((Q,), jnp.float32)
    steering.check(cfg.num_layers, cfg.hidden_size, Q)
    return jnp.asarray(steering.row_scale_array(Q), jnp.float32)


class _ProgressBar:
    """A tqdm bar of finished requests, advanced from the loop's host callback (the bar of the running call)."""

    active = None

    def __init__(self, total: int, slots: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=f"generate ({slots} slots)", unit="req")
        _ProgressBar.active = self

    @staticmethod
    def advance(n) -> None:
        if _ProgressBar.active is not None:
            _ProgressBar.active.bar.update(int(n))

    def close(self) -> None:
        self.bar.close()
        _ProgressBar.active = None


def _output(trace: Trace, B: int) -> GenerationOutput:
    """Per-row lists, with the ids a reminder's junction replaced taken out."""
    rows = []
    for b in range(B):
        n = int(trace.length[b])
        keep = ~np.asarray(trace.dropped[b, :n])
        where = np.nonzero(keep)[0]
        think = int(trace.think_len[b])
        rows.append((np.asarray(trace.tokens[b, :n])[keep].tolist(), np.asarray(trace.entropy[b, :n])[keep].tolist(),
                     np.asarray(trace.forced[b, :n])[keep].tolist(),
                     np.nonzero(np.asarray(trace.starts[b, :n])[keep])[0].tolist(),
                     STOP_REASONS[int(trace.reason[b])],
                     int(np.searchsorted(where, think - 1)) + 1 if think > 0 else None))
    return GenerationOutput(*(list(col) for col in zip(*rows)))


def _check_prompts(prompts: list[list[int]], cfg) -> None:
    if not prompts:
        raise ValueError("no prompts given.")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token.")
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"prompt {i} holds ids outside [0, {cfg.vocab_size}); was it tokenized for "
                             "another model?")


def _params(cfg, temperature: float, top_p: float, steering: Steering | None, reminder: Reminder | None,
            thinking: Thinking | None, stop_ids) -> DecodeParams:
    L, D, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    add = steering.add_LD() if steering is not None else jnp.zeros((L, D), jnp.float32)
    stops = list(dict.fromkeys(list(cfg.eos_token_ids) + list(stop_ids or [])))
    end = list(thinking.end_ids) if thinking is not None else []
    for name, ids_ in (("stop_ids", stops), ("think_end_ids", end)):
        if any(not 0 <= i < V for i in ids_):
            raise ValueError(f"{name} {ids_} hold ids outside the vocabulary [0, {V}).")
    return DecodeParams(
        sampling=SamplingParams(temperature=jnp.float32(max(temperature, 1e-6)), top_p=jnp.float32(top_p)),
        steer=SteerParams(add_LD=jnp.asarray(add, jnp.float32), cond=None if steering is None else steering.condition),
        think=thinking.params() if thinking is not None else untracked_params(),
        reminder=reminder.params(V) if reminder is not None else no_reminder_params(V),
        stop_Z=jnp.asarray(pad_rows([stops], bucket(max(1, len(stops)), 4), -1)[0]))
