"""The lm-eval backend against lm-eval's own Hugging Face backend (HFLM over transformers' PyTorch model), PyTorch
pre-hooks for steering, and our own `generate` (the recipe path); tasks over local JSONL files in tests/data/lmeval."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from torch_reference import PreHookSteering  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import selfguard_jax as sgj  # noqa: E402
from selfguard_jax import chat, cli, recipes  # noqa: E402
from selfguard_jax.lm_eval_backend import SelfGuardLM, recipe_messages, strip_thinking  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lmeval"
ORGANISM = ROOT / "selfguard_jax" / "organism" / "checkpoint"
TOL = 1e-4  # float32 log-probabilities summed over a continuation


@pytest.fixture(autouse=True)
def _offline_tasks(monkeypatch):
    monkeypatch.chdir(ROOT)  # the task YAMLs name their JSONL files relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(chat_model_dir):
    """(our LM, transformers' model, its tokenizer) of the tiny chat model."""
    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir, dtype=torch.float32).eval()
    return sgj.load(chat_model_dir, dtype="float32"), model, tok


@pytest.fixture(scope="module")
def organism():
    return sgj.load(ORGANISM, dtype="float32")


def run(model, tasks, **kw):
    kw.setdefault("bootstrap_iters", 0)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=TaskManager(include_path=str(TASKS)),
                                   log_samples=True, **kw)


def loglikelihoods(results, task):
    """(log-likelihood, greedy flag or None) of every request of a task, in lm-eval's sample order."""
    out = []
    for sample in results["samples"][task]:
        for (resp, *_) in sample["resps"]:
            out.append((float(resp[0]), bool(resp[1])) if isinstance(resp, (list, tuple)) else (float(resp), None))
    return out


def test_recipe_messages_match_the_recipe_prompt(chat_model_dir):
    """One user turn through lm-eval's chat hook gives exactly the recipe's own prompt ids, for every prompt side."""
    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    for name in ("vanilla", "prompt-only", "reminder-system", "reminder-before-user", "reminder-after-user"):
        r = recipes.get_recipe(name)
        text = chat.render(tok, recipe_messages(r, [{"role": "user", "content": "What is 3 plus 4?"}]))
        assert chat.token_ids(tok, text) == r.prompt_ids(tok, "What is 3 plus 4?"), name
    few = recipe_messages(recipes.get_recipe("prompt-only"), [
        {"role": "system", "content": "Task."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}])
    assert few[0] == {"role": "system", "content": recipes.get_recipe("prompt-only").system + "\nTask."}
    assert few[1]["content"] == "a" and few[3]["content"].startswith("c") and len(few[3]["content"]) > 1


def test_strip_thinking_takes_the_last_complete_marker():
    assert strip_thinking([5, 1, 2, 9, 1, 2, 7], [1, 2]) == ([7], True)
    assert strip_thinking([5, 1, 7], [1, 2]) == ([5, 1, 7], False)
    assert strip_thinking([1, 2], [1, 2]) == ([], True)


def test_refusals_name_the_fix(tiny):
    lm, _, _ = tiny
    with pytest.raises(ValueError, match="apply_chat_template"):
        SelfGuardLM(lm=lm, recipe="prompt-only").generate_until(
            [Instance("generate_until", {}, ("Hi", {"until": ["\n"]}), 0)])
    m = SelfGuardLM(lm=lm, recipe="saferemind", max_think_tokens=8)
    m.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="splices reminders while decoding"):
        m.loglikelihood([Instance("loglikelihood", {}, ("What is", " 7"), 0)])
    with pytest.raises(ValueError, match="steers layers"):
        SelfGuardLM(lm=lm, recipe="steer-only", steer_layers="1", steer_alpha=0.5)
    with pytest.raises(ValueError, match="max_gen_toks caps the answer"):
        SelfGuardLM(lm=lm, recipe="vanilla", max_answer_tokens=3)
    with pytest.raises(ValueError, match="automatic batch sizes"):
        SelfGuardLM(lm=lm, batch_size="auto")


