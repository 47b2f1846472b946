"""Decode tok/s on CPU: a tiny Qwen3-MoE against a dense Qwen3 with the same per-token active parameters.

The two share attention, embeddings, norms and depth; the dense MLP's width is top_k x the expert width, so a token
passes through the same MLP weights in both (the MoE adds only its router, hidden x experts per block). Same batch,
prompt and new tokens, both through `lm.generate` (compile excluded: a warm-up run first), best of `--repeats`.

    python benchmarks/bench_moe.py --batches 1,8 --prompt-len 32 --new 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax
import torch
import transformers

import selfguard_jax as sgj
from common import best_of, random_prompts, table

SHAPES = {  # name: (shared fields, MoE fields); the dense model takes intermediate_size = top_k * expert width
    "tiny": (dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  vocab_size=4096), dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128)),
    "smoke": (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   vocab_size=512), dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)),
}


def build(kind: str, shape: str) -> sgj.LM:
    """A random MoE or dense model of the named shape, saved and loaded as a checkpoint would be."""
    shared, moe = SHAPES[shape]
    common = dict(shared, max_position_embeddings=4096, eos_token_id=None, bos_token_id=None, pad_token_id=0,
                  tie_word_embeddings=False)
    torch.manual_seed(0)
    if kind == "moe":
        cfg = transformers.Qwen3MoeConfig(**common, **moe, intermediate_size=moe["moe_intermediate_size"],
                                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
        model = transformers.Qwen3MoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3Config(**common, intermediate_size=moe["num_experts_per_tok"] * moe["moe_intermediate_size"])
        model = transformers.Qwen3ForCausalLM(cfg)
    folder = tempfile.mkdtemp(prefix=f"bench-moe-{kind}-")
    model.save_pretrained(folder)
    lm = sgj.load(folder, dtype="float32")
    lm.config = dataclasses.replace(lm.config, eos_token_ids=())  # every row runs to max_new_tokens
    return lm


def active_params(c) -> int:
    """Parameters a token passes through: all of them less the experts it is not routed to."""
    unrouted = len(c.moe_layers) * (c.num_experts - c.num_experts_per_tok) * 3 * c.hidden_size * c.moe_intermediate_size
    return c.num_params() - unrouted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the fastest is kept")
    args = ap.parse_args()
    models = {kind: build(kind, args.shape) for kind in ("moe", "dense")}
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for B in map(int, args.batches.split(",")):
        prompts = random_prompts(B, args.prompt_len, SHAPES[args.shape][0]["vocab_size"])
        for kind, lm in models.items():
            c = lm.config
            t0 = time.perf_counter()
            out = lm.generate(prompts, max_new_tokens=args.new)
            first = time.perf_counter() - t0
            assert all(len(t) == args.new for t in out.tokens), "a row stopped early"
            t = best_of(lambda: lm.generate(prompts, max_new_tokens=args.new), args.repeats)
            # moe.moe_mlp: a decode step's B * k (token, expert) rows gather their experts' weights when fewer than
            # the experts, else run as grouped matmuls (jax.lax.ragged_dot)
            path = "-" if not c.num_experts else "gather" if B * c.num_experts_per_tok < c.num_experts else "ragged_dot"
            rows.append({"model": kind, "batch": B, "decode path": path, "params": c.num_params(), "active params": active_params(c),
                         "tok/s": B * args.new / t, "best s": t, "first run s": first})
            print(table([rows[-1]], list(rows[-1])), flush=True)
    print(f"\n## decode on CPU, shape {args.shape}, prompt {args.prompt_len}, {args.new} new tokens, "
          f"best of {args.repeats} (compile excluded)\n")
    print(table(rows, list(rows[0])))
    print("\n| batch | MoE / dense tok/s |\n|---|---|")
    for B in map(int, args.batches.split(",")):
        tps = {r["model"]: r["tok/s"] for r in rows if r["batch"] == B}
        print(f"| {B} | {tps['moe'] / tps['dense']:.2f} |")


if __name__ == "__main__":
    main()
