"""SafeRemind throughput: this project's batched jitted decoder against a faithful port of the authors' loop
(batch 1, Python loop over transformers with a KV cache, the cache thrown away and the whole sequence
re-prefilled on each injection), prompts/s on the same prompts; plus the overhead of steering and reminders
over plain decode in the same run.

    python benchmarks/bench_saferemind.py --shape 0.1b --prompts 16 --new 128
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch

import selfguard_jax as sgj
from common import SHAPES, random_model_dir, random_prompts, table
from selfguard_jax.reminder import Reminder, Thinking


def authors_loop(model, prompt, reminder: Reminder, max_new: int) -> int:
    """One prompt, the authors' way; returns the number of generated tokens."""
    ids = torch.tensor([prompt])
    generated, count, thinking = 0, 0, True
    boundary = set(reminder.boundary_ids)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        while generated < max_new:
            logits = out.logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            entropy = float(-(logp.exp() * logp).sum())
            tok = int(torch.argmax(logits))
            generated += 1
            ids = torch.cat([ids, torch.tensor([[tok]])], 1)
            if tok == reminder.thinking.end_ids[-1]:
                thinking = False
            if thinking and tok in boundary and entropy < reminder.threshold and count < reminder.max_reminders:
                count += 1
                ids = torch.cat([ids, torch.tensor([reminder.phrases()[0]])], 1)
                generated += len(reminder.phrases()[0])
                out = model(ids, use_cache=True)  # re-tokenised text: the cache is thrown away
                continue
            out = model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    return generated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="0.1b", choices=sorted(SHAPES))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    folder, model = random_model_dir(args.shape)
    lm = sgj.load(folder)
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())
    V = lm.config.vocab_size
    prompts = random_prompts(args.prompts, args.prompt_len, V)
    plain = lm.generate(prompts, max_new_tokens=args.new)
    ents = np.concatenate(plain.entropy)
    # a reminder that really fires: every id a boundary, threshold at the 30th percentile of observed entropy
    rem = Reminder(token_ids=list(range(10, 42)), boundary_ids=list(range(V)), thinking=Thinking([1], args.new, args.new),
                   threshold=float(np.quantile(ents, 0.3)), max_reminders=1)
    vecs = np.random.default_rng(0).normal(size=(lm.config.num_layers, lm.config.hidden_size)).astype(np.float32)
    steer = sgj.Steering.from_vectors(vecs, [lm.config.num_layers // 2], 0.01)
    variants = {"plain": {}, "steering": {"steering": steer}, "reminders": {"reminder": rem},
                "steering+reminders": {"steering": steer, "reminder": rem}}
    for kw in variants.values():  # compile every variant first
        lm.generate(prompts, max_new_tokens=args.new, **kw)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits every variant alike
        for name, kw in variants.items():
            t = time.perf_counter()
            lm.generate(prompts, max_new_tokens=args.new, **kw)
            times[name].append(time.perf_counter() - t)
    base = float(np.median(times["plain"]))
    rows = []
    for name, kw in variants.items():
        t = float(np.median(times[name]))
        out = lm.generate(prompts, max_new_tokens=args.new, **kw)
        rows.append({"variant": name, "median s": t, "min s": min(times[name]), "max s": max(times[name]),
                     "prompts/s": args.prompts / t, "overhead %": 100 * (t / base - 1),
                     "reminders": sum(map(len, out.reminder_steps))})
    print(f"\n## steering and reminder overhead, shape {args.shape}, batch {args.prompts}, {args.new} new tokens, "
          f"median of {args.repeats} interleaved runs\n")
    print(table(rows, list(rows[0])))
    authors_loop(model, prompts[0], rem, 4)
    t = time.perf_counter()
    for p in prompts:
        authors_loop(model, p, rem, args.new)
    authors = time.perf_counter() - t
    ours = rows[2]["median s"]
    print(f"\n## SafeRemind: batched decoder vs the authors' loop, {args.prompts} prompts\n")
    print(table([{"implementation": "selfguard_jax batched", "prompts/s": args.prompts / ours},
                 {"implementation": "authors' loop (PyTorch, batch 1)", "prompts/s": args.prompts / authors}],
                ["implementation", "prompts/s"]))
    print(f"\nspeedup: {authors / ours:.2f}x")


if __name__ == "__main__":
    main()
