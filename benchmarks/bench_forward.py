"""Compile time, forward time and decode speed: stacked layers under lax.scan against per-layer params unrolled
(the same weights): the measurement behind the scan_layers default.

    python benchmarks/bench_forward.py --shape qwen2.5-0.5b --batch 8 --seq 128
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

import selfguard_jax as sgj
from common import SHAPES, best_of, random_model_dir, random_prompts, table
from selfguard_jax import lm as lm_mod
from selfguard_jax.model import unstack_layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    folder, _ = random_model_dir(args.shape)
    base = sgj.load(folder, dtype=args.dtype, scan_layers=True)
    base.config = dataclasses.replace(base.config, eos_token_ids=())
    ids = np.asarray(random_prompts(args.batch, args.seq, base.config.vocab_size))
    rows = []
    for scan in (True, False):
        lm = base if scan else dataclasses.replace(base, params=unstack_layers(base.params))
        lm_mod._forward.clear_cache()
        t = time.perf_counter()
        lm.forward(ids).block_until_ready()
        first = time.perf_counter() - t
        fwd = best_of(lambda: lm.forward(ids).block_until_ready(), 3)
        t = time.perf_counter()
        lm.generate(ids.tolist(), max_new_tokens=args.new)
        gen_first = time.perf_counter() - t
        gen = best_of(lambda: lm.generate(ids.tolist(), max_new_tokens=args.new), 2)
        rows.append({"layers": "scan" if scan else "unrolled", "forward compile s": first - fwd,
                     "forward s": fwd, "tokens/s (forward)": args.batch * args.seq / fwd,
                     "generate compile s": gen_first - gen, "decode tok/s": args.batch * args.new / gen})
    print(f"\n## forward and decode, shape {args.shape} ({base.config.num_params() / 1e6:.0f}M params), {args.dtype}, "
          f"batch {args.batch} x {args.seq}, {jax.devices()[0].device_kind}\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
