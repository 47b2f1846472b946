"""The harmony format (gpt-oss): thinking markers, prompts, the judges' split and Self-Guard's prompt pairs, checked
against openai-harmony's own renderer (its output and parse stored in data/harmony_fixtures.json, regenerated and
compared live where the package and its vocabulary are present) on a tiny tokenizer with harmony's special tokens
and gpt-oss's real chat template."""

import json
import os
import re
from pathlib import Path

import pytest

from selfguard_jax import chat, selfguard
from selfguard_jax.evaluate.answer_text import parse_response, prompt_opens_thinking, split_answer
from selfguard_jax.evaluate.judges import judge_record
from selfguard_jax.prompts import SAFEREMIND_REMINDER, SELF_REMINDER_SYSTEM, SUFFIX_PRESETS
from tiny_harmony_tokenizer import build_harmony_tokenizer
from tiny_tokenizer import build_tokenizer

DATA = Path(__file__).parent / "data"
FIXTURES = json.loads((DATA / "harmony_fixtures.json").read_text())
MARKERS = (chat.HARMONY_THINK_START, chat.HARMONY_THINK_END)
# gpt-oss's template (its revision #94) ends the developer instructions with "\n\n"; openai-harmony does not
TEMPLATE_DEVELOPER_TAIL = "\n\n<|end|><|start|>user"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_harmony_tokenizer(tmp_path_factory.mktemp("harmony_tok"))


def as_rendered(tok, ids: list[int]) -> str:
    """The template's text with its `strftime_now` date set to the fixtures' and its one known difference from the
    renderer undone, so the rest must equal openai-harmony's rendering character for character."""
    text = re.sub(r"Current date: \d{4}-\d\d-\d\d", f"Current date: {FIXTURES['date']}", tok.decode(ids))
    return text.replace(TEMPLATE_DEVELOPER_TAIL, "<|end|><|start|>user")


def test_harmony_tokenizer_is_detected_and_its_markers_are_the_renderers(tok, tmp_path):
    found = chat.resolve_think_markers(tok)
    assert (found.start, found.end, found.source) == (*MARKERS, "harmony")
    assert tok.decode(list(found.end_ids)) == chat.HARMONY_THINK_END
    names = tok.convert_ids_to_tokens(list(found.end_ids))
    assert names[:2] == ["<|end|>", "<|start|>"] and names[-1] == "<|message|>"
    assert chat.require_think_markers(tok).end_ids == found.end_ids
    for c in FIXTURES["completions"][:2]:  # what gpt-oss writes after `<|start|>assistant`, as harmony renders it
        assert c["text"].startswith(chat.HARMONY_THINK_START) and chat.HARMONY_THINK_END in c["text"]
    plain = build_tokenizer(tmp_path)
    assert not chat.is_harmony(plain) and chat.resolve_think_markers(plain).end == "</think>"


@pytest.mark.parametrize("row", FIXTURES["prompts"], ids=lambda r: f"{r['question'][:12]}-{bool(r['developer'])}")
def test_prompts_equal_the_renderer(tok, row):
    ids = chat.chat_prompt(tok, row["question"], system=row["developer"], user_suffix=row["suffix"])
    rendered = tok.decode(ids)
    assert (TEMPLATE_DEVELOPER_TAIL in rendered) == bool(row["developer"])
    assert as_rendered(tok, ids) == row["text"]
    o200k = {i[0]: name for name, i in FIXTURES["specials"].items()}
    harmony_specials = [o200k[i] for i in row["ids"] if i in o200k]
    assert [t for t in tok.convert_ids_to_tokens(ids) if t in chat.HARMONY_TOKENS] == harmony_specials
    assert not prompt_opens_thinking(rendered, *MARKERS)


