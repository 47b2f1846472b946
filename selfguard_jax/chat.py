"""Tokenizer-derived tables and prompts: newline boundary ids, thinking markers, reminder ids, chat templating.

Nothing model-specific is hard-coded where the tokenizer can tell.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence, Tuple, Union

import numpy as np

# Static reminder placements done on the prompt side (the decode-side ones live in reminder.PLACEMENTS).
PROMPT_PLACEMENTS = ("system", "before_user", "after_user", "think_start")


def boundary_ids(tokenizer: Any) -> list[int]:
    """Every vocabulary id whose decoded text ends with a newline: SafeRemind's step boundaries."""
    return list(_boundary_ids(tokenizer))


@functools.lru_cache(maxsize=8)
def _boundary_ids(tokenizer: Any) -> tuple[int, ...]:
    n = len(tokenizer)
    texts = tokenizer.batch_decode(np.arange(n)[:, None].tolist(), skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return tuple(i for i, t in enumerate(texts) if t.endswith("\n"))


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids of text with no special tokens added (for reminders and markers)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


# Thinking-marker pairs known from released reasoning models, tried in order when detecting from a tokenizer.
KNOWN_THINK_MARKERS = (("<think>", "</think>"), ("<|begin_of_thought|>", "<|end_of_thought|>"),
                       ("<thinking>", "</thinking>"), ("<|START_THINKING|>", "<|END_THINKING|>"),
                       ("<seed:think>", "</seed:think>"))
# The harmony format (gpt-oss, openai-harmony): the generation prompt ends at `<|start|>assistant`; the model thinks
# in an `analysis` message and answers in a `final` one, so its thinking starts after the analysis channel's header
# and ends where it closes that message and opens the final channel (the answer starts right after).
HARMONY_TOKENS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>")
HARMONY_THINK_START = "<|channel|>analysis<|message|>"
HARMONY_THINK_END = "<|end|><|start|>assistant<|channel|>final<|message|>"
NO_THINKING = "none"
MarkerSpec = Union[None, str, Tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class ThinkMarkers:
    """The texts and ids that open and close a model's thinking. `source`: "tokenizer" when detected (each marker
    is one added token of the vocabulary), "harmony" when the tokenizer speaks harmony (the markers are channel
    headers of several ids: HARMONY_THINK_START, HARMONY_THINK_END), "given" when named by the user (it may span
    several tokens)."""

    start: str
    end: str
    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    source: str


def parse_think_markers(text: str | None) -> MarkerSpec:
    """A CLI / eval-config value: "auto" (or None) detects from the tokenizer, "none" says the model does not think,
    "START,END" names the markers (START may be empty when the template opens the thinking itself)."""
    if text is None or text.strip().lower() == "auto":
        return None
    if text.strip().lower() == NO_THINKING:
        return NO_THINKING
    start, sep, end = text.partition(",")
    if not sep or not end.strip() or "," in end:
        raise ValueError(f"think markers {text!r}: expected 'auto', 'none' or 'START,END' such as '<think>,</think>'.")
    return start.strip(), end.strip()


def _single_added_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when it is one added (special or user-defined) token of the tokenizer, else None."""
    tid = tokenizer.get_added_vocab().get(text)
    return tid if tid is not None and token_ids(tokenizer, text) == [tid] else None


def is_harmony(tokenizer: Any) -> bool:
    """Whether the tokenizer speaks harmony: each of HARMONY_TOKENS is one added token (gpt-oss's o200k_harmony)."""
    return all(_single_added_id(tokenizer, t) is not None for t in HARMONY_TOKENS)


def harmony_markers(tokenizer: Any) -> ThinkMarkers:
    """Harmony's thinking markers as ids of this tokenizer (the channel names are ordinary text between specials)."""
    return ThinkMarkers(HARMONY_THINK_START, HARMONY_THINK_END, tuple(token_ids(tokenizer, HARMONY_THINK_START)),
                        tuple(token_ids(tokenizer, HARMONY_THINK_END)), "harmony")


def detect_think_markers(tokenizer: Any, candidates: Sequence[tuple[str, str]] = ()) -> ThinkMarkers | None:
    """The first pair of `candidates` whose two texts are each one added token, then harmony's channel markers on
    a harmony tokenizer, then the first such pair of KNOWN_THINK_MARKERS; None when the tokenizer has none (e.g.
    SmolLM2, where `</think>` is the ordinary pieces `</`, `think`, `>`)."""
    for start, end in candidates:
        s, e = _single_added_id(tokenizer, start), _single_added_id(tokenizer, end)
        if s is not None and e is not None:
            return ThinkMarkers(start, end, (s,), (e,), "tokenizer")
    if is_harmony(tokenizer):
        return harmony_markers(tokenizer)
    for start, end in KNOWN_THINK_MARKERS:
        s, e = _single_added_id(tokenizer, start), _single_added_id(tokenizer, end)
        if s is not None and e is not None:
            return ThinkMarkers(start, end, (s,), (e,), "tokenizer")
    return None


def resolve_think_markers(tokenizer: Any, markers: MarkerSpec = None,
                          candidates: Sequence[tuple[str, str]] = ()) -> ThinkMarkers | None:
    """The markers a run uses: detected (None or "auto"), none ("none": the model does not think), or given as a
    (start, end) pair or "START,END" text, which must round-trip through the tokenizer."""
    if isinstance(markers, str):
        markers = parse_think_markers(markers)
    if markers is None:
        return detect_think_markers(tokenizer, candidates)
    if markers == NO_THINKING:
        return None
    start, end = markers
    end_ids = token_ids(tokenizer, end)
    start_ids = token_ids(tokenizer, start) if start else []
    for text, ids in ((start, start_ids), (end, end_ids)):
        if text and (not ids or tokenizer.decode(ids) != text):
            raise ValueError(f"think marker {text!r} does not round-trip through the tokenizer "
                             f"({len(ids)} ids decode to {tokenizer.decode(ids)!r}); give the exact text the model "
                             "emits.")
    return ThinkMarkers(start, end, tuple(start_ids), tuple(end_ids), "given")


def require_think_markers(tokenizer: Any, markers: MarkerSpec = None, what: str = "this run",
                          candidates: Sequence[tuple[str, str]] = ()) -> ThinkMarkers:
    """resolve_think_markers, refusing a model without thinking markers with the fix spelled out."""
    found = resolve_think_markers(tokenizer, markers, candidates)
    if found is None:
        why = ("think markers were set to 'none'" if markers == NO_THINKING else
               "the tokenizer has no thinking markers (no single added token such as <think>/</think>; "
               f"'</think>' is {len(token_ids(tokenizer, '</think>'))} ordinary tokens here)")
        raise ValueError(f"{what} needs a thinking phase, but {why}. Name the markers the model emits with "
                         "--think-markers START,END (eval config: a recipe entry's think_markers), or use a "
                         "prompt-side reminder recipe (reminder-system, reminder-before-user, reminder-after-user).")
    return found


def think_markers(tokenizer: Any, markers: MarkerSpec = None) -> tuple[list[int], list[int]]:
    """(start ids, end ids) of the thinking markers (require_think_markers: detected unless given)."""
    found = require_think_markers(tokenizer, markers)
    return list(found.start_ids), list(found.end_ids)


def chat_prompt(tokenizer: Any, user: str, system: str | None = None, user_suffix: str = "",
                reminder_text: str | None = None, placement: str | None = None,
                enable_thinking: bool = True) -> list[int]:
    """Token ids of the model's own chat template for one user turn, ending at the generation prompt.

    `placement` puts `reminder_text` on the prompt side as the SafeRemind authors do: as the system prompt, before
    or after the user text, or at the start of the thinking (appended to the rendered prompt, whatever the
    template's generation prompt ends with: `<think>\\n` on R1's template, nothing on its GGUF one; on harmony after
    the analysis channel's header, which the generation prompt `<|start|>assistant` leaves to the model).
    A system prompt goes where the template puts one: gpt-oss's template makes it the harmony developer message.
    """
    if placement is not None and placement not in PROMPT_PLACEMENTS:
        raise ValueError(f"prompt placement {placement!r} is unknown; use one of {PROMPT_PLACEMENTS}.")
    if placement is not None and not reminder_text:
        raise ValueError("a reminder placement needs reminder_text.")
    text = user + user_suffix
    if placement == "before_user":
        text = reminder_text + text
    elif placement == "after_user":
        text = text + reminder_text
    messages = []
    if placement == "system":
        system = reminder_text if system is None else system + "\n" + reminder_text
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    rendered = render(tokenizer, messages, enable_thinking)
    if placement == "think_start":
        rendered += (HARMONY_THINK_START if is_harmony(tokenizer) else "") + reminder_text
    return token_ids(tokenizer, rendered)


def render(tokenizer: Any, messages: Sequence[dict], enable_thinking: bool = True) -> str:
    """The chat template as text, with the generation prompt and thinking enabled where the template asks."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; pass raw prompts (no --chat) or add a template.")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                         enable_thinking=enable_thinking)


def junctions(tokenizer: Any, text: str) -> dict[int, list[int]]:
    """{token id: ids of text(token) + text re-tokenised} for every token whose re-tokenisation with `text` is not
    [token] + ids(text): where the SafeRemind authors' loop (decode, append the reminder, re-tokenise) feeds the
    model other ids than a splice of ids would (e.g. ".\\n\\n" + "\\nWait" -> ".\\n\\n\\n", "Wait").

    Tokens whose own text is not whole characters (it decodes to U+FFFD) are left out: the authors' loop decodes
    one token at a time and would turn them into U+FFFD, a quirk of that loop, not of the method.
    """
    return {tok: list(ids) for tok, ids in _junctions(tokenizer, text)}


@functools.lru_cache(maxsize=8)
def _junctions(tokenizer: Any, text: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
    n = len(tokenizer)
    texts = tokenizer.batch_decode(np.arange(n)[:, None].tolist(), skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    probe = text[:40]  # a merge can only reach the first characters of the text
    probe_ids = token_ids(tokenizer, probe)
    encoded = tokenizer([t + probe for t in texts], add_special_tokens=False)["input_ids"]
    out = []
    for tok, (t, ids) in enumerate(zip(texts, encoded)):
        if "\ufffd" in t or list(ids) == [tok] + probe_ids:
            continue
        out.append((tok, tuple(token_ids(tokenizer, t + text))))
    return tuple(out)
