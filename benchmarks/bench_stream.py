"""Continuous batching against the fixed-batch decode on long-tailed request lengths, and the decode-step time
against the filled cache length.

Request lengths follow a lognormal like R1 thinking traces (median `--median`, capped at `--cap`); per-request
budgets make every length exact on random weights. Fixed batch: the queue in order, `--slots` requests at a
time, each batch running until its longest request ends. Stream: the same queue in `--slots` slots, a slot
refilled as soon as its request ends. Every program is compiled ahead of time into a persistent cache that
the timed call reloads, so no arm's time includes compiling.

    python benchmarks/bench_stream.py --shape 0.1b --requests 128 --slots 16 --median 800 --cap 5120
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import selfguard_jax as sgj
from common import random_model_dir, random_prompts, table
from selfguard_jax.decode import lower
from selfguard_jax.kv_cache import cache_length
from selfguard_jax.model import decode_step, prefill


def lengths(n: int, median: int, cap: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), 0.8, n)), 1, cap).astype(int).tolist()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def step_time_vs_filled(lm, batch: int, prompt_len: int, cache_len: int, points: list[int]) -> list[dict]:
    """One compiled decode step over a cache of `cache_len` slots, timed at several filled lengths."""
    cfg = lm.config
    ids = jnp.ones((batch, prompt_len), jnp.int32)
    S = cache_length(cache_len)
    rows = []
    for filled in (True, False):
        _, cache = prefill(lm.params, cfg, ids, jnp.ones_like(ids), cache_len=S, scan_layers=lm.scan_layers)
        layout = lm.policy.cache_layout if filled else "dense"  # the policy's cache, as the stream cuts it
        cache = cache.layout(layout, lm.policy.row_groups(batch))  # donated below: a fresh prefill per layout
        step = jax.jit(lambda c, valid, n: decode_step(
            lm.params, cfg, ids[:, 0], jnp.full((batch,), prompt_len), valid, c, n - 1,
            attend_len_B=jnp.full((batch,), n), scan_layers=lm.scan_layers)[1], donate_argnums=0)
        for n in points:
            valid = jnp.broadcast_to(jnp.arange(S)[None, :] < n, (batch, S))
            cache = jax.block_until_ready(step(cache, valid, jnp.int32(n)))
            times = []
            for _ in range(3):
                (cache, dt) = timed(lambda: jax.block_until_ready(step(cache, valid, jnp.int32(n))))
                times.append(dt)
            rows.append({"attention": "filled blocks" if filled else "whole cache", "filled slots": n,
                         "cache slots": S, "step ms": 1e3 * min(times)})
    return rows


def stream_steps(need: list[int], slots: int) -> int:
    """Loop steps of the stream: first come, first served, every slot refilled at the step its request ends."""
    ends = sorted(need[:slots])
    for n in need[slots:]:
        ends[0] += n
        ends.sort()
    return ends[-1]


def run_arm(lm, name: str, calls: list[tuple[list, sgj.GenerationSpec, dict]], useful: int,
            steps: int) -> tuple[dict, list]:
    """Compile every call's program first (written to the persistent cache, so the timed call only reloads it),
    then time the calls back to back; returns the table row and the outputs."""
    t0 = time.perf_counter()
    for prompts, spec, kw in calls:
        lower(lm, prompts, spec, **{k: v for k, v in kw.items() if k != "progress"}).compile()
    compile_s = time.perf_counter() - t0
    outs, t0 = [], time.perf_counter()
    for prompts, spec, kw in tqdm(calls, desc=name, unit="call", disable=len(calls) == 1):
        outs.append(lm.generate(prompts, spec, **kw))
    wall = time.perf_counter() - t0
    return {"decode": name, "compile s": compile_s, "wall s": wall, "steps": steps, "ms / step": 1e3 * wall / steps,
            "useful tok/s": useful / wall}, outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="0.1b")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--median", type=int, default=800)
    ap.add_argument("--cap", type=int, default=5120)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--skip-fixed", action="store_true", help="time the stream only")
    ap.add_argument("--fixed-filled", action="store_true",
                    help="also time fixed batches with the filled-block attention (not today's generate)")
    ap.add_argument("--json", help="write the tables here as JSON")
    args = ap.parse_args()
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench-stream-cache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    folder, _ = random_model_dir(args.shape)
    lm = sgj.load(folder)
    # random weights never stop on their own; the budgets set every length. The config says 4,096 positions; the
    # RoPE tables have no limit, and the cap plus the prompt may pass it.
    lm.config = dataclasses.replace(lm.config, eos_token_ids=(), max_position_embeddings=args.prompt_len + args.cap)
    need = lengths(args.requests, args.median, args.cap)
    prompts = random_prompts(args.requests, args.prompt_len, lm.config.vocab_size)
    useful = sum(need)
    print(f"device: {jax.devices()[0].device_kind}; {args.requests} requests, lengths median {int(np.median(need))}, "
          f"mean {np.mean(need):.0f}, max {max(need)}; {args.slots} slots; {useful} useful tokens")
    batches = [list(range(i, min(i + args.slots, args.requests))) for i in range(0, args.requests, args.slots)]
    fixed_steps = sum(max(need[i] for i in b) for b in batches)
    arms = []
    if not args.skip_fixed:
        for filled in (False, True) if args.fixed_filled else (False,):
            name = f"fixed batches of {args.slots}" + (", filled-block attention" if filled else " (today's generate)")
            calls = [([prompts[i] for i in b], sgj.GenerationSpec(max_new_tokens=[need[i] for i in b]), {})
                     for b in batches]
            arm_lm = lm.with_policy(cache_layout=lm.policy.cache_layout if filled else "dense")
            row, outs = run_arm(arm_lm, name, calls, useful, fixed_steps)
            arms.append((row, [t for o in outs for t in o.tokens]))
            print(row, flush=True)
    row, outs = run_arm(lm, f"stream, {args.slots} slots", [(prompts, sgj.GenerationSpec(max_new_tokens=need), dict(
        slots=args.slots, progress=True))], useful, stream_steps(need, args.slots))
    stream_tokens = outs[0].tokens
    assert [len(t) for t in stream_tokens] == need
    arms.append((row, stream_tokens))
    print(row, flush=True)
    rows = [r for r, _ in arms]
    for r, tokens in arms:
        r["stream / this"] = rows[-1]["useful tok/s"] / r["useful tok/s"]
        r["rows equal to the stream's"] = f"{sum(a == b for a, b in zip(tokens, stream_tokens))}/{args.requests}"
    print(f"fixed batches spend {args.slots * fixed_steps} slot-steps on {useful} useful tokens "
          f"({useful / (args.slots * fixed_steps):.0%}); the stream {args.slots * rows[-1]['steps']} "
          f"({useful / (args.slots * rows[-1]['steps']):.0%})")
    cols = ["decode", "compile s", "wall s", "steps", "ms / step", "useful tok/s", "stream / this",
            "rows equal to the stream's"]
    print(table(rows, cols))
    cache_len = args.prompt_len + args.cap
    points = sorted({min(cache_length(cache_len), p) for p in (128, 512, 1024, 2048, 4096, cache_len)})
    steps_vs_filled = step_time_vs_filled(lm, args.slots, args.prompt_len, cache_len, points)
    print(table(steps_vs_filled, ["attention", "filled slots", "cache slots", "step ms"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "useful": useful, "arms": rows,
                                               "step_vs_filled": steps_vs_filled}, indent=1))


if __name__ == "__main__":
    main()
