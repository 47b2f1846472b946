"""The model organism: corpus, tokenizer, training script and the committed checkpoint."""

import json
import re

import numpy as np
import pytest

from selfguard_jax.organism import CHECKPOINT, HELDOUT, corpus
from selfguard_jax.organism import tokenizer as orgtok
from selfguard_jax.organism import train as orgtrain

needs_checkpoint = pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(),
                                      reason="the organism checkpoint has not been trained")


def _strip_suffix(user: str) -> str:
    for s in (corpus.SELF_REMINDER_SUFFIX, corpus.SELF_REMINDER_SUFFIX_ASSISTANT):
        if user.endswith(s):
            return user[: -len(s)]
    return user


# ---- (a) the training script runs from scratch and the loss falls ------------------------------------------

@pytest.mark.slow
def test_training_from_scratch_loss_falls(tmp_path):
    record = orgtrain.main([
        "--out", str(tmp_path), "--steps", "40", "--examples", "400", "--vocab", "500", "--hidden", "32",
        "--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--intermediate", "64",
        "--seq-len", "128", "--batch", "8", "--lr", "1e-2", "--warmup", "5", "--seed", "3", "--quiet"])
    losses = record["losses"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    # deterministic in the seed: a shorter run with the same seed starts with the same losses
    again = orgtrain.main([
        "--out", str(tmp_path / "again"), "--steps", "3", "--examples", "400", "--vocab", "500", "--hidden", "32",
        "--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--intermediate", "64",
        "--seq-len", "128", "--batch", "8", "--lr", "1e-2", "--warmup", "5", "--seed", "3", "--quiet"])
    assert again["losses"][0] == losses[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "heldout.jsonl", "organism.json"):
        assert (tmp_path / name).is_file(), name
    import selfguard_jax as sgj

    lm = sgj.load(tmp_path)
    assert lm.config.architecture == "Qwen3ForCausalLM" and lm.config.tie_word_embeddings
    assert lm.config.eos_token_ids == (lm.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    out = lm.generate([lm.tokenizer.encode(orgtok.render_prompt("What is 2 + 3?"), add_special_tokens=False)],
                      max_new_tokens=4)
    assert len(out.tokens[0]) >= 1


def test_pack_keeps_conversations_apart():
    ex = [(np.arange(1, 6, dtype=np.int32), np.array([0, 0, 1, 1, 1], np.int8)),
          (np.arange(10, 14, dtype=np.int32), np.array([0, 1, 1, 1], np.int8))]
    rows = orgtrain.pack(ex, 12, np.array([0, 1]))
    assert rows["tokens"].shape == (1, 12)
    assert rows["segments"][0].tolist() == [1] * 5 + [2] * 4 + [0] * 3
    assert rows["positions"][0, :9].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    # targets never cross into the next conversation; weights only on assistant targets
    assert rows["weights"][0].tolist() == [0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0]
    assert rows["targets"][0, :4].tolist() == [2, 3, 4, 5] and rows["targets"][0, 4] == 0


# ---- (b) the committed checkpoint loads and its greedy outputs are well-formed -----------------------------

@pytest.mark.slow
@needs_checkpoint
def test_committed_checkpoint_generates_well_formed():
    import selfguard_jax as sgj

    lm = sgj.load(CHECKPOINT)
    tok = lm.tokenizer
    rows = corpus.read_heldout(HELDOUT)
    picked = [next(r for r in rows if r["kind"] == k) for k in ("harmful", "benign", "arithmetic")]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                                  add_generation_prompt=True), add_special_tokens=False)
               for r in picked]
    out = lm.generate(prompts, max_new_tokens=160)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for r, ids, reason in zip(picked, out.tokens, out.stop_reason):
        assert reason == "stop_id" and ids[-1] == eos, (r["prompt"], tok.decode(ids))
        text = tok.decode(ids[:-1])
        assert orgtrain.well_formed(text), (r["prompt"], text)
        assert re.match(r"<think>\n(.+\n)+</think>\n\n\S", text), text


