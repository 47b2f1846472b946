"""Plain PyTorch reference loops over transformers' models: SafeRemind semantics and steering pre-hooks.

The whole sequence is recomputed every step (no cache) so nothing here shares a mechanism with the JAX loop.
"""

from __future__ import annotations

import numpy as np
import torch


class PreHookSteering:
    """Adds gate[pos] * alpha_k * v_k to the input of block k for every position of the current sequence."""

    def __init__(self, model, vectors, layers, alpha):
        self.gate = None
        self.handles = []
        for k in layers:
            add = torch.tensor(alpha * vectors[k], dtype=torch.float32)
            self.handles.append(model.model.layers[k].register_forward_pre_hook(
                lambda mod, args, kwargs, add=add: self._hook(args, kwargs, add), with_kwargs=True))

    def _hook(self, args, kwargs, add):
        g = self.gate[None, :, None] * add
        if args:
            return (args[0] + g,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"] + g
        return args, kwargs

    def remove(self):
        for h in self.handles:
            h.remove()


def entropy(logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.double(), -1)
    return float(-(logp.exp() * logp).sum())


def reference_generate(model, prompt, max_new, stop_ids=(), reminder=None, steer=None, rule="all"):
    """Greedy generation following the SafeRemind authors' `generate_with_remind` step by step, in ids (no
    tokenizer, so the reminder is appended as its own ids): a thinking loop of at most max_think_tokens sampled
    tokens that ends on a stop id or the whole think-end sequence, with the reminder appended after a triggering
    newline token; then `</think>` closes the thinking (the model's own, or appended); then an answer loop of at
    most max_answer_tokens sampled tokens. The output is cut at max_new ids. Returns tokens, entropies (of the
    distribution at each output position), forced flags, reminder start steps."""
    ids, toks, forced, starts = list(prompt), [], [], []
    gates = [1.0 if rule in ("all", "prompt") else 0.0] * len(prompt)

    def emit(tok, was_forced, thinking):
        ids.append(tok), toks.append(tok), forced.append(was_forced)
        gates.append(1.0 if rule in ("all", "generated") or (rule == "thinking" and thinking) else 0.0)

    def next_token():
        if steer is not None:
            steer.gate = torch.tensor(gates, dtype=torch.float32)
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1]

    if reminder is None:
        while len(toks) < max_new:
            tok = int(torch.argmax(next_token()))
            emit(tok, False, False)
            if tok in stop_ids:
                break
        return toks, _entropies(model, prompt, toks, steer, gates), forced, starts

    end, phrase, count = list(reminder.thinking.end_ids), reminder.phrases()[0], 0
    placement, step, ended_by_model = reminder.placement, 0, False
    while step < reminder.thinking.max_think_tokens and len(toks) < max_new:
        logits = next_token()
        tok = int(torch.argmax(logits))
        emit(tok, False, True)
        step += 1
        if tok in stop_ids or toks[-len(end):] == end and not any(forced[-len(end):]):
            ended_by_model = tok not in stop_ids
            break
        crit = entropy(logits) < reminder.threshold if reminder.criterion == "lt" else \
            entropy(logits) > reminder.threshold
        if placement == "entropy" and tok in set(reminder.boundary_ids) and count < reminder.max_reminders and crit:
            count += 1
            starts.append(len(toks))
            for r in phrase:
                emit(r, True, True)
    if placement == "before_think_end" and reminder.max_reminders > 0:
        if ended_by_model:  # the authors split the text at </think>: the model's own marker goes
            del toks[-len(end):], forced[-len(end):], ids[-len(end):], gates[-len(end):]
        starts.append(len(toks))
        for r in phrase:
            emit(r, True, True)
        ended_by_model = False
    if not ended_by_model:
        for r in end:
            emit(r, True, True)
    if placement == "answer_start" and reminder.max_reminders > 0:
        starts.append(len(toks))
        for r in phrase:
            emit(r, True, False)
    step = 0
    while step < reminder.thinking.max_answer_tokens and len(toks) < max_new:
        tok = int(torch.argmax(next_token()))
        emit(tok, False, False)
        step += 1
        if tok in stop_ids:
            break
    toks, forced = toks[:max_new], forced[:max_new]
    return toks, _entropies(model, prompt, toks, steer, gates), forced, [s for s in starts if s < max_new]


def _entropies(model, prompt, toks, steer, gates):
    """Entropy of the next-token distribution at each output position, recomputed over the final sequence."""
    out = []
    for t in range(len(toks)):
        if steer is not None:
            steer.gate = torch.tensor(gates[:len(prompt) + t], dtype=torch.float32)
        with torch.no_grad():
            out.append(entropy(model(torch.tensor([list(prompt) + toks[:t]])).logits[0, -1]))
    return out


def observed_entropies(model, prompt, n):
    return np.array(reference_generate(model, prompt, n)[1])
