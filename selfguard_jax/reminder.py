"""`Thinking` and `Reminder`: the SafeRemind protocol and reminder as settings, and their arrays for the loop.

Every number here becomes an array inside the loop, so a new threshold, criterion, count, cap or phrase of the
same padded length never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from selfguard_jax.buckets import bucket, pad_rows
from selfguard_jax.splice import Choice, Placement, ReminderParams, ThinkParams

CRITERIA = ("lt", "gt")
CHOICES = tuple(c.name.lower() for c in Choice)
PLACEMENTS = tuple(p.name.lower() for p in Placement)
UNCAPPED = 2**30


@dataclasses.dataclass(frozen=True)
class Thinking:
    """The SafeRemind authors' two-phase protocol: thinking ends when the model emits the whole `end_ids`
    sequence; after `max_think_tokens` sampled thinking tokens `end_ids` are forced; then at most
    `max_answer_tokens` sampled answer tokens. Forced ids count toward neither cap. With `eos_closes` (the
    authors' loop) a stop id sampled while thinking closes the thinking instead of ending the row."""

    end_ids: Sequence[int]
    max_think_tokens: int = 4096
    max_answer_tokens: int = 1024
    eos_closes: bool = True

    def __post_init__(self):
        object.__setattr__(self, "end_ids", tuple(int(i) for i in self.end_ids))
        if not self.end_ids:
            raise ValueError("Thinking.end_ids is empty; pass the ids of `</think>` (chat.think_markers).")
        if self.max_think_tokens < 1 or self.max_answer_tokens < 0:
            raise ValueError("max_think_tokens >= 1 and max_answer_tokens >= 0 are required.")

    @classmethod
    def tracked(cls, end_ids: Sequence[int]) -> "Thinking":
        """Phase tracking only (for the 'thinking' steering rule): no caps, a stop id ends the row."""
        return cls(end_ids=end_ids, max_think_tokens=UNCAPPED, max_answer_tokens=UNCAPPED, eos_closes=False)

    @property
    def capped(self) -> bool:
        """Whether the protocol caps the phases (False for phase tracking alone)."""
        return self.max_think_tokens < UNCAPPED

    def params(self) -> ThinkParams:
        end = list(self.end_ids)
        return ThinkParams(end_E=jnp.asarray(pad_rows([end], bucket(len(end), 4), -1)[0]),
                           end_len=jnp.int32(len(end)), max_think=jnp.int32(self.max_think_tokens),
                           max_answer=jnp.int32(self.max_answer_tokens), eos_closes=jnp.bool_(self.eos_closes),
                           track=jnp.bool_(True))


def untracked_params() -> ThinkParams:
    """No thinking phase: every token is an answer token and only max_new_tokens or a stop id ends a row."""
    return ThinkParams(end_E=jnp.full((4,), -1, jnp.int32), end_len=jnp.int32(1), max_think=jnp.int32(UNCAPPED),
                       max_answer=jnp.int32(UNCAPPED), eos_closes=jnp.bool_(False), track=jnp.bool_(False))


@dataclasses.dataclass(frozen=True)
class Reminder:
    """SafeRemind: after a sampled thinking token whose text ends with a newline (`boundary_ids`), if the entropy
    of the distribution that produced it is below (`lt`) or above (`gt`) `threshold` nats and fewer than
    `max_reminders` were spliced, splice `token_ids` into the thinking and carry on.

    token_ids: one phrase (a list of ids) or several (a list of lists; chosen per reminder by `choice`).
    junctions: per phrase, {token id: ids of text(token) + phrase text re-tokenised} for the tokens whose text
    merges with the phrase's first characters (chat.junctions builds it): the model then continues from the ids
    the authors' re-tokenisation gives. None splices ids after the token as they are ("append").
    placement: "entropy" (SafeRemind), "before_think_end" (reminder then `</think>` at once, where thinking
    ends) or "answer_start" (right after `</think>`). `thinking` is the protocol the reminder runs under.
    """

    token_ids: Sequence[int] | Sequence[Sequence[int]]
    boundary_ids: Sequence[int]
    thinking: Thinking
    threshold: float = 0.5
    criterion: str = "lt"
    max_reminders: int = 1
    choice: str = "first"
    placement: str = "entropy"
    junctions: Sequence[Mapping[int, Sequence[int]]] | None = None

    def __post_init__(self):
        object.__setattr__(self, "boundary_ids", tuple(int(i) for i in self.boundary_ids))
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion {self.criterion!r} is unknown; use 'lt' (H < threshold) or 'gt'.")
        if self.choice not in CHOICES:
            raise ValueError(f"choice {self.choice!r} is unknown; use one of {CHOICES}.")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r} is unknown; use one of {PLACEMENTS}.")
        if not self.phrases() or any(len(p) == 0 for p in self.phrases()):
            raise ValueError("reminder token_ids is empty; tokenize the reminder text first (chat.token_ids).")
        if not np.isfinite(self.threshold):
            raise ValueError(f"reminder threshold must be a finite number of nats, got {self.threshold}.")
        if self.junctions is not None and len(self.junctions) != len(self.phrases()):
            raise ValueError(f"junctions has {len(self.junctions)} tables for {len(self.phrases())} phrases; "
                             "build them with chat.junctions(tokenizer, texts).")
        if self.max_reminders < 0:
            raise ValueError("max_reminders >= 0 is required.")
        if not isinstance(self.thinking, Thinking):
            raise TypeError(f"Reminder.thinking must be a Thinking (the protocol), got {type(self.thinking).__name__}.")

    def phrases(self) -> list[list[int]]:
        ids = list(self.token_ids)
        if ids and isinstance(ids[0], (int, np.integer)):
            return [[int(i) for i in ids]]
        return [[int(i) for i in p] for p in ids]

    def params(self, vocab_size: int) -> ReminderParams:
        """The arrays the loop reads; ids outside the vocabulary are an error."""
        phrases = self.phrases()
        bad = [i for p in phrases for i in p if not 0 <= i < vocab_size]
        bad += [i for i in self.boundary_ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"reminder or boundary ids {bad[:5]} are outside the vocabulary [0, {vocab_size}).")
        boundary = np.zeros(vocab_size, bool)
        boundary[list(self.boundary_ids)] = True
        junction, heads, skips = _junction_arrays(phrases, self.junctions, vocab_size)
        return ReminderParams(
            phrases_PR=jnp.asarray(pad_rows(phrases, bucket(max(map(len, phrases))), 0)),
            phrase_len_P=jnp.asarray([len(p) for p in phrases], jnp.int32), boundary_V=jnp.asarray(boundary),
            junction_PV=jnp.asarray(junction), head_KJ=jnp.asarray(pad_rows(heads, bucket(max(map(len, heads)), 4), 0)),
            head_len_K=jnp.asarray([len(h) for h in heads], jnp.int32), skip_K=jnp.asarray(skips, jnp.int32),
            threshold=jnp.float32(self.threshold), sign=jnp.float32(1.0 if self.criterion == "lt" else -1.0),
            max_reminders=jnp.int32(self.max_reminders), placement=jnp.int32(PLACEMENTS.index(self.placement)),
            choice=jnp.int32(CHOICES.index(self.choice)))

    def queue_room(self) -> int:
        """The most positions one reminder can add: its longest phrase or merged junction, plus a token it
        replaces after it was fed (before_think_end)."""
        merged = max((len(ids) for table in self.junctions or () for ids in table.values()), default=0)
        return max(max(map(len, self.phrases())), merged) + 1


