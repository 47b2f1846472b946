"""Math answers: extraction (last `\\boxed{}`, else last number) and equivalence, by `math-verify` where it is
installed (HuggingFace's maintained LaTeX/sympy verifier) and otherwise by a PRM800K-style normaliser.
GSM8K is scored by lm-eval-harness's own `gsm8k` task (`selfguard-jax lm-eval --tasks gsm8k`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class AnswerVerdict:
    """Whether an extracted answer matches the reference, and what was extracted (None: nothing)."""

    correct: bool
    extracted: str | None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` with balanced braces, or None."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")


def extract_math_answer(answer: str) -> str | None:
    """The last `\\boxed{}` of an answer, else its last number (fractions `a/b` included)."""
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(answer)
    return numbers[-1] if numbers else None


def _unwrap(text: str, command: str) -> str:
    """Replace every `\\command{x}` by `x` (balanced braces)."""
    while (m := re.search(rf"\\{command}\s*\{{", text)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[m.end():i - 1] + text[i:]
    return text


_UNIT_TEXT = re.compile(r"^(.*?\d)\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}$")
_UNIT_WORDS = re.compile(r"^(.*\d\}?)\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*\.?$")
_MIXED = re.compile(r"^(-?)(\d+)(?:\s*\\frac\{(\d+)\}\{(\d+)\}|\s+(\d+)/(\d+))$")


def normalize_math(answer: str) -> str:
    """PRM800K-style canonical form: no `$`/`\\$`, spaces, `\\left`/`\\right`, unit words after a number
    (`5.4 \\text{ cents}`, `5.4 cents`), `\\text{}` wrappers, degree or percent marks, thousands commas or trailing `.0`;
    mixed numbers as improper fractions (`4\\frac{2}{3}` and `4 \\frac{2}{3}` -> `14/3`); `\\dfrac`/`\\frac{a}{b}` -> `a/b`;
    `\\sqrt2` -> `\\sqrt{2}`; `(C)` -> `C`; `x = 5` -> `5`."""
    s = answer.strip().replace("\\$", "").replace("$", "")
    s = _UNIT_TEXT.sub(r"\1", s)
    words = _UNIT_WORDS.match(s)
    if words and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", words.group(1))):
        s = words.group(1)  # a number followed by unit words: "5.4 cents", "\frac{270}7 degrees"
    for cmd in ("text", "textbf", "mathrm", "mathbf", "mbox", "boxed"):
        s = _unwrap(s, cmd)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ ", "", s).strip()
    mixed = _MIXED.match(s)
    if mixed:
        sign, whole, n1, d1, n2, d2 = mixed.groups()
        value = int(whole) + Fraction(int(n1 or n2), int(d1 or d2))
        s = f"{sign}{value.numerator}/{value.denominator}"
    s = re.sub(r"\s", "", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\^\{?\\circ\}?|\\%|%|\\degree", "", s)
    s = re.sub(r"\((-?[\\\w.]+)\)/\((-?[\\\w.]+)\)", r"\1/\2", s)
    if re.fullmatch(r"[a-zA-Z]\w*=[^=]+", s):
        s = s.split("=", 1)[1]
    while re.search(r"\d,\d{3}(?!\d)", s):
        s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)
    return s.rstrip(".")


def _as_number(s: str) -> Fraction | None:
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def prm800k_equal(candidate: str, reference: str) -> bool:
    """Equal after `normalize_math`, as strings or as exact rational numbers (0.5 == 1/2)."""
    a, b = normalize_math(candidate), normalize_math(reference)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and x == y


def _math_verify():
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


def math_verify_equal(candidate: str, reference: str) -> bool:
    """math-verify's verdict on `$candidate$` against `$reference$` (both parsed as LaTeX or expressions)."""
    mv = _math_verify()
    if mv is None:
        raise ImportError("math-verify is not installed: pip install math-verify (or use the 'math:prm800k' judge)")
    gold, pred = mv.parse(f"${reference}$"), mv.parse(f"${candidate}$")
    return bool(gold) and bool(pred) and mv.verify(gold, pred)


def math_judge_name() -> str:
    """The math judge this installation uses: 'math-verify', or 'math:prm800k' without the library."""
    return "math-verify" if _math_verify() is not None else "math:prm800k"


def math_equal(candidate: str, reference: str) -> bool:
    """Equivalence by math-verify where installed, else by the PRM800K-style normaliser; the normaliser's
    exact string/rational match is tried first either way (cheap, and never wrong when it says equal)."""
    if prm800k_equal(candidate, reference):
        return True
    return math_judge_name() == "math-verify" and math_verify_equal(candidate, reference)


def judge_math(answer: str, reference: str) -> AnswerVerdict:
    """Extract the final answer from an answer text and compare it to the reference."""
    extracted = extract_math_answer(answer)
    return AnswerVerdict(extracted is not None and math_equal(extracted, reference), extracted)