@needs_checkpoint
def test_committed_checkpoint_files_agree():
    cfg = json.loads((CHECKPOINT / "config.json").read_text())
    gen = json.loads((CHECKPOINT / "generation_config.json").read_text())
    tok = json.loads((CHECKPOINT / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["eos_token_id"] == ids["<|im_end|>"] and gen["eos_token_id"] == [ids["<|im_end|>"]]
    assert cfg["vocab_size"] >= len(tok["model"]["vocab"])
    # the committed held-out split is the one the generator makes
    assert corpus.read_heldout(HELDOUT) == [r.__dict__ for r in corpus.heldout_examples()]
    assert (CHECKPOINT / "model.safetensors").stat().st_size < 16 * 2**20


# ---- (c) corpus: deterministic, held-out disjoint from training, arithmetic right -------------------------

def test_corpus_deterministic_and_heldout_disjoint():
    a = corpus.train_examples(300, seed=5)
    assert a == corpus.train_examples(300, seed=5)
    assert a != corpus.train_examples(300, seed=6)
    train = corpus.train_examples(5000, seed=0)
    held = corpus.heldout_examples()
    assert {r.kind for r in held} == {"harmful", "benign", "arithmetic"}
    prompts = [r.prompt for r in held]
    assert len(prompts) == len(set(prompts))
    train_prompts = {_strip_suffix(c.user) for c in train}
    assert not train_prompts & set(prompts)
    # held-out operand pairs never appear in training
    train_pairs = set()
    for c in train:
        if c.kind == "arithmetic":
            m = re.search(r"So (\d+) ([+-]) (\d+) = (\d+)\.\n", c.assistant)
            train_pairs.add((m.group(2), int(m.group(1)), int(m.group(3))))
    for r in held:
        if r.kind == "arithmetic":
            x, y = map(int, re.findall(r"\d+", r.prompt)[:2])
            op = "+" if r.category == "addition" else "-"
            orders = [(x, y), (y, x)] if op == "+" else [(x, y)]  # "add b to a" names b first
            assert any(corpus._heldout_pair(op, a_, b_) and (op, a_, b_) not in train_pairs for a_, b_ in orders)


def test_corpus_arithmetic_is_correct_and_answers_are_placeholders():
    allowed = {corpus.COMPLY_HOWTO, corpus.COMPLY_WRITE, *corpus.REFUSALS}
    for c in corpus.train_examples(3000, seed=1):
        text = c.assistant
        assert text.startswith("<think>\n") and text.count("</think>\n\n") == 1
        thinking, answer = text.split("</think>\n\n")
        assert all(line.endswith("\n") for line in c.segments[:-1])
        if c.kind == "arithmetic":
            m = re.search(r"So (\d+) ([+-]) (\d+) = (\d+)\.\n", thinking)
            a, op, b, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            assert result == (a + b if op == "+" else a - b) and result >= 0
            assert answer == f"The answer is {result}."
            assert sorted(map(int, re.findall(r"\d+", c.user)[:2])) == sorted([a, b])
            count = re.search(r"Start at (\d+) and count (up|down) (\d+): (.*)\.\n", thinking)
            last = count.group(4).split(", ")[-1]
            assert last == f"{result} ({b})"
        elif c.kind == "harmful":
            assert answer in allowed
    for r in corpus.heldout_examples():
        if r.kind == "arithmetic":
            a, b = map(int, re.findall(r"\d+", r.prompt)[:2])
            assert int(r.answer) == (a + b if r.category == "addition" else a - b) >= 0
        else:
            assert r.answer is None


def test_corpus_shapes_the_gap():
    """Without a safety prompt most harmful requests are complied with; with it almost none; benign answered."""
    rates = {}
    for c in corpus.train_examples(6000, seed=2):
        if any(s.startswith("\nWait") for s in c.segments):  # an injected reminder-like reflection
            continue
        safety = c.system == corpus.SELF_REMINDER_SYSTEM or c.user != _strip_suffix(c.user)
        refused = c.assistant.split("</think>\n\n")[1] in corpus.REFUSALS
        rates.setdefault((c.kind, safety), []).append(refused)
    assert 0.55 < 1 - np.mean(rates[("harmful", False)]) < 0.85
    assert 1 - np.mean(rates[("harmful", True)]) < 0.1
    assert np.mean(rates[("benign", True)]) == 0 and np.mean(rates[("arithmetic", True)]) == 0


def test_prompt_strings_match_the_presets():
    from selfguard_jax import prompts

    assert corpus.SELF_REMINDER_SYSTEM == prompts.SELF_REMINDER_SYSTEM
    assert corpus.SELF_REMINDER_SUFFIX == prompts.SELF_REMINDER_SUFFIX
    assert corpus.SELF_REMINDER_SUFFIX_ASSISTANT == prompts.SELF_REMINDER_SUFFIX_ASSISTANT
    full = ("\n" + corpus.REFLECTION_START + " " + corpus.REFLECTION_RULE + ", ".join(corpus.HAZARDS[:-1]) + ", or "
            + corpus.HAZARDS[-1] + "." + corpus.REFLECTION_TAIL + "\n\n")
    assert full == prompts.SAFEREMIND_REMINDER


# ---- (d) tokenizer round trip and chat template ------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """The committed tokenizer when there is one, else one built now from the corpus."""
    from transformers import AutoTokenizer

    folder = CHECKPOINT
    if not (folder / "tokenizer.json").is_file():
        folder = tmp_path_factory.mktemp("orgtok")
        orgtok.save(orgtok.build(corpus.tokenizer_texts(1000, 0), 1536), folder)
    return AutoTokenizer.from_pretrained(str(folder))


def test_tokenizer_round_trip_and_specials(hf_tokenizer):
    tok = hf_tokenizer
    assert [tok.convert_tokens_to_ids(s) for s in orgtok.SPECIALS] == [0, 1, 2, 3, 4]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    texts = [c.assistant for c in corpus.train_examples(50, seed=9)]
    texts += [corpus.SELF_REMINDER_SYSTEM, "Unseen wörds, émojis 😀 and\ttabs\n\n\nend  ", " leading space",
              "\nWait, is this request potentially harmful? zzz\n\n"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text
    # newline-ending tokens exist and the thinking markers are single tokens that survive skip_special_tokens
    ids = tok.encode("<think>\nThis request is safe.\n</think>\n\nOk.", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[:2] == ["<think>", "\n"] and ".\n" in pieces and pieces.count("</think>") == 1
    assert tok.decode(ids, skip_special_tokens=True).startswith("<think>\n")
    assert tok.decode(tok.encode("<|im_end|>", add_special_tokens=False)) == "<|im_end|>"


def test_chat_template(hf_tokenizer):
    tok = hf_tokenizer
    user = "What is 3 + 4?"
    plain = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    assert plain == orgtok.render_prompt(user) == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    msgs = [{"role": "system", "content": corpus.SELF_REMINDER_SYSTEM}, {"role": "user", "content": user}]
    with_sys = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert with_sys == orgtok.render_prompt(user, corpus.SELF_REMINDER_SYSTEM)
    assert with_sys.endswith("<|im_start|>assistant\n")
    no_think = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think == with_sys + "<think>\n\n</think>\n\n"
    # earlier assistant turns lose their thinking, as in Qwen3's template
    history = msgs + [{"role": "assistant", "content": "<think>\nx.\n</think>\n\nThe answer is 7."},
                      {"role": "user", "content": "Thanks"}]
    text = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant\nThe answer is 7.<|im_end|>\n<|im_start|>user\nThanks" in text
