"""Where the answer is in a generation: the text after `</think>`, or none at all when the model opened its
thinking and never closed it (an "unfinished" row: stopped on EOS or on the token budget mid-thought).
On harmony (gpt-oss) the answer is the `final` channel's message: the text after its header, without the
`<|return|>` that closes it.

Judges read only the answer, never the thinking: a reminder spliced into the thinking ("I must not
respond ...") must not make a row look refused. An unfinished row is its own outcome, counted and shown,
never judged as a refusal or as an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

THINK_START, THINK_END = "<think>", "</think>"
UNFINISHED = "unfinished"
HARMONY_FINAL = "<|channel|>final<|message|>"
HARMONY_CLOSES = ("<|return|>", "<|end|>")  # what ends a harmony message (<|return|>: the last one)


def split_at(text: str, end: str = THINK_END) -> tuple[str, bool, str]:
    """(thinking, closed, answer): `text` cut at its last think-end marker `end`. A harmony end marker (one that
    opens the final channel, chat.HARMONY_THINK_END) cuts at the last final-channel header instead, which a model
    that writes no analysis message emits without closing one first; the thinking then loses the closing
    `<|end|><|start|>assistant` and the answer its closing `<|return|>`."""
    if not end.endswith(HARMONY_FINAL):
        thinking, sep, answer = text.rpartition(end)
        return thinking, bool(sep), answer
    thinking, sep, answer = text.rpartition(HARMONY_FINAL)
    if not sep:
        return thinking, False, answer
    thinking = thinking.removesuffix(end[:-len(HARMONY_FINAL)])
    for close in HARMONY_CLOSES:
        if answer.endswith(close):
            answer = answer[:-len(close)]
            break
    return thinking, True, answer


def split_answer(text: str, end: str = THINK_END) -> tuple[str, bool]:
    """(answer, found): the text after the last think-end marker `end` (split_at) and True, or the whole text and
    False."""
    _, found, answer = split_at(text, end)
    return (answer, True) if found else (text, False)


def prompt_opens_thinking(prompt_text: str, start: str = THINK_START, end: str = THINK_END) -> bool:
    """Whether a templated prompt ends inside an open thinking block (R1's and Qwen3's generation prompts
    end with `<think>\\n`; a template that closes an empty block, as Qwen3's enable_thinking=False, does not).
    An empty `start` (a model that opens its thinking itself) never leaves it open in the prompt."""
    if not start:
        return False
    _, sep, tail = prompt_text.rpartition(start)
    return bool(sep) and end not in tail


@dataclass(frozen=True)
class Response:
    """A generation cut into its thinking and its answer; `answer` is None when the row is unfinished."""

    thinking: str
    answer: str | None

    @property
    def unfinished(self) -> bool:
        return self.answer is None


def parse_response(text: str, think_open: bool = False, strip: Sequence[str] = (),
                   markers: Sequence[str] | None = (THINK_START, THINK_END)) -> Response:
    """Cut `text` (the generated text only) at its last think-end marker.

    `think_open`: the prompt left a thinking block open, so text without the end marker is unfinished;
    text that opens a thinking block itself and never closes it is unfinished too. Without either the
    whole text is the answer. `markers`: the model's (start, end) texts; None for a model that does not
    think (the whole text is the answer). `strip`: texts the engine spliced in (a reminder placed at the
    start of the answer) removed from the answer, so they are never judged as the model's words."""
    if markers is None:
        return Response("", text)
    start, end = markers
    thinking, closed, answer = split_at(text, end)
    if closed:
        for spliced in strip:
            for piece in sorted({spliced, spliced.strip()} - {""}, key=len, reverse=True):
                answer = answer.replace(piece, "")
        return Response(thinking, answer)
    if think_open or (start and start in text):
        return Response(text, None)
    return Response("", text)
