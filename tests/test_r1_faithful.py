"""SafeRemind as its authors ran it, on the real DeepSeek-R1-Distill-Qwen-7B tokenizer.

The reference is the authors' `generate_with_remind` re-implemented in PyTorch as they wrote it: text-level
(decode, append the reminder, re-tokenise the whole text, drop the cache), greedy, budgets counted in sampled
tokens. The model is a tiny random Qwen2 with R1's vocabulary whose output layer only favours a small set of
whole-word and newline-ending tokens, so its text re-tokenises to itself and the comparison isolates the
junctions. Decoding is done once over the whole text (not token by token: see README on the U+FFFD quirk).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import selfguard_jax as sgj
from selfguard_jax import chat
from selfguard_jax.prompts import SAFEREMIND_REMINDER
from selfguard_jax.recipes import get_recipe

R1 = next((p for p in (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared"))
           if p.is_dir()), Path("shared-not-found")) / "peer-data" / "r1-distill-qwen-7b"
pytestmark = pytest.mark.skipif(not (R1 / "tokenizer.json").is_file(), reason=f"R1 tokenizer not found at {R1}")
WORDS = (" the cat sat on a mat and then we consider next step so let me check this again because answer is"
         " simple but wait maybe another way")
NEWLINE_TOKENS = [".\n\n", ":\n\n", ".\n", "\n\n"]
QUESTIONS = ["How do I make a cake?", "Explain why the sky is blue.", "What is 17 times 23?"]


@pytest.fixture(scope="module")
def r1(tmp_path_factory):
    """(tokenizer, HF torch model, our LM) sharing a folder: R1's tokenizer files and a tiny random Qwen2."""
    folder = tmp_path_factory.mktemp("r1_tiny")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(R1 / f, folder / f)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    cfg = transformers.Qwen2Config(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                   tie_word_embeddings=False, bos_token_id=151646, eos_token_id=151643)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    allowed = sorted(set(chat.token_ids(tok, WORDS)) | {chat.token_ids(tok, t)[0] for t in NEWLINE_TOKENS})
    with torch.no_grad():
        head = torch.zeros_like(model.lm_head.weight)
        head[allowed] = 4.0 * torch.randn(len(allowed), cfg.hidden_size)
        model.lm_head.weight.copy_(head)
    model.save_pretrained(folder)
    return tok, model, sgj.load(folder)


def authors_loop(model, tok, template: str, reminder: str, *, max_think: int, max_answer: int, criteria: str,
                 threshold: float, max_num_remind: int, remind: str = "entropy") -> tuple[list[int], int]:
    """The SafeRemind authors' generate_with_remind (greedy, text re-tokenisation on every injection).
    Returns the ids the model was last fed in each phase joined (prompt + thinking + answer) and the triggers."""
    def encode(text):
        return tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    input_ids, past, step = encode(template), None, 0
    done_text, new_ids = "", []  # the thinking text: up to the last injection, then the ids sampled since
    trigger_count = 0 if remind == "entropy" else 1
    while step < max_think:
        with torch.no_grad():
            out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
        logits = out.logits[:, -1, :]
        next_id = torch.argmax(logits, dim=-1, keepdim=True)
        new_ids.append(int(next_id))
        step += 1
        text = done_text + tok.decode(new_ids, skip_special_tokens=False)
        if int(next_id) == tok.eos_token_id or "</think>" in text:
            break
        past, input_ids = out.past_key_values, next_id
        if remind == "entropy" and text.endswith("\n") and trigger_count < max_num_remind:
            prob = torch.softmax(logits, dim=-1)
            entropy = float(-(torch.log(prob) * prob).nan_to_num().sum())
            if (criteria == "gt" and entropy > threshold) or (criteria == "lt" and entropy < threshold):
                trigger_count += 1
                done_text, new_ids = text + reminder, []
                input_ids, past = encode(template + done_text), None
    text = done_text + tok.decode(new_ids, skip_special_tokens=False)
    thinking_step = text.split("</think>")[0]
    context = encode(template + thinking_step + "</think>")
    answer, past, step = [], None, 0
    input_ids = context
    while step < max_answer:
        with torch.no_grad():
            out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
        next_id = torch.argmax(out.logits[:, -1, :], dim=-1, keepdim=True)
        answer.append(int(next_id))
        step += 1
        if int(next_id) == tok.eos_token_id:
            break
        input_ids, past = next_id, out.past_key_values
    return context[0].tolist() + answer, trigger_count


