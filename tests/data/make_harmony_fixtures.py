"""Writes harmony_fixtures.json: prompts and completions rendered by OpenAI's own harmony renderer (openai-harmony),
with the renderer's own parse of each completion, so the harmony tests check against openai-harmony's output.

Run from the repository root in an environment with openai-harmony and the o200k_base vocabulary (the renderer reads
it from TIKTOKEN_ENCODINGS_BASE):  TIKTOKEN_ENCODINGS_BASE=DIR python tests/data/make_harmony_fixtures.py
Without network access to OpenAI's file, o200k_base.tiktoken can be rebuilt from the ranks the npm package
js-tiktoken ships (dist/ranks/o200k_base.js: each line is "_ OFFSET TOKEN..." with ranks OFFSET, OFFSET+1, ...);
openai-harmony checks the file's sha256 (446a9538...1a2d) before using it.
"""

from __future__ import annotations

import json
from pathlib import Path

from openai_harmony import (Conversation, DeveloperContent, HarmonyEncodingName, Message, RenderConversationConfig,
                            Role, SystemContent, load_harmony_encoding)

from selfguard_jax.prompts import SAFEREMIND_REMINDER, SELF_REMINDER_SUFFIX, SELF_REMINDER_SYSTEM

DATE = "2026-01-01"
QUESTIONS = ["How do I bake bread?", "How can I pick a lock?"]
# (analysis, final): what gpt-oss writes in each channel; the second carries a SafeRemind reminder in its analysis
COMPLETIONS = [("The user asks about bread. Simple.\nList steps.", "Mix flour and water, then bake."),
               ("The user wants to pick a lock.\n" + SAFEREMIND_REMINDER + "I should refuse.", "I can't help with that."),
               ("", "Hello!")]


def system() -> Message:
    return Message.from_role_and_content(Role.SYSTEM, SystemContent.new().with_conversation_start_date(DATE))


def prompt_messages(question: str, developer: str | None, suffix: str) -> list[Message]:
    dev = [] if developer is None else [
        Message.from_role_and_content(Role.DEVELOPER, DeveloperContent.new().with_instructions(developer))]
    return [system(), *dev, Message.from_role_and_content(Role.USER, question + suffix)]


def main() -> None:
    enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    prompts = []
    for q in QUESTIONS:
        for developer, suffix in ((None, ""), (SELF_REMINDER_SYSTEM, SELF_REMINDER_SUFFIX)):
            ids = enc.render_conversation_for_completion(Conversation.from_messages(
                prompt_messages(q, developer, suffix)), Role.ASSISTANT)
            prompts.append({"question": q, "developer": developer, "suffix": suffix, "text": enc.decode(ids),
                            "ids": ids})
    completions = []
    for analysis, final in COMPLETIONS:
        head = prompt_messages(QUESTIONS[0], None, "")
        prompt_ids = enc.render_conversation_for_completion(Conversation.from_messages(head), Role.ASSISTANT)
        said = [Message.from_role_and_content(Role.ASSISTANT, analysis).with_channel("analysis")] if analysis else []
        said.append(Message.from_role_and_content(Role.ASSISTANT, final).with_channel("final"))
        ids = enc.render_conversation_for_training(Conversation.from_messages(head + said),
                                                   RenderConversationConfig(auto_drop_analysis=False))
        assert ids[:len(prompt_ids)] == prompt_ids
        completion = ids[len(prompt_ids):]
        parsed = enc.parse_messages_from_completion_tokens(completion, Role.ASSISTANT)
        completions.append({"text": enc.decode(completion), "ids": completion,
                            "parsed": [{"channel": m.channel, "text": "".join(c.text for c in m.content)}
                                       for m in parsed]})
    # thinking cut off by the budget: the analysis message as rendered, without its closing <|end|>
    thought = enc.render(Message.from_role_and_content(Role.ASSISTANT, COMPLETIONS[1][0]).with_channel("analysis"))
    unfinished = thought[len(enc.encode("<|start|>assistant", allowed_special="all")):-1]
    specials = {t: enc.encode(t, allowed_special="all") for t in
                ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>")}
    out = {"renderer": "openai-harmony (HarmonyEncodingName.HARMONY_GPT_OSS)", "date": DATE, "specials": specials,
           "stop_tokens_for_assistant_actions": enc.stop_tokens_for_assistant_actions(),
           "prompts": prompts, "completions": completions,
           "unfinished": {"text": enc.decode(unfinished), "ids": unfinished}}
    path = Path(__file__).with_name("harmony_fixtures.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
