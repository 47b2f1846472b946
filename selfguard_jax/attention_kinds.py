"""How each layer attends, in one place: its sliding window and its rope (base and scaling).

Gemma 3 interleaves local sliding-window layers with global ones, each kind with its own rope base; Mistral slides
every layer; gpt-oss alternates sliding and full. `layer_kinds` reads the config into the distinct kinds and each
layer's index into them; `PerLayer` holds one value per kind (a mask, a rope table) and picks a layer's, statically
when the blocks are unrolled and by index under `lax.scan`; `window_mask` narrows an attention mask to a window.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from selfguard_jax.config import ModelConfig

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    """One kind of attention layer: `window` (a query sees itself and at most window - 1 earlier tokens; None: all
    of them), its rope base and its rope scaling (as `ModelConfig.rope_scaling`)."""

    window: int | None
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...]

    @property
    def rope(self) -> dict[str, Any]:
        return dict(self.rope_scaling)


def layer_kinds(cfg: ModelConfig) -> tuple[tuple[AttentionKind, ...], tuple[int, ...]]:
    """(the distinct kinds, each layer's index into them). Without `layer_types`, every layer is sliding when the
    config has a window (Mistral) and full otherwise."""
    full = AttentionKind(None, cfg.rope_theta, cfg.rope_scaling)
    local = AttentionKind(cfg.sliding_window,
                          cfg.rope_theta if cfg.local_rope_theta is None else cfg.local_rope_theta,
                          cfg.rope_scaling if cfg.local_rope_scaling is None else cfg.local_rope_scaling)
    types = cfg.layer_types or ((SLIDING if cfg.sliding_window else FULL),) * cfg.num_layers
    per_layer = [local if t == SLIDING else full for t in types]
    kinds = tuple(dict.fromkeys(per_layer))
    return kinds, tuple(kinds.index(k) for k in per_layer)


def window_mask(mask_BTS: jax.Array, window: int | None) -> jax.Array:
    """`mask_BTS` keeping, for each query, only its last `window` attendable keys (itself included): the window
    counts positions, not slots, so pads and slots a splice dropped do not use it up. On a causal mask of a padded
    batch this is transformers' `kv_idx > q_idx - window`."""
    if window is None:
        return mask_BTS
    after = jnp.flip(jnp.cumsum(jnp.flip(mask_BTS, -1), -1, dtype=jnp.int32), -1)  # attendable keys in [s, end)
    return mask_BTS & (after <= window)


class PerLayer:
    """One value (any pytree) per attention kind; `at(i)` is layer i's: by static choice when i is a Python int
    (unrolled blocks), by indexing the kinds stacked once when i is traced (`lax.scan`)."""

    def __init__(self, layer_kind: tuple[int, ...], options: tuple):
        self.layer_kind, self.options = layer_kind, options
        self.stacked = jax.tree.map(lambda *a: jnp.stack(a), *options) if len(options) > 1 else None

    def at(self, i) -> Any:
        if len(self.options) == 1:
            return self.options[0]
        if isinstance(i, int):
            return self.options[self.layer_kind[i]]
        k = jnp.asarray(self.layer_kind, jnp.int32)[i]
        return jax.tree.map(lambda a: a[k], self.stacked)
