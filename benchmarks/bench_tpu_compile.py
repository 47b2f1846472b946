"""TPU compiler estimate, no TPU run: the papers' models at their real shapes, compiled by libtpu for abstract
TPU topologies (`selfguard_jax.tpu_compile`), at the SafeRemind protocol's shape (thinking 4,096 + answer 1,024
new tokens after a 512-token prompt bucket). For each model and topology: the largest batch (a multiple of 8)
whose decode step the compiler fits, checked (and stepped down) with the stream with refills (steering and
reminders on); memory per chip beside `plan`, compile times, one decode step's flops and bytes, a per-step
estimate and what it implies for HarmBench's 400 prompts. Needs libtpu (pip install "jax[tpu]==<jax version>") and JAX_PLATFORMS=cpu.

    JAX_PLATFORMS=cpu python benchmarks/bench_tpu_compile.py --out benchmarks/tpu_estimate.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfguard_jax import tpu_compile
from selfguard_jax.config import ModelConfig
from selfguard_jax.kv_cache import cache_length
from selfguard_jax.plan import plan

HERE = Path(__file__).resolve().parent
MODELS = {"R1-Distill-Qwen-7B": str(HERE / "configs" / "r1-distill-qwen-7b"),
          "Qwen3-8B": str(HERE / "configs" / "qwen3-8b"),
          "R1-Distill-Qwen-32B": str(HERE / "configs" / "r1-distill-qwen-32b")}
JUDGE = str(HERE / "configs" / "llama-guard-3-8b")
RUNS = [("R1-Distill-Qwen-7B", "v5e:2x4", 1, 8), ("R1-Distill-Qwen-7B", "v6e:2x4", 1, 8),
        ("Qwen3-8B", "v5e:2x4", 1, 8), ("Qwen3-8B", "v6e:2x4", 1, 8), ("R1-Distill-Qwen-32B", "v5e:4x4", 2, 8)]
PROMPT, NEW = 512, 4096 + 1024  # the protocol's shape (--prompt / --new change it for a smoke run)
HARMBENCH = 400
MAX_BATCH = 1024  # slots searched at most
GIB = 2 ** 30


def largest_batch(cfg: ModelConfig, mesh, chip, tries: int) -> tuple[int, list]:
    """The largest batch (a multiple of 8 x data) whose scanned decode step over the SafeRemind-length cache the
    compiler fits (a few seconds a compile), searched from plan's guess by bisection."""
    data, model = mesh.shape["data"], mesh.shape["model"]
    unit = 8 * data
    S = cache_length(PROMPT + NEW)
    one = plan(cfg, data, model, unit, S)
    guess = max(unit, int((0.9 * chip.hbm_bytes - one.params_bytes) / (one.cache_bytes / unit)) // unit * unit)
    guess = min(guess, MAX_BATCH)
    lo, hi, B, log = 0, None, guess, []
    for _ in range(tries):
        c = tpu_compile.compile_step(cfg, mesh, B, S, stacked=True)
        log.append({"batch": B, "fits": c.fits, "total_gib": round(c.total / GIB, 2)})
        print(json.dumps(log[-1]), flush=True)
        lo, hi = (B, hi) if c.fits else (lo, B)
        nxt = (B * 5 // 4) // unit * unit if hi is None else (lo + hi) // 2 // unit * unit
        if nxt in (lo, hi) or nxt <= 0:
            break
        B = max(unit, nxt)
    return lo, log


def one(name: str, topology: str, data: int, model: int, tries: int, judge: bool) -> dict:
    cfg = ModelConfig.from_pretrained(MODELS.get(name, name))
    mesh, chip = tpu_compile.topology_mesh(topology, data, model)
    B, search = largest_batch(cfg, mesh, chip, tries)
    out = {"model": name, "topology": topology, "data": data, "model_axis": model, "search": search,
           "chip": chip.name, "hbm_gbps": chip.hbm_bandwidth / 1e9, "source": chip.source}
    S = cache_length(PROMPT + NEW)
    unit = 8 * data
    while B > 0:  # the stream (prefill, loop, refills) needs prefill's activations on top of the step
        stream = tpu_compile.programs(cfg, mesh, tpu_compile.Shape(B, PROMPT, NEW), only=("stream",))[0]
        print(json.dumps({"stream batch": B, "error": stream.error, "total_gib": stream.total / GIB}), flush=True)
        if stream.fits:
            break
        B -= unit
    out["batch"] = B
    if B <= 0:
        return out
    step = tpu_compile.compile_step(cfg, mesh, B, S, stacked=False)
    programs = [stream, step]
    if judge:
        jcfg = ModelConfig.from_pretrained(JUDGE)
        c = tpu_compile.programs(jcfg, mesh, tpu_compile.Shape(B, 2048 - 16, 16), only=("decode loop",))[0]
        c.name = "judge: Llama Guard 3 8B, 2,048 tokens"
        programs.append(c)
    p = plan(cfg, data, model, B, S)
    mean_fill = PROMPT + NEW // 2
    floor_mean = tpu_compile.floor_bytes(cfg, data, model, B, mean_fill)
    t_floor = max(floor_mean / chip.hbm_bandwidth, step.flops / chip.bf16_flops)
    t_xla = tpu_compile.step_seconds(step, chip)
    steps = -(-HARMBENCH // B) * NEW  # every request at its full budget: an upper bound
    out |= {"plan_gib": {"params": p.params_bytes / GIB, "cache": p.cache_bytes / GIB,
                         "activation": p.activation_bytes / GIB, "total": p.total / GIB},
            "programs": [{"name": c.name, "seconds": round(c.seconds, 1), "args_gib": c.argument / GIB,
                          "temp_gib": c.temp / GIB, "total_gib": c.total / GIB, "error": c.error} for c in programs],
            "step": {"gflop": step.flops / 1e9, "xla_bytes_gib": step.bytes_accessed / GIB,
                     "floor_full_gib": tpu_compile.floor_bytes(cfg, data, model, B, S) / GIB,
                     "floor_mean_gib": floor_mean / GIB, "ms_floor_mean": t_floor * 1e3, "ms_xla_full": t_xla * 1e3},
            "harmbench_400": {"steps": steps, "hours_floor": steps * t_floor / 3600, "hours_xla": steps * t_xla / 3600}}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    global PROMPT, NEW
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "tpu_estimate.json"))
    ap.add_argument("--only", nargs="*", help="model names to run (default: all)")
    ap.add_argument("--tries", type=int, default=6, help="decode-step compiles per batch search")
    ap.add_argument("--config", help="one run instead of the table: a model folder (config.json)")
    ap.add_argument("--topology", default="v5e:2x4", help="with --config")
    ap.add_argument("--mesh", default="1,8", help="with --config: data,model")
    ap.add_argument("--prompt", type=int, default=PROMPT)
    ap.add_argument("--new", type=int, default=NEW)
    ap.add_argument("--no-judge", action="store_true")
    args = ap.parse_args()
    PROMPT, NEW = args.prompt, args.new
    if args.config:
        data, model = map(int, args.mesh.split(","))
        runs = [(args.config, args.topology, data, model)]
    else:
        runs = [r for r in RUNS if not args.only or r[0] in args.only]
    rows = [one(*r, args.tries, judge=i == 0 and not args.no_judge) for i, r in enumerate(runs)]
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
