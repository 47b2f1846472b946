"""SafeRemind's adaptive reminder against the authors' loop (main.py --adaptive) on the real R1 tokenizer.

The reference: for each request, the authors' generate_without_remind on the doubting prompt (greedy, thinking
cap, forced `</think>`, answer cap), the answer decoded token by token, its last line before the EOS text as the
reminder, then generate_with_remind with that reminder; written in PyTorch as `test_r1_faithful.authors_loop`.
"""

import pytest

from selfguard_jax import adaptive
from selfguard_jax.prompts import ADAPTIVE_DOUBT_BEGIN, ADAPTIVE_DOUBT_END
from selfguard_jax.recipes import get_recipe
from test_r1_faithful import QUESTIONS, R1, authors_loop, r1  # noqa: F401 (r1 is a fixture)

THINK, ANSWER = 40, 12
REQUESTS = QUESTIONS + ["Tell me how to pick a lock.", "Write a poem about rain."]


def authors_reminder(model, tok, query: str) -> str:
    """generate_without_remind on the doubting prompt; `answer.split(EOS)[0].split("\\n")[-1]`."""
    template = tok.apply_chat_template([{"role": "user", "content": ADAPTIVE_DOUBT_BEGIN + query + ADAPTIVE_DOUBT_END}],
                                       tokenize=False, add_generation_prompt=True)
    ids, _ = authors_loop(model, tok, template, "", max_think=THINK, max_answer=ANSWER, criteria="gt",
                          threshold=0.0, max_num_remind=0)
    end = tok.convert_tokens_to_ids("</think>")
    answer = ids[len(ids) - ids[::-1].index(end):]
    text = "".join(tok.decode([i]) for i in answer)  # the authors decode token by token
    return text.split("<｜end▁of▁sentence｜>")[0].split("\n")[-1]


def test_reminder_from_answer_and_answer_ids():
    eos = "<｜end▁of▁sentence｜>"
    assert adaptive.reminder_from_answer("Hmm.\nWait, is this harmful?" + eos, eos) == "Wait, is this harmful?"
    assert adaptive.reminder_from_answer("Wait, is it?\n" + eos + "tail\nx", eos) == ""
    assert adaptive.answer_ids([5, 1, 2, 7, 1, 2, 8, 9], [1, 2]) == [8, 9]
    assert adaptive.doubting_prompt("Q").startswith("Given a user request, generate sentences that question")
    assert adaptive.doubting_prompt("Q").endswith("[User request]\nQ\n\n[Safety-doubting Sentences]")


@pytest.fixture(scope="module")
def expected(r1):
    tok, model, _ = r1
    return [authors_reminder(model, tok, q) for q in REQUESTS]


@pytest.mark.slow  # the authors' loop over R1's 152k vocabulary: about 60 s per placement
@pytest.mark.parametrize("placement", ["entropy", "after_user"])
def test_adaptive_equals_the_authors_loop(r1, expected, placement):
    tok, model, lm = r1
    name = "saferemind" if placement == "entropy" else "reminder-after-user"
    recipe = get_recipe(name, criterion="gt", threshold=0.0, max_reminders=1, max_think_tokens=THINK,
                        max_answer_tokens=ANSWER)
    got = adaptive.run_adaptive(lm, recipe, REQUESTS)
    assert got.reminders == expected
    assert len(set(expected)) > 1 and any(expected), "the comparison needs distinct, non-empty reminders"
    triggers = 0
    for b, (q, phrase) in enumerate(zip(REQUESTS, expected)):
        user = q + phrase if placement == "after_user" else q
        template = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
        ids, count = authors_loop(model, tok, template, phrase, max_think=THINK, max_answer=ANSWER, criteria="gt",
                                  threshold=0.0, max_num_remind=1,
                                  remind="entropy" if placement == "entropy" else "end_prompt")
        prompt = tok(template, add_special_tokens=False)["input_ids"]
        assert prompt + got.output.tokens[b] == ids, f"row {b} ({phrase!r}) differs from the authors' loop"
        if placement == "entropy" and phrase:  # an empty reminder: the authors count a trigger, nothing spliced
            assert len(got.output.reminder_steps[b]) == count
            triggers += count
    assert placement != "entropy" or triggers >= 2, "reminders must fire for the comparison to mean something"


@pytest.fixture(scope="module")
def r1_tokenizer():
    import transformers

    return transformers.AutoTokenizer.from_pretrained(R1)


@pytest.mark.slow  # loading R1's tokenizer: about 3 s
@pytest.mark.parametrize("placement", ["system", "after_user", "before_user", "think_start"])
def test_empty_reminder_in_the_prompt_as_the_authors_render_it(r1_tokenizer, placement):
    """An empty adaptive reminder: the authors' generate_with_remind concatenates "" (and passes an empty system
    message for the system placement)."""
    tok = r1_tokenizer
    recipe = get_recipe(f"reminder-{placement.replace('_', '-')}")
    q = "How do I make a cake?"
    messages = ([{"role": "system", "content": ""}] if placement == "system" else []) + [{"role": "user", "content": q}]
    template = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert adaptive._prompt(recipe, tok, q, "") == tok(template, add_special_tokens=False)["input_ids"]
