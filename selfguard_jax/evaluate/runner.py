"""The evaluation runner: recipes x datasets -> generations (resumable JSONL) -> judgements -> report.

Layout of a run directory:
  generations/{recipe}__{dataset}.jsonl   one line per row, appended and flushed per batch
  judged/{recipe}__{dataset}.jsonl        the same rows with verdicts (rewritten by each judge stage)
  judged/protocol.json                    how the rates count unfinished rows (config protocol.unfinished_rows)
  summary.md, summary.csv, summary.json   the paper-style table; plots/*.png
  generations/{pair}.jsonl.settings.json   the settings that made a pair: a resume with others is refused
  .lock.host{i}                            held by a stage of process i: a second run on the folder stops
Each stage can be rerun alone; the generate stage skips rows already written and redoes a torn last line.
With several JAX processes, process i generates rows i, i + n, ... into `...host{i}.jsonl` shards, then
writes `generations/done.host{i}.json`; only process 0 judges and reports, after every host's marker is
there and every shard holds the rows it promises. Nobody but its own host ever truncates a shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from selfguard_jax import batch_io, chat, lm as lm_mod
from selfguard_jax.evaluate import datasets, judges, metrics, model_judges, report
from selfguard_jax.evaluate.answer_text import prompt_opens_thinking
from selfguard_jax.evaluate.eval_config import ConfigError, EvalConfig, dataset_label
from selfguard_jax.safe_write import write_text
from selfguard_jax.selfguard import extract_selfguard
from selfguard_jax.sharding import make_mesh
from selfguard_jax.spec import Sampling
from selfguard_jax.vector_files import load_any, load_vectors, save_vectors

__all__ = ["ConfigError", "EvalConfig", "generate_stage", "judge_stage", "report_stage", "init_distributed"]
BARRIER_POLL_S = 5.0
BARRIER_TIMEOUT_S = 6 * 3600.0  # process 0 waits this long for the other hosts' generate shards
PROTOCOL_FILE = "protocol.json"  # how the judge stage counted unfinished rows, for the report stage


try:
    import fcntl
except ImportError:  # not POSIX: no advisory lock
    fcntl = None


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold `out_dir/.lock.host{i}` (an advisory fcntl lock) for a stage; a second run of the same process
    index on the same run folder stops with an error instead of interleaving its writes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f".lock.host{jax.process_index()}"
    with open(path, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"{out} is in use by another run ({path} is locked); wait for it to finish or "
                                   "set another out_dir.") from None
        yield


def _examples(spec: dict) -> tuple[str, list[datasets.Example]]:
    """(label, examples) for one datasets entry of the config."""
    load = {k: v for k, v in spec.items() if k not in ("name", "label", "judges")}
    return dataset_label(spec), datasets.load_dataset(spec["name"], **load)


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


def _pair_settings(cfg: EvalConfig, recipe, spec: dict, max_new: int) -> dict[str, Any]:
    """What makes a (recipe, dataset) pair's rows: a resume with other settings is refused, naming them."""
    gen = {k: v for k, v in cfg.generation.items() if k != "batch_size"}  # batch composition changes no row
    return {"model": cfg.model, "dtype": cfg.dtype, "vector": cfg.vector, "extract": cfg.extract,
            "recipe": dataclasses.asdict(recipe), "dataset": spec, "generation": gen, "max_new_tokens": max_new}


def _spliced(recipe) -> list[str]:
    """Texts the engine may put into the generated text (a decode-side reminder), never judged as the model's."""
    return [recipe.reminder_text] if recipe.remind and recipe.placement not in chat.PROMPT_PLACEMENTS else []


