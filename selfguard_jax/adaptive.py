"""SafeRemind's adaptive reminder (suhyeon0123/SafeRemind, main.py with --adaptive; REMIND_PHRASE.py).

For each request the model first answers a safety-doubting prompt about it (ADAPTIVE_DOUBT_BEGIN + request +
ADAPTIVE_DOUBT_END as the user turn) under the same two-phase protocol (thinking cap, forced `</think>`, answer
cap); the last line of that answer (cut at the EOS text, then `split("\\n")[-1]`) becomes the request's reminder,
for any placement. Host level, two generate calls: the doubting prompts for the whole batch, then the requests:
in one call when the reminder sits in the prompt, else one call per distinct reminder (the loop splices one
phrase per call). An empty reminder is used as the authors' code uses it: the empty string in the prompt
(an empty system message for "system"), nothing spliced for a decode-side placement (the request then runs
under the protocol without a reminder; the authors' loop still counts that trigger and re-tokenises there).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from selfguard_jax import chat
from selfguard_jax.decode import GenerationOutput
from selfguard_jax.prompts import ADAPTIVE_DOUBT_BEGIN, ADAPTIVE_DOUBT_END
from selfguard_jax.recipes import Recipe
from selfguard_jax.reminder import Thinking
from selfguard_jax.spec import GenerationSpec, Sampling


@dataclasses.dataclass
class AdaptiveOutput:
    """Each request's reminder (the last line of its doubting answer) and its generation, in request order."""

    reminders: list[str]
    output: GenerationOutput


def doubting_prompt(request: str) -> str:
    """The user turn of the first call: the authors' safety-doubting instruction around the request."""
    return ADAPTIVE_DOUBT_BEGIN + request + ADAPTIVE_DOUBT_END


def reminder_from_answer(answer: str, eos_text: str) -> str:
    """The authors' `answer.split(EOS)[0].split("\\n")[-1]`: the last line before the end-of-sequence text."""
    return (answer.split(eos_text)[0] if eos_text else answer).split("\n")[-1]


def answer_ids(tokens: Sequence[int], end_ids: Sequence[int]) -> list[int]:
    """The ids after the last think-end sequence (all of them when it never appears)."""
    end, toks = list(end_ids), list(tokens)
    for i in range(len(toks) - len(end), -1, -1):
        if toks[i:i + len(end)] == end:
            return toks[i + len(end):]
    return toks


def adaptive_reminders(lm, recipe: Recipe, requests: Sequence[str], vectors: np.ndarray | None = None,
                       sampling: Sampling = Sampling()) -> list[str]:
    """The first call: each request's reminder, from the model's answer to its doubting prompt, generated under
    the recipe's caps (and its steering, if any) in one batch."""
    tok = lm.tokenizer
    markers = chat.require_think_markers(tok, recipe.think_markers, what=f"adaptive reminders ({recipe.name})")
    thinking = Thinking(list(markers.end_ids), recipe.max_think_tokens, recipe.max_answer_tokens)
    prompts = [chat.chat_prompt(tok, doubting_prompt(r)) for r in requests]
    out = lm.generate(prompts, GenerationSpec(sampling=sampling, steering=recipe.steering(vectors), thinking=thinking))
    return [reminder_from_answer(tok.decode(answer_ids(t, markers.end_ids), skip_special_tokens=False),
                                 tok.eos_token or "") for t in out.tokens]


def _prompt(recipe: Recipe, tok: Any, request: str, phrase: str) -> list[int]:
    """The request's prompt with its own reminder on the prompt side (an empty one as the authors render it)."""
    if phrase:
        return dataclasses.replace(recipe, reminder_text=phrase).prompt_ids(tok, request)
    if recipe.placement != "system":  # "" + request, request + "", template + "": the plain prompt
        return chat.chat_prompt(tok, request, system=recipe.system, user_suffix=recipe.user_suffix)
    system = "" if recipe.system is None else recipe.system + "\n"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": request + recipe.user_suffix}]
    return chat.token_ids(tok, chat.render(tok, messages))


def run_adaptive(lm, recipe: Recipe, requests: Sequence[str], vectors: np.ndarray | None = None,
                 sampling: Sampling = Sampling()) -> AdaptiveOutput:
    """SafeRemind's adaptive variant of a reminding recipe (any placement): reminders first, then the requests."""
    if not recipe.remind:
        raise ValueError(f"recipe {recipe.name!r} has no reminder; adaptive reminders need a reminding recipe "
                         "(saferemind or a reminder-* placement).")
    tok = lm.tokenizer
    reminders = adaptive_reminders(lm, recipe, requests, vectors, sampling)
    if recipe.placement in chat.PROMPT_PLACEMENTS:
        out = lm.generate([_prompt(recipe, tok, r, p) for r, p in zip(requests, reminders)],
                          recipe.spec(tok, vectors, sampling=sampling))
        return AdaptiveOutput(reminders, out)
    rows: list[Any] = [None] * len(requests)
    for phrase in dict.fromkeys(reminders):
        idx = [i for i, p in enumerate(reminders) if p == phrase]
        group = (dataclasses.replace(recipe, reminder_text=phrase) if phrase
                 else dataclasses.replace(recipe, remind=False, two_phase=True))
        out = lm.generate([recipe.prompt_ids(tok, requests[i]) for i in idx], group.spec(tok, vectors,
                                                                                          sampling=sampling))
        for j, i in enumerate(idx):
            rows[i] = [getattr(out, f.name)[j] for f in dataclasses.fields(GenerationOutput)]
    columns = zip(*rows)
    return AdaptiveOutput(reminders, GenerationOutput(*[list(c) for c in columns]))
