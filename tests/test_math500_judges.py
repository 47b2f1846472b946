"""Both math judges on every MATH-500 reference (../shared/peer-data/datasets/math500/test.jsonl, PRM800K's
test split): the last `\\boxed{}` of each reference solution against its answer, and forms of each answer a
correct model writes (dollars signs around it, \\dfrac for \\frac, no \\left/\\right, a/b for \\frac{a}{b},
\\sqrt2, \\text{} unwrapped, no \\$, a mixed number as an improper fraction or with a space, the unit dropped, 5.0 for 5,
`x = 5`). The disagreements between math-verify and the PRM800K-style normaliser are listed here."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from selfguard_jax.evaluate.math_judge import last_boxed, math_verify_equal, prm800k_equal

MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "peer-data" / "datasets" / "math500" / "test.jsonl"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MATH500.is_file(), reason=f"MATH-500's real file is not at {MATH500}")]
pytest.importorskip("math_verify")

# (unique_id, form, candidate) judged differently by math-verify and the normaliser: none on 1,763 pairs.
# The normaliser before issue 13 rejected six of these forms that both judges now accept:
# geometry/353 \sqrt5 vs \sqrt{5}; algebra/2626 32,\!348 vs \$32,\!348; geometry/826 \frac{9}{5} vs 1\frac{4}{5};
# prealgebra/1044 5.4 vs 5.4 \text{ cents}; algebra/2780 18.90 vs \$18.90; prealgebra/1203 36 vs \$36.
DISAGREEMENTS: list[tuple[str, str, str]] = []


def forms(ref: str) -> dict[str, str]:
    """Known-equivalent ways of writing a MATH-500 answer."""
    out = {"dollars": f"${ref}$"}
    if r"\dfrac" in ref:
        out["frac"] = ref.replace(r"\dfrac", r"\frac")
    if r"\frac" in ref:
        out["dfrac"] = ref.replace(r"\frac", r"\dfrac")
    if r"\left" in ref:
        out["noleft"] = ref.replace(r"\left", "").replace(r"\right", "")
    if m := re.fullmatch(r"(-?)\\d?frac\{(\d+)\}\{(\d+)\}", ref):
        out["slash"] = f"{m[1]}{m[2]}/{m[3]}"
    if m := re.fullmatch(r"\\sqrt\{(\w)\}", ref):
        out["sqrtbare"] = rf"\sqrt{m[1]}"
    if r"\text{" in ref:
        out["untext"] = re.sub(r"\s*\\text\{\s*([^{}]*?)\s*\}", r" \1", ref).strip()
    if ref.startswith(r"\$"):
        out["nodollar"] = ref[2:]
    if m := re.fullmatch(r"(\d+)\\frac\{(\d+)\}\{(\d+)\}", ref):
        f = int(m[1]) + Fraction(int(m[2]), int(m[3]))
        out["improper"] = rf"\frac{{{f.numerator}}}{{{f.denominator}}}"
        out["spaced_mixed"] = rf"{m[1]} \frac{{{m[2]}}}{{{m[3]}}}"
    if m := re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*\\text\{.*\}", ref):
        out["nounit"] = m[1]
    if re.fullmatch(r"-?\d+", ref):
        out["decimal"], out["equation"] = ref + ".0", "x = " + ref
    return out


def test_every_reference_and_its_equivalent_forms_through_both_judges():
    rows = [json.loads(line) for line in MATH500.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 500
    disagreements, rejected_by_both, n = [], [], 0
    for r in rows:
        ref = r["answer"]
        boxed = last_boxed(r["solution"])
        assert boxed is not None, r["unique_id"]
        for form, candidate in {"solution": boxed, **forms(ref)}.items():
            n += 1
            a, b = prm800k_equal(candidate, ref), math_verify_equal(candidate, ref)
            if a != b:
                disagreements.append((r["unique_id"], form, candidate))
            elif not a:
                rejected_by_both.append((r["unique_id"], form, candidate))
    assert n == 1763
    assert rejected_by_both == []
    assert disagreements == DISAGREEMENTS
