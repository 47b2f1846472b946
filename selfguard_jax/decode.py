"""Prefill a ragged batch, then one `lax.while_loop`: sampling, entropy, steering and reminder splicing.

Prompts are left-padded to a length bucket T; the cache has S = T + N slots and every row writes generated
token t at slot T + t, so one `dynamic_update_slice` serves the whole batch while RoPE positions come from
each row's own count of real tokens. Every row advances one token per iteration; a reminder is spliced by
forcing its ids over the following iterations. Nothing leaves the device until the loop ends.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from selfguard_jax.model import KVCache, SteerInput, causal_mask, forward, positions_from_mask
from selfguard_jax.reminder import CHOICES, PLACEMENTS, Reminder, bucket
from selfguard_jax.steering import SteerCondition, Steering


@dataclasses.dataclass(frozen=True)
class DecodeStatic:
    """What shapes the program: changing any of these compiles a new one."""

    max_new_tokens: int
    greedy: bool = True
    top_k: int = 0
    use_top_p: bool = False
    steer_rule: str | None = None
    conditional: bool = False
    scan_layers: bool = True


class DecodeInputs(NamedTuple):
    """Everything dynamic: arrays, so new values reuse the compiled program."""

    temperature: jax.Array       # []
    top_p: jax.Array             # []
    stop_ids: jax.Array          # [Z]   padded with -1
    steer_add_LD: jax.Array      # [L, D] (zeros when steering is off)
    steer_rows_B: jax.Array      # [B]
    steer_cond: SteerCondition | None
    reminders_PR: jax.Array      # [P, R] padded
    reminder_len_P: jax.Array    # [P]
    boundary_V: jax.Array        # [V] bool
    think_end_E: jax.Array       # [E] padded with -1
    think_end_len: jax.Array     # []
    threshold: jax.Array         # []
    sign: jax.Array              # [] +1 for "lt" (H < thr), -1 for "gt"
    max_reminders: jax.Array     # []
    max_think: jax.Array         # []
    max_answer: jax.Array        # []
    choice: jax.Array            # [] index into CHOICES
    placement: jax.Array         # [] index into PLACEMENTS
    track_thinking: jax.Array    # [] bool: rows start in the thinking phase


@struct.dataclass
class DecodeState:
    step: jax.Array          # []
    logits: jax.Array        # [B, V] float32, the distribution for the token of this step
    cache: KVCache
    kv_valid: jax.Array      # [B, S]
    position: jax.Array      # [B] RoPE position of the next token fed
    done: jax.Array          # [B]
    thinking: jax.Array      # [B]
    think_count: jax.Array   # [B]
    answer_count: jax.Array  # [B]
    cursor: jax.Array        # [B] index into the reminder being forced, -1 when none
    phrase: jax.Array        # [B] which reminder phrase is being forced
    count: jax.Array         # [B] reminders spliced so far
    close: jax.Array         # [B] index into think_end being forced, -1 when none
    tokens: jax.Array        # [B, N]
    entropy: jax.Array       # [B, N]
    forced: jax.Array        # [B, N]
    starts: jax.Array        # [B, N] the first token of a spliced reminder
    length: jax.Array        # [B] tokens emitted before the row was done
    reason: jax.Array        # [B] 0 budget (max_new_tokens), 1 stop id, 2 answer budget
    rng: jax.Array


def entropy_nats(logits_BV: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of softmax(logits), in float32."""
    logp = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def sample(logits_BV: jax.Array, keys_B: jax.Array, temperature: jax.Array, top_p: jax.Array,
           static: DecodeStatic) -> jax.Array:
    """Greedy, or temperature sampling with optional top-k (static k) and top-p (dynamic p), one key a row."""
    if static.greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    scaled = logits_BV / temperature
    if static.top_k > 0:
        kth = jax.lax.top_k(scaled, static.top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if static.use_top_p:
        sorted_desc = -jnp.sort(-scaled, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(before < top_p, sorted_desc, jnp.inf)
        cutoff = jnp.min(kept, axis=-1, keepdims=True)
        scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    return jax.vmap(jax.random.categorical)(keys_B, scaled).astype(jnp.int32)


def _step(params, cfg, static: DecodeStatic, inp: DecodeInputs, T: int, s: DecodeState) -> DecodeState:
    """Pick this step's token (sampled or forced), record it, update the phase and reminder state, feed it."""
    B = s.done.shape[0]
    t = s.step
    rng, sub = jax.random.split(s.rng)
    keys = jax.vmap(lambda b: jax.random.fold_in(sub, b))(jnp.arange(B))
    H = entropy_nats(s.logits)
    sampled = sample(s.logits, keys, inp.temperature, inp.top_p, static)

    closing = s.close >= 0
    reminding = (s.cursor >= 0) & ~closing
    rem_tok = inp.reminders_PR[s.phrase, jnp.maximum(s.cursor, 0)]
    close_tok = inp.think_end_E[jnp.maximum(s.close, 0)]
    forced = (closing | reminding) & ~s.done
    tok = jnp.where(closing, close_tok, jnp.where(reminding, rem_tok, sampled))
    think_end_last = inp.think_end_E[inp.think_end_len - 1]

    # A static placement "before_think_end" replaces a sampled `</think>` by the reminder; thinking goes on.
    room = ~s.done & (s.count < inp.max_reminders)
    free = room & ~forced  # forced tokens never trigger (a forced </think> may open the answer, though)
    swap = free & s.thinking & (tok == think_end_last) & (inp.placement == PLACEMENTS.index("before_think_end"))
    phrase = _choose(inp, s, keys)
    tok = jnp.where(swap, inp.reminders_PR[phrase, 0], tok)
    forced = forced | swap
    tok = jnp.where(s.done, 0, tok)

    cursor = jnp.where(reminding, s.cursor + 1, jnp.where(swap, 1, s.cursor))
    cur_phrase = jnp.where(swap, phrase, s.phrase)
    cursor = jnp.where(cursor >= inp.reminder_len_P[cur_phrase], -1, cursor)
    close = jnp.where(closing, s.close + 1, s.close)
    close = jnp.where(close >= inp.think_end_len, -1, close)

    was_thinking = s.thinking & ~s.done
    ends_thinking = was_thinking & (tok == think_end_last) & ~swap
    thinking = s.thinking & ~ends_thinking
    think_count = s.think_count + was_thinking
    answer_count = s.answer_count + (~was_thinking & ~s.done)

    crit = inp.sign * (inp.threshold - H) > 0
    entropy_trigger = (thinking & inp.boundary_V[tok] & crit) & (inp.placement == PLACEMENTS.index("entropy"))
    answer_trigger = ends_thinking & (inp.placement == PLACEMENTS.index("answer_start"))
    start_close = thinking & (think_count >= inp.max_think) & (close < 0)
    trigger = ~swap & ~start_close & ((free & entropy_trigger) | (room & answer_trigger))
    cursor = jnp.where(trigger, 0, jnp.where(start_close, -1, cursor))
    close = jnp.where(start_close, 0, close)
    cur_phrase = jnp.where(trigger, phrase, cur_phrase)
    count = s.count + (trigger | swap)

    stopped = jnp.any(tok[:, None] == inp.stop_ids[None, :], axis=-1) & ~forced & ~s.done
    over_answer = ~thinking & (answer_count >= inp.max_answer) & ~s.done
    reason = jnp.where(stopped, 1, jnp.where(over_answer & (s.reason == 0), 2, s.reason))
    done = s.done | stopped | over_answer | (t + 1 >= static.max_new_tokens)
    starts = (reminding & (s.cursor == 0)) | swap

    gate = _decode_gate(static.steer_rule, was_thinking) * inp.steer_rows_B
    steer = SteerInput(inp.steer_add_LD, gate[:, None])
    slot = T + t
    kv_valid = s.kv_valid.at[:, slot].set(True)
    out = forward(params, cfg, tok[:, None], s.position[:, None], kv_valid[:, None, :], cache=s.cache,
                  write_index=slot, steer=steer, scan_layers=static.scan_layers)
    return DecodeState(
        step=t + 1, logits=out.logits_BTV[:, 0], cache=out.kv, kv_valid=kv_valid, position=s.position + 1,
        done=done, thinking=thinking, think_count=think_count, answer_count=answer_count, cursor=cursor,
        phrase=cur_phrase, count=count, close=close,
        tokens=s.tokens.at[:, t].set(tok), entropy=s.entropy.at[:, t].set(H),
        forced=s.forced.at[:, t].set(forced), starts=s.starts.at[:, t].set(starts & ~s.done),
        length=s.length + ~s.done, reason=reason, rng=rng)


def _choose(inp: DecodeInputs, s: DecodeState, keys_B: jax.Array) -> jax.Array:
    """The phrase for a new injection: the first, round-robin by count, or random from the row's key."""
    P = inp.reminders_PR.shape[0]
    rand = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 7), (), 0, P))(keys_B)
    return jnp.select([inp.choice == CHOICES.index("round_robin"), inp.choice == CHOICES.index("random")],
                      [s.count % P, rand], jnp.zeros_like(s.count))


