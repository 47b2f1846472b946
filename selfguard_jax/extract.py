"""Steering-vector extraction from contrast pairs: mean difference (Self-Guard), PCA of paired differences,
and a logistic-probe direction.

All read the hidden state of each row's true last prompt token at the output of every block k
(Hugging Face `hidden_states[k + 1]`, the last one final-normed as transformers returns it), accumulated
in float32 whatever the model dtype; `read="authors"` reads as the Self-Guard authors' trainer did instead
(extract_authors).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from selfguard_jax.buckets import bucket
from selfguard_jax.extract_authors import authors_pair_states
from selfguard_jax.model import hf_hidden_states


@functools.partial(jax.jit, static_argnames=("cfg", "scan_layers"))
def _last_token_states(params, cfg, ids_BT, mask_BT, scan_layers):
    """[L + 1, B, D] float32: hidden_states[0..L] at each row's last real token (any padding side)."""
    last_B = jnp.max(jnp.where(mask_BT > 0, jnp.arange(ids_BT.shape[1])[None], -1), axis=1)
    return hf_hidden_states(params, cfg, ids_BT, mask_BT, at_B=last_B, scan_layers=scan_layers)


def last_token_states(lm, prompts: Sequence[Sequence[int]], batch_size: int = 16, pad_side: str = "left",
                      desc: str | None = None) -> np.ndarray:
    """Hidden states [N, L + 1, D] float32 at the last token of each prompt, batched and length-bucketed."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token, and at least one prompt is needed.")
    order = np.argsort([-len(p) for p in prompts], kind="stable")
    out = np.zeros((len(prompts), lm.config.num_layers + 1, lm.config.hidden_size), np.float32)
    steps = range(0, len(prompts), batch_size)
    for i in tqdm(steps, desc=desc, disable=desc is None or len(steps) < 2, unit="batch"):
        idx = order[i:i + batch_size]
        T = bucket(max(len(prompts[j]) for j in idx), 16)
        ids = np.zeros((batch_size, T), np.int32)  # fixed batch: one compile per length bucket
        mask = np.zeros((batch_size, T), np.int32)
        for r, j in enumerate(idx):
            p = prompts[j]
            sl = slice(T - len(p), T) if pad_side == "left" else slice(0, len(p))
            ids[r, sl], mask[r, sl] = p, 1
        mask[len(idx):, -1] = 1  # filler rows: one token, discarded
        states = _last_token_states(lm.params, lm.config, jnp.asarray(ids), jnp.asarray(mask), lm.scan_layers)
        out[idx] = np.asarray(states).transpose(1, 0, 2)[:len(idx)]
    return out


def extract_mean_diff(lm, positive_ids: Sequence[Sequence[int]], negative_ids: Sequence[Sequence[int]],
                      batch_size: int = 16, pad_side: str = "left") -> np.ndarray:
    """v[k] = mean over positives - mean over negatives of hidden_states[k + 1] at the last token: [L, D]."""
    return extract(lm, positive_ids, negative_ids, "mean_diff", batch_size, pad_side)[0]


def _scaled(unit_LD: np.ndarray, pos_NLD: np.ndarray, neg_NLD: np.ndarray) -> np.ndarray:
    """Unit directions scaled by the mean-difference projection: positives project higher, magnitudes
    comparable to the mean difference (so one alpha means the same across methods)."""
    proj = np.einsum("ld,ld->l", pos_NLD.mean(0) - neg_NLD.mean(0), unit_LD)
    return (unit_LD * proj[:, None]).astype(np.float32)  # v . (mean_pos - mean_neg) = proj^2 >= 0


def pca_direction(pos_NLD: np.ndarray, neg_NLD: np.ndarray) -> np.ndarray:
    """First principal direction of the paired differences, per layer, scaled to the mean projection: [L, D].

    Differences are NOT re-centred: their mean is the signal, and centring them would leave only the
    variance around it. (Centring the states themselves, globally, cancels in a paired difference.)
    The sign makes positives project higher; the scale makes v comparable to the mean difference.
    """
    if pos_NLD.shape != neg_NLD.shape:
        raise ValueError("PCA of paired differences needs as many positives as negatives, in pairs.")
    diff = (pos_NLD - neg_NLD).astype(np.float64).transpose(1, 0, 2)
    _, _, vt = np.linalg.svd(diff, full_matrices=False)
    return _scaled(vt[:, 0, :], pos_NLD, neg_NLD)


def probe_direction(pos_NLD: np.ndarray, neg_NLD: np.ndarray, steps: int = 300, l2: float = 1e-3) -> np.ndarray:
    """Logistic-regression direction separating positives from negatives, per layer, scaled like pca_direction.

    Features are standardised per layer for the fit; the weight is mapped back to the raw space.
    """
    x = np.concatenate([pos_NLD, neg_NLD]).transpose(1, 0, 2).astype(np.float32)
    y = np.concatenate([np.ones(len(pos_NLD)), np.zeros(len(neg_NLD))]).astype(np.float32)
    mu, sd = x.mean(1, keepdims=True), x.std(1, keepdims=True) + 1e-6
    z = jnp.asarray((x - mu) / sd)

    def loss(w_LD, b_L):
        logits = jnp.einsum("lnd,ld->ln", z, w_LD) + b_L[:, None]
        return optax.sigmoid_binary_cross_entropy(logits, y[None]).mean() + l2 * jnp.sum(w_LD ** 2)

    opt = optax.adam(0.05)
    params = (jnp.zeros(z.shape[::2]), jnp.zeros(z.shape[0]))
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: loss(*p))(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    w = np.asarray(params[0]) / sd[:, 0, :]
    return _scaled(w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-12), pos_NLD, neg_NLD)


READS = ("last_token", "authors")


def extract(lm, positive_ids: Sequence[Sequence[int]], negative_ids: Sequence[Sequence[int]],
            method: str = "mean_diff", batch_size: int = 16, pad_side: str = "left",
            read: str = "last_token") -> tuple[np.ndarray, np.ndarray]:
    """(vectors [L, D], residual norms [L]): the chosen method, and the mean norm of the residual stream at the
    input of each block (hidden_states[k]) over all prompts, for the over-steering check.

    `read`: "last_token" (default) reads each prompt's true last token; "authors" reads as the Self-Guard
    authors' trainer did (extract_authors: pairs interleaved, right-padded batches of 16 with pad id 0, the
    batch's last column, mostly a pad token), whatever `batch_size` and `pad_side` say."""
    if read not in READS:
        raise ValueError(f"read {read!r} is unknown; use one of {READS}.")
    if read == "authors":
        pos, neg = authors_pair_states(lm, positive_ids, negative_ids)
    else:
        pos = last_token_states(lm, positive_ids, batch_size, pad_side, desc="positives")
        neg = last_token_states(lm, negative_ids, batch_size, pad_side, desc="negatives")
    norms = np.linalg.norm(np.concatenate([pos, neg])[:, :-1], axis=-1).mean(0).astype(np.float32)
    if method == "mean_diff":
        vec = (pos.mean(0, dtype=np.float64) - neg.mean(0, dtype=np.float64)).astype(np.float32)[1:]
    elif method == "pca":
        vec = pca_direction(pos[:, 1:], neg[:, 1:])
    elif method == "probe":
        vec = probe_direction(pos[:, 1:], neg[:, 1:])
    else:
        raise ValueError(f"extraction method {method!r} is unknown; use mean_diff, pca or probe.")
    return vec, norms