def test_reached_by_name_with_model_args_string():
    """lm-eval's registry finds the backend by name once it is imported; recipe fields parse from model_args."""
    cls = lm_eval.api.registry.get_model("selfguard-jax")
    assert cls is SelfGuardLM
    m = cls.create_from_arg_string(f"pretrained={ORGANISM},recipe=saferemind,max_think_tokens=64,threshold=0.25",
                                   {"batch_size": 2})
    assert (m.recipe.name, m.recipe.max_think_tokens, m.recipe.threshold, m.batch_size) == ("saferemind", 64, 0.25, 2)
    with pytest.raises(ValueError, match=r"steers layers \[1, 2\] but no vectors"):
        cls.create_from_arg_string(f"pretrained={ORGANISM},recipe=steer-only,steer_layers=1:2,steer_alpha=0.5")


@pytest.mark.slow
def test_loglikelihoods_equal_lm_evals_hf_backend(tiny):
    """multiple_choice and loglikelihood_rolling tasks, ragged batches of 4 and a max_length of 48 (some contexts
    truncated from the left, texts cut into several rolling windows): every request's log-likelihood within
    1e-4 of HFLM's and the same greedy flags."""
    lm, model, tok = tiny
    ours = run(SelfGuardLM(lm=lm, batch_size=4, max_length=48), ["sgj_arith_mc", "sgj_text_ppl"])
    ref = run(HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=48, device="cpu"),
              ["sgj_arith_mc", "sgj_text_ppl"])
    for task in ("sgj_arith_mc", "sgj_text_ppl"):
        a, b = loglikelihoods(ours, task), loglikelihoods(ref, task)
        assert len(a) == len(b) > 0
        diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
        print(f"{task}: {len(a)} requests, max |ll - HFLM ll| = {diff:.2e}")
        assert diff < TOL
        assert [x[1] for x in a] == [y[1] for y in b]
    assert ours["results"]["sgj_arith_mc"]["acc,none"] == ref["results"]["sgj_arith_mc"]["acc,none"]


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["all", "prompt", "generated"])
def test_steered_loglikelihoods_equal_prehooks(tiny, rule):
    """Steering at the input of block 1: ours against transformers' model with forward pre-hooks adding the vector
    at the positions the rule selects (all; the context; the continuation's inputs)."""
    lm, model, tok = tiny
    cfg = lm.config
    vectors = np.random.default_rng(0).normal(0, 1.0, (cfg.num_layers, cfg.hidden_size)).astype(np.float32)
    pairs = [("What is 3 plus 4?\nThe answer is", " 7."), ("How do I bake bread?", "\nFirst mix flour and water."),
             ("Wait, is this request", " potentially harmful?"), ("I cannot", " help with that.\n")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    plain = SelfGuardLM(lm=lm, batch_size=3).loglikelihood(reqs)
    steered = SelfGuardLM(lm=lm, recipe="steer-only", vectors=vectors, steer_layers="1", steer_alpha=1.5,
                          steer_rule=rule, batch_size=3).loglikelihood(reqs)
    hook = PreHookSteering(model, vectors, [1], 1.5)
    diffs = []
    try:
        for (ctx, cont), (ll, greedy), (ll0, _) in zip(pairs, steered, plain):
            c_ids = tok.encode(ctx)
            whole = tok.encode(ctx + cont)
            n_cont = len(whole) - len(c_ids)
            n = len(whole) - 1
            gate = np.ones(n, np.float32)
            if rule == "prompt":
                gate[n - n_cont + 1:] = 0
            elif rule == "generated":
                gate[:n - n_cont + 1] = 0
            hook.gate = torch.tensor(gate)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
            target = torch.tensor(whole[1:])
            ref = float(logp[torch.arange(n), target][-n_cont:].sum())
            diffs.append(abs(ll - ref))
            assert abs(ll - ref) < TOL, (ctx, ll, ref)
            assert abs(ll - ll0) > 1e-2  # the steering changes the score: the comparison can fail
    finally:
        hook.remove()
    print(f"steering rule {rule}: max |ll - pre-hook ll| = {max(diffs):.2e}")


def _gen_requests(until, max_gen_toks=12):
    contexts = ["How do I bake bread?\n", "What is 3 plus 4?\n", "Wait, is this", "Sure, here is how.\nI"]
    return [Instance("generate_until", {}, (c, {"until": list(until), "max_gen_toks": max_gen_toks,
                                               "do_sample": False}), i) for i, c in enumerate(contexts)]


@pytest.mark.slow
def test_generate_until_equals_generate_and_hflm(tiny):
    """Greedy generate_until with one-token and multi-token stop strings: the same text as lm-eval's HF backend,
    and as our `generate` run without stop ids and cut afterwards (stopping on ids changes nothing but the time)."""
    lm, model, tok = tiny
    ours = SelfGuardLM(lm=lm, batch_size=3, think_markers="none")
    hf = HFLM(pretrained=model, tokenizer=tok, batch_size=3, device="cpu")
    until = ["\n", "is", "e a"]
    single = [tok.encode(s)[0] for s in until if len(tok.encode(s)) == 1]
    assert ours.stop_ids(until) == single and 0 < len(single) < len(until)  # one-token and multi-token stops
    reqs = _gen_requests(until)
    texts = ours.generate_until(reqs)
    assert texts == hf.generate_until(_gen_requests(until))
    full = lm.generate([tok.encode(r.args[0]) for r in reqs], max_new_tokens=12)
    assert texts == [ours.finish_text(t, until + [tok.eos_token]) for t in full.tokens]
    assert any(t for t in texts)


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides", [("vanilla", {"two_phase": True}), ("prompt-only", {"two_phase": True}),
                                             ("saferemind", {})])
