"""Recipes: the papers' defenses and baselines as data (prompting, steering, reminders), and their YAML presets."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from selfguard_jax import chat, extract, model_presets
from selfguard_jax.prompts import (REMINDER_PRESETS, SAFEREMIND_REMINDER, SELF_REMINDER_SUFFIX,
                                   SELF_REMINDER_SUFFIX_ASSISTANT, SELF_REMINDER_SYSTEM, SUFFIX_PRESETS, SYSTEM_PRESETS)
from selfguard_jax.reminder import PLACEMENTS, Reminder, Thinking
from selfguard_jax.spec import GenerationSpec, Sampling
from selfguard_jax.steering import Steering
from selfguard_jax.yaml_files import read_yaml


JUNCTIONS = ("retokenize", "append")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One defense configuration. `steer_*` needs vectors at build time; `remind` uses SafeRemind (or a static
    placement of its reminder: a prompt-side one from chat.PROMPT_PLACEMENTS or a decode-side one).

    `two_phase` runs the SafeRemind authors' protocol (thinking cap, forced `</think>`, answer cap; every reminding
    recipe does): set it on the baselines compared with SafeRemind so that all run under the same budgets.
    `junction` "retokenize" feeds the model the ids the authors' re-tokenisation gives where the reminder's first
    characters merge with the token before it; "append" splices the reminder's own ids after that token.
    `think_markers`: None detects them from the tokenizer (chat.resolve_think_markers), "none" says the model does
    not think, a (start, end) pair names them. Without markers (SmolLM2, say) every generated token is answer:
    prompt-side reminders and two-phase baselines run in one phase with the answer budget; a reminder spliced
    during decoding, or placed at the start of the thinking, is refused (there is no thinking to put it in).
    """

    name: str
    system: str | None = None
    user_suffix: str = ""
    steer_layers: tuple[int, ...] = ()
    steer_alpha: float = 0.0
    steer_rule: str = "all"
    remind: bool = False
    reminder_text: str = SAFEREMIND_REMINDER
    placement: str = "entropy"
    threshold: float = 0.5
    criterion: str = "lt"
    max_reminders: int = 1
    max_think_tokens: int = 4096
    max_answer_tokens: int = 1024
    two_phase: bool = False
    junction: str = "retokenize"
    think_markers: chat.MarkerSpec = None

    def __post_init__(self):
        if self.junction not in JUNCTIONS:
            raise ValueError(f"junction {self.junction!r} is unknown; use one of {JUNCTIONS}.")
        if isinstance(self.think_markers, str):
            object.__setattr__(self, "think_markers", chat.parse_think_markers(self.think_markers))
        elif self.think_markers is not None:
            object.__setattr__(self, "think_markers", tuple(self.think_markers))

    @property
    def steers(self) -> bool:
        return bool(self.steer_layers) and self.steer_alpha != 0.0

    def prompt_ids(self, tokenizer: Any, user: str) -> list[int]:
        """The chat-templated prompt this recipe sends for one user request."""
        prompt_side = self.remind and self.placement in chat.PROMPT_PLACEMENTS
        return chat.chat_prompt(tokenizer, user, system=self.system, user_suffix=self.user_suffix,
                                reminder_text=self.reminder_text if prompt_side else None,
                                placement=self.placement if prompt_side else None)

    def markers(self, tokenizer: Any) -> chat.ThinkMarkers | None:
        """The thinking markers this recipe runs with on this tokenizer; None when the model does not think (or
        has no tokenizer to find them in: a run on token ids alone)."""
        return None if tokenizer is None else chat.resolve_think_markers(tokenizer, self.think_markers)

    def _require_markers(self, tokenizer: Any) -> chat.ThinkMarkers:
        what = f"recipe {self.name!r} (reminder placement {self.placement!r})"
        return chat.require_think_markers(tokenizer, self.think_markers, what=what)

    def reminder(self, tokenizer: Any) -> Reminder | None:
        """The decode-side Reminder, or None when this recipe splices nothing during decoding."""
        if not self.remind or self.placement in chat.PROMPT_PLACEMENTS:
            return None
        table = chat.junctions(tokenizer, self.reminder_text) if self.junction == "retokenize" else None
        return Reminder(token_ids=chat.token_ids(tokenizer, self.reminder_text),
                        boundary_ids=chat.boundary_ids(tokenizer), thinking=self.thinking(tokenizer),
                        threshold=self.threshold, criterion=self.criterion, max_reminders=self.max_reminders,
                        placement=self.placement, junctions=None if table is None else [table])

    def thinking(self, tokenizer: Any) -> Thinking | None:
        """The protocol this recipe runs under: the two-phase caps (every reminding recipe, and `two_phase`
        baselines), else phase tracking alone (for the 'thinking' steering rule and the thinking-token count),
        else None on a model without thinking markers (see the class docstring)."""
        if self.remind and self.placement not in ONE_PHASE_PLACEMENTS:
            markers = self._require_markers(tokenizer)
        else:
            markers = self.markers(tokenizer)
        if markers is None:
            return None
        if self.remind or self.two_phase:
            return Thinking(list(markers.end_ids), self.max_think_tokens, self.max_answer_tokens)
        return Thinking.tracked(list(markers.end_ids))

    def spec(self, tokenizer: Any, vectors: np.ndarray | None = None, residual_norms: np.ndarray | None = None,
             max_new_tokens: int | None = None, sampling: Sampling = Sampling(),
             stop_ids: tuple[int, ...] = ()) -> GenerationSpec:
        """The GenerationSpec of this recipe on this tokenizer: steering, reminder, protocol and budget.
        A two-phase protocol's budget is its caps (`GenerationSpec.budget`); a one-phase run gets
        `max_new_tokens`, else max_think_tokens + max_answer_tokens on a thinking model and max_answer_tokens on
        one without markers. With `residual_norms` (the vector file's record, or extract.residual_norms) an
        over-steered setting warns (extract.OversteerWarning)."""
        thinking = self.thinking(tokenizer)
        steering = self.steering(vectors)
        if steering is not None and residual_norms is not None:
            report = extract.oversteer_report(vectors, self.steer_layers, self.steer_alpha, residual_norms)
            if report.over:
                warnings.warn(report.message(), extract.OversteerWarning, stacklevel=2)
        if thinking is not None and thinking.capped:
            budget = None
        elif max_new_tokens is not None:
            budget = max_new_tokens
        else:
            budget = self.max_answer_tokens + (self.max_think_tokens if thinking is not None else 0)
        return GenerationSpec(max_new_tokens=budget, sampling=sampling, steering=steering, thinking=thinking,
                              reminder=self.reminder(tokenizer), stop_ids=tuple(stop_ids))

    def steering(self, vectors: np.ndarray | None, row_scales=None) -> Steering | None:
        if not self.steers:
            return None
        if vectors is None:
            raise ValueError(f"recipe {self.name!r} steers layers {list(self.steer_layers)} but no vectors were "
                             "given; run `selfguard-jax extract` first and pass --vector.")
        num_layers = np.shape(vectors)[0]
        if max(self.steer_layers) >= num_layers:
            raise ValueError(f"recipe {self.name!r} steers blocks {list(self.steer_layers)} (the Self-Guard paper's "
                             f"Qwen3 setting unless set) but the vectors have {num_layers} layers; take the model's "
                             "own: --preset NAME, or --layers and --alpha (API: get_recipe(name, "
                             "model_config=lm.config) or steer_layers=, steer_alpha=).")
        return Steering.from_vectors(vectors, self.steer_layers, self.steer_alpha, rule=self.steer_rule,
                                     row_scales=row_scales)