def _decode_gate(rule: str | None, was_thinking: jax.Array) -> jax.Array:
    """Steering gate for a generated token: on for 'all'/'generated', while thinking for 'thinking'."""
    if rule in ("all", "generated"):
        return jnp.ones(was_thinking.shape, jnp.float32)
    if rule == "thinking":
        return was_thinking.astype(jnp.float32)
    return jnp.zeros(was_thinking.shape, jnp.float32)


def _init(params, cfg, static: DecodeStatic, inp: DecodeInputs, ids_BT, mask_BT, rng) -> DecodeState:
    """Prefill the padded prompts and set up the loop state."""
    B, T = ids_BT.shape
    N = static.max_new_tokens
    on = 1.0 if static.steer_rule in ("all", "prompt") else 0.0
    steer = SteerInput(inp.steer_add_LD, jnp.full((B, T), on, jnp.float32) * inp.steer_rows_B[:, None])
    out = forward(params, cfg, ids_BT, positions_from_mask(mask_BT), causal_mask(mask_BT), steer=steer,
                  return_kv=True, last_logits_only=True, scan_layers=static.scan_layers)
    cache = KVCache.from_prefill(out.kv, T + N)
    kv_valid = jnp.zeros((B, T + N), bool).at[:, :T].set(mask_BT.astype(bool))
    zeros = jnp.zeros((B,), jnp.int32)
    return DecodeState(
        step=jnp.int32(0), logits=out.logits_BTV[:, -1], cache=cache, kv_valid=kv_valid,
        position=jnp.sum(mask_BT, axis=1).astype(jnp.int32), done=jnp.zeros((B,), bool),
        thinking=jnp.full((B,), inp.track_thinking), think_count=zeros, answer_count=zeros,
        cursor=zeros - 1, phrase=zeros, count=zeros, close=zeros - 1,
        tokens=jnp.zeros((B, N), jnp.int32), entropy=jnp.zeros((B, N), jnp.float32),
        forced=jnp.zeros((B, N), bool), starts=jnp.zeros((B, N), bool), length=zeros, reason=zeros, rng=rng)


