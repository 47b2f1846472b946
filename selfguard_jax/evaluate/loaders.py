"""One builder per benchmark: its file's rows (in any of its published layouts) into `Example`s. Each
docstring names the file and the Hub copy its layout follows and the columns it reads."""

from __future__ import annotations

import random

from selfguard_jax.evaluate.dataset_rows import (HUB_SPLIT, DatasetFormatError, Example, Kind, Layout, Row, Source,
                                                 cell_text, file_kind, listed, pick)

LETTERS = "ABCD"


def advbench(rows: list[Row], src: Source) -> list[Example]:
    """AdvBench: `harmful_behaviors.csv` (llm-attacks: goal, target) or walledai/AdvBench (prompt, target);
    520 harmful instructions."""
    return [
        Example(f"advbench-{i}", cell_text(pick(r, ("goal", "prompt"))), "harmful", None, None, None, "advbench",
                {"target": cell_text(r.get("target"))})
        for i, r in enumerate(rows)
    ]


def _harmbench_functional(r: Row, layout: Layout) -> str:
    if r.get(HUB_SPLIT) is not None:
        return r[HUB_SPLIT]
    if layout.origin.startswith("HarmBench"):
        return cell_text(r["FunctionalCategory"])
    if cell_text(r.get("context")):
        return "contextual"
    return "copyright" if "tags" in r and "category" not in r else "standard"


def harmbench(rows: list[Row], src: Source) -> list[Example]:
    """HarmBench: `harmbench_behaviors_text_all.csv` (Behavior, FunctionalCategory, SemanticCategory,
    ContextString, BehaviorID; 200 standard, 100 contextual, 100 copyright) or a walledai/HarmBench
    config (standard: prompt, category; contextual: prompt, context, category; copyright: prompt, tags),
    whose functional category is read from which of those columns the row has. Contextual prompts are
    written as HarmBench does: `context + "\\n\\n---\\n\\n" + behavior` (style "harmbench", the default),
    or as Self-Guard's evaluation sends them: the behavior alone, its context dropped (style "selfguard")."""
    ours = src.layout.origin.startswith("HarmBench")
    out = []
    for i, r in enumerate(rows):
        functional = _harmbench_functional(r, src.layout)
        if src.split is not None and functional != src.split:
            continue
        behavior = cell_text(r["Behavior"] if ours else r["prompt"])
        context = cell_text(r["ContextString"] if ours else r.get("context"))
        prompt = f"{context}\n\n---\n\n{behavior}" if context and src.style != "selfguard" else behavior
        category = cell_text(r["SemanticCategory"] if ours else r.get("category")) or None
        rid = cell_text(r["BehaviorID"]) if ours else f"harmbench-{functional}-{i}"
        out.append(Example(rid, prompt, "harmful", None, None, category, "harmbench",
                           {"functional_category": functional}))
    return out


_JBB_NAMES: dict[str, Kind] = {"harmful": "harmful", "benign": "benign"}


def jailbreakbench(rows: list[Row], src: Source) -> list[Example]:
    """JailbreakBench JBB-Behaviors `harmful-behaviors.csv` / `benign-behaviors.csv` (100 rows each):
    Index, Goal, Target, Behavior, Category, Source. The two files share their columns, so the kind
    comes from the file's name (or, for a renamed file, from split="harmful"|"benign")."""
    out = []
    for i, r in enumerate(rows):
        kind = file_kind(src, _JBB_NAMES, _JBB_NAMES, r)
        out.append(Example(f"jbb-{kind}-{cell_text(r.get('Index')) or i}", cell_text(r["Goal"]), kind, None, None,
                           cell_text(r["Category"]), "jailbreakbench",
                           {"behavior": cell_text(r["Behavior"]), "target": cell_text(r["Target"]),
                            "origin": cell_text(r["Source"])}))
    return out


def xstest(rows: list[Row], src: Source) -> list[Example]:
    """XSTest v2 `xstest_prompts.csv` (id, prompt, type, label, focus, note) or walledai/XSTest (the same
    without id); 250 safe, 200 unsafe. Files without `label` (v1) mark unsafe prompts by a `contrast_` type."""
    out = []
    for i, r in enumerate(rows):
        kind_type = cell_text(r["type"])
        label = cell_text(r.get("label")).lower() or ("unsafe" if kind_type.startswith("contrast_") else "safe")
        if label not in ("safe", "unsafe"):
            raise DatasetFormatError(f"{src.file} row {i}: label {label!r} is neither 'safe' nor 'unsafe'")
        if src.split is not None and label != src.split:
            continue
        rid = cell_text(r.get("id") or r.get("id_v2")) or str(i + 1)
        out.append(Example(f"xstest-{rid}", cell_text(r["prompt"]), "harmful" if label == "unsafe" else "benign", None,
                           None, kind_type, "xstest", {"label": label, "focus": cell_text(r.get("focus"))}))
    return out


