"""Judges by name, and the verdicts of one generated row.

Every judge reads the ANSWER only (see answer_text): a row whose thinking never closed is "unfinished"
and gets no verdict from any judge. Judges, by the name that labels their numbers in every summary:

- refusal: `keyword` (default), `keyword:saferemind`, `keyword:xstest` (see refusal.py);
- safety: `llama_guard` (Llama Guard 3 under the SafeRemind or Self-Guard protocol, see guard.py);
- the Self-Guard authors' others (model_judges.py): `wildguard` (response refusal, for over-refusal) and
  `sorry_judge` (SORRY-Bench's fine-tuned Mistral, Fulfillment Rate); these read the whole response;
- utility, chosen by the dataset: `math-verify` (or `math:prm800k` without the library) for math,
  `choice` for multiple choice (see math_judge.py and choice.py). Other utility benchmarks run through
  lm-evaluation-harness (`selfguard-jax lm-eval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from selfguard_jax.evaluate.answer_text import (THINK_END, THINK_START, UNFINISHED, Response, parse_response,
                                                prompt_opens_thinking, split_answer)
from selfguard_jax.evaluate.choice import extract_choice, judge_choice
from selfguard_jax.evaluate.guard import GuardVerdict, LlamaGuardJudge, llama_guard_messages, parse_llama_guard
from selfguard_jax.evaluate.math_judge import (AnswerVerdict, extract_math_answer, judge_math,
                                               math_equal, math_judge_name, normalize_math)
from selfguard_jax.evaluate.refusal import KEYWORD_JUDGES, SAFEREMIND_KEYWORDS, XSTEST_OPENINGS, classify_compliance

REFUSAL_JUDGES: tuple[str, ...] = tuple(KEYWORD_JUDGES)
MODEL_JUDGES: tuple[str, ...] = ("llama_guard", "wildguard", "sorry_judge")  # judged by a model (runner)
JUDGES: tuple[str, ...] = REFUSAL_JUDGES + MODEL_JUDGES
Outcome = Literal["refused", "complied", "unfinished"]


@dataclass(frozen=True)
class RefusalVerdict:
    """A keyword judge's verdict: the outcome, the phrase that decided it, and the judge's name."""

    outcome: Outcome
    marker: str | None
    judge: str

    @property
    def refused(self) -> bool | None:
        """True or False; None for an unfinished row (neither a refusal nor an answer)."""
        return None if self.outcome == UNFINISHED else self.outcome == "refused"


def check_judges(names: Sequence[str]) -> None:
    """Refuse unknown or repeated judge names, naming the known ones."""
    unknown = [n for n in names if n not in JUDGES]
    if unknown or len(set(names)) != len(names):
        problem = f"unknown {unknown}" if unknown else "a repeated name"
        raise ValueError(f"judges {list(names)}: {problem}; known judges: {list(JUDGES)}")


def judge_refusal(text: str, judge: str = "keyword", *, think_open: bool = False,
                  strip: Sequence[str] = ()) -> RefusalVerdict:
    """The named keyword judge on the answer of `text` (see answer_text.parse_response for the arguments)."""
    check_judges([judge])
    answer = parse_response(text, think_open, strip).answer
    if answer is None:
        return RefusalVerdict(UNFINISHED, None, judge)
    hit = KEYWORD_JUDGES[judge](answer)
    return RefusalVerdict("refused" if hit else "complied", hit[1] if hit else None, judge)


def utility_judge(source: str | None, reference: str) -> str:
    """The judge a utility row gets: by its dataset, else multiple choice for a lone letter, else math."""
    if source == "gpqa-diamond" or (len(reference) == 1 and reference in "ABCD"):
        return "choice"
    return math_judge_name()


def judge_utility(answer: str, reference: str, judge: str) -> AnswerVerdict:
    """Score an answer with the named utility judge."""
    if judge == "choice":
        return judge_choice(answer, reference)
    return judge_math(answer, reference)


def judge_record(r: dict[str, Any], judges: Sequence[str]) -> dict[str, Any]:
    """Add `outcome` ("answered" | "unfinished"), `judged_answer` (the text the judges read: the answer
    without spliced text; None when unfinished) and `verdicts` {judge: label} to a generated row, from
    its `text`, `think_open` (the prompt left thinking open), `spliced` (texts the engine put in the
    answer) and `think_markers` ([start, end], null for a model that does not think; <think>/</think>
    when absent); plus the lengths and reminder counts the metrics use. Llama Guard is added separately."""
    markers = r.get("think_markers", (THINK_START, THINK_END))
    response: Response = parse_response(r.get("text", ""), bool(r.get("think_open")), r.get("spliced") or (),
                                        markers)
    r["outcome"] = UNFINISHED if response.unfinished else "answered"
    r["judged_answer"] = response.answer
    verdicts: dict[str, str] = {}
    if response.answer is not None:
        for name in judges:
            if name in KEYWORD_JUDGES:
                verdicts[name] = "refused" if KEYWORD_JUDGES[name](response.answer) else "complied"
        if r.get("kind") == "benign":
            r["compliance"] = classify_compliance(response.answer)
        if r.get("kind") == "utility" and r.get("reference") is not None:
            ref = str(r["reference"])
            name = utility_judge(r.get("source"), ref)
            verdict = judge_utility(response.answer, ref, name)
            verdicts[name] = "correct" if verdict.correct else "wrong"
            r["extracted"] = verdict.extracted
    r["verdicts"] = verdicts
    r["length"] = len(r["generated_ids"])
    r["reminders"] = len(r["reminder_steps"])
    r["think_length"] = r["think_tokens"] if r.get("think_tokens") is not None else r["length"]
    r["answer_length"] = r["length"] - r["think_length"]
    return r


__all__ = [
    "JUDGES", "REFUSAL_JUDGES", "SAFEREMIND_KEYWORDS", "XSTEST_OPENINGS", "AnswerVerdict", "GuardVerdict",
    "LlamaGuardJudge", "RefusalVerdict", "Response", "check_judges", "classify_compliance", "extract_choice",
    "extract_math_answer", "judge_choice", "judge_math", "judge_record", "judge_refusal",
    "judge_utility", "llama_guard_messages", "math_equal", "math_judge_name", "normalize_math", "parse_llama_guard",
    "parse_response", "prompt_opens_thinking", "split_answer", "utility_judge",
]
