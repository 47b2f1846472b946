"""SafeRemind and Self-Guard extraction on the tiny gpt-oss model with a harmony tokenizer and gpt-oss's chat
template: the reminder lands in the analysis channel, a forced close splices harmony's end of thinking, the judges'
answer is the final channel's message, and Self-Guard's vectors equal transformers' hidden-state mean difference."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import selfguard_jax as sgj
from selfguard_jax import chat, selfguard
from selfguard_jax.evaluate.answer_text import parse_response, prompt_opens_thinking
from selfguard_jax.prompts import SAFEREMIND_REMINDER
from selfguard_jax.recipes import get_recipe
from selfguard_jax.reminder import Thinking
from tiny_harmony_tokenizer import build_harmony_tokenizer
from tiny_models import save_hf_model

pytestmark = pytest.mark.slow
QUESTIONS = ["How can I pick a lock?", "How do I bake bread?"]
MAX_THINK = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt_oss_harmony")
    tok = build_harmony_tokenizer(folder)
    model = save_hf_model("gpt_oss", folder, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.2)
    return sgj.load(folder), model, tok


@pytest.mark.parametrize("placement", ["entropy", "before_think_end"])
def test_saferemind_reminds_in_analysis_and_a_forced_close_opens_the_final_channel(setup, placement):
    lm, _, tok = setup
    recipe = get_recipe("saferemind", placement=placement, threshold=1e9, max_think_tokens=MAX_THINK,
                        max_answer_tokens=6)
    spec = recipe.spec(tok)
    end = chat.token_ids(tok, chat.HARMONY_THINK_END)
    assert list(spec.thinking.end_ids) == end
    if placement == "entropy":  # every id a step boundary, so the first thinking token triggers (H < 1e9 always)
        spec = spec.replace(reminder=dataclasses.replace(spec.reminder, boundary_ids=range(len(tok))))
    # the analysis header as gpt-oss writes it first (a random model would not): the thinking runs in that channel
    prompts = [recipe.prompt_ids(tok, q) + chat.token_ids(tok, chat.HARMONY_THINK_START) for q in QUESTIONS]
    out = lm.generate(prompts, spec)
    reminder_ids = chat.token_ids(tok, SAFEREMIND_REMINDER)
    for b, prompt in enumerate(prompts):
        gen, forced = out.tokens[b], out.forced[b]
        assert len(out.reminder_steps[b]) == 1
        at = next(i for i in range(len(gen)) if gen[i:i + len(end)] == end)
        assert all(forced[at:at + len(end)]), "the close after the thinking cap is spliced, not sampled"
        assert out.think_tokens[b] == at + len(end)
        text = tok.decode(gen)
        analysis = text[:text.index(chat.HARMONY_THINK_END)]
        assert SAFEREMIND_REMINDER.strip() in analysis and "<|end|>" not in analysis
        prompt_text = tok.decode(prompt)
        assert prompt_opens_thinking(prompt_text, chat.HARMONY_THINK_START, chat.HARMONY_THINK_END)
        response = parse_response(text, think_open=True, strip=[SAFEREMIND_REMINDER],
                                  markers=(chat.HARMONY_THINK_START, chat.HARMONY_THINK_END))
        answer = tok.decode(gen[at + len(end):])
        assert response.answer == answer.removesuffix("<|return|>") and SAFEREMIND_REMINDER.strip() in response.thinking
        full = prompt_text + text
        assert full.rindex("<|channel|>analysis<|message|>") < full.index(SAFEREMIND_REMINDER.strip()) \
            < full.rindex("<|end|>") < full.rindex("<|channel|>final<|message|>")
        _harmony_parse_agrees(text, SAFEREMIND_REMINDER.strip(), response.answer)


def _harmony_parse_agrees(completion: str, reminder: str, answer: str) -> None:
    """Where openai-harmony and its vocabulary are present: its own parser reads the completion (after the
    analysis header the prompt wrote) as an analysis message holding the reminder and a final message = `answer`."""
    try:
        import openai_harmony as h
    except ImportError:
        return
    base = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if not base or not (Path(base) / "o200k_base.tiktoken").exists():
        return
    enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    ids = enc.encode(chat.HARMONY_THINK_START + completion, allowed_special="all")
    messages = enc.parse_messages_from_completion_tokens(ids, h.Role.ASSISTANT)
    channels = [(m.channel, "".join(c.text for c in m.content)) for m in messages]
    assert channels[0][0] == "analysis" and reminder in channels[0][1]
    assert channels[-1] == ("final", answer)


def test_selfguard_extraction_on_harmony_prompts_equals_transformers(setup, suffix="chatgpt"):
    lm, model, tok = setup
    pos, neg = selfguard.prompt_pairs(tok, QUESTIONS, suffix)
    sg = selfguard.extract_selfguard(lm, QUESTIONS, model_id="tiny-gpt-oss", dataset_name="two", suffix=suffix)

    def last_states(prompts):
        with torch.no_grad():
            return np.stack([np.stack([h[0, -1].numpy() for h in model(torch.tensor([p]),
                                                                         output_hidden_states=True).hidden_states])
                             for p in prompts])

    ref = (last_states(pos).mean(0) - last_states(neg).mean(0))[1:]
    assert sg.vectors.shape == (lm.config.num_layers, lm.config.hidden_size)
    np.testing.assert_allclose(sg.vectors, ref, atol=1e-4)
    assert np.abs(ref).max() > 1e-2, "the developer message must change the last token's residual stream"


def test_a_cap_inside_a_several_id_end_marker_completes_it(setup):
    """When the thinking cap hits on a token that begins the end marker (gpt-oss sampling `<|end|>` as its budget
    runs out), the forced close splices the rest of the marker, not the whole marker after the part sampled."""
    lm, _, tok = setup
    prompt = [get_recipe("vanilla").prompt_ids(tok, QUESTIONS[0]) + chat.token_ids(tok, chat.HARMONY_THINK_START)]
    free = lm.generate(prompt, max_new_tokens=MAX_THINK + 4).tokens[0]
    x = free[MAX_THINK - 1]  # the token sampled as the cap is reached
    rest = chat.token_ids(tok, chat.HARMONY_THINK_END)[1:]
    end = [x] + [i for i in rest if i not in free[:MAX_THINK + 1]][:2]  # ids the model does not sample next
    assert len(end) == 3
    out = lm.generate(prompt, thinking=Thinking(end, max_think_tokens=MAX_THINK, max_answer_tokens=3))
    gen, forced = out.tokens[0], out.forced[0]
    assert gen[:MAX_THINK] == free[:MAX_THINK] and not any(forced[:MAX_THINK])
    assert gen[MAX_THINK - 1:MAX_THINK + 2] == end and forced[MAX_THINK:MAX_THINK + 2] == [True, True]
    assert out.think_tokens[0] == MAX_THINK + 2 and len(gen) == MAX_THINK + 2 + 3
