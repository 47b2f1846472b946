"""Benchmark loaders: read a local file in the benchmark's own public layout into `Example`s.

Each benchmark accepts the layouts it is published in: its authors' file and the Hub copy the papers'
code loads (walledai/*, STAR-1, SORRY-Bench). Where the file says whether a prompt is harmful or benign
(a label column, or the file's own name for JailbreakBench and OR-Bench), the label comes from the file;
`split` only selects rows, and `split=None` always means every row. Nothing is downloaded unless
`source="hub"` is asked for explicitly (needs the `datasets` package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from selfguard_jax.evaluate.dataset_rows import (HUB_SPLIT, DatasetFormatError, Example, Layout, Row, Source,
                                                 match_layout, read_rows)
from selfguard_jax.evaluate.loaders import (GPQA_STYLES, advbench, aime, gpqa, harmbench, jailbreakbench,
                                            math500, offline, or_bench, sorry_bench, star1, strongreject,
                                            wildjailbreak, xstest)

OFFLINE_PATH = Path(__file__).resolve().parents[1] / "data" / "offline.jsonl"
# Utility benchmarks that lm-evaluation-harness runs on a defended model instead (name -> its lm-eval task).
LM_EVAL_TASKS = {"gsm8k": "gsm8k"}


def unknown_dataset(name: str) -> str:
    """The message for a dataset name not in DATASETS, pointing at lm-eval where it runs there."""
    if name in LM_EVAL_TASKS:
        return (f"dataset {name!r} runs through lm-evaluation-harness: selfguard-jax lm-eval --model M "
                f"--tasks {LM_EVAL_TASKS[name]} --recipe R")
    return f"unknown dataset {name!r}; known: {sorted(DATASETS)}"


__all__ = ["DATASETS", "DatasetFormatError", "DatasetSpec", "Example", "Layout", "load_dataset", "read_rows"]


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one benchmark: its accepted layouts, the builder, the splits that select rows (None,
    always accepted, keeps every row), prompt styles, and Hub locations: split -> (repo, config, split)."""

    layouts: tuple[Layout, ...]
    build: Callable[[list[Row], Source], list[Example]]
    splits: tuple[str, ...] = ()
    hub: dict[str | None, tuple[str, str | None, str]] = field(default_factory=dict)
    hub_kwargs: tuple[tuple[str, Any], ...] = ()
    any_split: bool = False  # accept splits beyond those listed (sorry-bench prompt styles)
    styles: tuple[str, ...] = ()


def _lay(origin: str, *names: str | tuple[str, ...]) -> Layout:
    return Layout(origin, tuple((n,) if isinstance(n, str) else n for n in names))


_HB_WALLED = {s: ("walledai/HarmBench", s, "train") for s in ("standard", "contextual", "copyright")}
DATASETS: dict[str, DatasetSpec] = {
    "advbench": DatasetSpec(
        (_lay("llm-attacks harmful_behaviors.csv", "goal", "target"), _lay("walledai/AdvBench", "prompt", "target")),
        advbench, hub={None: ("walledai/AdvBench", None, "train")}),
    "harmbench": DatasetSpec(
        (_lay("HarmBench behaviors CSV", "Behavior", "FunctionalCategory", "SemanticCategory", "ContextString",
              "BehaviorID"),
         _lay("walledai/HarmBench", "prompt", ("category", "tags", "context"))),
        harmbench, ("standard", "contextual", "copyright"), hub=_HB_WALLED, styles=("harmbench", "selfguard")),
    "jailbreakbench": DatasetSpec(
        (_lay("JBB-Behaviors CSV", "Goal", "Target", "Behavior", "Category", "Source"),), jailbreakbench,
        ("harmful", "benign"), hub={s: ("JailbreakBench/JBB-Behaviors", "behaviors", s) for s in ("harmful", "benign")}),
    "xstest": DatasetSpec(
        (_lay("XSTest prompts CSV or walledai/XSTest", "prompt", "type"),), xstest, ("safe", "unsafe"),
        hub={None: ("walledai/XSTest", None, "test")}),
    "strongreject": DatasetSpec((_lay("StrongREJECT CSV", "category", "source", "forbidden_prompt"),), strongreject),
    "sorry-bench": DatasetSpec(
        (_lay("SORRY-Bench question.jsonl", "question_id", "category", "turns", "prompt_style"),), sorry_bench,
        ("base",), hub={None: ("sorry-bench/sorry-bench-202503", None, "train")}, any_split=True),
    "star-1": DatasetSpec((_lay("UCSC-VLAA/STAR-1", "question", "response"),), star1,
                          hub={None: ("UCSC-VLAA/STAR-1", None, "train")}),
    "wildjailbreak": DatasetSpec(
        (_lay("WildJailbreak eval.tsv", "adversarial", "data_type"),), wildjailbreak, ("harmful", "benign"),
        hub={None: ("allenai/wildjailbreak", "eval", "train")}, hub_kwargs=(("delimiter", "\t"), ("keep_default_na", False))),
    "or-bench": DatasetSpec(
        (_lay("OR-Bench CSV", "prompt", "category"),), or_bench, ("hard-1k", "80k", "toxic"),
        hub={s: ("bench-llm/or-bench", f"or-bench-{s}", "train") for s in ("hard-1k", "80k", "toxic")}),
    "math500": DatasetSpec(
        (_lay("MATH-500 test.jsonl", "problem", "solution", "answer", "subject", "level", "unique_id"),), math500,
        hub={None: ("HuggingFaceH4/MATH-500", None, "test")}, styles=("simple-evals",)),
    "aime": DatasetSpec((_lay("AIME", ("problem", "Problem", "question"), ("answer", "Answer")),), aime,
                        hub={None: ("Maxwell-Jia/AIME_2024", None, "train")}, styles=("simple-evals",)),
    "gpqa-diamond": DatasetSpec(
        (_lay("GPQA CSV", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
              "Incorrect Answer 3"),), gpqa, hub={None: ("Idavidrein/gpqa", "gpqa_diamond", "train")},
        styles=tuple(GPQA_STYLES)),
    "offline": DatasetSpec((_lay("offline.jsonl", "id", "split", "prompt"),), offline, ("harmful", "benign", "utility")),
}


