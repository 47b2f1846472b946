"""chat.py tables from a real tokenizer; the generate CLI on text and JSONL files, bad lines reported."""

import json

import numpy as np
import pytest

import selfguard_jax as sgj
from selfguard_jax import chat, cli
from selfguard_jax.prompts import SELF_REMINDER_SYSTEM


def test_boundary_and_markers(chat_model_dir):
    tok = sgj.load(chat_model_dir).tokenizer
    ids = chat.boundary_ids(tok)
    assert ids and all(tok.decode([i]).endswith("\n") for i in ids)
    others = set(range(len(tok))) - set(ids)
    assert not any(tok.decode([i]).endswith("\n") for i in others)
    start, end = chat.think_markers(tok)
    assert tok.decode(end) == "</think>" and len(end) == 1


def test_chat_prompt_matches_template_and_placements(chat_model_dir):
    tok = sgj.load(chat_model_dir).tokenizer
    msgs = [{"role": "system", "content": SELF_REMINDER_SYSTEM}, {"role": "user", "content": "Hi"}]
    expected = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tok.decode(chat.chat_prompt(tok, "Hi", system=SELF_REMINDER_SYSTEM)) == expected
    text = tok.decode(chat.chat_prompt(tok, "Hi", reminder_text="Be safe.", placement="think_start"))
    plain = tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True)
    assert text == plain + "Be safe."  # the SafeRemind authors append it to whatever the template ends with
    text = tok.decode(chat.chat_prompt(tok, "Hi", reminder_text=" Be safe.", placement="after_user"))
    assert "Hi Be safe.<|im_end|>" in text


@pytest.mark.slow
def test_generate_cli_text_and_jsonl(chat_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "How do I bake bread?"}\n{not json\n'
                       '{"id": "b", "input_ids": [5, 6, 7]}\n{"id": "c"}\n')
    out = tmp_path / "o.jsonl"
    code = cli.main(["generate", "--model", str(chat_model_dir), "--prompts", str(prompts), "--out", str(out),
                     "--chat", "--max-new-tokens", "12", "--remind", "--threshold", "9",
                     "--max-think-tokens", "6", "--max-answer-tokens", "4"])
    err = capsys.readouterr().err
    assert "p.jsonl:2" in err and "p.jsonl:4" in err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and code == 1  # input order ("a" is the longer prompt)
    for r in rows:
        assert {"generated_ids", "text", "thinking", "answer", "entropy", "forced", "reminder_steps",
                "stop_reason"} <= set(r)
        assert len(r["entropy"]) == len(r["generated_ids"]) == len(r["forced"])
    text_file = tmp_path / "p.txt"
    text_file.write_text("What is 3 plus 4?\n\nSure, here is how.\n")
    assert cli.main(["generate", "--model", str(chat_model_dir), "--prompts", str(text_file),
                     "--out", str(tmp_path / "t.jsonl"), "--max-new-tokens", "5"]) == 0
    assert "compile included" in capsys.readouterr().out
    assert [json.loads(x)["prompt"] for x in (tmp_path / "t.jsonl").read_text().splitlines()] == [
        "What is 3 plus 4?", "Sure, here is how."]
    assert cli.main(["generate", "--model", str(chat_model_dir), "--prompts", str(text_file), "--layer-loop", "scan",
                     "--out", str(tmp_path / "s.jsonl"), "--max-new-tokens", "5"]) == 0
    ids = lambda f: [json.loads(x)["generated_ids"] for x in (tmp_path / f).read_text().splitlines()]
    assert ids("s.jsonl") == ids("t.jsonl")  # the scanned and the unrolled loop agree


def test_bad_generate_inputs(chat_model_dir):
    lm = sgj.load(chat_model_dir)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        lm.generate([[5], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside"):
        lm.generate([[5, 10**6]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm.generate([[5] * 500], max_new_tokens=100)
    with pytest.raises(ValueError, match="no prompts"):
        lm.generate([], max_new_tokens=2)
    code = cli.main(["generate", "--model", str(chat_model_dir / "nope"), "--prompts", "x", "--out", "y"])
    assert code == 2


@pytest.mark.slow
def test_sampling_seed_topk_topp(chat_model_dir):
    lm = sgj.load(chat_model_dir)
    p = [[5, 6, 7, 8], [9, 10]]
    a = lm.generate(p, max_new_tokens=10, temperature=1.0, seed=3)
    assert a.tokens == lm.generate(p, max_new_tokens=10, temperature=1.0, seed=3).tokens
    assert a.tokens != lm.generate(p, max_new_tokens=10, temperature=1.0, seed=4).tokens
    b = lm.generate(p, max_new_tokens=10, temperature=1.0, seed=3, top_p=1.0, top_k=0)
    assert a.tokens == b.tokens


def test_temperature_sampling_follows_softmax():
    """Chi-square: sampled frequencies of one step match softmax(logits / T) on a small vocabulary."""
    from scipy import stats

    from selfguard_jax.sampling import Sampler, SamplingParams
    import jax
    import jax.numpy as jnp

    logits = jnp.array([[2.0, 1.0, 0.5, 0.0, -1.0, 1.5]])
    T, n = 0.8, 20000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    def draw(sampler, top_p, keys):
        params = SamplingParams(temperature=jnp.float32(T), top_p=jnp.float32(top_p))
        return np.asarray(jax.vmap(lambda k: sampler(logits, k[None], params)[0])(keys))

    draws = draw(Sampler(greedy=False), 1.0, keys)
    counts = np.bincount(np.asarray(draws), minlength=6)
    probs = np.asarray(jax.nn.softmax(logits[0] / T), np.float64)
    expected = probs / probs.sum() * n
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert set(draw(Sampler(greedy=False, top_k=2), 1.0, keys[:2000]).tolist()) == {0, 5}
    assert set(draw(Sampler(greedy=False, use_top_p=True), 0.5, keys[:2000]).tolist()) <= {0, 5}


def test_junction_table_holds_exactly_the_merging_tokens(chat_model_dir):
    """Where a byte-level BPE merges "\\n" + "\\nWait" into "\\n\\n", "Wait", the authors' re-tokenised text
    differs from spliced ids; the junction table holds exactly those tokens, with the re-tokenised ids."""
    from selfguard_jax.prompts import SAFEREMIND_REMINDER

    tok = sgj.load(chat_model_dir).tokenizer
    table = chat.junctions(tok, SAFEREMIND_REMINDER)
    tail = chat.token_ids(tok, SAFEREMIND_REMINDER)
    for b in range(len(tok)):
        text = tok.decode([b], skip_special_tokens=False)
        retokenized = chat.token_ids(tok, text + SAFEREMIND_REMINDER)
        if "\ufffd" not in text and retokenized != [b] + tail:
            assert table[b] == retokenized
        else:
            assert b not in table