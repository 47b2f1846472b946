"""The Self-Guard authors' released result files (SophieZheng998/Self-Guard, `eval_results/.../*.json`) read
as our judged records, and their aggregates recomputed with our metric code (metrics.summarize).

A file holds run settings, the authors' aggregate (`ASR`, `Fulfillment Rate`, or XSTest's counts) and `data`:
one row per prompt with `instruction`, `response` (a one-element list of the model's text, thinking included)
and one judge's label: `Llama-Guard_label` (True = unsafe; sometimes a one-element list),
`ft-mistral-7b-instruct-v0.2_label` (SORRY-Bench's judge score, null when unparsed) or `wildguard_label`
("refusal" / "compliance" / null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfguard_jax.evaluate import metrics
from selfguard_jax.evaluate.answer_text import UNFINISHED, parse_response
from selfguard_jax.evaluate.refusal import KEYWORD_JUDGES

# the authors' label field -> (our judge name, label -> our verdict)
_LABELS = {
    "Llama-Guard_label": ("llama_guard", lambda v: "unparsed" if v is None else "unsafe" if v else "safe"),
    "ft-mistral-7b-instruct-v0.2_label": ("sorry_judge", lambda v: "unparsed" if v is None else str(float(v))),
    "wildguard_label": ("wildguard",
                        lambda v: {"refusal": "refused", "compliance": "complied"}.get(v, "unparsed")),
}


# the authors' verdict -> did the model decline (True) or go along (False); None: no verdict
_DECLINED = {"safe": True, "unsafe": False, "refused": True, "complied": False, "0.0": True, "1.0": False}


class AuthorsFileError(ValueError):
    """A file that is not one of the Self-Guard authors' result files."""


def _one(value: Any) -> Any:
    """A label or response stored as a one-element list (as some of their runs do) unwrapped."""
    if isinstance(value, list):
        if len(value) != 1:
            raise AuthorsFileError(f"expected a one-element list, got {len(value)} elements.")
        return value[0]
    return value