def no_reminder_params(vocab_size: int) -> ReminderParams:
    """A reminder that never fires (max_reminders 0), so the loop has one shape of state with or without one."""
    return Reminder(token_ids=[0], boundary_ids=[], thinking=Thinking([0]), max_reminders=0).params(vocab_size)


def _junction_arrays(phrases: list[list[int]], junctions, vocab_size: int):
    """[P, V] rows into a table of heads: each head replaces the token and the phrase's first `skip` ids."""
    index = np.full((len(phrases), vocab_size), -1, np.int32)
    heads, skips = [[0]], [0]
    for p, (phrase, table) in enumerate(zip(phrases, junctions or [{}] * len(phrases))):
        for tok, ids in table.items():
            ids = [int(i) for i in ids]
            if not 0 <= int(tok) < vocab_size or any(not 0 <= i < vocab_size for i in ids):
                raise ValueError(f"junction of token {tok} holds ids outside the vocabulary [0, {vocab_size}).")
            if not ids:
                raise ValueError(f"junction of token {tok} is empty; it must hold the re-tokenised ids.")
            keep = min(_common_suffix(ids, phrase), len(ids) - 1)
            head, skip = ids[:len(ids) - keep], len(phrase) - keep
            index[p, int(tok)] = len(heads)
            heads.append(head)
            skips.append(skip)
    return index, heads, skips


def _common_suffix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n
