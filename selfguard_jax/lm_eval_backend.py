"""A defended model as an lm-evaluation-harness backend (`selfguard-jax`): utility benchmarks under a recipe.

`generate_until` runs the recipe through `lm.generate` (steering, thinking protocol, reminders); the thinking is
stripped from what lm-eval scores. `loglikelihood(_rolling)` run our forward, steered where the recipe steers, in
fixed-size batches padded to power-of-two length buckets (one compile per bucket). Needs the `lm-eval` extra.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from selfguard_jax import chat, lm as lm_mod, recipes
from selfguard_jax.buckets import bucket, pad_rows
from selfguard_jax.config import ModelConfig
from selfguard_jax.model import Params, SteerInput, causal_mask, forward, positions_from_mask
from selfguard_jax.recipes import Recipe
from selfguard_jax.spec import GenerationSpec, Sampling
from selfguard_jax.vector_files import load_any

MODEL_NAME = "selfguard-jax"
# Recipe fields given as lm-eval model args ("key=value" strings); layers as "30:31:32" (commas split model args).
RECIPE_FIELDS = {f.name for f in dataclasses.fields(Recipe)} - {"name"}


@functools.partial(jax.jit, static_argnames=("cfg", "scan_layers"))
def _score(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array, targets_BT: jax.Array,
           scored_BT: jax.Array, steer: SteerInput | None, scan_layers: bool) -> tuple[jax.Array, jax.Array]:
    """Per row: the summed float32 log-probability of the scored targets, and whether each is the argmax."""
    logits_BTV = forward(params, cfg, tokens_BT, positions_from_mask(mask_BT), causal_mask(mask_BT), steer=steer,
                         scan_layers=scan_layers)
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    target_logp_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    total_B = jnp.sum(jnp.where(scored_BT, target_logp_BT, 0.0), axis=1)
    greedy_B = jnp.all(jnp.where(scored_BT, jnp.argmax(logits_BTV, axis=-1) == targets_BT, True), axis=1)
    return total_B, greedy_B


def _parse_layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(k) for k in value.replace(";", ":").split(":") if k.strip())
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(k) for k in value)


def build_recipe(recipe: str | Recipe, model_config: ModelConfig, preset: str | None = None,
                 **overrides: Any) -> Recipe:
    """A Recipe object as given, a configs/recipes .yaml file, or a named recipe with field overrides (steering
    layers/alpha from the model's preset where not given, as `get_recipe` does)."""
    bad = sorted(set(overrides) - RECIPE_FIELDS)
    if bad:
        raise ValueError(f"model args {bad} are not recipe fields nor backend args; recipe fields: "
                         f"{sorted(RECIPE_FIELDS)}.")
    if isinstance(recipe, Recipe):
        return dataclasses.replace(recipe, **overrides) if overrides else recipe
    if "steer_layers" in overrides:
        overrides["steer_layers"] = _parse_layers(overrides["steer_layers"])
    if str(recipe).endswith((".yaml", ".yml")):
        base = recipes.load_recipe_file(recipe)
        return dataclasses.replace(base, **overrides) if overrides else base
    return recipes.get_recipe(str(recipe), model_config=model_config, preset=preset, **overrides)


def recipe_messages(recipe: Recipe, history: Sequence[dict]) -> list[dict]:
    """lm-eval's chat history with the recipe's prompt side applied as `chat.chat_prompt` applies it to one turn:
    its system prompt first (before a task's own), its user suffix and prompt-side reminder on the last user turn."""
    messages = [dict(m) for m in history]
    prompt_side = recipe.remind and recipe.placement in chat.PROMPT_PLACEMENTS
    system = recipe.system
    if prompt_side and recipe.placement == "system":
        system = recipe.reminder_text if system is None else system + "\n" + recipe.reminder_text
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if users:
        last = messages[users[-1]]
        text = last["content"] + recipe.user_suffix
        if prompt_side and recipe.placement == "before_user":
            text = recipe.reminder_text + text
        elif prompt_side and recipe.placement == "after_user":
            text = text + recipe.reminder_text
        last["content"] = text
    if system:
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = system + "\n" + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": system})
    return messages


def _has_prompt_side(recipe: Recipe) -> bool:
    return bool(recipe.system or recipe.user_suffix or (recipe.remind and recipe.placement in chat.PROMPT_PLACEMENTS))


def strip_thinking(tokens: Sequence[int], end_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The tokens after the last complete `end_ids` run (lm-eval's integer `think_end_token` rule), and whether one
    was found (without one every token is kept, as lm-eval keeps it)."""
    tokens, end = list(tokens), list(end_ids)
    for i in range(len(tokens) - len(end), -1, -1):
        if tokens[i:i + len(end)] == end:
            return tokens[i + len(end):], True
    return tokens, False


@register_model(MODEL_NAME, "selfguard_jax")
class SelfGuardLM(TemplateLM):
    """An lm-eval model: a JAX model under a defense recipe.

    Args (lm-eval model args, or keywords): `pretrained` a model folder or .gguf file (or `lm`, a loaded
    `selfguard_jax.LM`); `recipe` a recipe name, configs/recipes .yaml file or Recipe; `vector` a steering-vector
    file (or `vectors`, an [L, D] array); `batch_size` rows per forward and decode slots; `dtype`; `max_length`
    (default: the config's max_position_embeddings); `max_gen_toks` (lm-eval's default answer budget);
    `enable_thinking` passed to the chat template; `strip_thinking`; `seed` for sampled generation; `preset`
    for steering layers/alpha; any Recipe field (`steer_layers=30:31:32`, `steer_alpha`, `max_think_tokens`,
    `think_markers=<think>|</think>` ...).

    Under a two-phase protocol the task's `max_gen_toks` caps the answer and the recipe caps the thinking;
    otherwise the recipe's budget rule applies with `max_gen_toks` as its answer cap.
    """

    def __init__(self, pretrained: str | None = None, recipe: str | Recipe = "vanilla", vector: str | None = None,
                 batch_size: int | str = 8, dtype: str = "float32", max_length: int | None = None,
                 max_gen_toks: int = 256, enable_thinking: bool = True, strip_thinking: bool = True, seed: int = 0,
                 preset: str | None = None, lm: Any = None, vectors: Any = None, device: str | None = None,
                 max_batch_size: int | None = None, **recipe_overrides: Any) -> None:
        super().__init__()
        if device not in (None, "", "cpu", "cuda", "tpu"):
            raise ValueError(f"device={device!r}: JAX places arrays on its default backend; choose it with "
                             "JAX_PLATFORMS (cpu, cuda, tpu) instead.")
        if isinstance(batch_size, str) and not batch_size.isdigit():
            raise ValueError(f"batch_size={batch_size!r}: give a whole number (automatic batch sizes are not "
                             "supported: each size compiles its own program).")
        self._batch_size = int(batch_size)
        if self._batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if (lm is None) == (pretrained is None):
            raise ValueError("give exactly one of pretrained=PATH (a model folder or .gguf file) or lm=LOADED_LM.")
        self.lm = lm if lm is not None else lm_mod.load(pretrained, dtype=dtype)
        if self.lm.tokenizer is None:
            raise ValueError(f"{pretrained or self.lm.path} has no tokenizer files; lm-eval sends text, so the "
                             "model folder needs tokenizer.json (or a .gguf file).")
        self.tokenizer = self.lm.tokenizer
        if "max_answer_tokens" in recipe_overrides:
            raise ValueError("max_answer_tokens does not apply here: the task's max_gen_toks caps the answer; set "
                             "max_gen_toks=N (tasks without their own) or lm-eval's gen_kwargs max_gen_toks=N.")
        if "think_markers" in recipe_overrides and isinstance(recipe_overrides["think_markers"], str):
            recipe_overrides["think_markers"] = chat.parse_think_markers(
                recipe_overrides["think_markers"].replace("|", ","))
        self.recipe = build_recipe(recipe, self.lm.config, preset, **recipe_overrides)
        if vector is not None and vectors is not None:
            raise ValueError("give vector=PATH or vectors=ARRAY, not both.")
        if vector is not None:
            if not Path(vector).is_file():
                raise FileNotFoundError(f"vector={vector} does not exist.")
            vectors = load_any(vector, self.lm.config.num_layers, self.lm.config.hidden_size)[0]
        if vectors is not None and not self.recipe.steers:
            raise ValueError(f"steering vectors were given but recipe {self.recipe.name!r} does not steer; use "
                             "recipe=selfguard or steer-only, or set steer_layers and a nonzero steer_alpha.")
        self.vectors = vectors
        self.steering = self.recipe.steering(vectors)  # raises when the recipe steers and no vectors were given
        self.markers = self.recipe.markers(self.tokenizer)
        self._max_length = int(max_length) if max_length else self.lm.config.max_position_embeddings
        self._max_gen_toks = int(max_gen_toks)
        self.enable_thinking = enable_thinking
        self.strip_thinking = strip_thinking
        self.seed = int(seed)
        self.chat_applied = False

    # lm-eval's TemplateLM contract -------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or self.lm.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Encoded as lm-eval's HF backend encodes (no second BOS when the text already starts with one)."""
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False
        return list(self.tokenizer.encode(string, **kw))

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The model's chat template over the history with the recipe's prompt side (system prompt, user suffix,
        prompt-side reminder) applied as the recipe applies it to one request."""
        self.chat_applied = True
        messages = recipe_messages(self.recipe, chat_history)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt,
                                                  enable_thinking=self.enable_thinking)
        if add_generation_prompt and self.recipe.remind and self.recipe.placement == "think_start":
            text += self.recipe.reminder_text
        return text

    # scoring ------------------------------------------------------------------------------------------------------
    def _check_scoring(self) -> None:
        self._check_prompt_side()
        r = self.recipe
        if r.remind and r.placement not in chat.PROMPT_PLACEMENTS:
            raise ValueError(f"recipe {r.name!r} splices reminders while decoding, which loglikelihood tasks never do "
                             "(they score fixed text): the defense would not run. Use generative tasks, or a "
                             "prompt-side recipe (reminder-system, reminder-before-user, reminder-after-user).")
        if self.steering is not None and self.steering.rule == "thinking":
            raise ValueError(f"recipe {r.name!r} steers only thinking tokens (rule 'thinking'); loglikelihood tasks "
                             "have no thinking phase. Use steer_rule=all, prompt or generated, or generative tasks.")

    def _check_prompt_side(self) -> None:
        if _has_prompt_side(self.recipe) and not self.chat_applied:
            raise ValueError(f"recipe {self.recipe.name!r} changes the chat prompt (system prompt, suffix or reminder) "
                             "but lm-eval sent raw text: run with --apply_chat_template (simple_evaluate("
                             "apply_chat_template=True)) so the defense is applied.")

    def _gate(self, n: int, cont_len: int, width: int) -> np.ndarray:
        """Steered positions of one row: all, the context ("prompt") or the continuation ("generated")."""
        gate = np.zeros(width, np.float32)
        first_cont = n - cont_len + 1  # inputs are context + continuation[:-1]
        rule = self.steering.rule
        lo, hi = (0, n) if rule == "all" else (0, first_cont) if rule == "prompt" else (first_cont, n)
        gate[lo:hi] = 1.0
        return gate

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), all greedy) per request; batches of `batch_size` rows sorted by
        length, each padded to a power-of-two bucket (lm-eval's HF backend truncates from the left the same way)."""
        self._check_scoring()
        rows = []
        for _, ctx, cont in requests:
            if not cont:
                raise ValueError("a loglikelihood request has an empty continuation; lm-eval tasks always give one.")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            rows.append((whole, len(cont)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        B = self.batch_size
        for start in range(0, len(order), B):
            chunk = order[start:start + B]
            chunk = chunk + [chunk[-1]] * (B - len(chunk))  # filler rows repeat the last one; dropped below
            width = bucket(max(len(rows[i][0]) - 1 for i in chunk))
            wholes = [rows[i][0] for i in chunk]
            tokens = pad_rows([w[:-1] for w in wholes], width, 0)
            targets = pad_rows([w[1:] for w in wholes], width, 0)
            mask = pad_rows([[1] * (len(w) - 1) for w in wholes], width, 0)
            scored = np.zeros((B, width), bool)
            for r, i in enumerate(chunk):
                n, c = len(wholes[r]) - 1, rows[i][1]
                scored[r, n - c:n] = True
            steer = None
            if self.steering is not None:
                gates = np.stack([self._gate(len(wholes[r]) - 1, rows[i][1], width) for r, i in enumerate(chunk)])
                steer = SteerInput(self.steering.add_LD(), jnp.asarray(gates))
            total, greedy = self._run_score(tokens, mask, targets, scored, steer)
            for r, i in enumerate(chunk[:len(order[start:start + B])]):
                out[i] = (float(total[r]), bool(greedy[r]))
        return out

    def _run_score(self, tokens, mask, targets, scored, steer):
        placed = self.lm.place_batch(tokens, mask, targets, scored)
        if steer is not None:
            steer = steer._replace(gate_BT=self.lm.place_batch(np.asarray(steer.gate_BT))[0])
        total, greedy = _score(self.lm.params, self.lm.config, *placed, steer, self.lm.scan_layers)
        return np.asarray(jax.device_get(total)), np.asarray(jax.device_get(greedy))

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood over disjoint windows of up to max_length tokens, as lm-eval's HF backend
        cuts them (the first conditioned on prefix_token_id)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for w in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None,) + w)
                owner.append(i)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, scores):
            totals[i] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # generation ---------------------------------------------------------------------------------------------------
    def _context_ids(self, context: str) -> list[int]:
        """A generation context encoded as lm-eval's HF backend batch-encodes it."""
        bos = getattr(self.tokenizer, "bos_token", None)
        kw = {"add_special_tokens": False} if has_bos_prefix(context, bos) else {}
        return list(self.tokenizer.encode(context, **kw))

    def generation_spec(self, max_gen_toks: int, sampling: Sampling = Sampling(),
                        until: Sequence[str] = ()) -> GenerationSpec:
        """The spec `lm.generate` runs for one lm-eval request group: the recipe's, with `max_gen_toks` as its
        answer cap (its budget rule then gives the thinking cap + answer cap on a thinking model) and the stop
        ids of `until`."""
        recipe = dataclasses.replace(self.recipe, max_answer_tokens=max_gen_toks)
        return recipe.spec(self.tokenizer, self.vectors, sampling=sampling, stop_ids=tuple(self.stop_ids(until)))

    def stop_ids(self, until: Sequence[str]) -> list[int]:
        """Stop strings that are one token of their own, stopped on while decoding; the text is cut at every stop
        string afterwards. A thinking model stops on EOS only: its stop strings apply to the answer, not the
        thinking (which the decode loop cannot tell apart for a stop id)."""
        if self.markers is not None:
            return []
        ids = []
        for s in until:
            enc = chat.token_ids(self.tokenizer, s)
            if len(enc) == 1 and self.tokenizer.decode(enc) == s:
                ids.append(enc[0])
        return ids

    def finish_text(self, tokens: Sequence[int], until: Sequence[str]) -> str:
        """What lm-eval scores: the answer after the thinking (when stripping), cut at the first stop string."""
        stripped = False
        if self.strip_thinking and self.markers is not None:
            tokens, stripped = strip_thinking(tokens, self.markers.end_ids)
        text = self.tok_decode(tokens)
        if stripped:
            text = text.lstrip()
        return postprocess_generated_text(text, until, None)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        self._check_prompt_side()
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        out: list[str] = [""] * len(requests)
        for idx in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[idx[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            spec = self.generation_spec(max_gen_toks, self._sampling(kwargs), until)
            budget = spec.budget()
            room = self.max_length - budget
            if room < 1:
                raise ValueError(f"the generation budget ({budget} tokens under recipe "
                                 f"{self.recipe.name!r}) leaves no room for a prompt in max_length {self.max_length}; "
                                 "lower max_think_tokens / max_gen_toks.")
            prompts = [self._context_ids(requests[i].args[0])[-room:] for i in idx]
            gen = self.lm.generate(prompts, spec, slots=self.batch_size)
            for i, tokens in zip(idx, gen.tokens):
                out[i] = self.finish_text(tokens, until)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _sampling(self, kwargs: dict) -> Sampling:
        """Greedy unless the task samples; other HF generation options are refused rather than ignored."""
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
        top_k = int(kwargs.pop("top_k", 0) or 0)
        if kwargs:
            raise ValueError(f"generation options {sorted(kwargs)} are not supported by the {MODEL_NAME} backend; "
                             "it takes until, max_gen_toks, do_sample, temperature, top_p and top_k.")
        if not do_sample:
            return Sampling(seed=self.seed)
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"do_sample=True needs a temperature > 0, got {temperature}.")
        return Sampling(temperature, top_p, top_k, self.seed)

    def get_model_info(self) -> dict:
        return {"model": self.lm.path, "recipe": dataclasses.asdict(self.recipe), "dtype": str(self.lm.dtype),
                "steered": self.steering is not None}
