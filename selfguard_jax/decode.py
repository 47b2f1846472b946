"""The decoder's host side: check a request queue against the model, pad it into one length bucket and a whole
number of slot-loads, turn the `GenerationSpec` into the loop's arrays (the one place that does), pick the loop's
static settings from the model's execution policy, run the loop (`decode_loop.DecodeLoop`) with a progress bar,
and bring the trace back as per-row lists."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from selfguard_jax.buckets import bucket, pad_rows
from selfguard_jax.config import ModelConfig
from selfguard_jax.decode_loop import (STOP_REASONS, DecodeLoop, DecodeParams, ProgressHook, Requests, SteerParams,
                                       Trace, run_compiled)
from selfguard_jax.policy import ExecutionPolicy
from selfguard_jax.reminder import no_reminder_params, untracked_params
from selfguard_jax.sampling import Sampler, SamplingParams
from selfguard_jax.spec import GenerationSpec


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


@dataclasses.dataclass(frozen=True)
class Program:
    """One decode call, ready to run: the loop's static settings and its dynamic inputs."""

    loop: DecodeLoop
    dp: DecodeParams
    rq: Requests
    rng: jax.Array
    queued: int                    # the caller's requests (the queue may hold fillers after them)

    def run(self, params) -> Trace:
        return self.loop.run(params, self.dp, self.rq, self.rng) if self.loop.eager else run_compiled(
            self.loop, params, self.dp, self.rq, self.rng)

    def lower(self, params) -> jax.stages.Lowered:
        return run_compiled.lower(self.loop, params, self.dp, self.rq, self.rng)


def generate(lm, prompts: Sequence[Sequence[int]], spec: GenerationSpec, *, slots: int | None = None,
             reminder_rows: Sequence[bool] | None = None, progress: bool = False,
             eager: bool = False) -> GenerationOutput:
    """Generate for ragged token-id prompts under `spec`; outputs are in prompt order. `slots` decodes that many
    prompts at once and refills a slot as soon as its prompt finishes (None: all at once); `reminder_rows` switches
    the reminder off for some prompts and `spec.steering.row_scales` sets each prompt's strength, so one stream
    can mix recipes. A request's output does not depend on its slot or on the other requests (greedy, float32).
    `eager` runs the same loop bodies in Python (slow; every value inspectable)."""
    program = prepare(lm.config, lm.policy, _data_axis(lm), prompts, spec, slots=slots, reminder_rows=reminder_rows,
                      progress=progress, eager=eager)
    bar = tqdm(total=len(prompts), desc=f"generate ({program.loop.slots} slots)", unit="req") if progress else None
    ProgressHook.target = None if bar is None else bar.update
    try:
        trace = jax.device_get(program.run(lm.params))
    finally:
        ProgressHook.target = None
        if bar is not None:
            bar.close()
    return _output(trace, program.queued)


def lower(lm, prompts: Sequence[Sequence[int]], spec: GenerationSpec, **kwargs: Any) -> jax.stages.Lowered:
    """The decode program `generate(lm, prompts, spec, **kwargs)` runs, lowered (for its HLO, cost or compile)."""
    return prepare(lm.config, lm.policy, _data_axis(lm), prompts, spec, **kwargs).lower(lm.params)


def _data_axis(lm) -> int:
    return lm.mesh.shape["data"] if lm.mesh is not None else 1