def strongreject(rows: list[Row], src: Source) -> list[Example]:
    """StrongREJECT `strongreject_dataset.csv` (and the _small variant): category, source, forbidden_prompt."""
    return [
        Example(f"strongreject-{i}", cell_text(r["forbidden_prompt"]), "harmful", None, None,
                cell_text(r["category"]), "strongreject", {"origin": cell_text(r["source"])})
        for i, r in enumerate(rows)
    ]


# base prompts and categories of each SORRY-Bench release (Self-Guard evaluated 202503)
SORRY_BENCH_RELEASES = {"202406": (450, 45), "202503": (440, 44)}


def sorry_bench(rows: list[Row], src: Source) -> list[Example]:
    """SORRY-Bench `question.jsonl` (sorry-bench/sorry-bench-202406: 450 base prompts in 45 categories;
    -202503: 440 in 44): question_id, category, turns (one user turn), prompt_style ("base" for the
    unmutated prompts, else a mutation). split: a prompt_style. The release is recorded in meta when the
    base prompts' count and categories identify it."""
    base = [r for r in rows if cell_text(r["prompt_style"]) == "base"]
    shape = (len(base), len({cell_text(r["category"]) for r in base}))
    release = next((k for k, v in SORRY_BENCH_RELEASES.items() if v == shape), "unknown")
    out = []
    for r in rows:
        style = cell_text(r["prompt_style"])
        if src.split is not None and style != src.split:
            continue
        turns = listed(r["turns"])
        out.append(Example(f"sorry-bench-{style}-{cell_text(r['question_id'])}", turns[0] if turns else "", "harmful",
                           None, None, cell_text(r["category"]), "sorry-bench",
                           {"prompt_style": style, "release": release}))
    return out


def star1(rows: list[Row], src: Source) -> list[Example]:
    """STAR-1 (UCSC-VLAA/STAR-1; 1,000 safety questions, Self-Guard's extraction set): question,
    response, optional id, category (a list; its first entry is kept, as Self-Guard does), source."""
    out = []
    for i, r in enumerate(rows):
        cats = listed(r.get("category"))
        out.append(Example(f"star1-{cell_text(r.get('id')) or i}", cell_text(r["question"]), "harmful", None, None,
                           cats[0] if cats else None, "star-1", {"response": cell_text(r["response"])}))
    return out


def wildjailbreak(rows: list[Row], src: Source) -> list[Example]:
    """WildJailbreak `eval/eval.tsv`: adversarial, data_type (adversarial_harmful: 2000,
    adversarial_benign: 210), optional vanilla and label. split: harmful or benign."""
    out = []
    for i, r in enumerate(rows):
        data_type = cell_text(r["data_type"])
        kind: Kind = "benign" if data_type.endswith("benign") else "harmful"
        if src.split is not None and kind != src.split:
            continue
        prompt = cell_text(r["adversarial"]) or cell_text(r.get("vanilla"))
        out.append(Example(f"wildjailbreak-{i}", prompt, kind, None, None, data_type, "wildjailbreak",
                           {"vanilla": cell_text(r.get("vanilla"))}))
    return out


_OR_NAMES: dict[str, Kind] = {"toxic": "harmful", "hard-1k": "benign", "hard_1k": "benign", "80k": "benign"}
_OR_SPLITS: dict[str, Kind] = {"toxic": "harmful", "hard-1k": "benign", "80k": "benign"}


def or_bench(rows: list[Row], src: Source) -> list[Example]:
    """OR-Bench `or-bench-hard-1k.csv`, `or-bench-80k.csv` (benign: over-refusal) or `or-bench-toxic.csv`
    (harmful): prompt, category. The files share their columns, so the kind comes from the file's name
    (or, for a renamed file, from split="hard-1k"|"80k"|"toxic")."""
    return [
        Example(f"or-bench-{kind}-{i}", cell_text(r["prompt"]), kind, None, None, cell_text(r["category"]), "or-bench")
        for i, r in enumerate(rows)
        for kind in [file_kind(src, _OR_NAMES, _OR_SPLITS, r)]
    ]


# openai/simple-evals' math QUERY_TEMPLATE, which Self-Guard's math_eval.py (MATH-500, AIME) sends as the user turn
MATH_SIMPLE_EVALS = (
    "Solve the following math problem step by step. The last line of your response should be of the form Answer: "
    "$ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n{Question}\n\nRemember to put your "
    "answer on its own line after \"Answer:\", and you do not need to use a \\boxed command.")