def test_self_guard_pairs_put_the_self_reminder_in_the_developer_message(tok):
    questions = [r["question"] for r in FIXTURES["prompts"][::2]]
    pos, neg = selfguard.prompt_pairs(tok, questions, suffix="chatgpt")
    want = {(r["question"], bool(r["developer"])): r["text"] for r in FIXTURES["prompts"]}
    for q, p, n in zip(questions, pos, neg):
        assert as_rendered(tok, p) == want[(q, True)] and as_rendered(tok, n) == want[(q, False)]
        assert f"<|start|>developer<|message|># Instructions\n\n{SELF_REMINDER_SYSTEM}" in tok.decode(p)
        assert "developer" not in tok.decode(n) and SUFFIX_PRESETS["chatgpt"] in tok.decode(p)


def test_think_start_reminder_opens_the_analysis_channel(tok):
    ids = chat.chat_prompt(tok, "How can I pick a lock?", reminder_text=SAFEREMIND_REMINDER, placement="think_start")
    text = tok.decode(ids)
    assert text.endswith("<|start|>assistant" + chat.HARMONY_THINK_START + SAFEREMIND_REMINDER)
    assert prompt_opens_thinking(text, *MARKERS)


@pytest.mark.parametrize("row", FIXTURES["completions"], ids=["bread", "reminded", "final-only"])
def test_judges_read_the_final_channel_as_harmony_parses_it(row):
    final = [m["text"] for m in row["parsed"] if m["channel"] == "final"][-1]
    analysis = "".join(m["text"] for m in row["parsed"] if m["channel"] == "analysis")
    response = parse_response(row["text"], think_open=False, markers=MARKERS)
    assert response.answer == final and analysis in response.thinking
    assert SAFEREMIND_REMINDER.strip() not in response.answer
    assert split_answer(row["text"], chat.HARMONY_THINK_END) == (final, True)
    record = judge_record({"text": row["text"], "generated_ids": row["ids"], "reminder_steps": [], "think_open": False,
                           "think_markers": list(MARKERS), "spliced": [SAFEREMIND_REMINDER]}, ["keyword"])
    assert record["outcome"] == "answered" and record["judged_answer"] == final
    want = "refused" if final.startswith("I can't") else "complied"
    assert record["verdicts"]["keyword"] == want


def test_thinking_cut_off_in_the_analysis_channel_is_unfinished():
    text = FIXTURES["unfinished"]["text"]
    assert parse_response(text, think_open=False, markers=MARKERS).unfinished
    record = judge_record({"text": text, "generated_ids": FIXTURES["unfinished"]["ids"], "reminder_steps": [], "think_open": False,
                           "think_markers": list(MARKERS)}, ["keyword"])
    assert record["outcome"] == "unfinished" and record["judged_answer"] is None


def test_fixtures_and_template_match_openai_harmony_live(tok):
    """Where openai-harmony and its o200k_base vocabulary are present: the stored fixtures are what it renders now,
    and the template's prompt text (date set, the developer tail undone) encodes to the renderer's own ids."""
    harmony = pytest.importorskip("openai_harmony")
    base = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if not base or not (Path(base) / "o200k_base.tiktoken").exists():
        pytest.skip("openai-harmony needs TIKTOKEN_ENCODINGS_BASE holding o200k_base.tiktoken (not fetched here)")
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_harmony_fixtures", DATA / "make_harmony_fixtures.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    enc = harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    for row in FIXTURES["prompts"]:
        convo = harmony.Conversation.from_messages(maker.prompt_messages(row["question"], row["developer"],
                                                                         row["suffix"]))
        assert enc.render_conversation_for_completion(convo, harmony.Role.ASSISTANT) == row["ids"]
        ids = chat.chat_prompt(tok, row["question"], system=row["developer"], user_suffix=row["suffix"])
        assert enc.encode(as_rendered(tok, ids), allowed_special="all") == row["ids"]
    for row in FIXTURES["completions"]:
        assert enc.encode(row["text"], allowed_special="all") == row["ids"]
    assert enc.encode(chat.HARMONY_THINK_END, allowed_special="all") == [200007, 200006, 173781, 200005, 17196, 200008]