def prepare(cfg: ModelConfig, policy: ExecutionPolicy, data: int, prompts: Sequence[Sequence[int]],
            spec: GenerationSpec, *, slots: int | None = None, reminder_rows: Sequence[bool] | None = None,
            progress: bool = False, eager: bool = False) -> Program:
    """Check the inputs and build the loop, its dynamic params and the request queue (`data`: the mesh's data
    axis, which the slots must divide)."""
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts, cfg)
    Q = queued = len(prompts)
    budgets = _per_request(spec.budget(), Q, "max_new_tokens")
    if min(budgets) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {min(budgets)}.")
    longest = max(len(p) for p in prompts)
    if longest + max(budgets) > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max(budgets)} exceeds the model's "
                         f"max_position_embeddings {cfg.max_position_embeddings}; shorten either.")
    if slots is not None and slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}.")
    B = -(-min(slots or Q, Q) // data) * data
    on = [True] * Q if reminder_rows is None else [bool(x) for x in _per_request(reminder_rows, Q, "reminder_rows")]
    steer_Q = _steer_scales(spec, cfg, Q)
    if slots is not None and Q % B:  # a whole number of slot-loads: one program for every chunk of a queue
        fill = B - Q % B
        prompts, budgets, on, Q = prompts + [prompts[-1]] * fill, budgets + [1] * fill, on + [False] * fill, Q + fill
        steer_Q = jnp.concatenate([steer_Q, jnp.zeros((fill,), jnp.float32)])
    T = bucket(longest, 16)
    ids = np.zeros((Q, T), np.int32)
    mask = np.zeros((Q, T), np.int32)
    for q, p in enumerate(prompts):
        ids[q, T - len(p):], mask[q, T - len(p):] = p, 1
    allowed = spec.reminder.max_reminders if spec.reminder is not None else 0
    rq = Requests(ids_QT=jnp.asarray(ids), mask_QT=jnp.asarray(mask), max_new_Q=jnp.asarray(budgets, jnp.int32),
                  steer_Q=steer_Q, reminders_Q=jnp.asarray([allowed * o for o in on], jnp.int32))
    s, steering = spec.sampling, spec.steering
    loop = DecodeLoop(cfg=cfg, max_new_tokens=max(budgets), slots=B,
                      sampler=Sampler.for_settings(s.temperature, s.top_p, s.top_k),
                      steer_rule=None if steering is None else steering.rule,
                      conditional=steering is not None and steering.condition is not None,
                      scan_layers=policy.scan_layers, cache_layout=policy.cache_layout,
                      row_groups=policy.row_groups(B), progress=progress, eager=eager)
    return Program(loop=loop, dp=decode_params(cfg, spec), rq=rq, rng=jax.random.PRNGKey(s.seed), queued=queued)


def decode_params(cfg: ModelConfig, spec: GenerationSpec) -> DecodeParams:
    """The spec as the loop's arrays; stop and think-end ids outside the vocabulary are an error."""
    L, D, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    steering, thinking = spec.steering, spec.thinking
    add = steering.add_LD() if steering is not None else jnp.zeros((L, D), jnp.float32)
    stops = list(dict.fromkeys(list(cfg.eos_token_ids) + list(spec.stop_ids)))
    end = list(thinking.end_ids) if thinking is not None else []
    for name, ids_ in (("stop_ids", stops), ("think_end_ids", end)):
        if any(not 0 <= i < V for i in ids_):
            raise ValueError(f"{name} {ids_} hold ids outside the vocabulary [0, {V}).")
    return DecodeParams(
        sampling=SamplingParams(temperature=jnp.float32(max(spec.sampling.temperature, 1e-6)),
                                top_p=jnp.float32(spec.sampling.top_p)),
        steer=SteerParams(add_LD=jnp.asarray(add, jnp.float32), cond=None if steering is None else steering.condition),
        think=thinking.params() if thinking is not None else untracked_params(),
        reminder=spec.reminder.params(V) if spec.reminder is not None else no_reminder_params(V),
        stop_Z=jnp.asarray(pad_rows([stops], bucket(max(1, len(stops)), 4), -1)[0]))


def _per_request(value, Q: int, name: str) -> list:
    if isinstance(value, (int, np.integer, bool)):
        return [value] * Q
    value = list(value)
    if len(value) != Q:
        raise ValueError(f"{name} holds {len(value)} values for {Q} prompts; give one, or one per prompt.")
    return value


def _steer_scales(spec: GenerationSpec, cfg: ModelConfig, Q: int) -> jax.Array:
    if spec.steering is None:
        return jnp.zeros((Q,), jnp.float32)
    spec.steering.check(cfg.num_layers, cfg.hidden_size, Q)
    return jnp.asarray(spec.steering.row_scale_array(Q), jnp.float32)


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


def _check_prompts(prompts: list[list[int]], cfg: ModelConfig) -> None:
    if not prompts:
        raise ValueError("no prompts given.")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token.")
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"prompt {i} holds ids outside [0, {cfg.vocab_size}); was it tokenized for "
                             "another model?")
