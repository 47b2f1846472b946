"""The evaluation runner: recipes x datasets -> generations (resumable JSONL) -> judgements -> report.

Layout of a run directory:
  generations/{recipe}__{dataset}.jsonl   one line per row, appended and flushed per batch
  judged/{recipe}__{dataset}.jsonl        the same rows with verdicts (rewritten by each judge stage)
  summary.md, summary.csv, summary.json   the paper-style table; plots/*.png
Each stage can be rerun alone; the generate stage skips rows already written and redoes a torn last line.
With several JAX processes, process i generates rows i, i + n, ... into `...host{i}.jsonl` shards that the
judge stage merges.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from selfguard_jax import batch_io, chat
from selfguard_jax.evaluate import datasets, judges, metrics, report


@dataclasses.dataclass
class EvalConfig:
    """What to run; read from YAML (configs/eval/*.yaml), with `key=value` overrides."""

    model: str
    datasets: list[dict]
    recipes: list[Any]
    out_dir: str = "runs/eval"
    dtype: str = "float32"
    scan_layers: bool | None = None  # None: scan on TPU, unrolled per-layer params elsewhere
    vector: str | None = None
    extract: dict | None = None
    generation: dict = dataclasses.field(default_factory=dict)
    judges: list[str] = dataclasses.field(default_factory=lambda: ["keyword"])
    llama_guard: dict | None = None
    mesh: dict | None = None
    distributed: dict | None = None
    bootstrap: int = 1000

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> "EvalConfig":
        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{path} is not an eval config (a YAML mapping with model, datasets, recipes).")
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value (e.g. generation.batch_size=4).")
            key, value = item.split("=", 1)
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = yaml.safe_load(value)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - fields)
        missing = sorted({"model", "datasets", "recipes"} - set(raw))
        if unknown or missing:
            raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}; valid keys: {sorted(fields)}.")
        return cls(**raw)


def _recipes(cfg: EvalConfig):
    from selfguard_jax.recipes import get_recipe

    out = []
    for item in cfg.recipes:
        if isinstance(item, str):
            out.append(get_recipe(item))
        else:
            item = dict(item)
            label = item.pop("label", None)
            r = get_recipe(item.pop("recipe"), **item)
            out.append(dataclasses.replace(r, name=label) if label else r)
    return out


def _examples(spec: dict) -> tuple[str, list[datasets.Example]]:
    """(label, examples) for one datasets entry of the config."""
    spec = dict(spec)
    name = spec.pop("name")
    label = spec.pop("label", None) or (name if not spec.get("split") else f"{name}-{spec['split']}")
    rows = datasets.load_dataset(name, **spec)
    return label, rows


def _host_slice(rows: list, path: Path) -> tuple[list, Path]:
    """This process's share of rows, and its shard file (the plain file on a single process)."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return rows, path
    return rows[i::n], path.with_name(f"{path.stem}.host{i}{path.suffix}")


def init_distributed(spec: dict | None) -> None:
    """`jax.distributed.initialize(**spec)` once (an empty mapping lets JAX detect a TPU pod or a SLURM job)."""
    if spec is None or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(**spec)


def generate_stage(cfg: EvalConfig, lm=None) -> dict[str, dict]:
    """Generate every (recipe, dataset) pair not yet finished; returns per-pair throughput stats."""
    from selfguard_jax import lm as lm_mod

    init_distributed(cfg.distributed)
    if lm is None:
        from selfguard_jax.sharding import make_mesh

        # each process meshes its own local devices and decodes its own slice of rows: no cross-host
        # collectives in the decode loop, so hosts never wait on each other
        mesh = make_mesh(**cfg.mesh, devices=jax.local_devices()) if cfg.mesh else None
        lm = lm_mod.load(cfg.model, dtype=cfg.dtype, mesh=mesh, scan_layers=cfg.scan_layers)
    if lm.tokenizer is None:
        raise ValueError(f"{cfg.model} has no tokenizer; evaluation needs text prompts and a chat template.")
    out = Path(cfg.out_dir)
    vectors = _vectors(cfg, lm, out)
    gen = dict(cfg.generation)
    batch_size = int(gen.pop("batch_size", 8))
    stats = {}
    for recipe in _recipes(cfg):
        reminder = recipe.reminder(lm.tokenizer)
        steering = recipe.steering(vectors)
        think_end = chat.think_markers(lm.tokenizer)[1]
        max_new = int(gen.get("max_new_tokens") or (reminder.budget() if reminder else
                                                     recipe.max_think_tokens + recipe.max_answer_tokens))
        kwargs = {k: gen[k] for k in ("temperature", "top_p", "top_k", "seed") if k in gen}

        def run(batch, steering=steering, reminder=reminder, max_new=max_new, kwargs=kwargs):
            return lm.generate(batch, max_new_tokens=max_new, steering=steering, reminder=reminder,
                               think_end_ids=think_end, **kwargs)

        for spec in cfg.datasets:
            label, examples = _examples(spec)
            records = [{"id": e.id, "prompt": e.prompt, "kind": e.kind, "reference": e.reference,
                        "category": e.category} for e in examples]
            records, path = _host_slice(records, out / "generations" / f"{recipe.name}__{label}.jsonl")
            stats[f"{recipe.name}__{label}"] = batch_io.run_to_jsonl(
                records, path, batch_size, lambda r, recipe=recipe: recipe.prompt_ids(lm.tokenizer, r["prompt"]),
                run, lambda ids: lm.tokenizer.decode(ids, skip_special_tokens=False),
                extra=lambda r, recipe=recipe: {"recipe": recipe.name}, desc=f"{recipe.name} / {label}")
    return stats


def _vectors(cfg: EvalConfig, lm, out: Path) -> np.ndarray | None:
    """Steering vectors from cfg.vector, or extracted once into the run directory per cfg.extract."""
    from selfguard_jax.cli_run import load_vectors_any

    if cfg.vector:
        return load_vectors_any(cfg.vector, lm)
    if not cfg.extract:
        return None
    from selfguard_jax import extract as ex
    from selfguard_jax.prompts import SELF_REMINDER_SYSTEM, SUFFIX_PRESETS
    from selfguard_jax.vector_files import VectorMeta, load_vectors, save_vectors

    path = out / "vector.safetensors"
    if path.is_file():
        return load_vectors(path, lm.config.num_layers, lm.config.hidden_size)[0]
    spec = dict(cfg.extract)
    questions = [e.prompt for e in datasets.load_dataset(spec.pop("name"), **spec.pop("load", {}))]
    suffix = SUFFIX_PRESETS[spec.get("suffix", "chatgpt")]
    pos = [chat.chat_prompt(lm.tokenizer, q, system=SELF_REMINDER_SYSTEM, user_suffix=suffix) for q in questions]
    neg = [chat.chat_prompt(lm.tokenizer, q) for q in questions]
    vectors, norms = ex.extract(lm, pos, neg, method=spec.get("method", "mean_diff"))
    out.mkdir(parents=True, exist_ok=True)
    save_vectors(path, vectors, VectorMeta(
        model_id=cfg.model, config_hash=lm.config.config_hash(), num_layers=lm.config.num_layers,
        hidden_size=lm.config.hidden_size, method=spec.get("method", "mean_diff"),
        recipe_prompt=SELF_REMINDER_SYSTEM + " | " + suffix, dataset_name=str(cfg.extract.get("name")),
        dataset_size=len(questions), extra={"residual_norms": [float(x) for x in norms]}))
    return vectors


def _read_pair(path: Path) -> list[dict]:
    """A pair's rows from the single file or all host shards, deduplicated by id."""
    files = [path] if path.is_file() else sorted(path.parent.glob(f"{path.stem}.host*.jsonl"))
    rows = {}
    for f in files:
        batch_io.finished_ids(f)  # drop a torn last line before reading
        for r in batch_io.read_results(f):
            rows.setdefault(str(r["id"]), r)
    return [rows[k] for k in sorted(rows)]


def judge_stage(cfg: EvalConfig, guard_lm=None) -> None:
    """Add verdicts to every generated row and write judged/*.jsonl (rerunnable, never regenerates)."""
    out = Path(cfg.out_dir)
    guard = _guard(cfg, guard_lm) if "llama_guard" in cfg.judges else None
    names = sorted({p.name.split(".host")[0].removesuffix(".jsonl") for p in (out / "generations").glob("*.jsonl")})
    (out / "judged").mkdir(parents=True, exist_ok=True)
    for name in names:
        rows = _read_pair(out / "generations" / f"{name}.jsonl")
        for r in rows:
            judge_row(r, cfg.judges)
        if guard is not None:
            verdicts = guard.judge([r["prompt"] for r in rows], [r["text"] for r in rows])
            for r, v in zip(rows, verdicts):
                r["safe"], r["guard_categories"], r["guard_parse_ok"] = v.safe, list(v.categories), v.parse_ok
        with open(out / "judged" / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def judge_row(r: dict, which: list[str]) -> dict:
    """Keyword refusal and utility verdicts, and the lengths and reminder counts the metrics use."""
    text = r.get("text", "")
    if "keyword" in which:
        r["refused"] = judges.judge_refusal(text).refused
    if r.get("kind") == "utility" and r.get("reference") is not None:
        ref = str(r["reference"])
        r["correct"] = (judges.judge_choice(text, ref) if ref in "ABCD" and len(ref) == 1
                        else judges.judge_math(text, ref)).correct
    if r.get("kind") == "benign":
        r["compliance"] = judges.classify_compliance(text)
    r["length"] = len(r["generated_ids"])
    r["reminders"] = len(r["reminder_steps"])
    r["think_length"] = r["think_tokens"] if r.get("think_tokens") is not None else r["length"]
    r["answer_length"] = r["length"] - r["think_length"]
    return r


def _guard(cfg: EvalConfig, guard_lm):
    from selfguard_jax import lm as lm_mod

    spec = cfg.llama_guard or {}
    if guard_lm is None:
        if "model" not in spec:
            raise ValueError("judges lists llama_guard but llama_guard.model (a local Llama Guard 3 folder) is unset.")
        guard_lm = lm_mod.load(spec["model"], dtype=spec.get("dtype", cfg.dtype))

    def gen(batch, max_new_tokens):
        return guard_lm.generate(batch, max_new_tokens=max_new_tokens).tokens

    return judges.LlamaGuardJudge(guard_lm.tokenizer, gen, protocol=spec.get("protocol", "saferemind"),
                                  batch_size=int(spec.get("batch_size", 8)))


def report_stage(run_dir: str | Path, n_resamples: int = 1000) -> dict:
    """summary.{md,csv,json} and plots from judged/*.jsonl."""
    run = Path(run_dir)
    files = sorted((run / "judged").glob("*.jsonl"))
    if not files:
        raise ValueError(f"{run}/judged holds no results; run the generate and judge stages first.")
    summary, table, all_rows = {}, {}, {}
    for f in files:
        recipe, label = f.stem.split("__", 1)
        rows = batch_io.read_results(f)
        all_rows[(recipe, label)] = rows
        s = metrics.summarize(rows, n_resamples=n_resamples)
        summary[f.stem] = {k: dataclasses.asdict(v) if isinstance(v, metrics.Estimate) else v for k, v in s.items()}
        headline = _headline(s)
        if headline is not None:
            table.setdefault(recipe, {})[label] = headline
    report.write_markdown(table, run / "summary.md")
    report.write_csv(table, run / "summary.csv")
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    _plots(run, all_rows)
    return summary


def _headline(s: dict):
    """The cell a paper table shows for a set: percent safe (Llama Guard), else refusal, else accuracy."""
    for key in ("percent_safe", "refusal_rate", "over_refusal", "accuracy"):
        if key in s:
            return s[key]
    return None


def _plots(run: Path, all_rows: dict) -> None:
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    points = {}
    for recipe in sorted({rec for rec, _ in all_rows}):
        rows = [r for (rec, _), rs in all_rows.items() if rec == recipe for r in rs]
        s = metrics.summarize(rows, n_resamples=200)
        if "refusal_rate" in s and "accuracy" in s:
            points[recipe] = (s["refusal_rate"], s["accuracy"])
    if points:
        report.plot_safety_utility(points, plots / "safety_vs_utility.png", safety_label="refusal on harmful (%)",
                                   title="safety against utility per recipe")
    triggers = [s for rows in all_rows.values() for r in rows for s in r.get("reminder_steps", [])]
    if triggers:
        report.plot_trigger_histogram(triggers, plots / "trigger_steps.png")
    for (recipe, label), rows in all_rows.items():
        example = next((r for r in rows if r.get("reminder_steps")), None)
        if example is not None:
            report.plot_entropy_trace(example["entropy"], plots / f"entropy_{recipe}__{label}.png",
                                      forced=example["forced"], reminder_steps=example["reminder_steps"],
                                      title=f"{recipe} / {label} / {example['id']}")
            break
