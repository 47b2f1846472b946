"""The jitted decode loop: prefill the first requests into the slots, then one `lax.while_loop` whose step samples,
advances the thinking / reminder state machine (`splice.advance`), records and feeds the token back; a slot whose
request finished is refilled with the next queued request inside the loop (continuous batching).

`DecodeLoop` holds the static settings as its fields (it is the jit's static argument); everything dynamic is a
pytree: `DecodeParams` (the spec as arrays), `Requests` (the queue) and `LoopState`. Each slot's cache row holds its
request's prompt in slots [0, T) and its step t at slot T + t; RoPE positions come from each row's own count of
real tokens. A token replaced after it was fed (a reminder's junction with it) has its slot masked and its
position reused. Nothing leaves the device until the loop ends, except an optional progress callback when a
request finishes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from selfguard_jax.config import ModelConfig
from selfguard_jax.kv_cache import KVCache, cache_length
from selfguard_jax.model import Params, SteerInput, decode_step, hidden_states, prefill
from selfguard_jax.sampling import Sampler, SamplingParams, entropy_nats
from selfguard_jax.splice import Emitted, ReminderParams, SpliceState, ThinkParams, advance
from selfguard_jax.steering import SteerCondition


class StopReason(enum.IntEnum):
    MAX_NEW_TOKENS = 0
    STOP_ID = 1
    ANSWER_BUDGET = 2


STOP_REASONS = tuple(r.name.lower() for r in StopReason)


@struct.dataclass
class SteerParams:
    add_LD: jax.Array              # [L, D] scale[k] * vectors[k] (zeros when steering is off)
    cond: SteerCondition | None


@struct.dataclass
class DecodeParams:
    """A GenerationSpec as arrays: new values reuse the compiled program."""

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
class LoopInputs:
    """What every step reads and never changes: the params, the spec's arrays, the queue and each request's
    steering strength (after the condition)."""

    params: Params
    dp: DecodeParams
    rq: Requests
    steer_Q: jax.Array


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


def _python_while(cond: Callable, body: Callable, state):
    while bool(cond(state)):
        state = body(state)
    return state


@dataclasses.dataclass(frozen=True)
class DecodeLoop:
    """The loop's static settings; each distinct value compiles its own program. `cache_layout` and
    `row_groups` come from the execution policy (`policy.ExecutionPolicy`)."""

    cfg: ModelConfig
    max_new_tokens: int            # the longest request's budget: the width of the trace and of the cache
    slots: int                     # rows decoded at once; the queue refills them
    sampler: Sampler = Sampler()
    steer_rule: str | None = None
    conditional: bool = False
    scan_layers: bool = True
    cache_layout: str = "dense"    # kv_cache.LAYOUTS
    row_groups: int = 1            # blocked cache: row groups that each read as far as their rows
    progress: bool = False         # report finished requests to the host (one callback per finish, not per token)
    eager: bool = False            # a Python loop over the same bodies: slow, every value inspectable

    def run(self, params: Params, dp: DecodeParams, rq: Requests, rng: jax.Array) -> Trace:
        """Decode every queued request; returns the trace."""
        x = LoopInputs(params=params, dp=dp, rq=rq, steer_Q=self._steer_rows(params, dp, rq))
        loop = _python_while if self.eager else jax.lax.while_loop
        step = functools.partial(self.step, x)
        if rq.ids_QT.shape[0] <= self.slots:  # every request has a slot from the start: nothing to refill
            return loop(_running, step, self.init(x, rng)).trace
        return loop(_running, lambda s: self.refill(x, step(s)), self.init(x, rng)).trace

    def init(self, x: LoopInputs, rng: jax.Array) -> LoopState:
        """Prefill the first B requests into the B slots (slots beyond the queue stay empty)."""
        B, (Q, T), N = self.slots, x.rq.ids_QT.shape, self.max_new_tokens
        S = cache_length(T + N)
        req = jnp.arange(B)
        first = jnp.minimum(req, Q - 1)
        logits, cache = self._prefill(x, x.rq.ids_QT[first], x.rq.mask_QT[first], x.steer_Q[first], S)
        return LoopState(
            step=jnp.int32(0), next_req=jnp.int32(min(B, Q)), req=req, t=jnp.zeros((B,), jnp.int32), done=req >= Q,
            logits=logits, cache=cache.layout(self.cache_layout, self.row_groups),
            kv_valid=jnp.zeros((B, S), bool).at[:, :T].set(x.rq.mask_QT[first].astype(bool)),
            position=jnp.sum(x.rq.mask_QT[first], axis=1).astype(jnp.int32), steer_B=x.steer_Q[first], rng=rng,
            splice=SpliceState.start(B, x.dp.think.track).replace(last=x.rq.ids_QT[first, -1]),
            trace=Trace.empty(Q, N))

    def step(self, x: LoopInputs, s: LoopState) -> LoopState:
        """Sample, advance the state machine, record, feed the emitted token."""
        dp, rq = x.dp, x.rq
        B, T, S = s.done.shape[0], rq.ids_QT.shape[1], s.kv_valid.shape[1]
        live = ~s.done
        keys = jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(s.rng, r), t))(s.req, s.t)
        H = entropy_nats(s.logits)
        sampled = self.sampler(s.logits, keys, dp.sampling)
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
        gate = _decode_gate(self.steer_rule, s.splice.thinking & live) * s.steer_B
        logits, cache = decode_step(x.params, self.cfg, e.token, position, kv_valid, s.cache, write,
                                    steer=SteerInput(dp.steer.add_LD, gate[:, None]),
                                    attend_len_B=jnp.where(live, T + s.t + 1, 0), scan_layers=self.scan_layers)
        if self.progress:
            n = jnp.sum(finished)
            jax.lax.cond(n > 0, lambda: jax.debug.callback(ProgressHook.advance, n), lambda: None)
        return s.replace(step=s.step + 1, t=s.t + live, done=s.done | finished, logits=logits, cache=cache,
                         kv_valid=kv_valid, position=position + 1, splice=splice, trace=trace)

    def refill(self, x: LoopInputs, s: LoopState) -> LoopState:
        """Prefill queued requests into free slots, one at a time, until no slot or no request is left."""
        rq = x.rq
        Q, T = rq.ids_QT.shape

        def fill(s: LoopState) -> LoopState:
            b, q = jnp.argmax(s.done), s.next_req
            logits, kv = self._prefill(x, rq.ids_QT[q][None], rq.mask_QT[q][None], x.steer_Q[q][None], T)
            fresh = SpliceState.start(1, x.dp.think.track).replace(last=rq.ids_QT[q, -1][None])
            splice = jax.tree.map(lambda a, f: a.at[b].set(f[0]), s.splice, fresh)
            valid = jnp.zeros(s.kv_valid.shape[1], bool).at[:T].set(rq.mask_QT[q].astype(bool))
            return s.replace(next_req=q + 1, req=s.req.at[b].set(q), t=s.t.at[b].set(0),
                             done=s.done.at[b].set(False), logits=s.logits.at[b].set(logits[0]),
                             cache=s.cache.write_prompt(kv, b), kv_valid=s.kv_valid.at[b].set(valid),
                             position=s.position.at[b].set(jnp.sum(rq.mask_QT[q])),
                             steer_B=s.steer_B.at[b].set(x.steer_Q[q]), splice=splice)

        loop = _python_while if self.eager else jax.lax.while_loop
        return loop(lambda s: jnp.any(s.done) & (s.next_req < Q), fill, s)

    def _prefill(self, x: LoopInputs, ids_BT, mask_BT, steer_B, cache_len: int):
        on = 1.0 if self.steer_rule in ("all", "prompt") else 0.0
        steer = SteerInput(x.dp.steer.add_LD, jnp.full(ids_BT.shape, on, jnp.float32) * steer_B[:, None])
        return prefill(x.params, self.cfg, ids_BT, mask_BT, steer=steer, cache_len=cache_len,
                       scan_layers=self.scan_layers)

    def _steer_rows(self, params: Params, dp: DecodeParams, rq: Requests) -> jax.Array:
        """Each request's steering strength; conditional steering zeroes it where the unsteered prompt fails the
        condition."""
        if not self.conditional:
            return rq.steer_Q
        at = jnp.full((rq.ids_QT.shape[0],), rq.ids_QT.shape[1] - 1)
        states_LQD = hidden_states(params, self.cfg, rq.ids_QT, rq.mask_QT, at_B=at, scan_layers=self.scan_layers)
        c = dp.steer.cond
        return rq.steer_Q * (states_LQD[c.layer].astype(jnp.float32) @ c.direction > c.threshold)


run_compiled = jax.jit(DecodeLoop.run, static_argnums=0)


def _running(s: LoopState) -> jax.Array:
    return ~jnp.all(s.done)


def _decode_gate(rule: str | None, thinking_B: jax.Array) -> jax.Array:
    """Steering gate for a generated token: on for 'all'/'generated', while thinking for 'thinking'."""
    if rule in ("all", "generated"):
        return jnp.ones(thinking_B.shape, jnp.float32)
    if rule == "thinking":
        return thinking_B.astype(jnp.float32)
    return jnp.zeros(thinking_B.shape, jnp.float32)


class ProgressHook:
    """Where the loop's host callback reports finished requests: the running call's progress function. It is
    looked up at call time, so a new progress bar reuses the compiled loop instead of retracing it."""

    target: Callable[[int], None] | None = None

    @staticmethod
    def advance(n) -> None:
        if ProgressHook.target is not None:
            ProgressHook.target(int(n))
