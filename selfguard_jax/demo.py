"""`selfguard-jax demo`: the whole defended pipeline on the model organism, offline, in a few minutes on a CPU.

Extract the Self-Guard vector (the project's offline requests, with and without the Self-Reminder prompt),
run vanilla, prompt-only, selfguard, saferemind and selfguard+saferemind on the organism's held-out split,
judge with the keyword and arithmetic judges, print the paper-style table and write plots. The numbers are
the organism's, a testbed for the mechanisms, not evidence about real models.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from selfguard_jax import batch_io, extract, lm as lm_mod
from selfguard_jax.evaluate import datasets, judges, metrics, report
from selfguard_jax.organism import CHECKPOINT, HELDOUT
from selfguard_jax.selfguard import extract_selfguard
from selfguard_jax.recipes import Recipe, get_recipe
from selfguard_jax.safe_write import write_text
from selfguard_jax.yaml_files import read_yaml

DEMO_RECIPES = ("vanilla", "prompt-only", "selfguard", "saferemind", "selfguard+saferemind")
PRESET = Path(__file__).resolve().parent / "organism" / "preset.yaml"
KINDS = {"harmful": "harmful", "benign": "benign", "arithmetic": "utility"}


def organism_preset() -> dict:
    """Steering layers/alpha and reminder settings for the organism (set by a sweep, see organism/preset.yaml)."""
    return read_yaml(PRESET)


def heldout(limit_per_kind: int | None = None) -> list[dict]:
    """The organism's held-out split as runner records (kind harmful | benign | utility)."""
    rows, seen = [], {}
    for line in HELDOUT.read_text().splitlines():
        r = json.loads(line)
        kind = KINDS[r["kind"]]
        seen[kind] = seen.get(kind, 0) + 1
        if limit_per_kind is None or seen[kind] <= limit_per_kind:
            rows.append({"id": r["id"], "prompt": r["prompt"], "kind": kind, "reference": r.get("answer"),
                         "category": r.get("category")})
    return rows


def demo_recipe(name: str, preset: dict) -> Recipe:
    """A recipe with the organism's preset: its protocol caps and threshold, and for the steering recipes only, its
    layers and alpha."""
    keys = ("threshold", "max_think_tokens", "max_answer_tokens")
    if get_recipe(name).steers:
        keys += ("steer_layers", "steer_alpha")
    return get_recipe(name, **{k: preset[k] for k in keys})


def run_demo(out_dir: str | Path = "runs/demo", limit_per_kind: int | None = None, batch_size: int = 16) -> str:
    """Run the demo and return the printed table (Markdown)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = organism_preset()
    lm = lm_mod.load(CHECKPOINT)
    t0 = time.perf_counter()
    questions = [e.prompt for e in datasets.load_dataset("offline", split=None) if e.kind != "utility"]
    sg = extract_selfguard(lm, questions, model_id="organism", dataset_name="offline", batch_size=batch_size)
    vectors, norms = sg.vectors, sg.residual_norms
    print(f"extracted Self-Guard vectors from {len(questions)} offline request pairs in "
          f"{time.perf_counter() - t0:.1f}s; steering blocks {preset['steer_layers']} at alpha {preset['steer_alpha']}")
    print("  " + extract.oversteer_report(vectors, preset["steer_layers"], preset["steer_alpha"], norms).message())
    records = heldout(limit_per_kind)
    table, throughput, rows_by_recipe = {}, {}, {}
    for name in DEMO_RECIPES:
        recipe = demo_recipe(name, preset)
        spec = recipe.spec(lm.tokenizer, vectors)
        path = out / "generations" / f"{name}__heldout.jsonl"
        path.unlink(missing_ok=True)
        stats = batch_io.run_to_jsonl(
            records, path, batch_size * batch_io.QUEUE_PER_SLOT,
            lambda r, recipe=recipe: recipe.prompt_ids(lm.tokenizer, r["prompt"]),
            lambda b, spec=spec: lm.generate(b, spec, slots=batch_size),
            lambda ids: lm.tokenizer.decode(ids), extra=lambda r, n=name: {"recipe": n}, desc=name)
        rows = [judges.judge_record(r, ["keyword"]) for r in batch_io.read_results(path)]
        rows_by_recipe[name] = rows
        throughput[name] = stats["tokens"] / max(stats["seconds"], 1e-9)
        s = metrics.summarize(rows, n_resamples=500)
        table[name] = {"refusal on unsafe (%)": s["refusal_rate[keyword]"],
                       "over-refusal on benign (%)": s["over_refusal[keyword]"],
                       "arithmetic accuracy (%)": s[metrics.metric_key("accuracy", judges.math_judge_name())],
                       "reminders / prompt": s["reminders_per_prompt"]}
    md = _table(table, throughput)
    write_text(out / "summary.md", md + "\n")
    _plots(out, rows_by_recipe, table, preset)
    return md


def _table(table: dict, throughput: dict) -> str:
    cols = list(next(iter(table.values())))
    lines = ["| recipe | " + " | ".join(cols) + " | tokens/s |", "|---" * (len(cols) + 2) + "|"]
    for name, cells in table.items():
        digits = [2 if c.startswith("reminders") else 1 for c in cols]
        lines.append(f"| {name} | " + " | ".join(report.format_estimate(cells[c], d) for c, d in zip(cols, digits))
                     + f" | {throughput[name]:.0f} |")
    return "\n".join(lines)


def _plots(out: Path, rows_by_recipe: dict, table: dict, preset: dict) -> None:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    remind = rows_by_recipe["saferemind"]
    example = next((r for r in remind if r["reminder_steps"] and r["kind"] == "harmful"), None)
    if example is not None:
        report.plot_entropy_trace(example["entropy"], plots / "entropy_trace.png", forced=example["forced"],
                                  reminder_steps=example["reminder_steps"], threshold=preset["threshold"],
                                  title=f"saferemind on the organism: {example['prompt'][:60]}")
    steps = [s for r in remind for s in r["reminder_steps"]]
    if steps:
        report.plot_trigger_histogram(steps, plots / "trigger_steps.png", title="SafeRemind trigger steps (organism)")
    points = {n: (c["refusal on unsafe (%)"], c["arithmetic accuracy (%)"]) for n, c in table.items()}
    report.plot_safety_utility(points, plots / "safety_vs_utility.png", safety_label="refusal on unsafe (%)",
                               utility_label="arithmetic accuracy (%)", title="organism: safety vs utility")
