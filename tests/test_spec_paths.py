"""One request spec on every path: `--steer-rule thinking` from the CLI steers the thinking tokens only (checked
against PyTorch pre-hooks in a plain loop), and the CLI, the eval runner, the demo and the API build the same
GenerationSpec from the same recipe."""

import json

import numpy as np
import pytest
import torch
import transformers

import selfguard_jax as sgj
from selfguard_jax import chat, cli, cli_run, demo, vector_files
from selfguard_jax.evaluate import runner
from selfguard_jax.recipes import get_recipe
from selfguard_jax.spec import GenerationSpec
from torch_reference import PreHookSteering

QUESTION = "How do I bake bread?"
LAYERS, ALPHA, N = [0, 1, 2], 2.0, 12
REMINDER = "Wait, be safe."  # short, so the two-phase budget fits the tiny model's 512 positions


def _generate(model_dir, tmp_path, name, *flags) -> list[int]:
    p, out = tmp_path / "p.txt", tmp_path / f"{name}.jsonl"
    p.write_text(QUESTION + "\n")
    assert cli.main(["generate", "--model", str(model_dir), "--prompts", str(p), "--out", str(out), "--chat",
                     "--max-new-tokens", str(N), *flags]) == 0
    return json.loads(out.read_text().splitlines()[0])


def _torch_thinking_run(model, prompt, vectors, end_id, n) -> list[int]:
    """Greedy, with alpha * v_k added at block k's input at every generated token fed while the row is thinking
    (the end marker itself included), and nowhere on the prompt."""
    hooks = PreHookSteering(model, vectors, LAYERS, ALPHA)
    ids, gates, thinking = list(prompt), [0.0] * len(prompt), True
    try:
        for _ in range(n):
            hooks.gate = torch.tensor(gates, dtype=torch.float32)
            with torch.no_grad():
                tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(tok)
            gates.append(1.0 if thinking else 0.0)
            thinking = thinking and tok != end_id
    finally:
        hooks.remove()
    return ids[len(prompt):]


@pytest.mark.slow
def test_cli_steer_rule_thinking_without_remind_steers_only_the_thinking(chat_model_dir, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(chat_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_model_dir, dtype=torch.float32).eval()
    vectors = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    vec = tmp_path / "v.svec"
    vector_files.save_svec(vec, vectors, "qwen3")
    steer = ["--recipe", "steer-only", "--vector", str(vec), "--layers", "0,1,2", "--alpha", str(ALPHA)]
    plain = _generate(chat_model_dir, tmp_path, "plain")["generated_ids"]
    always = _generate(chat_model_dir, tmp_path, "always", *steer, "--steer-rule", "generated")["generated_ids"]
    # the end marker: a token the steered model emits mid-way, once, whose text round-trips as itself
    j = next(j for j in range(2, N - 3) if always[j] not in always[:j] and tok.decode([always[j]]).strip() ==
             tok.decode([always[j]]) and "," not in tok.decode([always[j]]) and
             chat.token_ids(tok, tok.decode([always[j]])) == [always[j]])
    marker = tok.decode([always[j]])
    row = _generate(chat_model_dir, tmp_path, "thinking", *steer, "--steer-rule", "thinking",
                    "--think-markers", f"<think>,{marker}")
    got = row["generated_ids"]
    assert got == _torch_thinking_run(model, row["prompt_ids"], vectors, always[j], N)
    assert got[0] == plain[0], "the prompt must not be steered"
    assert got[:j + 1] == always[:j + 1] and got[1:j + 1] != plain[1:j + 1], "the thinking must be steered"
    assert got[j + 1:] != always[j + 1:], "the answer must not be steered"
    assert row["think_tokens"] == j + 1


def _same_spec(a: GenerationSpec, b: GenerationSpec) -> None:
    """Equal field by field; steering compared by its arrays."""
    assert (a.max_new_tokens, a.sampling, a.thinking, a.reminder, a.stop_ids) == (
        b.max_new_tokens, b.sampling, b.thinking, b.reminder, b.stop_ids)
    assert (a.steering is None) == (b.steering is None)
    if a.steering is not None:
        assert a.steering.rule == b.steering.rule
        np.testing.assert_array_equal(a.steering.add_LD(), b.steering.add_LD())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla", "selfguard", "saferemind", "selfguard+saferemind"])
def test_cli_runner_demo_and_api_build_the_same_spec(chat_model_dir, tmp_path, monkeypatch, name):
    """The specs the CLI and the eval runner pass to `lm.generate` (captured there), and the demo's recipe's spec,
    equal the one `Recipe.spec` gives the API for the same settings."""
    lm = sgj.load(chat_model_dir)
    vectors = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    fields = dict(steer_layers=(1, 2), steer_alpha=0.5, threshold=0.7, max_think_tokens=6, max_answer_tokens=3)
    keep = {k: v for k, v in fields.items() if k in ("threshold", "max_think_tokens", "max_answer_tokens") or
            get_recipe(name).steers}
    steer_vectors = vectors if get_recipe(name).steers else None
    api = get_recipe(name, **keep, reminder_text=REMINDER).spec(lm.tokenizer, steer_vectors)
    seen = []
    monkeypatch.setattr(sgj.LM, "generate", lambda self, prompts, spec, **kw: seen.append(spec) or
                        sgj.decode.generate(self, prompts, spec, **kw))
    monkeypatch.setattr(cli_run, "load_model", lambda args: lm)
    vec = tmp_path / "v.svec"
    vector_files.save_svec(vec, vectors, "qwen3")
    p = tmp_path / "p.txt"
    p.write_text(QUESTION + "\n")
    flags = ["--threshold", "0.7", "--max-think-tokens", "6", "--max-answer-tokens", "3", "--reminder-text", REMINDER]
    if get_recipe(name).steers:
        flags += ["--vector", str(vec), "--layers", "1,2", "--alpha", "0.5"]
    assert cli.main(["generate", "--model", str(chat_model_dir), "--prompts", str(p), "--out",
                     str(tmp_path / "o.jsonl"), "--chat", "--recipe", name, *flags]) == 0
    entry = {"recipe": name, "reminder_text": REMINDER,
             **{k: list(v) if isinstance(v, tuple) else v for k, v in keep.items()}}
    cfg = runner.EvalConfig(model=str(chat_model_dir), out_dir=str(tmp_path / "run"), recipes=[entry],
                            datasets=[{"name": "offline", "limit": 1}], generation={"batch_size": 1})
    monkeypatch.setattr(runner, "_vectors", lambda cfg, lm, out: vectors)
    runner.generate_stage(cfg, lm=lm)
    _same_spec(seen[0], api)
    _same_spec(seen[-1], api)
    demo_spec = demo.demo_recipe(name, {**fields, "steer_layers": [1, 2]}).spec(lm.tokenizer, vectors)
    _same_spec(demo_spec, get_recipe(name, **keep).spec(lm.tokenizer, steer_vectors))