def generate_stage(cfg: EvalConfig, lm=None) -> dict[str, dict]:
    """Generate every (recipe, dataset) pair not yet finished; returns per-pair throughput stats."""
    init_distributed(cfg.distributed)
    out = Path(cfg.out_dir)
    with run_lock(out):
        if lm is None:
            # each process meshes its own local devices and decodes its own slice of rows: no cross-host
            # collectives in the decode loop, so hosts never wait on each other
            mesh = make_mesh(**cfg.mesh, devices=jax.local_devices()) if cfg.mesh else None
            lm = lm_mod.load(cfg.model, dtype=cfg.dtype, mesh=mesh, scan_layers=cfg.scan_layers)
        if lm.tokenizer is None:
            raise ValueError(f"{cfg.model} has no tokenizer; evaluation needs text prompts and a chat template.")
        vectors = _vectors(cfg, lm, out)
        norms = _recorded_norms(cfg, out)  # the over-steering check's reference, where the vector file has one
        gen = dict(cfg.generation)
        batch_size = int(gen.pop("batch_size", 8))
        stats, promised = {}, {}
        for recipe in cfg.build_recipes(model_config=lm.config):
            sampling = Sampling(**{k: gen[k] for k in ("temperature", "top_p", "top_k", "seed") if k in gen})
            request = recipe.spec(lm.tokenizer, vectors, norms, max_new_tokens=gen.get("max_new_tokens"),
                                  sampling=sampling)
            markers = recipe.markers(lm.tokenizer)  # None: the model does not think, all it writes is answer
            max_new = request.budget()
            prompt_text = lm.tokenizer.decode(recipe.prompt_ids(lm.tokenizer, "x"))
            think_open = markers is not None and prompt_opens_thinking(prompt_text, markers.start, markers.end)

            def run(batch, request=request):
                return lm.generate(batch, request, slots=batch_size)

            extra = {"recipe": recipe.name, "think_open": think_open, "spliced": _spliced(recipe),
                     "stop_texts": [lm.tokenizer.decode([i]) for i in lm.config.eos_token_ids],
                     "think_markers": None if markers is None else [markers.start, markers.end]}
            for spec in cfg.datasets:
                label, examples = _examples(spec)
                records = [{"id": e.id, "prompt": e.prompt, "kind": e.kind, "reference": e.reference,
                            "category": e.category, "source": e.source} for e in examples]
                records, path = _host_slice(records, out / "generations" / f"{recipe.name}__{label}.jsonl")
                promised[path.name] = len(records)
                stats[f"{recipe.name}__{label}"] = batch_io.run_to_jsonl(
                    records, path, batch_size * batch_io.QUEUE_PER_SLOT,
                    lambda r, recipe=recipe: recipe.prompt_ids(lm.tokenizer, r["prompt"]), run,
                    lambda ids: lm.tokenizer.decode(ids, skip_special_tokens=False),
                    extra=lambda r, extra=extra: extra | {"source": r["source"]},
                    desc=f"{recipe.name} / {label}", settings=_pair_settings(cfg, recipe, spec, max_new))
        if jax.process_count() > 1:
            write_text(out / "generations" / f"done.host{jax.process_index()}.json", json.dumps(
                {"process": jax.process_index(), "num_processes": jax.process_count(), "shards": promised}))
    return stats


def _recorded_norms(cfg: EvalConfig, out: Path) -> np.ndarray | None:
    """The residual norms recorded with the steering vectors (extract's .safetensors), None for other formats."""
    path = Path(cfg.vector) if cfg.vector else out / "vector.safetensors"
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    norms = load_vectors(path)[1].extra.get("residual_norms")
    return None if not norms else np.asarray(norms, np.float32)


def _vectors(cfg: EvalConfig, lm, out: Path) -> np.ndarray | None:
    """Steering vectors from cfg.vector, or extracted once into the run directory per cfg.extract."""
    if cfg.vector:
        return load_any(cfg.vector, lm.config.num_layers, lm.config.hidden_size)[0]
    if not cfg.extract:
        return None

    path = out / "vector.safetensors"
    if path.is_file():
        return load_vectors(path, lm.config.num_layers, lm.config.hidden_size)[0]
    spec = dict(cfg.extract)
    questions = [e.prompt for e in datasets.load_dataset(spec.pop("name"), **spec.pop("load", {}))]
    sg = extract_selfguard(lm, questions, model_id=cfg.model, dataset_name=str(cfg.extract.get("name")),
                           suffix=spec.get("suffix", "chatgpt"), method=spec.get("method", "mean_diff"),
                           read=spec.get("read", "last_token"))
    out.mkdir(parents=True, exist_ok=True)
    save_vectors(path, sg.vectors, sg.meta)
    vectors = sg.vectors
    return vectors


def _complete_rows(path: Path) -> list[dict]:
    """The complete lines of a results file, read without touching it (another host may be appending)."""
    raw = path.read_bytes()
    return [json.loads(line) for line in raw[:raw.rfind(b"\n") + 1].decode("utf-8").splitlines() if line.strip()]