def _cond(static: DecodeStatic, s: DecodeState) -> jax.Array:
    return (s.step < static.max_new_tokens) & ~jnp.all(s.done)


def _results(s: DecodeState):
    return s.tokens, s.entropy, s.forced, s.starts, s.length, s.reason


def _condition_rows(params, cfg, static: DecodeStatic, inp: DecodeInputs, ids_BT, mask_BT) -> DecodeInputs:
    """Conditional steering: zero the row scale of rows whose unsteered prompt fails the condition."""
    if not static.conditional:
        return inp
    T = ids_BT.shape[1]
    out = forward(params, cfg, ids_BT, positions_from_mask(mask_BT), causal_mask(mask_BT),
                  capture_at=jnp.full((ids_BT.shape[0],), T - 1), last_logits_only=True,
                  scan_layers=static.scan_layers)
    c = inp.steer_cond
    proj = out.captured_LBTD[c.layer].astype(jnp.float32) @ c.direction
    return inp._replace(steer_rows_B=inp.steer_rows_B * (proj > c.threshold))


@functools.partial(jax.jit, static_argnames=("cfg", "static"))
def _decode_jit(params, cfg, static, inp, ids_BT, mask_BT, rng):
    inp = _condition_rows(params, cfg, static, inp, ids_BT, mask_BT)
    state = _init(params, cfg, static, inp, ids_BT, mask_BT, rng)
    T = ids_BT.shape[1]
    state = jax.lax.while_loop(functools.partial(_cond, static),
                               functools.partial(_step, params, cfg, static, inp, T), state)
    return _results(state)


