"""A steering sweep over layer sets and strengths, in one batched run per layer set.

Within a layer set every alpha rides in the same batches as a per-row scale, so a grid of A alphas costs
about one generation pass over A x (harmful + benign) rows, not A passes.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from selfguard_jax.evaluate.judges import judge_refusal
from selfguard_jax.evaluate.metrics import refusal_rate
from selfguard_jax.evaluate.report import format_estimate
from selfguard_jax.extract import OversteerWarning, oversteer_report, residual_norms
from selfguard_jax.fluency import fluency
from selfguard_jax.safe_write import atomic_path, write_text
from selfguard_jax.spec import GenerationSpec
from selfguard_jax.steering import Steering
from selfguard_jax.vector_files import load_vectors


def run_sweep(lm, vectors: np.ndarray, layer_sets: Sequence[Sequence[int]], alphas: Sequence[float],
              harmful_ids: Sequence[Sequence[int]], benign_ids: Sequence[Sequence[int]], spec: GenerationSpec,
              batch_size: int = 8, rule: str = "all", residual_norms: np.ndarray | None = None) -> list[dict]:
    """Generate under `spec` (a recipe's, its steering replaced by each layer set and alpha) and return rows {layers, alpha, refusal_harmful, refusal_benign, answer_chars, rep4, degenerate, summed_ratio,
    oversteered, generations}: keyword-refusal rates (Estimates), fluency (fluency.py: mean rep4, share of
    degenerate generations), the over-steering check (extract.oversteer_report; None without `residual_norms`)
    and every generation kept ({kind, index, text, distinct2, rep4, degenerate}) so fluency can be read after."""
    prompts = [(kind, i, ids) for kind, group in (("harmful", harmful_ids), ("benign", benign_ids))
               for i, ids in enumerate(group)]
    results = []
    for layers in layer_sets:
        rows = [(a, kind, i, ids) for a in alphas for kind, i, ids in prompts]
        gens = []
        for start in tqdm(range(0, len(rows), batch_size), desc=f"layers {list(layers)}", unit="batch"):
            chunk = rows[start:start + batch_size]
            steer = Steering.from_vectors(vectors, layers, 1.0, rule=rule, row_scales=[a for a, *_ in chunk])
            out = lm.generate([ids for *_, ids in chunk], spec.replace(steering=steer))
            gens += [{"kind": kind, "index": i, "text": lm.tokenizer.decode(t, skip_special_tokens=True)}
                     | fluency(t) for (_, kind, i, _), t in zip(chunk, out.tokens)]
        for a in alphas:
            mine = [g for (ra, *_), g in zip(rows, gens) if ra == a]
            verdicts = {k: [judge_refusal(g["text"]).refused for g in mine if g["kind"] == k]
                        for k in ("harmful", "benign")}
            report = None if residual_norms is None or a == 0 else oversteer_report(vectors, layers, a, residual_norms)
            results.append({
                "layers": list(layers), "alpha": a,
                "refusal_harmful": refusal_rate(verdicts["harmful"]) if verdicts["harmful"] else None,
                "refusal_benign": refusal_rate(verdicts["benign"]) if verdicts["benign"] else None,
                "answer_chars": float(np.mean([len(g["text"]) for g in mine])),
                "rep4": float(np.mean([g["rep4"] for g in mine])),
                "degenerate": float(np.mean([g["degenerate"] for g in mine])),
                "summed_ratio": 0.0 if a == 0 else (None if report is None else report.summed_ratio),
                "oversteered": False if a == 0 else (None if report is None else report.over),
                "generations": mine,
            })
            if report is not None and report.over:
                warnings.warn(report.message(), OversteerWarning, stacklevel=2)
    return results


def reference_norms(lm, vector_path: str | Path, prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """The residual norms the over-steering check compares with: those recorded in a vector file written by
    `extract`, else (an .svec or .gguf records none) measured on `prompts` (extract.residual_norms)."""
    if Path(vector_path).suffix == ".safetensors":
        norms = load_vectors(vector_path)[1].extra.get("residual_norms")
        if norms:
            return np.asarray(norms, np.float32)
    return residual_norms(lm, prompts)


COLUMNS = ("layers", "alpha", "refusal_harmful", "refusal_benign", "answer_chars", "rep4", "degenerate",
           "summed_ratio", "oversteered")


def sweep_table(results: list[dict]) -> str:
    """The sweep as a Markdown table (fluency and the over-steering check beside the refusal rates)."""
    lines = ["| layers | alpha | refusal on harmful (%) | refusal on benign (%) | mean chars | rep4 | degenerate (%) "
             "| summed ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = "n/a" if r["summed_ratio"] is None else (
            f"{r['summed_ratio']:.2f}" + (" (over)" if r["oversteered"] else ""))
        lines.append(f"| {','.join(map(str, r['layers']))} | {r['alpha']:g} | {format_estimate(r['refusal_harmful'])}"
                     f" | {format_estimate(r['refusal_benign'])} | {r['answer_chars']:.0f} | {r['rep4']:.2f} "
                     f"| {100 * r['degenerate']:.0f} | {ratio} |")
    return "\n".join(lines)


def write_sweep(results: list[dict], out_dir: str | Path) -> list[Path]:
    """sweep.md, sweep.csv, generations.jsonl (every text with its fluency, keyed by layers and alpha) and
    sweep.png (refusal against alpha, one line per layer set and set kind)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.md", sweep_table(results) + "\n")
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in results:
        w.writerow([" ".join(map(str, r["layers"]))] + [
            getattr(r[c], "value", r[c]) if r[c] is not None else None for c in COLUMNS[1:]])
    write_text(out / "sweep.csv", buf.getvalue())
    write_text(out / "generations.jsonl", "".join(
        json.dumps({"layers": r["layers"], "alpha": r["alpha"]} | g) + "\n" for r in results for g in r["generations"]))
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for layers in sorted({tuple(r["layers"]) for r in results}):
        mine = [r for r in results if tuple(r["layers"]) == layers]
        for key, style in (("refusal_harmful", "-o"), ("refusal_benign", "--s")):
            pts = [(r["alpha"], r[key].value) for r in mine if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=f"layers {','.join(map(str, layers))} {key.split('_')[1]}")
    ax.set_xlabel("alpha")
    ax.set_ylabel("refusal rate (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7)
    ax.set_title("Steering sweep (keyword refusal judge)")
    fig.tight_layout()
    with atomic_path(out / "sweep.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return [out / "sweep.md", out / "sweep.csv", out / "generations.jsonl", out / "sweep.png"]