# The Self-Guard authors' evaluation: the Self-Reminder system prompt ("ChatGPT") and the "AI assistant" suffix.
_SG = dict(system=SELF_REMINDER_SYSTEM, user_suffix=SELF_REMINDER_SUFFIX_ASSISTANT)
_STEER = dict(steer_layers=(30, 31, 32), steer_alpha=0.3)
# Reminders that still make sense without a thinking phase: they only change the prompt.
ONE_PHASE_PLACEMENTS = ("system", "before_user", "after_user")
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("vanilla"),
    Recipe("prompt-only", **_SG),
    # the authors' prompt-only baseline ("Self-Reminder" in their tables): "ChatGPT" in the suffix too
    Recipe("prompt-only-authors", system=SELF_REMINDER_SYSTEM, user_suffix=SELF_REMINDER_SUFFIX),
    Recipe("steer-only", **_STEER),
    Recipe("selfguard", **_SG, **_STEER),
    Recipe("saferemind", remind=True),
    Recipe("selfguard+saferemind", **_SG, **_STEER, remind=True),
] + [Recipe(f"reminder-{p.replace('_', '-')}", remind=True, placement=p)
     for p in chat.PROMPT_PLACEMENTS + PLACEMENTS[1:]]}


def get_recipe(name: str, model_config: Any = None, preset: str | Path | None = None, **overrides: Any) -> Recipe:
    """A named recipe with fields overridden. With `model_config` (the loaded model's) or `preset` (a configs/models
    name or path), a steering recipe takes the steer_layers/steer_alpha not overridden from the model's preset
    (model_presets.steering_setting: matched by architecture and size; an unknown model is an error naming the
    flags); without either, the recipe keeps its paper default (Qwen3-8B's blocks 30-32, alpha 0.3)."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} is unknown; choose one of {sorted(RECIPES)}.")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"recipe fields {bad} do not exist; valid fields: {sorted(fields)}.")
    if "steer_layers" in overrides:
        overrides["steer_layers"] = tuple(int(k) for k in overrides["steer_layers"])
    if (model_config is not None or preset is not None) and RECIPES[name].steers:
        overrides["steer_layers"], overrides["steer_alpha"] = model_presets.steering_setting(
            model_config, preset, overrides.get("steer_layers"), overrides.get("steer_alpha"))
    for key, presets in (("reminder_text", REMINDER_PRESETS), ("user_suffix", SUFFIX_PRESETS),
                         ("system", SYSTEM_PRESETS)):
        if isinstance(overrides.get(key), str) and overrides[key] in presets:
            overrides[key] = presets[overrides[key]]
    return dataclasses.replace(RECIPES[name], **overrides)


def load_recipe_file(path: str | Path) -> Recipe:
    """A configs/recipes/*.yaml file: `recipe: NAME` plus field overrides (preset names allowed for texts)."""
    data = read_yaml(path)
    if not isinstance(data, dict) or "recipe" not in data:
        raise ValueError(f"{path} is not a recipe file: it needs a 'recipe: NAME' key.")
    data = dict(data)
    return get_recipe(data.pop("recipe"), **data)