def _decode_eager(params, cfg, static, inp, ids_BT, mask_BT, rng):
    """The same init and step bodies in a Python loop: slow, but every value can be inspected."""
    inp = _condition_rows(params, cfg, static, inp, ids_BT, mask_BT)
    state = _init(params, cfg, static, inp, ids_BT, mask_BT, rng)
    T = ids_BT.shape[1]
    while bool(_cond(static, state)):
        state = _step(params, cfg, static, inp, T, state)
    return _results(state)


STOP_REASONS = ("max_new_tokens", "stop_id", "answer_budget")


@dataclasses.dataclass
class GenerationOutput:
    """Per row: generated ids (stop id kept, nothing after), entropies (nats), forced flags, the steps where a
    spliced reminder's first token stands, why the row stopped (one of STOP_REASONS), and the number of
    thinking tokens (up to and including the think-end token; None when thinking never closed or untracked)."""

    tokens: list[list[int]]
    entropy: list[list[float]]
    forced: list[list[bool]]
    reminder_steps: list[list[int]]
    stop_reason: list[str]
    think_tokens: list[int | None]


def _pad_ids(seqs: Sequence[Sequence[int]], width: int, fill: int) -> np.ndarray:
    out = np.full((len(seqs), width), fill, np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def generate(lm, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int = 0, steering: Steering | None = None,
             reminder: Reminder | None = None, stop_ids: Sequence[int] | None = None,
             think_end_ids: Sequence[int] | None = None, eager: bool = False) -> GenerationOutput:
    """Generate for a ragged batch of token-id prompts; see DESIGN.md for the contract.

    max_new_tokens defaults to the reminder's budget (thinking cap + close + answer cap) or 64. Rows are
    tracked as thinking when `reminder` or `think_end_ids` is given (needed for the 'thinking' steering rule).
    """
    cfg = lm.config
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts, cfg)
    if max_new_tokens is None:
        max_new_tokens = reminder.budget() if reminder is not None else 64
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0.")
    B = len(prompts)
    T = bucket(max(len(p) for p in prompts), 16)
    if max(len(p) for p in prompts) + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {max(len(p) for p in prompts)} + max_new_tokens {max_new_tokens} exceeds "
                         f"the model's max_position_embeddings {cfg.max_position_embeddings}; shorten either.")
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    ids, mask = lm.place_batch(ids, mask)
    static = DecodeStatic(max_new_tokens=max_new_tokens, greedy=temperature == 0.0, top_k=top_k,
                          use_top_p=top_p < 1.0 and temperature > 0, scan_layers=lm.scan_layers,
                          steer_rule=None if steering is None else steering.rule,
                          conditional=steering is not None and steering.condition is not None)
    inp = _inputs(lm, B, ids.shape[0], temperature, top_p, steering, reminder, stop_ids, think_end_ids)
    run = _decode_eager if eager else _decode_jit
    res = run(lm.params, cfg, static, inp, ids, mask, jax.random.PRNGKey(seed))
    tokens, entropy, forced, starts, length, reason = (np.asarray(a)[:B] for a in jax.device_get(res))
    return GenerationOutput(
        tokens=[tokens[b, :n].tolist() for b, n in enumerate(length)],
        entropy=[entropy[b, :n].tolist() for b, n in enumerate(length)],
        forced=[forced[b, :n].tolist() for b, n in enumerate(length)],
        reminder_steps=[np.nonzero(starts[b, :n])[0].tolist() for b, n in enumerate(length)],
        stop_reason=[STOP_REASONS[r] for r in reason],
        think_tokens=[_think_tokens(tokens[b, :n], starts[b, :n], inp) for b, n in enumerate(length)])


