"""lm-eval on the real SmolLM2 weights: log-likelihoods against lm-eval's HF backend over transformers' GGUF-loaded
model, and each defense changing what is scored (the README's table: studies/smollm2_lm_eval.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import selfguard_jax as sgj  # noqa: E402
from selfguard_jax import recipes  # noqa: E402
from selfguard_jax.lm_eval_backend import SelfGuardLM  # noqa: E402

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 6  # documents per task (the README's table runs all 12)
_spec = importlib.util.spec_from_file_location("smollm2_lm_eval", ROOT / "studies" / "smollm2_lm_eval.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)  # the README table's script: its questions and Self-Guard setting


@pytest.fixture(autouse=True)
def _offline_tasks(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def run(model, tasks, **kw):
    return lm_eval.simple_evaluate(model=model, tasks=tasks, bootstrap_iters=0, log_samples=True,
                                   task_manager=TaskManager(include_path=str(ROOT / "tests" / "data" / "lmeval")), **kw)


def mc_loglikelihoods(res):
    return np.array([float(r[0][0]) for s in res["samples"]["sgj_arith_mc"] for r in s["resps"]])


def test_loglikelihoods_equal_hflm_on_real_weights(lm, hf):
    """Chat-templated multiple choice: within 1e-3 of HFLM (float32; the two loaders' logits agree to ~1e-4)."""
    model, tok = hf
    ours = run(SelfGuardLM(lm=lm, batch_size=6), ["sgj_arith_mc"], apply_chat_template=True, limit=LIMIT)
    ref = run(HFLM(pretrained=model, tokenizer=tok, batch_size=6, device="cpu"), ["sgj_arith_mc"],
              apply_chat_template=True, limit=LIMIT)
    diff = np.abs(mc_loglikelihoods(ours) - mc_loglikelihoods(ref)).max()
    print(f"SmolLM2 sgj_arith_mc: max |ll - HFLM ll| = {diff:.2e}")
    assert diff < 1e-3


def test_each_defense_changes_what_is_scored(lm):
    """The Self-Reminder prompt and Self-Guard (prompt + vector at blocks 10-12, alpha 0.3) each move the
    multiple-choice log-likelihoods on the real weights (the comparison can fail). The README's table of both
    tasks with all documents comes from studies/smollm2_lm_eval.py."""
    pos = [recipes.get_recipe("prompt-only").prompt_ids(lm.tokenizer, q) for q in study.QUESTIONS]
    neg = [recipes.get_recipe("vanilla").prompt_ids(lm.tokenizer, q) for q in study.QUESTIONS]
    vectors = np.asarray(sgj.extract_mean_diff(lm, pos, neg))
    lls = {}
    for name, kw in [("vanilla", {}), ("prompt-only", {}),
                     ("selfguard", dict(vectors=vectors, steer_layers=study.LAYERS, steer_alpha=study.ALPHA))]:
        res = run(SelfGuardLM(lm=lm, recipe=name, batch_size=6, **kw), ["sgj_arith_mc"], apply_chat_template=True,
                  limit=LIMIT)
        lls[name] = mc_loglikelihoods(res)
        assert 0 <= res["results"]["sgj_arith_mc"]["acc,none"] <= 1
    assert np.abs(lls["prompt-only"] - lls["vanilla"]).max() > 0.1
    assert np.abs(lls["selfguard"] - lls["prompt-only"]).max() > 0.1
