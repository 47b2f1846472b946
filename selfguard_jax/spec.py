"""`GenerationSpec`: what generation does to a request (steering, thinking protocol, reminder, budget, sampling)
as one frozen value. Recipes build it (`Recipe.spec`), `lm.generate(prompts, spec)` runs it, and `decode` turns it
into the loop's arrays in one place."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from selfguard_jax.reminder import Reminder, Thinking
from selfguard_jax.steering import Steering

DEFAULT_MAX_NEW_TOKENS = 64  # a request without a two-phase protocol and without a budget of its own


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: greedy at temperature 0, else temperature / top-k / top-p with `seed`."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0 and 0 < self.top_p <= 1
                and self.top_k >= 0):
            raise ValueError(f"need a finite temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got "
                             f"{self.temperature}, {self.top_p}, {self.top_k}.")


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """One request's generation settings. `thinking` is the protocol (a reminder's own when it has one; phase
    tracking only with `Thinking.tracked`); `max_new_tokens` (one, or one per prompt) overrides the budget rule
    (`budget`). Arrays live in `steering` only, so two specs built alike compare equal field by field."""

    max_new_tokens: int | tuple[int, ...] | None = None
    sampling: Sampling = Sampling()
    steering: Steering | None = None
    thinking: Thinking | None = None
    reminder: Reminder | None = None
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.reminder is not None:
            if self.thinking is None:
                object.__setattr__(self, "thinking", self.reminder.thinking)
            elif self.thinking != self.reminder.thinking:
                raise ValueError("GenerationSpec.thinking differs from its reminder's protocol; state the protocol "
                                 "once, in the Reminder.")
        if isinstance(self.max_new_tokens, Sequence):
            object.__setattr__(self, "max_new_tokens", tuple(int(n) for n in self.max_new_tokens))
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

    @classmethod
    def from_keywords(cls, max_new_tokens: int | Sequence[int] | None = None, temperature: float = 0.0,
                      top_p: float = 1.0, top_k: int = 0, seed: int = 0, steering: Steering | None = None,
                      reminder: Reminder | None = None, thinking: Thinking | None = None,
                      think_end_ids: Sequence[int] | None = None,
                      stop_ids: Sequence[int] | None = None) -> "GenerationSpec":
        """The spec of `generate`'s keyword form; `think_end_ids` alone tracks the phase without caps."""
        if thinking is None and reminder is None and think_end_ids:
            thinking = Thinking.tracked(think_end_ids)
        return cls(max_new_tokens=max_new_tokens, sampling=Sampling(temperature, top_p, top_k, seed),
                   steering=steering, thinking=thinking, reminder=reminder, stop_ids=tuple(stop_ids or ()))

    def replace(self, **changes: Any) -> "GenerationSpec":
        return dataclasses.replace(self, **changes)

    def budget(self) -> int | tuple[int, ...]:
        """The one budget rule: `max_new_tokens` when set; else under a capped two-phase protocol every position a
        row can need (thinking cap, each reminder's forced ids, the forced close, answer cap); else
        DEFAULT_MAX_NEW_TOKENS."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.thinking is None or not self.thinking.capped:
            return DEFAULT_MAX_NEW_TOKENS
        r = self.reminder
        spliced = r.max_reminders * r.queue_room() if r is not None else 0
        t = self.thinking
        return t.max_think_tokens + spliced + len(t.end_ids) + t.max_answer_tokens