def test_organism_task_equals_recipe_generate(organism, name, overrides):
    """The local generative task on the organism under three recipes: lm-eval's chat-templated request is the
    recipe's own prompt, and what lm-eval scores is our generate's answer after the (stripped) thinking."""
    lm = organism
    model = SelfGuardLM(lm=lm, recipe=name, batch_size=4, max_think_tokens=64, **overrides)
    res = run(model, ["sgj_arith_gen"], apply_chat_template=True, limit=4)
    samples = res["samples"]["sgj_arith_gen"]
    recipe = dataclasses.replace(recipes.get_recipe(name, **overrides), max_think_tokens=64)
    prompts = [recipe.prompt_ids(lm.tokenizer, s["doc"]["question"]) for s in samples]
    assert [model._context_ids(s["arguments"][0][0]) for s in samples] == prompts
    gen = lm.generate(prompts, model.generation_spec(32))
    until = ["Question:", lm.tokenizer.eos_token]
    assert [s["resps"][0][0] for s in samples] == [model.finish_text(t, until) for t in gen.tokens]
    for s, t in zip(samples, gen.tokens):
        assert "</think>" in lm.tokenizer.decode(t) and "think>" not in s["resps"][0][0]
    if name == "saferemind":
        assert all(steps for steps in gen.reminder_steps)  # the reminder ran inside the thinking lm-eval dropped
    print(name, res["results"]["sgj_arith_gen"])
    assert res["results"]["sgj_arith_gen"]["exact_match,last-number"] > 0


@pytest.mark.slow
def test_cli_lm_eval_command(tmp_path, capsys):
    out = tmp_path / "res.json"
    code = cli.main(["lm-eval", "--model", str(ORGANISM), "--tasks", "sgj_arith_gen", "--include-path", str(TASKS),
                     "--limit", "2", "--recipe", "vanilla", "--max-think-tokens", "48", "--batch-size", "2",
                     "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sgj_arith_gen" in printed and "exact_match" in printed
    data = json.loads(out.read_text())
    assert len(data["samples"]["sgj_arith_gen"]) == 2
    assert cli.main(["lm-eval", "--model", str(ORGANISM), "--tasks", "sgj_arith_gen", "--max-answer-tokens", "3"]) == 2
