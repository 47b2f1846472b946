"""Which rope each block uses, in one place: Gemma 3's sliding-window blocks rotate with their own base (and
scaling) and its global blocks with the config's; every other model has one rope for all blocks. The windows
themselves are `ModelConfig.layer_windows` (a block's mask narrowed in `model._windowed_masks`). `PerLayer` holds
one value per kind (here the cos/sin tables) and picks a block's, statically when the blocks are unrolled and by
index under `lax.scan`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from selfguard_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class RopeKind:
    """One rope: its base and its scaling (as `ModelConfig.rope_scaling`)."""

    theta: float
    rope_scaling: tuple[tuple[str, Any], ...]

    @property
    def rope(self) -> dict[str, Any]:
        return dict(self.rope_scaling)


def layer_ropes(cfg: ModelConfig) -> tuple[tuple[RopeKind, ...], tuple[int, ...]]:
    """(the distinct ropes, each block's index into them): a sliding block (a window in `layer_windows`) takes
    the local rope where the config has one (`local_rope_theta`), every other block the config's rope."""
    full = RopeKind(cfg.rope_theta, cfg.rope_scaling)
    if cfg.local_rope_theta is None:
        return (full,), (0,) * cfg.num_layers
    local = RopeKind(cfg.local_rope_theta, cfg.local_rope_scaling or (("rope_type", "default"),))
    windows = cfg.layer_windows or (0,) * cfg.num_layers
    return (full, local), tuple(int(w > 0) for w in windows)


class PerLayer:
    """One value (any pytree) per kind; `at(i)` is block i's: by static choice when i is a Python int (unrolled
    blocks), by indexing the kinds stacked once when i is traced (`lax.scan`)."""

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