def wait_for_hosts(generations: Path, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """The barrier before judging a multi-host run: every host's done marker is there and each of its shards
    holds the rows the marker promises. Waits (polling) up to timeout_s, then says which host is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        markers = {int(m.stem.split("host")[1]): json.loads(m.read_text())
                   for m in generations.glob("done.host*.json")}
        n = next(iter(markers.values()))["num_processes"] if markers else None
        missing = [] if n is None else [i for i in range(n) if i not in markers]
        short = [f"{name} ({len(_complete_rows(generations / name))} of {rows} rows)"
                 for m in markers.values() for name, rows in m["shards"].items()
                 if not (generations / name).is_file() or len(_complete_rows(generations / name)) < rows]
        if n is not None and not missing and not short:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{generations}: the generate stage has not finished on every host: "
                               + (f"no done marker from hosts {missing}; " if missing else "")
                               + (f"incomplete shards {short}; " if short else "")
                               + "run the generate stage on every host first.")
        time.sleep(BARRIER_POLL_S)


def _read_pair(generations: Path, name: str) -> list[dict]:
    """A pair's rows from the single file or all host shards (read, never truncated), deduplicated by id."""
    single = generations / f"{name}.jsonl"
    files = [single] if single.is_file() else sorted(generations.glob(f"{name}.host*.jsonl"))
    rows = {}
    for f in files:
        for r in _complete_rows(f):
            rows.setdefault(str(r["id"]), r)
    return [rows[k] for k in sorted(rows)]


def judge_stage(cfg: EvalConfig, guard_lm=None, timeout_s: float = BARRIER_TIMEOUT_S,
                judge_lms: dict | None = None) -> None:
    """Add verdicts to every generated row and write judged/*.jsonl (rerunnable, never regenerates). Only
    process 0 judges, after every host's generate shards are complete (`wait_for_hosts`). `guard_lm` and
    `judge_lms` ({"wildguard": lm, "sorry_judge": lm}) stand in for the models the config names."""
    judge_lms = judge_lms or {}
    init_distributed(cfg.distributed)
    if jax.process_index() != 0:
        return
    out = Path(cfg.out_dir)
    generations = out / "generations"
    if any(generations.glob("done.host*.json")) or jax.process_count() > 1:
        # in the distributed run itself, wait for the other hosts; a later judge-only run checks once
        wait_for_hosts(generations, timeout_s if jax.process_count() > 1 else 0.0)
    with run_lock(out):
        names = sorted({p.name.split(".host")[0].removesuffix(".jsonl") for p in generations.glob("*.jsonl")})
        wanted = {j for name in names for j in cfg.judges_for(name.split("__", 1)[1])} | set(cfg.judges)
        guard = _guard(cfg, guard_lm) if "llama_guard" in wanted else None
        others = {j: _model_judge(cfg, j, judge_lms.get(j)) for j in ("wildguard", "sorry_judge") if j in wanted}
        (out / "judged").mkdir(parents=True, exist_ok=True)
        for name in names:
            pair_judges = cfg.judges_for(name.split("__", 1)[1])
            keyword_judges = [j for j in pair_judges if j in judges.REFUSAL_JUDGES]
            rows = [judges.judge_record(r, keyword_judges) for r in _read_pair(generations, name)]
            judged = [r for r in rows if r["outcome"] != "unfinished" or cfg.unfinished_rows == "judged"]
            for j, judge in others.items():
                if j in pair_judges and judged:
                    # the whole response, thinking included, as the authors' vLLM returned it
                    texts = [model_judges.full_response(r["text"], r.get("stop_texts", ())) for r in judged]
                    convert = model_judges.wildguard_verdict if j == "wildguard" else model_judges.sorry_verdict
                    for r, v in zip(judged, judge.judge([r["prompt"] for r in judged], texts)):
                        r["verdicts"][j] = convert(v)
            if guard is not None and "llama_guard" in pair_judges and judged:
                # SafeRemind's protocol judges the answer alone, Self-Guard's the whole response
                texts = [r["judged_answer"] if guard.protocol == "saferemind"
                         else model_judges.full_response(r["text"], r.get("stop_texts", ())) for r in judged]
                verdicts = guard.judge([r["prompt"] for r in judged], texts)
                for r, v in zip(judged, verdicts):
                    r["verdicts"]["llama_guard"] = "unparsed" if v.safe is None else "safe" if v.safe else "unsafe"
                    r["guard_categories"] = list(v.categories)
            write_text(out / "judged" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_text(out / "judged" / PROTOCOL_FILE, json.dumps({"unfinished_rows": cfg.unfinished_rows}))


def _guard(cfg: EvalConfig, guard_lm):
    spec = cfg.llama_guard or {}
    if guard_lm is None:
        if "model" not in spec:
            raise ValueError("judges lists llama_guard but llama_guard.model (a local Llama Guard 3 folder) is unset.")
        guard_lm = lm_mod.load(spec["model"], dtype=spec.get("dtype", cfg.dtype))

    def gen(batch, max_new_tokens):
        return guard_lm.generate(batch, max_new_tokens=max_new_tokens).tokens

    return judges.LlamaGuardJudge(guard_lm.tokenizer, gen, protocol=spec.get("protocol", "saferemind"),
                                  batch_size=int(spec.get("batch_size", 8)),
                                  max_new_tokens=int(spec.get("max_new_tokens", 16)))


def _model_judge(cfg: EvalConfig, name: str, judge_lm):
    """WildGuard or the SORRY-Bench judge, as configured (cfg.wildguard / cfg.sorry_judge)."""
    spec = getattr(cfg, name) or {}
    if judge_lm is None:
        if "model" not in spec:
            raise ValueError(f"judges lists {name} but {name}.model (a local folder of the judge) is unset.")
        judge_lm = lm_mod.load(spec["model"], dtype=spec.get("dtype", cfg.dtype))

    def gen(batch, max_new_tokens):
        return judge_lm.generate(batch, max_new_tokens=max_new_tokens).tokens

    kw = {"batch_size": int(spec.get("batch_size", 8))} | (
        {"max_new_tokens": int(spec["max_new_tokens"])} if "max_new_tokens" in spec else {})
    if name == "wildguard":
        return model_judges.wildguard_judge(judge_lm.tokenizer, gen, input=spec.get("input", "list-string"), **kw)
    return model_judges.sorry_judge(judge_lm.tokenizer, gen, **kw)


def report_stage(run_dir: str | Path, n_resamples: int = 1000) -> dict:
    """summary.{md,csv,json} and plots from judged/*.jsonl (process 0 only). Every number is keyed by the
    judge that produced it, and every table cell shows its pair's unfinished rows."""
    if jax.process_index() != 0:
        return {}
    run = Path(run_dir)
    files = sorted((run / "judged").glob("*.jsonl"))
    if not files:
        raise ValueError(f"{run}/judged holds no results; run the generate and judge stages first.")
    summary, table, all_rows = {}, {}, {}
    protocol = run / "judged" / PROTOCOL_FILE
    unfinished_rows = json.loads(protocol.read_text())["unfinished_rows"] if protocol.is_file() else "excluded"
    with run_lock(run):
        for f in files:
            recipe, label = f.stem.split("__", 1)
            rows = batch_io.read_results(f)
            all_rows[(recipe, label)] = rows
            s = metrics.summarize(rows, n_resamples=n_resamples, unfinished_rows=unfinished_rows)
            summary[f.stem] = {k: dataclasses.asdict(v) if isinstance(v, metrics.Estimate) else v for k, v in s.items()}
            table.setdefault(recipe, {})[label] = _headline(s)
        report.write_markdown(table, run / "summary.md")
        report.write_csv(table, run / "summary.csv")
        write_text(run / "summary.json", json.dumps(summary, indent=1))
        _plots(run, all_rows)
    return summary


# the number a paper table shows for a pair, in order of preference; judges in order of preference
_HEADLINES = ("percent_safe", "fulfillment_rate", "refusal_rate", "over_refusal", "accuracy")
_JUDGE_ORDER = ("llama_guard", "sorry_judge", "wildguard", "keyword", "keyword:xstest", "keyword:saferemind",
                "math-verify", "math:prm800k", "choice")


def _headline(s: dict) -> report.Cell:
    """The cell a paper table shows: percent safe (Llama Guard), else refusal, over-refusal or accuracy,
    by the preferred judge present; with the judge's name and the pair's unfinished rows (a pair whose rows
    are all unfinished still gets its cell, saying so)."""
    for metric in _HEADLINES:
        for judge in _JUDGE_ORDER:
            key = metrics.metric_key(metric, judge)
            if key in s:
                return report.Cell(s[key], metric, judge, s["n_unfinished"], s["n"])
    return report.Cell(None, None, None, s["n_unfinished"], s["n"])


def _plots(run: Path, all_rows: dict) -> None:
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    points = {}
    for recipe in sorted({rec for rec, _ in all_rows}):
        rows = [r for (rec, _), rs in all_rows.items() if rec == recipe for r in rs]
        s = metrics.summarize(rows, n_resamples=200)
        safety = next((s[k] for k in s if k.startswith("refusal_rate[")), None)
        utility = next((s[k] for k in s if k.startswith("accuracy[")), None)
        if safety is not None and utility is not None:
            points[recipe] = (safety, utility)
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