def _think_tokens(row: np.ndarray, starts: np.ndarray, inp: DecodeInputs) -> int | None:
    """Tokens up to and including the first think-end id emitted (a spliced reminder's first token excluded)."""
    if not bool(inp.track_thinking):
        return None
    end = int(inp.think_end_E[int(inp.think_end_len) - 1])
    hits = np.nonzero((row == end) & ~starts)[0]
    return int(hits[0]) + 1 if hits.size else None
def _check_prompts(prompts: list[list[int]], cfg) -> None:
    if not prompts:
        raise ValueError("no prompts given.")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token.")
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"prompt {i} holds ids outside [0, {cfg.vocab_size}); was it tokenized for "
                             "another model?")


def _inputs(lm, B, padded_B, temperature, top_p, steering, reminder, stop_ids, think_end_ids) -> DecodeInputs:
    cfg = lm.config
    L, D, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    if steering is not None:
        steering.check(L, D, B)
        add, rows = steering.add_LD(), steering.row_scale_array(B)
        rows = jnp.concatenate([rows, jnp.repeat(rows[-1:], padded_B - B)])
    else:
        add, rows = jnp.zeros((L, D), jnp.float32), jnp.ones((padded_B,), jnp.float32)
    stops = list(dict.fromkeys(list(cfg.eos_token_ids) + list(stop_ids or [])))
    think_end = list(reminder.think_end_ids if reminder is not None else think_end_ids or [])
    for name, ids_ in (("stop_ids", stops), ("think_end_ids", think_end)):
        if any(not 0 <= i < V for i in ids_):
            raise ValueError(f"{name} {ids_} hold ids outside the vocabulary [0, {V}).")
    boundary = np.zeros(V, bool)
    if reminder is not None:
        phrases = reminder.phrases()
        bad = [i for p in phrases for i in p if not 0 <= i < V] + [i for i in reminder.boundary_ids
                                                                   if not 0 <= i < V]
        if bad:
            raise ValueError(f"reminder or boundary ids {bad[:5]} are outside the vocabulary [0, {V}).")
        boundary[list(reminder.boundary_ids)] = True
        R = bucket(max(len(p) for p in phrases))
        rem = _pad_ids(phrases, R, 0)
        rem_len = np.array([len(p) for p in phrases], np.int32)
        thr, sign = reminder.threshold, 1.0 if reminder.criterion == "lt" else -1.0
        nrem, mthink, mans = reminder.max_reminders, reminder.max_think_tokens, reminder.max_answer_tokens
        choice, placement = CHOICES.index(reminder.choice), PLACEMENTS.index(reminder.placement)
    else:
        rem, rem_len = np.zeros((1, 8), np.int32), np.ones((1,), np.int32)
        thr, sign, nrem, mthink, mans, choice, placement = 0.0, 1.0, 0, 2**30, 2**30, 0, 0
    E = bucket(max(1, len(think_end)), 4)
    return DecodeInputs(
        temperature=jnp.float32(max(temperature, 1e-6)), top_p=jnp.float32(top_p),
        stop_ids=jnp.asarray(_pad_ids([stops], bucket(max(1, len(stops)), 4), -1)[0]),
        steer_add_LD=jnp.asarray(add, jnp.float32), steer_rows_B=jnp.asarray(rows, jnp.float32),
        steer_cond=None if steering is None else steering.condition,
        reminders_PR=jnp.asarray(rem), reminder_len_P=jnp.asarray(rem_len), boundary_V=jnp.asarray(boundary),
        think_end_E=jnp.asarray(_pad_ids([think_end], E, -1)[0]), think_end_len=jnp.int32(max(1, len(think_end))),
        threshold=jnp.float32(thr), sign=jnp.float32(sign), max_reminders=jnp.int32(nrem),
        max_think=jnp.int32(mthink), max_answer=jnp.int32(mans), choice=jnp.int32(choice),
        placement=jnp.int32(placement), track_thinking=jnp.bool_(bool(think_end)))
