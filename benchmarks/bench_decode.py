"""Decode tokens/s: selfguard_jax against transformers' PyTorch generate on the same random model, plus the
memory-bandwidth roofline, the time to the first finished batch (compile included) and prefill latency.

    python benchmarks/bench_decode.py --shape 0.1b --batches 1,8,32 --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax
import numpy as np
import torch

import selfguard_jax as sgj
from common import SHAPES, best_of, memory_bandwidth_gbs, random_model_dir, random_prompts, table


def decode_bytes_per_step(lm, batch: int, cache_len: int) -> int:
    """Bytes a decode step must read at least: every weight once, plus the whole KV cache."""
    c = lm.config
    itemsize = np.dtype(lm.dtype).itemsize
    weights = c.num_params() * itemsize
    cache = 2 * c.num_layers * batch * cache_len * c.num_kv_heads * c.head_dim * itemsize
    return weights + cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="0.1b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up; the fastest is kept")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    folder, model = random_model_dir(args.shape)
    bw = memory_bandwidth_gbs()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, torch threads {torch.get_num_threads()}, "
          f"measured read bandwidth {bw:.1f} GB/s")
    rows = []
    for dtype in args.dtypes.split(","):
        lm = sgj.load(folder, dtype=dtype)
        lm.config = dataclasses.replace(lm.config, eos_token_ids=())
        tmodel = model.to(getattr(torch, dtype))
        for B in map(int, args.batches.split(",")):
            prompts = random_prompts(B, args.prompt_len, lm.config.vocab_size)
            t0 = time.perf_counter()
            lm.generate(prompts, max_new_tokens=args.new)
            first = time.perf_counter() - t0
            jax_t = best_of(lambda: lm.generate(prompts, max_new_tokens=args.new), args.repeats)
            lm.generate(prompts, max_new_tokens=1)
            prefill = best_of(lambda: lm.generate(prompts, max_new_tokens=1), args.repeats)
            jax_tps = B * args.new / jax_t
            decode_tps = B * (args.new - 1) / max(jax_t - prefill, 1e-9)
            roof = bw * 1e9 / decode_bytes_per_step(lm, B, args.prompt_len + args.new) * B
            row = {"dtype": dtype, "batch": B, "jax tok/s": jax_tps, "first batch s": first,
                   "prefill s": prefill, "decode tok/s": decode_tps, "roofline tok/s": roof,
                   "roofline %": 100 * decode_tps / roof}
            if not args.no_torch:
                ids = torch.tensor(prompts)
                with torch.no_grad():
                    def gen(n):
                        tmodel.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                        do_sample=False, pad_token_id=0)

                    gen(4)
                    torch_t = best_of(lambda: gen(args.new), args.repeats)
                    torch_prefill = best_of(lambda: gen(1), args.repeats)
                row |= {"torch tok/s": B * args.new / torch_t, "speedup": torch_t / jax_t,
                        "torch prefill s": torch_prefill,
                        "decode speedup": (torch_t - torch_prefill) / max(jax_t - prefill, 1e-9)}
            rows.append(row)
            print(table([row], list(row)), flush=True)
    cols = ["dtype", "batch", "jax tok/s"] + ([] if args.no_torch else ["torch tok/s", "speedup", "decode speedup"]) + [
        "first batch s", "prefill s"] + ([] if args.no_torch else ["torch prefill s"]) + [
        "decode tok/s", "roofline tok/s", "roofline %"]
    print(f"\n## decode, shape {args.shape}, prompt {args.prompt_len}, {args.new} new tokens, "
          f"{'scanned' if lm.scan_layers else 'unrolled per-layer'} blocks\n")
    print(table(rows, cols))


if __name__ == "__main__":
    main()