class OversteerWarning(UserWarning):
    """A steering setting whose summed added vector is large enough, against the residual stream, that outputs
    degenerated in the calibration runs (README: over-steering)."""


# Warn when, at the input of some steered block j, the sum of the vectors added so far (alpha * sum of v_k over
# steered k <= j) exceeds this multiple of the typical residual norm there. Calibrated on measured degeneration
# (studies/oversteer.py; README, "Over-steering"): on SmolLM2-135M (blocks 25-27, 15, 2-4) and the organism
# (blocks 1-2, 3, 0-3), greedy, no setting at or under 0.3 looped in more than 1 of 8 (SmolLM2) or 16 (organism)
# generations; loops began at 0.3-0.7 on SmolLM2 and 0.7-1.5 on the organism; most looped from 0.7-1.5.
OVERSTEER_LIMIT = 0.3


@dataclasses.dataclass(frozen=True)
class OversteerReport:
    """How far a steering setting pushes the residual stream. `rows`: (layer, |alpha v_k|, typical residual norm at
    the input of block k, ratio) per steered layer. The added vectors accumulate in the residual stream, so the
    check is on their running sum: `summed_ratio` = the largest, over steered blocks j, of
    |alpha sum_{steered k <= j} v_k| / residual norm at the input of block j, reached at block `at_block`."""

    rows: tuple[tuple[int, float, float, float], ...]
    summed_ratio: float
    at_block: int
    limit: float = OVERSTEER_LIMIT

    @property
    def over(self) -> bool:
        return self.summed_ratio > self.limit

    def message(self) -> str:
        layers = ",".join(str(k) for k, *_ in self.rows)
        verdict = "over-steering" if self.over else "steering"
        return (f"{verdict}: alpha x the vectors of blocks {layers} add up to {self.summed_ratio:.2f}x the typical "
                f"residual norm at block {self.at_block} (each alone: "
                + ", ".join(f"{k}: {r:.2f}x" for k, _, _, r in self.rows)
                + f"); outputs degenerated past about {self.limit}x in calibration: lower --alpha or steer fewer "
                "blocks.")


def oversteer_report(vectors_LD: np.ndarray, layers: Sequence[int], alpha: float,
                     residual_norms_L: np.ndarray) -> OversteerReport:
    """The over-steering check of `alpha` at `layers`, against the residual norms recorded at extraction."""
    layers = sorted(int(k) for k in layers)
    if not layers:
        raise ValueError("oversteer_report needs at least one steered layer.")
    vectors_LD, norms_L = np.asarray(vectors_LD, np.float64), np.asarray(residual_norms_L, np.float64)
    rows, running, worst = [], np.zeros(vectors_LD.shape[1]), (-1.0, layers[0])
    for k in layers:
        base = max(float(norms_L[k]), 1e-12)
        added = abs(alpha) * float(np.linalg.norm(vectors_LD[k]))
        rows.append((k, added, float(norms_L[k]), added / base))
        running = running + alpha * vectors_LD[k]
        worst = max(worst, (float(np.linalg.norm(running)) / base, k))
    return OversteerReport(tuple(rows), worst[0], worst[1])


def residual_norms(lm, prompts: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
    """[L] mean norm of the residual stream at the input of each block (hidden_states[k]) at the prompts' last
    tokens: the over-steering check's reference when a vector file does not record one (.svec, .gguf)."""
    return np.linalg.norm(last_token_states(lm, prompts, batch_size)[:, :-1], axis=-1).mean(0).astype(np.float32)