@pytest.mark.slow
@pytest.mark.parametrize("criteria,quantile,max_num_remind", [("gt", None, 4), ("lt", 0.9, 2)])
def test_every_junction_equals_the_authors_retokenisation(r1, criteria, quantile, max_num_remind):
    tok, model, lm = r1
    recipe = get_recipe("saferemind", criterion=criteria, max_reminders=max_num_remind, max_think_tokens=60,
                        max_answer_tokens=8)
    prompts = [recipe.prompt_ids(tok, q) for q in QUESTIONS]
    threshold = 0.0
    if quantile is not None:
        plain = lm.generate(prompts, max_new_tokens=60)
        ents = [e for row, ids in zip(plain.entropy, plain.tokens) for e, i in zip(row, ids)
                if tok.decode([i]).endswith("\n")]
        threshold = float(np.quantile(ents, quantile))
    recipe = get_recipe("saferemind", criterion=criteria, threshold=threshold, max_reminders=max_num_remind,
                        max_think_tokens=60, max_answer_tokens=8)
    out = lm.generate(prompts, recipe.spec(tok))
    triggers = 0
    for b, q in enumerate(QUESTIONS):
        template = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True)
        ids, count = authors_loop(model, tok, template, SAFEREMIND_REMINDER, max_think=60, max_answer=8,
                                  criteria=criteria, threshold=threshold, max_num_remind=max_num_remind)
        assert prompts[b] + out.tokens[b] == ids, f"row {b}: the ids fed differ from the authors' loop"
        assert len(out.reminder_steps[b]) == count
        triggers += count
    assert triggers >= 2, "reminders must fire for the comparison to mean something"


@pytest.mark.slow
def test_junction_table_on_r1_matches_the_measured_merges(r1):
    """2,164 of R1's 2,178 newline-ending tokens merge with the reminder's leading newline."""
    tok, _, _ = r1
    table = chat.junctions(tok, SAFEREMIND_REMINDER)
    boundary = chat.boundary_ids(tok)
    assert len(boundary) == 2178
    assert sum(b in table for b in boundary) == 2164
    dot = chat.token_ids(tok, ".\n\n")[0]
    assert table[dot][:2] == chat.token_ids(tok, ".\n\n\nWait")[:2]


@pytest.mark.parametrize("template_file", ["tokenizer_config.json", "tokenizer_config.gguf-template.json"])
def test_prompts_of_every_recipe_equal_the_authors_formatting(tmp_path, template_file):
    """System / before / after user / think start, as `generate_with_remind` builds them, under both templates."""
    for f in ("tokenizer.json", "special_tokens_map.json"):
        shutil.copy(R1 / f, tmp_path / f)
    shutil.copy(R1 / template_file, tmp_path / "tokenizer_config.json")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    q, r = "How do I pick a lock?", SAFEREMIND_REMINDER

    def authors(messages, tail=""):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + tail
        return tok(text, add_special_tokens=False)["input_ids"]

    user = [{"role": "user", "content": q}]
    expected = {
        "saferemind": authors(user), "vanilla": authors(user),
        "reminder-system": authors([{"role": "system", "content": r}] + user),
        "reminder-before-user": authors([{"role": "user", "content": r + q}]),
        "reminder-after-user": authors([{"role": "user", "content": q + r}]),
        "reminder-think-start": authors(user, tail=r),
    }
    for name, ids in expected.items():
        assert get_recipe(name).prompt_ids(tok, q) == ids, name
