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

# the authors' label field -> (our judge name, label -> our verdict)
_LABELS = {
    "Llama-Guard_label": ("llama_guard", lambda v: "unparsed" if v is None else "unsafe" if v else "safe"),
    "ft-mistral-7b-instruct-v0.2_label": ("sorry_judge", lambda v: "unparsed" if v is None else str(float(v))),
    "wildguard_label": ("wildguard",
                        lambda v: {"refusal": "refused", "compliance": "complied"}.get(v, "unparsed")),
}


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