MATH_STYLES = (None, "simple-evals")


def math_prompt(problem: str, style: str | None) -> str:
    """A math problem as sent: the raw problem (default) or in simple-evals' template (style "simple-evals")."""
    if style not in MATH_STYLES:
        raise DatasetFormatError(f"math style {style!r} is unknown; use simple-evals or leave it unset.")
    return problem if style is None else MATH_SIMPLE_EVALS.format(Question=problem)


def math500(rows: list[Row], src: Source) -> list[Example]:
    """MATH-500 `test.jsonl` (PRM800K math_splits/test.jsonl = HuggingFaceH4/MATH-500): problem, solution,
    answer, subject, level, unique_id. `style` simple-evals wraps the problem as Self-Guard's utility runs do."""
    return [
        Example(cell_text(r["unique_id"]), math_prompt(cell_text(r["problem"]), src.style), "utility",
                cell_text(r["answer"]), None,
                cell_text(r["subject"]), "math500", {"level": cell_text(r["level"])})
        for r in rows
    ]


def aime(rows: list[Row], src: Source) -> list[Example]:
    """AIME in its common layouts: problem|Problem|question, answer|Answer, optional id|ID
    (AI-MO/aimo-validation-aime, Maxwell-Jia/AIME_2024, opencompass/AIME2025); `style` as math500."""
    out = []
    for i, r in enumerate(rows):
        rid = cell_text(pick(r, ("id", "ID"))) if ("id" in r or "ID" in r) else str(i)
        out.append(Example(f"aime-{rid}", math_prompt(cell_text(pick(r, ("problem", "Problem", "question"))),
                                                      src.style), "utility",
                           cell_text(pick(r, ("answer", "Answer"))), None, None, "aime"))
    return out


# GPQA prompt styles, verbatim from the papers' code:
# - "simple-evals": openai/simple-evals' QUERY_TEMPLATE_MULTICHOICE, which Self-Guard's gpqa_eval.py uses;
# - "saferemind": SafeRemind's data_loader.get_query (the GPQA repo's zero-shot question without its
#   "Format your response" line: SafeRemind's prompt carries no answer-format instruction).
GPQA_STYLES = {
    "simple-evals": ("Answer the following multiple choice question. The last line of your response should be of "
                     "the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think "
                     "step by step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"),
    "saferemind": ("What is the correct answer to this question: {question}\n\nChoices:\n(A) {A}\n(B) {B}\n(C) {C}\n"
                   "(D) {D}"),
}


def balanced_positions(n: int, seed: int) -> list[int]:
    """A seeded order of correct-answer positions in which each of A-D occurs n // 4 or n // 4 + 1 times."""
    positions = [k % 4 for k in range(n)]
    random.Random(seed).shuffle(positions)
    return positions


def gpqa(rows: list[Row], src: Source) -> list[Example]:
    """GPQA `gpqa_diamond.csv`: Question, Correct Answer, Incorrect Answer 1..3 (optional Record ID,
    High-level domain). The correct answer's letter is balanced over A-D for any seed (the papers shuffle
    per row, which leaves the letters unbalanced); the wrong answers fill the other letters in a seeded
    order. `style` picks the prompt wording (GPQA_STYLES; default "simple-evals"); reference: the letter."""
    template = GPQA_STYLES[src.style or "simple-evals"]
    rng = random.Random(src.seed)
    out = []
    for i, (r, pos) in enumerate(zip(rows, balanced_positions(len(rows), src.seed))):
        wrong = [cell_text(r[f"Incorrect Answer {k}"]) for k in (1, 2, 3)]
        rng.shuffle(wrong)
        choices = tuple(wrong[:pos] + [cell_text(r["Correct Answer"])] + wrong[pos:])
        prompt = template.format(question=cell_text(r["Question"]), **dict(zip(LETTERS, choices)))
        rid = cell_text(r.get("Record ID")) or str(i)
        out.append(Example(f"gpqa-{rid}", prompt, "utility", LETTERS[pos], choices,
                           cell_text(r.get("High-level domain")) or None, "gpqa-diamond",
                           {"shuffle_seed": str(src.seed), "style": src.style or "simple-evals"}))
    return out


def offline(rows: list[Row], src: Source) -> list[Example]:
    """The project's own offline set: id, split (harmful|benign|utility), prompt, answer, category."""
    return [
        Example(cell_text(r["id"]), cell_text(r["prompt"]), cell_text(r["split"]),  # type: ignore[arg-type]
                cell_text(r.get("answer")) or None, None, cell_text(r.get("category")) or None, "offline")
        for r in rows
        if src.split is None or cell_text(r["split"]) == src.split
    ]