def _hub_rows(name: str, spec: DatasetSpec, split: str | None) -> tuple[list[Row], str]:
    """Rows from the Hub copy for `split` (every config of a split-per-config copy when split is None)."""
    keys = [split] if split in spec.hub else [None] if None in spec.hub else list(spec.hub) if split is None else []
    if not keys:
        raise ValueError(f"{name} has no registered Hub source" + (f" for split {split!r}" if split else "")
                         + "; download its file and pass path=")
    try:
        import datasets
    except ImportError as e:
        raise ImportError("source='hub' needs the datasets package: pip install datasets") from e
    rows = []
    for key in keys:
        repo, config, hub_split = spec.hub[key]
        part = [dict(r) for r in datasets.load_dataset(repo, config, split=hub_split, **dict(spec.hub_kwargs))]
        rows += [r | {HUB_SPLIT: key} for r in part] if key is not None else part
    return rows, "hub:" + ",".join(f"{spec.hub[k][0]}/{spec.hub[k][1] or ''}" for k in keys)


def load_dataset(
    name: str,
    path: str | Path | None = None,
    split: str | None = None,
    *,
    source: Literal["file", "hub"] = "file",
    limit: int | None = None,
    seed: int = 0,
    style: str | None = None,
) -> list[Example]:
    """Load benchmark `name` from a local file (default) or, only when asked, from the Hub.

    `split` selects rows (see `DATASETS[name].splits`); None keeps every row. `seed` only matters for
    datasets that order choices (gpqa-diamond); `style` picks a prompt wording where a benchmark has
    several (gpqa-diamond: GPQA_STYLES); `limit` keeps the first rows."""
    if name not in DATASETS:
        raise KeyError(unknown_dataset(name))
    spec = DATASETS[name]
    if split is not None and split not in spec.splits and not spec.any_split:
        raise ValueError(f"{name}: unknown split {split!r}; choose from {list(spec.splits)} or None (every row)")
    if style is not None and style not in spec.styles:
        raise ValueError(f"{name}: unknown style {style!r}; " + (f"choose from {list(spec.styles)}" if spec.styles
                                                                  else "this dataset has one prompt wording"))
    if source not in ("file", "hub"):
        raise ValueError(f"{name}: source {source!r} is neither 'file' nor 'hub'")
    if source == "hub":
        rows, file = _hub_rows(name, spec, split)
    elif path is None and name == "offline":
        rows, file = read_rows(OFFLINE_PATH), str(OFFLINE_PATH)
    elif path is None:
        raise ValueError(f"{name}: pass path= to a local file, or source='hub' to download")
    else:
        rows, file = read_rows(path), str(path)
    layout = match_layout(name, file, rows, spec.layouts)
    examples = spec.build(rows, Source(file, layout, split, seed, style))
    if not examples:
        raise DatasetFormatError(f"{file}: no {name} rows of split {split!r}")
    return examples[:limit] if limit is not None else examples
