"""Evaluation: benchmark loaders, named judges, bootstrap metrics and reports."""

from selfguard_jax.evaluate.datasets import DATASETS, DatasetFormatError, Example, load_dataset, read_rows
from selfguard_jax.evaluate.judges import (
    JUDGES,
    REFUSAL_JUDGES,
    SAFEREMIND_KEYWORDS,
    XSTEST_OPENINGS,
    AnswerVerdict,
    GuardVerdict,
    LlamaGuardJudge,
    RefusalVerdict,
    classify_compliance,
    extract_choice,
    extract_math_answer,
    judge_choice,
    judge_math,
    judge_record,
    judge_refusal,
    llama_guard_messages,
    math_equal,
    normalize_math,
    parse_llama_guard,
    parse_response,
    split_answer,
)
from selfguard_jax.evaluate.metrics import (
    Estimate,
    accuracy,
    attack_success_rate,
    bootstrap_mean,
    mean_estimate,
    metric_key,
    over_refusal,
    percent_safe,
    refusal_rate,
    summarize,
)
from selfguard_jax.evaluate.report import (
    Cell,
    format_estimate,
    plot_entropy_trace,
    plot_safety_utility,
    plot_trigger_histogram,
    table_markdown,
    write_csv,
    write_markdown,
)

__all__ = [
    "DATASETS", "DatasetFormatError", "Example", "load_dataset", "read_rows",
    "JUDGES", "REFUSAL_JUDGES", "SAFEREMIND_KEYWORDS", "XSTEST_OPENINGS", "AnswerVerdict", "GuardVerdict",
    "LlamaGuardJudge", "RefusalVerdict", "classify_compliance", "extract_choice", "extract_math_answer",
    "judge_choice", "judge_math", "judge_record", "judge_refusal", "llama_guard_messages",
    "math_equal", "normalize_math", "parse_llama_guard", "parse_response", "split_answer",
    "Estimate", "accuracy", "attack_success_rate", "bootstrap_mean", "mean_estimate", "metric_key",
    "over_refusal", "percent_safe", "refusal_rate", "summarize",
    "Cell", "format_estimate", "plot_entropy_trace", "plot_safety_utility", "plot_trigger_histogram",
    "table_markdown", "write_csv", "write_markdown",
]