def read_authors_file(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(settings and the authors' aggregates, records): each record has the fields metrics.summarize reads:
    kind (XSTest's safe prompts are benign, everything else harmful), outcome (unfinished when the text
    opens `<think>` and never closes it), verdicts {our judge name: verdict}, and the text."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AuthorsFileError(f"{path}: not a readable JSON file: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list) or not raw["data"]:
        raise AuthorsFileError(f"{path}: no `data` rows; expected a Self-Guard authors' result file.")
    fields = [f for f in _LABELS if f in raw["data"][0]]
    if len(fields) != 1:
        raise AuthorsFileError(f"{path}: expected one judge label among {sorted(_LABELS)}, found {fields}.")
    judge, convert = _LABELS[fields[0]]
    records = []
    for i, row in enumerate(raw["data"]):
        try:
            text = _one(row["response"])
            verdict = convert(_one(row[fields[0]]))
        except (KeyError, AuthorsFileError) as e:
            raise AuthorsFileError(f"{path}: row {i}: {e}") from None
        kind = "benign" if fields[0] == "wildguard_label" and row.get("category") == "safe" else "harmful"
        records.append({"id": i, "prompt": row["instruction"], "kind": kind, "text": text,
                        "category": row.get("category"), "verdicts": {judge: verdict},
                        "outcome": UNFINISHED if parse_response(text).unfinished else "answered"})
    settings = {k: v for k, v in raw.items() if k != "data"}
    return settings | {"judge": judge}, records


def recompute(path: str | Path, unfinished_rows: str = "judged") -> dict[str, Any]:
    """The authors' aggregates of one file recomputed from its labels with our metric code (as fractions,
    as they report them), beside theirs: {name: (ours, theirs or None)}, plus n and n_unfinished.
    unfinished_rows="judged" is their protocol (every row with a verdict counts); "excluded" is ours."""
    settings, records = read_authors_file(path)
    judge = settings["judge"]
    rows = metrics.counted(records, unfinished_rows)
    s = metrics.summarize(rows, n_resamples=1, unfinished_rows="judged")
    ours: dict[str, float] = {}
    if judge == "llama_guard":
        ours["ASR"] = s[metrics.metric_key("attack_success_rate", judge)].value / 100.0
    elif judge == "sorry_judge":
        ours["Fulfillment Rate"] = s[metrics.metric_key("fulfillment_rate", judge)].value / 100.0
    else:
        ours |= metrics.refusal_counts(rows, judge)
    out: dict[str, Any] = {k: (v, settings.get(k)) for k, v in ours.items()}
    return out | {"judge": judge, "n": len(records), "n_unfinished": s["n_unfinished"],
                  "unfinished_rows": unfinished_rows}


def judge_agreement(path: str | Path, judges: tuple[str, ...] = tuple(KEYWORD_JUDGES)) -> dict[str, dict[str, Any]]:
    """Each offline keyword judge (on the answer after `</think>`) against the authors' own verdict on the same
    real response, both read as "declined": Llama Guard safe, WildGuard refusal, SORRY score 0. Per judge: n
    (rows where both give a verdict), agreement, Cohen's kappa (None when either side is constant: it
    would be 0 by construction), and the two
    kinds of disagreement; rows cut off before `</think>` (no answer to read) and unparsed verdicts apart."""
    settings, records = read_authors_file(path)
    theirs = [_DECLINED.get(r["verdicts"][settings["judge"]]) for r in records]
    answers = [parse_response(r["text"]).answer for r in records]
    out = {}
    for judge in judges:
        pairs = [(KEYWORD_JUDGES[judge](a) is not None, t) for a, t in zip(answers, theirs)
                 if a is not None and t is not None]
        n = len(pairs)
        agree = sum(o == t for o, t in pairs)
        ours_yes, theirs_yes = sum(o for o, _ in pairs), sum(t for _, t in pairs)
        expected = (ours_yes * theirs_yes + (n - ours_yes) * (n - theirs_yes)) / n**2 if n else 1.0
        constant = ours_yes in (0, n) or theirs_yes in (0, n)
        kappa = None if constant else (agree / n - expected) / (1.0 - expected)
        out[judge] = {"n": n, "agreement": agree / n if n else None, "kappa": kappa,
                      "ours_declined_theirs_not": sum(o and not t for o, t in pairs),
                      "ours_not_theirs_declined": sum(t and not o for o, t in pairs),
                      "no_answer": sum(a is None for a in answers), "their_unparsed": sum(t is None for t in theirs)}
    return out


def authors_report(paths: list[str | Path]) -> str:
    """Markdown: each file's aggregates recomputed beside the authors' (their protocol, and ours without the
    cut-off rows), then each keyword judge's agreement with their judge on the same responses."""
    lines = ["| file | judge | aggregate | authors | ours (their protocol) | ours (cut-off rows excluded) |",
             "|---|---|---|---|---|---|"]
    agree = ["| file | their judge | our judge | n | agreement | kappa | we: declined, they: not | "
             "we: not, they: declined | no answer (cut off) |", "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        name = "/".join(Path(path).parts[-2:])
        judged, excluded = recompute(path, "judged"), recompute(path, "excluded")
        for key, value in judged.items():
            if isinstance(value, tuple):  # (ours, theirs); the rest are counts and settings
                lines.append(f"| {name} | {judged['judge']} | {key} | {_num(value[1])} | {_num(value[0])} | "
                             f"{_num(excluded[key][0])} |")
        for judge, a in judge_agreement(path).items():
            agree.append(f"| {name} | {judged['judge']} | {judge} | {a['n']} | {_num(a['agreement'])} | "
                         f"{_num(a['kappa'])} | {a['ours_declined_theirs_not']} | {a['ours_not_theirs_declined']} | "
                         f"{a['no_answer']} |")
    return "\n".join(lines) + "\n\n" + "\n".join(agree) + "\n"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
